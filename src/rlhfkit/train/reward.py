"""Reward-model training (stage 2 of the seeds' pipeline).

Pairwise objective: Bradley-Terry `-log sigmoid(r_w - r_l - margin)` on preference pairs, or on
K-way rankings with all C(K,2) pairs of a prompt in one batch, each weighted 1/C(K,2)
(InstructGPT). Optional: an imitation term (LM loss on the preferred response, seed 002),
reward centring, and N heads on one backbone trained on bootstrap resamples: an ensemble whose
std is the uncertainty later stages can penalise (seed 000).
Process objective: a process reward model trained on step labels (one score per step).
Under torchrun each rank scores its share of every micro-batch's prompts; the losses divide by
counts over the global batch, which every rank reads from the seeded row order without
communication, so the summed gradient is that of the one global batch (`runtime.distributed`).
"""

import logging
import time
from dataclasses import dataclass, field, fields
from enum import Enum

import torch

from rlhfkit.data.detect import detect_format
from rlhfkit.data.formats import Format
from rlhfkit.data.loading import load_examples
from rlhfkit.data.ranking_batch import RankedGroup, load_ranked_groups
from rlhfkit.data.steps import EncodedSteps, collate_steps, tokenize_steps
from rlhfkit.data.tokenize import Truncation, require_rows
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.eval.reward_model import pair_accuracy, score_groups
from rlhfkit.models.fused_layers import use_fastest_kernels
from rlhfkit.models.loading import enable_checkpointing, load_tokenizer
from rlhfkit.models.lora import add_backbone_lora, load_gathered, trainable_state
from rlhfkit.models.pretrained import check_learning_rates
from rlhfkit.models.reward import RewardModel, mark_objective
from rlhfkit.runtime.config_bounds import validate
from rlhfkit.runtime.device import (
    autocast,
    move_batch,
    resolve_device,
)
from rlhfkit.runtime.distributed import (
    current_ranks,
    device_mesh,
    full_state_dict,
    gather_parameters,
    gradient_passes,
    rank_shares,
    reduce_sums,
    shard_model,
)
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.runtime.seeding import seed_everything
from rlhfkit.train.checkpointing import (
    MODEL_SUBDIR,
    restore_trainer_state,
    resume_point,
    save_final_model,
    submodule_weights,
)
from rlhfkit.train.lora_settings import check_lora_settings
from rlhfkit.train.offline_config import OfflineConfig
from rlhfkit.train.offline_loop import OfflineLoop, OfflineResult
from rlhfkit.train.optim import adamw
from rlhfkit.train.reward_losses import (
    pair_denominators,
    pairwise_loss,
    process_loss,
    process_step_logits,
)

log = logging.getLogger(__name__)


class RewardObjective(str, Enum):
    PAIRWISE = "pairwise"
    PROCESS = "process"


@dataclass(frozen=True)
class RewardConfig(OfflineConfig):
    """The settings every offline trainer shares are `OfflineConfig`'s; these give the reward
    model's values and meanings, then its own. `seed` also seeds the heads' initialisation and
    the bootstrap of an ensemble."""

    model: str = ""
    """Starting point: an SFT causal-LM directory (a head is added) or a saved reward model."""
    train_data: str = ""
    """Rankings (`prompt`, `responses`, optional `ranks`), pairs (`prompt`, `chosen`, `rejected`,
    optional `margin`), or, for the process objective, step labels (`prompt`, `completions`,
    `labels`)."""
    eval_data: str = ""
    """Held-out data of the same kinds; empty = none."""
    max_length: int = 256
    """Tokens of each prompt + response sequence (the prompt counts too); `truncation` says
    what a longer one loses."""
    batch_size: int = 16
    """Prompts (rankings, pairs or solutions) per micro-batch: all responses of a prompt share
    one."""
    max_steps: int = 150
    lr: float = 1e-3
    """Peak learning rate (AdamW); 1e-3 is what the demo's reward model trains with."""
    warmup_steps: int = 10
    eval_every: int = 50
    """Held-out accuracy every this many steps and after the last (0 = only at the end)."""
    save_every: int = 50
    lora_r: int = 0
    """LoRA rank on the backbone's linear layers (0 = full fine-tuning): the adapters and the
    score head train; the saved model has the adapters merged (a plain sequence classifier)."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input (peft's lora_dropout)."""
    objective: RewardObjective = RewardObjective.PAIRWISE
    """pairwise: Bradley-Terry on pairs/rankings; process: per-step labels (PRM)."""
    num_heads: int = 1
    """Reward heads: more than one makes an ensemble (mean = reward, std = uncertainty);
    pairwise objective only."""
    imitation_coef: float = 0.0
    """Weight of the LM loss on each prompt's preferred response (0 = off)."""
    centering_coef: float = 0.0
    """Weight of the mean squared reward, pulling rewards towards zero (0 = off)."""
    step_separator: str = " "
    """Text between the prompt and the steps, and between steps (process objective only)."""


@dataclass
class RewardResult(OfflineResult):
    eval_accuracy: list[tuple[int, float]] = field(default_factory=list)  # evals' accuracy


def check_reward_config(cfg: RewardConfig) -> None:
    """Each objective refuses the other's settings, which would silently do nothing there: the
    process objective has no preferred response to imitate, no pairwise rewards to centre, no
    bootstrap to make its heads an ensemble (their logits would only be averaged), and keeps
    the steps that fit; the pairwise objective has no steps to separate. LoRA's settings as
    every trainer checks them (`check_lora_settings`)."""
    check_lora_settings(cfg)
    if cfg.objective != RewardObjective.PROCESS:
        default = next(f.default for f in fields(cfg) if f.name == "step_separator")
        if cfg.step_separator != default:
            raise ConfigError(
                f"step_separator={cfg.step_separator!r} separates the steps of objective=process"
                f", not of objective={RewardObjective(cfg.objective).value}: leave it unset"
            )
        return
    for name in ("imitation_coef", "centering_coef"):
        if getattr(cfg, name):
            raise ConfigError(
                f"{name}={getattr(cfg, name)} is a term of the pairwise objective, not of the "
                "process objective: set it to 0"
            )
    if cfg.num_heads > 1:
        raise ConfigError(
            f"num_heads={cfg.num_heads} with objective=process: the process objective trains "
            "no ensemble (no bootstrap, one loss on the heads' mean logit); set num_heads=1"
        )
    if Truncation(cfg.truncation) != Truncation.KEEP_START:
        raise ConfigError(
            f"truncation={Truncation(cfg.truncation).value}: the process objective keeps the "
            "steps that fit in max_length (keep_start); set truncation=keep_start"
        )


def check_trains_on_rankings(cfg: RewardConfig, job: str) -> None:
    """Refuse objective=process in a job that trains the reward model on the rankings it
    collects (`job`: "the pipeline", ...): they hold no step labels, and the stage would refuse
    them when it read them, after the stages before it had run."""
    if cfg.objective == RewardObjective.PROCESS:
        raise ConfigError(
            f"rm.objective=process: {job} trains the reward model on the rankings it collects, "
            "which hold no step labels; leave rm.objective out, or run `rlhfkit rm "
            "objective=process` alone on step-labelled data"
        )


def load_reward_data(cfg: RewardConfig, tokenizer, path: str, role: str) -> list:
    """Groups (pairwise objective) or encoded step-labelled solutions (process objective) of
    the `role` ("train", "eval") file."""
    if cfg.objective == RewardObjective.PROCESS:
        fmt = detect_format(path)
        if fmt != Format.STEPS:
            raise RlhfkitError(
                f"{path}: the process objective needs step labels (prompt, completions, labels)"
            )
        items, report = tokenize_steps(
            tokenizer,
            load_examples(path, fmt),
            max_length=cfg.max_length,
            separator=cfg.step_separator,
            path=path,
        )
        require_rows(items, path, report, "train on" if role == "train" else "evaluate on")
    else:
        items, report = load_ranked_groups(
            path,
            tokenizer,
            max_length=cfg.max_length,
            truncation=cfg.truncation,
            needed_by="a reward model",
        )
    log.info(f"{role} data {path}: {report.summary()}")
    return items


@torch.no_grad()
def evaluate_reward_model(
    model: RewardModel, items: list, cfg: RewardConfig, pad_token_id: int
) -> float:
    """Held-out pair accuracy (pairwise) or step-label accuracy (process)."""
    if cfg.objective is RewardObjective.PAIRWISE:
        return pair_accuracy(score_groups(model, items, pad_token_id, cfg.batch_size), items)
    model.eval()
    right = total = 0
    device = next(model.parameters()).device
    for start in range(0, len(items), cfg.batch_size):
        batch = move_batch(
            collate_steps(items[start : start + cfg.batch_size], pad_token_id), device
        )
        correct = ((process_step_logits(model, batch) > 0).float() == batch["step_labels"]) & batch[
            "step_mask"
        ]
        right, total = right + int(correct.sum()), total + int(batch["step_mask"].sum())
    model.train()
    return right / max(1, total)


# statistics that are terms of the step's loss: each micro-batch's is its share of the total
LOSS_TERMS = ("bt_loss", "imitation_loss")
# raw sums over a micro-batch's mean-over-heads rewards (`reward_stats`): added up over the
# step's micro-batches and ranks, then turned into the step's reward mean and std; with several
# heads also the sum of each response's std over heads, turned into `reward_head_std`
REWARD_SUMS = ("reward_sum", "reward_sq_sum", "reward_count")
HEAD_STD_SUM = "head_std_sum"
# each accuracy's raw (right, counted) sums: added up over the step's micro-batches and ranks,
# then turned into the share of all the step's pairs or steps
ACCURACY_SUMS = {
    "train_pair_accuracy": ("pairs_right", "pairs_counted"),
    "step_accuracy": ("steps_right", "steps_counted"),
}
SUMMED = (
    LOSS_TERMS
    + REWARD_SUMS
    + (HEAD_STD_SUM,)
    + tuple(key for keys in ACCURACY_SUMS.values() for key in keys)
)


def whole_batch_reward_stats(stats: dict[str, float]) -> None:
    """Replace the per-micro-batch reward mean and std (and the heads' spread) by the whole
    step's, from the summed raw sums: the same numbers whatever the number of micro-batches or
    ranks."""
    if not all(key in stats for key in REWARD_SUMS):
        return
    total, squares, count = (stats.pop(key) for key in REWARD_SUMS)
    head_std_sum = stats.pop(HEAD_STD_SUM, None)
    if count < 1:
        return
    mean = total / count
    stats["reward_mean"] = mean
    if head_std_sum is not None:
        stats["reward_head_std"] = head_std_sum / count
    if count > 1:  # unbiased, as torch.std
        stats["reward_std"] = max(0.0, (squares - count * mean * mean) / (count - 1)) ** 0.5


def whole_batch_accuracies(stats: dict[str, float]) -> None:
    """Replace each per-micro-batch accuracy by the share of the whole step's pairs (or steps)
    ordered right, from the summed counts: micro-batches with more pairs weigh more."""
    for name, (right_key, counted_key) in ACCURACY_SUMS.items():
        if right_key in stats and counted_key in stats:
            right, counted = stats.pop(right_key), stats.pop(counted_key)
            if counted > 0:
                stats[name] = right / counted


def _batch_loss(
    model, items, row_ids, cfg: RewardConfig, pad_token_id: int, device: torch.device, counts
):
    """The loss of one micro-batch over the step's `counts` (`_step_counts`)."""
    with autocast(device, cfg.precision):
        if cfg.objective == RewardObjective.PROCESS:
            return process_loss(model, items, pad_token_id=pad_token_id, denominator=counts)
        return pairwise_loss(
            model,
            items,
            row_ids,
            pad_token_id=pad_token_id,
            seed=cfg.seed,
            imitation_coef=cfg.imitation_coef,
            centering_coef=cfg.centering_coef,
            denominators=counts,
        )


def item_tokens(item: RankedGroup | EncodedSteps) -> int:
    """Tokens the model reads for one training item: each response of a ranked group (its
    prompt included), or a step-labelled solution."""
    if isinstance(item, EncodedSteps):
        return len(item.input_ids)
    return sum(len(response.input_ids) for response in item.responses)


def _step_counts(cfg: RewardConfig, items: list):
    """What the step's losses divide by, over all its micro-batches' items."""
    if cfg.objective == RewardObjective.PROCESS:
        return max(1, sum(len(item.labels) for item in items))
    return pair_denominators(items)


def checkpoint_extra(model: RewardModel, cfg: RewardConfig) -> dict:
    """What a checkpoint keeps beside the saved model: an untied imitation head, and under LoRA
    the adapters and score head (the saved model has them merged, which cannot be undone)."""
    extra = {"lm_head": model.lm_head.state_dict()} if model.lm_head else {}
    if cfg.lora_r > 0:
        extra["trainable"] = trainable_state(model)
    return extra


def lora_settings(cfg: RewardConfig) -> tuple:
    """`add_backbone_lora`'s settings after the model: rank, alpha, dropout, target layers."""
    return cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules


def saved_classifier(
    model: RewardModel, weights: dict, cfg: RewardConfig
) -> tuple[torch.nn.Module, dict | None]:
    """Under torchrun, on rank 0: the sequence classifier to write (a checkpoint's model/ or
    final/) from the weights gathered from the shards, and the weights it writes (None: its
    own). Under LoRA the sharded adapters cannot be merged in place: a fresh unsharded copy of
    the starting model takes the gathered adapters and head, and saves them merged."""
    classifier = submodule_weights(weights, "model")
    if cfg.lora_r == 0:
        return model.model, classifier
    # the copy's new head and adapters are overwritten; drawing them must not move rank 0's RNG
    with torch.random.fork_rng(devices=[]):
        copy = RewardModel.from_pretrained(cfg.model, num_heads=cfg.num_heads)
        add_backbone_lora(copy, *lora_settings(cfg))
    mark_objective(copy, RewardObjective(cfg.objective).value)
    load_gathered(copy.model, classifier)
    return copy, None


def train_reward_model(cfg: RewardConfig, run: RunDir, *, resume: bool = False) -> RewardResult:
    """Train a reward model; the final model (a Hugging Face sequence classifier) goes to
    `run.final`."""
    validate(cfg)  # as the CLI does, for configs built in Python
    check_reward_config(cfg)
    check_learning_rates(cfg.model, {"lr": (cfg.lr, cfg.lora_r)}, force=cfg.force_lr)
    ranks = current_ranks()
    seed_everything(cfg.seed)  # the same new head (and LoRA adapters) on every rank
    # step 1. tokenizer and data: whole rankings, so every prompt's pairs share one batch
    tokenizer = load_tokenizer(cfg.model)
    train = load_reward_data(cfg, tokenizer, cfg.train_data, "train")
    held_out = load_reward_data(cfg, tokenizer, cfg.eval_data, "eval") if cfg.eval_data else []

    # step 2. backbone + head(s), optimizer, restored from the last checkpoint when resuming
    checkpoint = resume_point(run.checkpoints, ranks, total_steps=cfg.max_steps) if resume else None
    # (under LoRA the frozen backbone is always the start; the adapters and head come back
    # from the checkpoint's trainer state)
    model = RewardModel.from_pretrained(
        checkpoint / MODEL_SUBDIR if checkpoint and not cfg.lora_r else cfg.model,
        num_heads=cfg.num_heads,
        with_lm_head=cfg.imitation_coef > 0,
        lm_head_from=cfg.model,  # a checkpoint's LM head is restored below, from its state
    )
    # what it saves says how it scores: a process reward model is refused as an outcome reward
    mark_objective(model, RewardObjective(cfg.objective).value)
    if cfg.lora_r > 0:
        add_backbone_lora(model, *lora_settings(cfg))
    if cfg.gradient_checkpointing:
        enable_checkpointing(model.model)
    device = resolve_device(cfg.device)
    model.to(device).train()
    use_fastest_kernels(model.model, device, cfg.precision)
    if ranks.sharded:  # under torchrun: each rank keeps a shard (FSDP2)
        model = shard_model(model, device_mesh(device, ranks), cfg.precision)
    optimizer = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    start_step, extra = (
        restore_trainer_state(
            checkpoint,
            optimizer,
            model=model,
            extra_like=checkpoint_extra(model, cfg),
            ranks=ranks,
        )
        if checkpoint
        else (0, {})
    )
    if "lm_head" in extra:  # an untied imitation head is not part of the saved model
        model.lm_head.load_state_dict(extra["lm_head"])
    if "trainable" in extra:  # LoRA: the adapters and the head as they were
        model.load_state_dict(extra["trainable"], strict=False)
    result = RewardResult(model_dir=run.final)
    loop = OfflineLoop(
        cfg,
        run,
        ranks,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        stage="reward",
        label="reward model",
        start_step=start_step,
        checkpoint_extra=lambda done: checkpoint_extra(model, cfg),
        saved_model=lambda weights: saved_classifier(model, weights, cfg),
        rows=[*train, *held_out],
    )

    with loop:
        for step in loop.steps():
            started = time.perf_counter()
            # step 3. this step's micro-batches of prompts, fixed by (seed, position) alone
            micro_rows = loop.micro_rows(step, len(train))
            step_items = [train[i] for rows in micro_rows for i in rows]  # every rank's
            counts = _step_counts(cfg, step_items)
            # step 4. score every response of this rank's share once; loss over all pairs of each
            # prompt, over the whole step's counts, backpropagated micro-batch by micro-batch
            loss_value, stats, total = 0.0, {}, sum(len(rows) for rows in micro_rows)
            for share in gradient_passes(model, rank_shares(micro_rows, ranks)):
                loss, part = _batch_loss(
                    model,
                    [train[i] for i in share.rows],
                    share.rows,
                    cfg,
                    tokenizer.pad_token_id,
                    device,
                    counts,
                )
                if share.stand_in:  # a rank without prompts only takes part in the collectives
                    loss, part = loss * 0.0, {key: 0.0 for key in part}
                loss.backward()
                loss_value += loss.item()
                for key, value in part.items():
                    # loss terms are shares of the step's loss and add up; the rest are means
                    weight = 1.0 if key in SUMMED else len(share.rows) / total
                    stats[key] = stats.get(key, 0.0) + value * weight
            # every rank holds its share of the step's loss and statistics
            summed = reduce_sums({"loss": loss_value, **stats}, ranks)
            loss_value, stats = summed.pop("loss"), summed
            whole_batch_reward_stats(stats)
            whole_batch_accuracies(stats)
            # step 5. clip, schedule, update
            lr, grad_norm = loop.update(step, loss_value)
            # step 6. log, evaluate, checkpoint
            done = step + 1
            row = {
                "loss": loss_value,
                "lr": lr,
                "grad_norm": grad_norm,
                **stats,
                "steps_per_s": 1.0 / (time.perf_counter() - started),
            }
            if held_out and loop.eval_due(done):
                gather_parameters(model)  # the scoring runs the backbone and head by themselves
                row["eval_accuracy"] = evaluate_reward_model(
                    model, held_out, cfg, tokenizer.pad_token_id
                )
                result.eval_accuracy.append((done, row["eval_accuracy"]))
                result.evals.append((done, {"accuracy": row["eval_accuracy"]}))
            tokens = sum(map(item_tokens, step_items))
            loop.end_step(done, row, result, tokens=tokens)

    # step 7. the final reward model, loadable with AutoModelForSequenceClassification; under
    # torchrun the shards are gathered to rank 0, which writes the classifier's weights
    weights = full_state_dict(model, ranks)
    if not ranks.sharded:
        save_final_model(model, tokenizer, run.final, run.checkpoints)
    elif ranks.is_main:
        classifier, state_dict = saved_classifier(model, weights, cfg)
        save_final_model(classifier, tokenizer, run.final, run.checkpoints, state_dict=state_dict)
    return result
