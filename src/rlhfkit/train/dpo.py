"""Direct preference optimisation: DPO, conservative DPO, IPO, and Plackett-Luce on rankings.

The policy is trained on labelled comparisons directly, with no reward model and no sampling
(Rafailov et al. 2023; seeds 001, 003): the implicit reward beta * log(pi / pi_ref) of sequence
log-probs (summed over response tokens) is fitted to the labels by
    sigmoid:        -log sigmoid(beta h), h = log-ratio of the chosen minus that of the rejected;
                    label smoothing eps gives conservative DPO
    ipo:            (h - 1/(2 beta))^2 (Azar et al. 2023)
    plackett_luce:  -log P(ranking) of a whole K-way ranking (DPO appendix A.3); K = 2 is sigmoid.
Pairs are rankings of two. With sigmoid or ipo a K-way ranking trains as its C(K,2) pairs, each
weighted 1/C(K,2) (InstructGPT), so the two ways of using the same rankings can be compared;
every run reports accuracy and margins over the same pairs.
The reference is a frozen copy of the starting model, the base weights when training LoRA
adapters, or (`precompute_ref`) a table of log-probs computed once, with no model kept.
Departures: pairs' `margin` column is ignored, and ties in a ranking form no pair (pairwise) or
follow Breslow's rule (Plackett-Luce, see objectives.preference.plackett_luce_nll).
Under torchrun each rank runs its share of every micro-batch's groups against a replicated
reference (or one sharded like the policy, `frozen_models=sharded`); the loss divides by the
global group count, so the summed gradient is that of the one global batch
(`runtime.distributed`).
"""

import logging
import time
from dataclasses import dataclass

import torch

from rlhfkit.data.ranking_batch import (
    RankedGroup,
    first_groups_within,
    group_labels,
    load_ranked_groups,
)
from rlhfkit.data.tokenize import Truncation
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import disable_dropout, enable_checkpointing, load_tokenizer
from rlhfkit.models.pretrained import check_learning_rates
from rlhfkit.objectives.preference import DPOLoss
from rlhfkit.runtime.config_bounds import validate
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.distributed import (
    FrozenModels,
    current_ranks,
    device_mesh,
    full_state_dict,
    one_reduction,
    rank_shares,
    shard_model,
)
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.runtime.seeding import seed_everything
from rlhfkit.train.checkpointing import (
    final_policy,
    load_configured_policy,
    load_frozen_reference,
    restore_trainer_state,
    resume_point,
    save_final_model,
)
from rlhfkit.train.dpo_losses import (
    Reference,
    backward_groups,
    batch_loss_fn,
    evaluate_dpo,
    make_batch,
    reduced_gradients,
    zero_weight,
)
from rlhfkit.train.lora_settings import check_lora_settings
from rlhfkit.train.offline_config import OfflineConfig
from rlhfkit.train.offline_loop import OfflineLoop, OfflineResult
from rlhfkit.train.optim import adamw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPOConfig(OfflineConfig):
    """The settings every offline trainer shares are `OfflineConfig`'s; these give DPO's values
    and meanings, then its own."""

    model: str = ""
    """Causal-LM directory to start from (usually the SFT model); also the frozen reference."""
    train_data: str = ""
    """Preference pairs (`prompt`, `chosen`, `rejected`) or rankings (`prompt`, `responses`,
    optional `ranks`)."""
    eval_data: str = ""
    """Held-out pairs or rankings for the eval loss, accuracy and margin; empty = none."""
    max_length: int = 256
    """Tokens per prompt + response after tokenisation."""
    batch_size: int = 16
    """Prompts (pairs or rankings) per micro-batch: all responses of a prompt share one."""
    max_steps: int = 150
    lr: float = 1e-4
    warmup_steps: int = 10
    eval_every: int = 50
    """Held-out metrics every this many steps and after the last (0 = only at the end)."""
    save_every: int = 50
    lora_r: int = 0
    """LoRA rank (0 = full fine-tuning). With LoRA the reference is the base with adapters off."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input (peft's lora_dropout). `disable_dropout` turns it off with
    the rest of the policy's dropout, so it is refused with it: set disable_dropout=false to train
    with it."""
    max_labels: int = 0
    """Labelling budget: train on the leading rows of train_data holding at most this many pairwise
    comparisons (C(K,2) per ranking of K, 1 per pair), to compare with online runs; 0 = all rows."""
    loss: DPOLoss = DPOLoss.SIGMOID
    """sigmoid (DPO), ipo, or plackett_luce (whole rankings; with the others a ranking is its C(K,2)
    pairs)."""
    beta: float = 0.5
    """Scale of the implicit reward beta * log(pi / pi_ref): larger keeps the policy nearer the
    reference. 0.5, not the paper's 0.1: on the demo's rankings, at 0.1 both log-likelihoods fall
    and the policy's samples lose to SFT's (the DPO beta sweep)."""
    label_smoothing: float = 0.0
    """Assumed share of flipped labels, in [0, 0.5): conservative DPO (loss=sigmoid only)."""
    nll_weight: float = 0.0
    """Add this multiple of the top-ranked response's per-token NLL to the loss (RPO, Pang et al.
    2024; `rpo_alpha` in TRL): it pulls the greedy answer towards the best labelled ones."""
    precompute_ref: bool = False
    """Compute every reference log-prob once before training, and keep no reference model in
    memory."""
    frozen_models: FrozenModels = FrozenModels.REPLICATED
    """Under torchrun, the frozen reference: replicated (whole on every rank) or sharded like the
    policy (1/N of its weights on each rank between its passes, gathered whole around them). In
    a single process this changes nothing."""
    disable_dropout: bool = True
    """Dropout off in the policy, as the loss assumes: its log-ratios compare it with the
    reference's log-probs, taken without dropout. false = the model's own rates."""


@dataclass
class DPOResult(OfflineResult):
    labels: int = 0  # pairwise comparisons in the training rows used (C(K,2) per ranking)


def check_loss_settings(loss: DPOLoss, beta: float, label_smoothing: float) -> None:
    """Reject loss settings the losses do not define, saying what to change."""
    if beta <= 0:
        raise ConfigError(f"beta={beta}: the implicit reward's scale must be > 0 (e.g. beta=0.1)")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(
            f"label_smoothing={label_smoothing}: must be in [0, 0.5) (0.5 would make labels noise)"
        )
    if label_smoothing and DPOLoss(loss) is not DPOLoss.SIGMOID:
        raise ConfigError(
            f"label_smoothing={label_smoothing} is defined for loss=sigmoid only (conservative "
            f"DPO), not loss={DPOLoss(loss).value}: set label_smoothing=0 or loss=sigmoid"
        )


def check_config(cfg: DPOConfig) -> None:
    """Reject settings the losses do not define, saying what to change."""
    check_loss_settings(cfg.loss, cfg.beta, cfg.label_smoothing)
    if cfg.max_labels < 0:
        raise ConfigError(
            f"max_labels={cfg.max_labels}: must be >= 0 (0 = every row of train_data)"
        )
    for name in ("batch_size", "grad_accum"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)}: must be at least 1")
    if cfg.lora_r < 0:
        raise ConfigError(f"lora_r={cfg.lora_r}: must be >= 0 (0 = full fine-tuning)")
    check_lora_settings(cfg)


def load_preference_groups(
    path: str, tokenizer, *, max_length: int, truncation: Truncation
) -> list[RankedGroup]:
    """Pairs or rankings as ranked groups (a pair is a ranking of two), dropped rows reported."""
    groups, report = load_ranked_groups(
        path, tokenizer, max_length=max_length, truncation=truncation, needed_by="DPO"
    )
    log.info(f"preference data {path}: {report.summary()}")
    return groups


def build_reference(
    cfg: DPOConfig,
    policy,
    splits: dict[str, list[RankedGroup]],
    *,
    pad_token_id: int,
    device: torch.device,
    mesh,
) -> Reference:
    """The reference of `policy`: its base with the adapters off (LoRA), else a frozen copy of
    `cfg.model` (sharded over `mesh` with `frozen_models=sharded`); with `precompute_ref`,
    tables of every response's log-prob and no model."""
    if cfg.lora_r > 0:
        reference = Reference(policy, adapters_off=True)
    else:
        frozen = load_frozen_reference(
            cfg.model,
            device=device,
            precision=cfg.precision,
            frozen_models=cfg.frozen_models,
            mesh=mesh,
        )
        reference = Reference(frozen, adapters_off=False)
    if cfg.precompute_ref:
        reference.tabulate(
            splits,
            pad_token_id=pad_token_id,
            batch_size=cfg.batch_size,
            device=device,
            precision=cfg.precision,
        )
    return reference


def train_dpo(cfg: DPOConfig, run: RunDir, *, resume: bool = False) -> DPOResult:
    """Optimise `cfg.model` on preferences; the final model goes to `run.final`."""
    check_config(cfg)
    validate(cfg)  # as the CLI does, for configs built in Python
    check_learning_rates(cfg.model, {"lr": (cfg.lr, cfg.lora_r)}, force=cfg.force_lr)
    ranks = current_ranks()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    # step 1. tokenizer and data: each pair or ranking is one group whose responses share a batch
    tokenizer = load_tokenizer(cfg.model)
    pad = tokenizer.pad_token_id
    data = dict(max_length=cfg.max_length, truncation=cfg.truncation)
    train = first_groups_within(
        load_preference_groups(cfg.train_data, tokenizer, **data), cfg.max_labels
    )
    if cfg.max_labels:
        if not train:
            raise ConfigError(
                f"max_labels={cfg.max_labels} buys no row of {cfg.train_data}: its first row alone "
                "holds more comparisons"
            )
        log.info(
            f"labelling budget {cfg.max_labels}: {len(train)} rows, "
            f"{group_labels(train)} comparisons"
        )
    held_out = load_preference_groups(cfg.eval_data, tokenizer, **data) if cfg.eval_data else []

    # step 2. the policy, restored from the last checkpoint when resuming
    checkpoint = resume_point(run.checkpoints, ranks, total_steps=cfg.max_steps) if resume else None
    policy = load_configured_policy(cfg, checkpoint, device)
    if cfg.disable_dropout:
        disable_dropout(policy)
    if cfg.gradient_checkpointing:
        enable_checkpointing(policy)
    mesh = device_mesh(device, ranks) if ranks.sharded else None
    if mesh is not None:  # under torchrun: each rank keeps a shard (FSDP2)
        policy = shard_model(policy, mesh, cfg.precision)

    # step 3. the reference: the base under LoRA, a frozen copy (whole on every rank, or sharded
    # with frozen_models=sharded), or a table computed now
    reference = build_reference(
        cfg, policy, {"train": train, "eval": held_out}, pad_token_id=pad, device=device, mesh=mesh
    )

    # step 4. optimizer over the trainable weights, restored with every RNG when resuming
    optimizer = adamw(policy.parameters(), cfg.lr, cfg.weight_decay)
    start_step = (
        restore_trainer_state(checkpoint, optimizer, model=policy, ranks=ranks)[0]
        if checkpoint
        else 0
    )
    loss_fn = batch_loss_fn(
        cfg.loss, beta=cfg.beta, label_smoothing=cfg.label_smoothing, nll_weight=cfg.nll_weight
    )
    result = DPOResult(model_dir=run.final, labels=group_labels(train))
    loop = OfflineLoop(
        cfg,
        run,
        ranks,
        model=policy,
        tokenizer=tokenizer,
        optimizer=optimizer,
        stage="dpo",
        label="dpo",
        start_step=start_step,
        rows=[*train, *held_out],
    )

    with loop:
        for step in loop.steps():
            started = time.perf_counter()
            # step 5. this step's groups, fixed by (seed, position) alone
            micro_rows = loop.micro_rows(step, len(train))
            num_groups = sum(len(rows) for rows in micro_rows)
            shares = rank_shares(micro_rows, ranks)  # this rank's groups of each micro-batch
            batches = [make_batch([train[i] for i in s.rows], pad, device) for s in shares]

            # step 6. sequence log-probs of every response, the reference's first (a sharded one is
            # whole only around them); loss summed over groups / all groups of the step (a rank
            # without groups runs one at zero weight, for the collectives), gradients reduced once
            stand_in = shares[0].stand_in
            with one_reduction(policy):
                with reference.in_use():
                    ref_logprobs = [
                        reference.logprobs(batch, "train", share.rows, cfg.precision)
                        for batch, share in zip(batches, shares)
                    ]
                step_grads = backward_groups(
                    policy,
                    zip(batches, ref_logprobs),
                    zero_weight(loss_fn) if stand_in else loss_fn,
                    num_groups=num_groups,
                    beta=cfg.beta,
                    precision=cfg.precision,
                )
            loss_value, tokens, step_metrics = reduced_gradients(step_grads, stand_in, ranks)

            # step 7. clip, schedule, update
            lr, grad_norm = loop.update(step, loss_value)

            # step 8. log, evaluate, checkpoint
            done = step + 1
            row = {
                "loss": loss_value,
                "lr": lr,
                "grad_norm": grad_norm,
                **step_metrics,
                "tokens_per_s": tokens / (time.perf_counter() - started),
            }
            if held_out and loop.eval_due(done):
                evaluation = evaluate_dpo(
                    policy,
                    reference,
                    held_out,
                    loss_fn,
                    beta=cfg.beta,
                    pad_token_id=pad,
                    batch_size=cfg.batch_size,
                    device=device,
                    precision=cfg.precision,
                )
                row.update({f"eval_{key}": value for key, value in evaluation.items()})
                result.evals.append((done, evaluation))
            loop.end_step(done, row, result, tokens=tokens)

    # step 9. the final model, loadable with AutoModelForCausalLM.from_pretrained (LoRA merged);
    # under torchrun the shards are gathered to rank 0, which writes it
    weights = full_state_dict(policy, ranks)
    if ranks.is_main:
        model, weights = final_policy(policy, weights, cfg)
        save_final_model(model, tokenizer, run.final, run.checkpoints, state_dict=weights)
    return result
