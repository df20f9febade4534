"""What a trainer checkpoint holds, and putting it back: model (Hugging Face format),
tokenizer, optimizer, every RNG state, the step and the data position.

One process writes them all (`optimizer.pt`, `state.pt`). Under torchrun rank 0 writes the
model and tokenizer from the gathered weights, and every rank its shard of the rest
(`runtime.distributed_checkpoint`); either kind resumes on any number of processes.
"""

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhfkit.errors import ConfigError, NumericalFault, RlhfkitError
from rlhfkit.models.fused_layers import use_fastest_kernels
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.lora import (
    ALL_LINEAR,
    add_lora,
    load_lora,
    merged_copy,
    merged_gathered,
    save_pretrained,
)
from rlhfkit.runtime.checkpoint import (
    capture_rng_state,
    checkpoint_step,
    latest_checkpoint,
    load_torch_state,
    publish_dir,
    remove_leftovers_of,
    restore_rng_state,
    resumable_checkpoint,
    save_checkpoint,
    save_torch_state,
    temporary_sibling,
)
from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.distributed import FrozenModels, Ranks, full_state_dict, place_frozen
from rlhfkit.runtime.distributed_checkpoint import (
    is_sharded_checkpoint,
    load_full_optimizer_state,
    load_sharded_checkpoint,
    on_main,
    save_sharded_checkpoint,
    shard_like,
    warn_if_resharded,
)
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.train.optim import all_finite, all_finite_tensors

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
ONE_PROCESS = Ranks()  # frozen: the default of every `ranks` argument here


def save_trainer_checkpoint(
    checkpoints_dir: Path,
    *,
    step: int,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    extra: dict,
    keep_last: int,
    ranks: Ranks = ONE_PROCESS,
    saved_model: Callable[[dict], tuple[Any, dict | None]] | None = None,
) -> Path:
    """Atomically write checkpoint `step` (see runtime.checkpoint.save_checkpoint); under
    torchrun every rank must call it. `saved_model`, under torchrun only (a single process
    saves with the model's own `save_pretrained`): given the gathered weights on rank 0, the
    model that writes `model/` and the weights it writes (None: its own), when that is not the
    whole model with all of them (a reward model's classifier)."""
    if ranks.sharded:
        weights = full_state_dict(model, ranks)  # every rank takes part; rank 0 gets them
        refuse_non_finite(
            lambda: all_finite_tensors(weights.values()), step, checkpoints_dir, ranks
        )

        def write_main(tmp: Path) -> None:
            saved, state_dict = saved_model(weights) if saved_model else (model, weights)
            if state_dict is None:
                save_pretrained(saved, tmp / MODEL_SUBDIR)
            else:
                save_pretrained(saved, tmp / MODEL_SUBDIR, state_dict=state_dict)
            tokenizer.save_pretrained(tmp / MODEL_SUBDIR)

        return save_sharded_checkpoint(
            checkpoints_dir,
            step,
            model=model,
            optimizer=optimizer,
            extra=extra,
            write_main=write_main,
            keep_last=keep_last,
            ranks=ranks,
        )

    refuse_non_finite(lambda: all_finite(model), step, checkpoints_dir, ranks)

    def write(tmp: Path) -> None:
        save_pretrained(model, tmp / MODEL_SUBDIR)
        tokenizer.save_pretrained(tmp / MODEL_SUBDIR)
        save_torch_state(tmp / "optimizer.pt", optimizer.state_dict())
        save_torch_state(
            tmp / "state.pt", {"step": step, "rng": capture_rng_state(), "extra": extra}
        )

    return save_checkpoint(checkpoints_dir, step, write=write, keep_last=keep_last)


def refuse_non_finite(
    finite: Callable[[], bool], step: int, checkpoints_dir: Path, ranks: Ranks
) -> None:
    """A `NumericalFault` on every rank, before checkpoint `step` is written, unless `finite()`
    (run on rank 0: under torchrun on the gathered weights) says every weight is finite. An
    update can overflow the weights with a finite loss and gradient (a far too high lr); its
    checkpoint would be the one a resume starts from, so the last one written stays the last
    good one."""
    if not on_main(finite, ranks):
        raise _non_finite(f"step {step}: the model", "checkpoint not written", checkpoints_dir)


def _non_finite(what: str, outcome: str, checkpoints_dir: Path) -> NumericalFault:
    last = latest_checkpoint(checkpoints_dir)
    return NumericalFault(
        f"{what} has non-finite weights: {outcome}. Last checkpoint: {last or 'none'}"
    )


def submodule_weights(weights: dict, part: str) -> dict:
    """The entries of a full state dict under submodule `part` ("" = all), named from it."""
    if not part:
        return weights
    prefix = f"{part}."
    return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}


def load_policy(
    model_dir: str,
    checkpoint: Path | None,
    *,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float = 0.0,
    lora_target_modules: str | Sequence[str] = ALL_LINEAR,
    device: torch.device,
    precision: Precision = Precision.FP32,
):
    """The policy to train, in train mode: the starting model or its checkpoint, or (lora_r > 0)
    LoRA adapters, fresh (`lora_dropout`, `lora_target_modules`: `add_lora`'s) or from the
    checkpoint (as saved), on the starting model; with the kernels fastest for `device` and
    `precision` (`use_fastest_kernels`)."""
    if lora_r > 0:
        base = use_fastest_kernels(load_causal_lm(model_dir).to(device), device, precision)
        policy = (
            load_lora(base, checkpoint / MODEL_SUBDIR)
            if checkpoint
            else add_lora(base, lora_r, lora_alpha, lora_dropout, lora_target_modules)
        )
    else:
        policy = load_causal_lm(checkpoint / MODEL_SUBDIR if checkpoint else model_dir).to(device)
        use_fastest_kernels(policy, device, precision)
    return policy.train()


def load_configured_policy(cfg, checkpoint: Path | None, device: torch.device):
    """`load_policy` with the settings of a run's config (`model`, the `lora_` keys,
    `precision`: SFT, DPO and the policy trainers share them)."""
    return load_policy(
        cfg.model,
        checkpoint,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        lora_target_modules=cfg.lora_target_modules,
        device=device,
        precision=cfg.precision,
    )


def load_frozen_reference(
    model_dir: str,
    *,
    device: torch.device,
    precision: Precision,
    frozen_models: FrozenModels,
    mesh,
):
    """A frozen copy of `model_dir` to score with: eval mode, no gradients, the kernels fastest
    for `device` and `precision`, sharded over `mesh` with `frozen_models=sharded`."""
    model = load_causal_lm(model_dir).to(device).eval().requires_grad_(False)
    use_fastest_kernels(model, device, precision)
    return place_frozen(model, frozen_models, mesh, precision)


def final_policy(model, weights: dict | None, cfg) -> tuple[object, dict | None]:
    """The policy to write as final/ and the weights to write it with (`save_final_model`): the
    trained model as it is, or under LoRA a plain copy with the adapters merged; under torchrun
    (`weights` gathered from the shards) rank 0 merges them into a fresh copy of the starting
    model. `cfg`: the run's config (`model` and the `lora_` keys)."""
    if cfg.lora_r == 0:
        return model, weights
    if weights is None:
        return merged_copy(model), None
    base = load_causal_lm(cfg.model)
    adapters = (cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules)
    return merged_gathered(base, weights, *adapters), None


def resume_point(
    checkpoints_dir: Path, ranks: Ranks = ONE_PROCESS, *, total_steps: int | None = None
) -> Path | None:
    """The checkpoint to resume from: the newest undamaged one (see
    runtime.checkpoint.resumable_checkpoint), or None for a fresh start. Under torchrun rank 0
    chooses and every rank takes its choice. One past `total_steps` (a run resumed with a
    lower max_steps) is refused: the run would save that checkpoint as its final model."""
    checkpoint = on_main(lambda: resumable_checkpoint(checkpoints_dir), ranks)
    if checkpoint is None:
        return None
    step = checkpoint_step(checkpoint)
    if total_steps is not None and step > total_steps:
        raise ConfigError(
            f"{checkpoint} is step {step}, past this run's {total_steps} steps: resume "
            f"with at least {step} steps, or start again with --overwrite"
        )
    if ranks.is_main:
        of = f" of {total_steps}" if total_steps is not None else ""
        log.info(f"resuming from {checkpoint}: step {step}{of} done")
        final = RunDir(checkpoints_dir.parent).final
        if final.is_dir():  # a finished run, resumed as it was (redone alike) or with more steps
            log.warning(f"the run had finished: its final model {final} will be replaced")
    return checkpoint


def save_final_model(
    model, tokenizer, final_dir: Path, checkpoints_dir: Path, *, state_dict: dict | None = None
) -> Path:
    """Write the trained model and its tokenizer to `final_dir` the way checkpoints are written:
    into a temporary sibling, then renamed, so `final/` is whole or absent. A model with a
    non-finite weight is never saved: that is a `NumericalFault`. `state_dict`: the weights to
    write instead of the model's own (a sharded model's, gathered by
    `runtime.distributed.full_state_dict`); the model then gives the class and config."""
    finite = all_finite(model) if state_dict is None else all_finite_tensors(state_dict.values())
    if not finite:
        raise _non_finite("the trained model", "final/ not written", checkpoints_dir)
    remove_leftovers_of(Path(final_dir))  # a crash during an earlier save of it
    tmp = temporary_sibling(Path(final_dir))
    try:
        if state_dict is None:
            save_pretrained(model, tmp)
        else:
            save_pretrained(model, tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        publish_dir(tmp, Path(final_dir))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Path(final_dir)


def restore_trainer_state(
    checkpoint: Path,
    optimizer: torch.optim.Optimizer,
    *,
    model=None,
    extra_like: dict | None = None,
    ranks: Ranks = ONE_PROCESS,
) -> tuple[int, dict]:
    """Load the optimizer and RNG states; return (step, extra). The model itself is loaded
    from `checkpoint / MODEL_SUBDIR` by the trainer, like any model directory.

    A checkpoint written under torchrun needs `model` (its parameter names key the optimizer
    state) and `extra_like` (the extras as the trainer saves them: what to load into)."""
    if is_sharded_checkpoint(checkpoint):
        if model is None:
            raise RlhfkitError(
                f"{checkpoint} was written under torchrun: this trainer cannot read it"
            )
        return load_sharded_checkpoint(
            checkpoint, model=model, optimizer=optimizer, extra_like=extra_like or {}, ranks=ranks
        )
    optimizer_state = load_torch_state(checkpoint / "optimizer.pt")
    if ranks.sharded:  # a single process's checkpoint, on several
        warn_if_resharded(checkpoint, ranks)
        load_full_optimizer_state(model, optimizer, optimizer_state)
    else:
        optimizer.load_state_dict(optimizer_state)
    state = load_torch_state(checkpoint / "state.pt")
    restore_rng_state(state["rng"])
    extra = shard_like(state["extra"], extra_like or {}) if ranks.sharded else state["extra"]
    return state["step"], extra
