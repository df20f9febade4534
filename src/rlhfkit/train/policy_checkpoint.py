"""A policy run's checkpoint (PPO, GRPO, RLOO, RAFT, online DPO), written and put back.

One process writes:

    model/, critic/            the policy (LoRA: its adapters) and PPO's critic, Hugging Face
    optimizer.pt, critic_optimizer.pt
    state.pt                   the step, every RNG state, the sampling generator's state
    trainer_state.pt           the trainer's own state (PPO's KL coefficient, online DPO's
                               labeller and pool) as plain data

Under torchrun rank 0 writes model/, critic/ (from the gathered weights) and trainer_state.pt,
which every rank holds alike; every rank writes its shard of the optimizer states and its RNG
state with `torch.distributed.checkpoint`, the sampling generator's state (the same on every
rank) with them (`runtime.distributed_checkpoint`). Either kind resumes on any number of
processes: bitwise on the same number, with a one-line warning on another.
"""

from pathlib import Path
from typing import Any

import torch

from rlhfkit.models.lora import save_pretrained
from rlhfkit.runtime.checkpoint import (
    capture_rng_state,
    load_torch_state,
    restore_rng_state,
    save_checkpoint,
    save_torch_state,
)
from rlhfkit.runtime.distributed import Ranks, full_state_dict
from rlhfkit.runtime.distributed_checkpoint import (
    is_sharded_checkpoint,
    load_full_optimizer_state,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    warn_if_resharded,
)
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.train.checkpointing import MODEL_SUBDIR, refuse_non_finite, submodule_weights
from rlhfkit.train.optim import all_finite, all_finite_tensors
from rlhfkit.train.policy_models import CRITIC_SUBDIR, PolicyModels

TRAINER_STATE_FILE = "trainer_state.pt"
CRITIC_OPTIMIZER = "critic_optimizer"

TrainerState = dict[str, Any]
"""A trainer's own state in a checkpoint: tensors, numbers, strings, lists and dicts only."""


def save_policy_checkpoint(
    run_dir: RunDir,
    step: int,
    *,
    models: PolicyModels,
    generator: torch.Generator,
    trainer_state: TrainerState,
    keep_last: int,
    ranks: Ranks,
) -> Path:
    """Atomically write checkpoint `step`; under torchrun every rank must call it."""
    if ranks.sharded:
        return _save_sharded(run_dir, step, models, generator, trainer_state, keep_last, ranks)
    trained = [models.policy, *([models.critic] if models.critic is not None else [])]
    refuse_non_finite(lambda: all(map(all_finite, trained)), step, run_dir.checkpoints, ranks)

    def write(tmp: Path) -> None:
        save_pretrained(models.policy, tmp / MODEL_SUBDIR)
        models.tokenizer.save_pretrained(tmp / MODEL_SUBDIR)
        save_torch_state(tmp / "optimizer.pt", models.optimizer.state_dict())
        if models.critic is not None:
            models.critic.save_pretrained(tmp / CRITIC_SUBDIR)
            save_torch_state(tmp / f"{CRITIC_OPTIMIZER}.pt", models.critic_optimizer.state_dict())
        save_torch_state(
            tmp / "state.pt",
            {"step": step, "rng": capture_rng_state(), "generator": generator.get_state()},
        )
        save_torch_state(tmp / TRAINER_STATE_FILE, trainer_state)

    return save_checkpoint(run_dir.checkpoints, step, write=write, keep_last=keep_last)


def _save_sharded(run_dir, step, models, generator, trainer_state, keep_last, ranks) -> Path:
    # every rank takes part in the gathers; rank 0 gets the weights
    weights = full_state_dict(models.policy, ranks)
    critic = models.critic
    critic_weights = full_state_dict(critic, ranks) if critic is not None else None
    refuse_non_finite(
        lambda: all_finite_tensors([*weights.values(), *(critic_weights or {}).values()]),
        step,
        run_dir.checkpoints,
        ranks,
    )

    def write_main(tmp: Path) -> None:
        save_pretrained(models.policy, tmp / MODEL_SUBDIR, state_dict=weights)
        models.tokenizer.save_pretrained(tmp / MODEL_SUBDIR)
        if critic is not None:  # the classifier inside, as one process saves it
            save_pretrained(
                critic.model,
                tmp / CRITIC_SUBDIR,
                state_dict=submodule_weights(critic_weights, "model"),
            )
        save_torch_state(tmp / TRAINER_STATE_FILE, trainer_state)

    return save_sharded_checkpoint(
        run_dir.checkpoints,
        step,
        model=models.policy,
        optimizer=models.optimizer,
        extra={"generator": generator.get_state()},
        write_main=write_main,
        keep_last=keep_last,
        ranks=ranks,
        also=_critic(models),
    )


def restore_policy_checkpoint(
    checkpoint: Path, *, models: PolicyModels, generator: torch.Generator, ranks: Ranks
) -> tuple[int, TrainerState]:
    """Put the optimizer, RNG and generator states of `checkpoint` back (the models were loaded
    from it by `build_policy_models`); returns the step and the trainer's own state."""
    if is_sharded_checkpoint(checkpoint):
        step, extra = load_sharded_checkpoint(
            checkpoint,
            model=models.policy,
            optimizer=models.optimizer,
            extra_like={"generator": generator.get_state()},
            ranks=ranks,
            also=_critic(models),
        )
        generator.set_state(extra["generator"])
        return step, load_torch_state(checkpoint / TRAINER_STATE_FILE)
    if ranks.sharded:  # a single process's checkpoint, on several
        warn_if_resharded(checkpoint, ranks)
    trained = {"optimizer": (models.policy, models.optimizer), **_critic(models)}
    for name, (model, optimizer) in trained.items():
        saved = load_torch_state(checkpoint / f"{name}.pt")
        if ranks.sharded:
            load_full_optimizer_state(model, optimizer, saved)
        else:
            optimizer.load_state_dict(saved)
    state = load_torch_state(checkpoint / "state.pt")
    restore_rng_state(state["rng"])
    generator.set_state(state["generator"])
    return state["step"], load_torch_state(checkpoint / TRAINER_STATE_FILE)


def _critic(models: PolicyModels) -> dict:
    if models.critic is None:
        return {}
    return {CRITIC_OPTIMIZER: (models.critic, models.critic_optimizer)}
