"""Sample-and-select trainers: RAFT and online rejection-sampling fine-tuning (seed 003).

Both sample K responses per prompt from the current policy and score them, then:
    raft:       keep the best of each prompt's K (or the top fraction of the round), optionally
                only the correct ones, and fine-tune on the kept (prompt, response)
                pairs with the SFT loss for a few epochs (Dong et al. 2023, "RAFT: Reward rAnked
                FineTuning"); with keep_fraction = 1 and the threshold it keeps every correct
                sample (rejection-sampling fine-tuning, Yuan et al. 2023).
    online_rft: each step, loss = -GC_i * sum_t log pi(y_it) with GC_i = +1 for a correct and -1
                for an incorrect response, no group normalisation (the baseline that DeepSeekMath,
                Shao et al. 2024, compares GRPO against; seed 003).
Departures: no reference model or KL term (neither method has one); online RFT takes plain
gradient steps on its mini-batches without an importance ratio, so after the first mini-batch
of a step the samples are slightly off-policy. DeepSeekMath writes RFT's coefficient as the
indicator 1 / 0 (`wrong_coef=0`); seed 003's -1 pushes log pi of a wrong answer down without
bound, so when most samples are wrong the policy can collapse (GRPO's group baseline centres
the coefficients instead).
A response is correct when its reward is above reward_threshold; in a weighted sum holding
arith's verifier (`task`), when that term's own reward is, so that the other terms rank the
samples but cannot make a wrong answer right.
Under torchrun each rank samples and scores its own share of a round's prompts (all K samples of
a prompt on one rank); RAFT selects over every rank's rewards, and each rank runs its rows of
every global mini-batch (maybe none), with the denominators summed over the ranks, so each
update is the one-process update of the same round (`policy_run`).
"""

import logging
from dataclasses import dataclass, fields
from enum import Enum

import torch

from rlhfkit.errors import ConfigError
from rlhfkit.objectives.advantages import penalise_unfinished
from rlhfkit.objectives.aggregate import LossAggregation, aggregate_loss, loss_denominator
from rlhfkit.objectives.selection import Selection, binary_coefficients, rft_loss, select_responses
from rlhfkit.rewards.base import RewardScores
from rlhfkit.rewards.builder import parse_spec
from rlhfkit.rollout.engine import Rollout
from rlhfkit.runtime.config import refuse_unread_settings
from rlhfkit.tasks.base import HasFinalAnswer
from rlhfkit.tasks.registry import TASKS, TaskName
from rlhfkit.train.batching import batches_per_epoch, micro_batch_rows
from rlhfkit.train.phase_timer import PhaseTimer
from rlhfkit.train.policy_config import PolicyRunConfig, check_reference_model
from rlhfkit.train.policy_prompts import PromptShare
from rlhfkit.train.policy_run import PolicyRun
from rlhfkit.train.result import TrainResult

log = logging.getLogger(__name__)

VERIFIER = "task"  # the reward term of the task's own verifier


class RAFTMode(str, Enum):
    RAFT = "raft"
    """Keep the best samples and fine-tune on them with the SFT loss (Dong et al. 2023)."""
    ONLINE_RFT = "online_rft"
    """Weight the log-likelihood of every sample by +1 (correct) or -1 (incorrect)."""


@dataclass(frozen=True)
class RAFTConfig(PolicyRunConfig):
    """The shared settings (`PolicyRunConfig`) plus those of sampling and selecting."""

    mode: RAFTMode = RAFTMode.RAFT
    """raft: fine-tune on the best samples; online_rft: +1 / -1 weighted log-likelihood of every
    sample."""
    prompts_per_round: int = 32
    """Prompts per round (online_rft: per step)."""
    samples_per_prompt: int = 8
    """K: responses sampled per prompt."""
    selection: Selection = Selection.BEST_OF_K
    """raft: best_of_k (the best of each prompt's K) or top_fraction (the best keep_fraction of the
    round)."""
    keep_fraction: float = 0.25
    """raft with selection=top_fraction: share of the round's n responses kept,
    max(1, round(keep_fraction * n)) of them (rounded half to even)."""
    reward_threshold: float = 0.5
    """A response is correct when its reward is above this (arith's verifier gives 1 or 0); with
    a weighted sum holding the `task` term on a task whose reward is right or wrong (arith),
    when that term's own reward is (`verdict_scores`)."""
    require_correct: bool = True
    """raft: keep a selected response only when it is correct (above reward_threshold)."""
    epochs_per_round: int = 1
    """raft: SFT passes over the kept responses each round."""
    mini_batch_size: int = 64
    """Responses per optimizer step (the last mini-batch of a pass may be smaller)."""
    wrong_coef: float = -1.0
    """online_rft: coefficient of an incorrect response (-1 as in seed 003; 0 = DeepSeekMath's
    indicator)."""
    loss_aggregation: LossAggregation = LossAggregation.SEQUENCE_MEAN
    """online_rft: token_mean, sequence_mean or constant_length (as in GRPO)."""
    # the defaults PolicyRunConfig leaves to each trainer (see its fields; a step is a round)
    max_new_tokens: int = 48
    max_steps: int = 20
    lr: float = 1e-4
    eval_every: int = 5
    eval_max_new_tokens: int = 48
    save_every: int = 5


@dataclass
class RAFTResult(TrainResult):
    """RAFT's result: `TrainResult`'s fields."""


# the settings only one mode reads: a value other than the default under the other mode would
# silently do nothing
MODE_SETTINGS = {
    RAFTMode.RAFT: ("selection", "keep_fraction", "require_correct", "epochs_per_round"),
    RAFTMode.ONLINE_RFT: ("wrong_coef", "loss_aggregation"),
}


def check_raft_config(cfg: RAFTConfig) -> None:
    """Reject sizes that leave nothing to sample or to train on, and settings that the mode (or
    selection) would ignore, saying what to change."""
    for name in ("prompts_per_round", "samples_per_prompt", "epochs_per_round", "mini_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)}: must be at least 1")
    if not 0.0 < cfg.keep_fraction <= 1.0:
        raise ConfigError(
            f"keep_fraction={cfg.keep_fraction}: must be in (0, 1] (1 = keep every sample "
            "that passes reward_threshold)"
        )
    refuse_unread_settings(cfg, "mode", MODE_SETTINGS)
    if sums_a_verifier(cfg) and not 0.0 <= cfg.reward_threshold < 1.0:
        raise ConfigError(
            f"reward_threshold={cfg.reward_threshold:g}: with reward={cfg.reward}, a response is "
            f"correct when the task's verifier (the `task` term: 1 right, 0 wrong) scores it "
            "above reward_threshold, whatever the other terms add; it must lie in [0, 1)"
        )
    check_reference_model(cfg, loads_reference=False)  # no KL term in either mode
    defaults = {f.name: f.default for f in fields(RAFTConfig)}
    if (
        Selection(cfg.selection) is Selection.BEST_OF_K
        and cfg.keep_fraction != defaults["keep_fraction"]
    ):
        raise ConfigError(
            f"keep_fraction={cfg.keep_fraction} is read by selection=top_fraction only: set "
            "selection=top_fraction, or leave keep_fraction out"
        )


def rollout_rows(rollout: Rollout, rows: torch.Tensor | slice) -> dict:
    """The training tensors of some rows of a rollout (prompt + response ids, masks)."""
    return {
        "input_ids": rollout.input_ids[rows],
        "attention_mask": rollout.attention_mask[rows],
        "response_mask": rollout.response_mask[rows],
    }


def sft_minibatch_loss(
    cfg: RAFTConfig, run: PolicyRun, batch: dict, denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """SFT loss of kept rollout rows: the negative log-likelihood of the response tokens over
    `denominator` (the mini-batch's response tokens; None = these rows' own: a token mean).
    The left-padded prompt is context; the LM head runs on the response only."""
    mask = batch["response_mask"]
    logprobs = run.policy_logprobs(batch).logprobs
    total = mask.sum() if denominator is None else denominator
    return aggregate_loss(-logprobs, mask, LossAggregation.TOKEN_MEAN, total)


def local_kept_rows(kept: torch.Tensor, first: int, held: int, rows: list[int]) -> list[int]:
    """This rank's rows of a mini-batch of kept responses.

    Args:
        kept: (round_responses,) bool over every rank's responses, True = kept.
        first, held: this rank's responses are rows `first` .. `first + held - 1` of the round.
        rows: the mini-batch, as indices into the round's kept responses in round order.
    Returns:
        indices into this rank's kept responses (in its own row order), the mini-batch's order
        kept; all of `rows` in one process (first = 0, held = every response).
    """
    before = int(kept[:first].sum())  # kept responses on the ranks before this one
    here = int(kept[first : first + held].sum())
    return [row - before for row in rows if before <= row < before + here]


def _raft_update(
    cfg: RAFTConfig,
    run: PolicyRun,
    step: int,
    share: PromptShare,
    rollout: Rollout,
    rewards: torch.Tensor,
    correct: torch.Tensor,
) -> tuple[list[dict], dict]:
    """Keep the best responses of the round (over every rank's), then `epochs_per_round`
    epochs of SFT on them in mini-batches."""
    every = run.all_rows(rewards)  # the round's rewards, as one process holds them
    kept = select_responses(
        every,
        cfg.selection,
        cfg.samples_per_prompt,
        cfg.keep_fraction,
        run.all_rows(correct) if cfg.require_correct else None,
    )
    first, held = share.first * cfg.samples_per_prompt, rewards.shape[0]
    data = rollout_rows(rollout, kept[first : first + held].nonzero().squeeze(1))
    count = int(kept.sum())
    info = {
        "kept_count": count,
        "kept_reward_mean": every[kept].mean().item() if count else float("nan"),
        "kept_length": run.global_sum(data["response_mask"].sum().item()) / max(1, count),
    }
    # the order of each round's epochs is a pure function of (seed, round): nothing to checkpoint
    round_seed = cfg.seed * 1_000_003 + step
    stats = []
    for index in range(cfg.epochs_per_round * batches_per_epoch(count, cfg.mini_batch_size)):
        rows = micro_batch_rows(count, cfg.mini_batch_size, round_seed, index)
        rows = torch.tensor(local_kept_rows(kept, first, held, rows), dtype=torch.long)
        part = {k: v[rows.to(v.device)] for k, v in data.items()}
        tokens = run.global_sum(part["response_mask"].sum())  # over every rank's rows
        loss, _ = run.backward(
            part,
            cfg.micro_batch_size,
            lambda micro, d=tokens: (sft_minibatch_loss(cfg, run, micro, d), {}),
        )
        stats.append({"loss": loss, "grad_norm": run.optimizer_step(step, loss)})
    # a round where nothing passed the threshold takes no step: its loss is that of an empty set
    return stats or [{"loss": 0.0, "grad_norm": 0.0}], {**info, "optimizer_steps": len(stats)}


def _online_rft_update(
    cfg: RAFTConfig,
    run: PolicyRun,
    step: int,
    share: PromptShare,
    rollout: Rollout,
    rewards: torch.Tensor,
    correct: torch.Tensor,
) -> tuple[list[dict], dict]:
    """One pass of the +1 / -1 weighted log-likelihood over the round's responses in
    mini-batches (this rank's rows of each, maybe none; the denominator counts every rank's)."""
    coefficients = binary_coefficients(correct, cfg.wrong_coef)
    data = {**rollout_rows(rollout, slice(None)), "coefficients": coefficients}
    stats = []
    for start in range(0, share.total * cfg.samples_per_prompt, cfg.mini_batch_size):
        rows = share.rows(start, cfg.mini_batch_size, cfg.samples_per_prompt)
        part = {k: v[rows] for k, v in data.items()}
        denominator = run.global_sum(
            loss_denominator(part["response_mask"], cfg.loss_aggregation, cfg.max_new_tokens)
        )
        loss, _ = run.backward(
            part,
            cfg.micro_batch_size,
            lambda micro, d=denominator: (_rft_micro_loss(cfg, run, micro, d), {}),
        )
        stats.append({"loss": loss, "grad_norm": run.optimizer_step(step, loss)})
    return stats, {"optimizer_steps": len(stats)}


def _rft_micro_loss(cfg: RAFTConfig, run: PolicyRun, micro: dict, denominator) -> torch.Tensor:
    mask = micro["response_mask"]
    current = run.policy_logprobs(micro, temperature=cfg.temperature)
    return rft_loss(
        current.logprobs, micro["coefficients"], mask, cfg.loss_aggregation, denominator
    )


# The mode is picked once; each update turns a scored rollout into optimizer steps.
_UPDATES = {RAFTMode.RAFT: _raft_update, RAFTMode.ONLINE_RFT: _online_rft_update}


def sums_a_verifier(cfg: RAFTConfig) -> bool:
    """Whether the reward is a weighted sum holding the `task` term on a task whose reward is a
    verdict, 1 right and 0 wrong (one with a checkable final answer: arith). Correctness is then
    that term's (`verdict_scores`), not the sum's."""
    terms = [term for term, _ in parse_spec(cfg.reward or VERIFIER)]
    verdicts = cfg.task is not None and issubclass(TASKS[TaskName(cfg.task)], HasFinalAnswer)
    return verdicts and len(terms) > 1 and VERIFIER in terms


def verdict_scores(
    cfg: RAFTConfig, scored: RewardScores, rewards: torch.Tensor, finished: torch.Tensor
) -> torch.Tensor:
    """(batch,) what `reward_threshold` is compared with to call a response correct: with a sum
    holding the task's verifier (`sums_a_verifier`), that term's own reward less the missing-EOS
    penalty, so that the other terms (a length bonus, a reward model) cannot turn a wrong answer
    right; else `rewards`, the reward with the penalty."""
    if not sums_a_verifier(cfg):
        return rewards
    own = scored.components[VERIFIER].to(rewards.device)
    return penalise_unfinished(own, finished, cfg.missing_eos_penalty)


def _threshold_decides(cfg: RAFTConfig) -> bool:
    """Whether `reward_threshold` decides what is learnt: which responses raft keeps (with
    require_correct), or the sign of each response's weight in online RFT."""
    return RAFTMode(cfg.mode) is RAFTMode.ONLINE_RFT or cfg.require_correct


def nothing_correct(cfg: RAFTConfig, round_number: int, best: float) -> str:
    """The warning for a round where no response scored above the threshold: with a reward on
    another scale than a 0/1 verifier's (a reward model, a score), every round is such a round,
    and the run learns nothing (raft) or pushes every response down (online RFT)."""
    effect = (
        "online RFT weighs every response by wrong_coef"
        if RAFTMode(cfg.mode) is RAFTMode.ONLINE_RFT
        else "raft keeps none and takes no step"
    )
    fix = "" if RAFTMode(cfg.mode) is RAFTMode.ONLINE_RFT else ", or require_correct=false"
    if sums_a_verifier(cfg):  # the verifier's 0/1 decides: no scale to fix, every answer wrong
        return (
            f"round {round_number}: the task's verifier (the reward's `task` term) found no "
            f"response right, so {effect}"
        )
    return (
        f"round {round_number}: no response scored above reward_threshold={cfg.reward_threshold:g} "
        f"(the best: {best:.4g}), so {effect}; for a reward on another scale than 0/1, set "
        f"reward_threshold{fix}"
    )


def train_raft(cfg: RAFTConfig, run_dir, *, resume: bool = False) -> RAFTResult:
    """Optimise `cfg.model` by RAFT or online RFT; the final model goes to `run_dir.final`."""
    check_raft_config(cfg)
    mode = RAFTMode(cfg.mode)
    update = _UPDATES[mode]
    # step 1. policy, reward source, prompts (no reference: neither method has a KL term)
    run = PolicyRun(cfg, run_dir, resume=resume, needs_reference=False, stage=mode.value)
    result = RAFTResult(model_dir=run_dir.final)

    with run:
        run.begin(result)  # the starting policy's evaluation, the baseline of the run
        warned = False  # of a round where no response passed the threshold: once is enough
        for step in range(run.start_step, cfg.max_steps):
            timer = PhaseTimer()
            share = run.rank_prompts(step, cfg.prompts_per_round)  # one process: every prompt
            prompts = share.prompts

            # step 2. sample K responses per prompt from the current policy
            with timer("generation"):
                rollout, responses = run.sample(
                    share,
                    cfg.samples_per_prompt,
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature,
                )
                grouped_prompts = [p for p in prompts for _ in range(cfg.samples_per_prompt)]

            # step 3. score every response (this rank's), and judge which are correct
            with timer("reward"):
                scored = run.score(
                    grouped_prompts, responses, share.first_sample(cfg.samples_per_prompt)
                )
                rewards = penalise_unfinished(
                    scored.rewards.to(run.models.device), rollout.finished, cfg.missing_eos_penalty
                )
                judged = verdict_scores(cfg, scored, rewards, rollout.finished)
                correct = judged > cfg.reward_threshold

            # step 4. raft: select and fine-tune; online_rft: the +1 / -1 weighted step
            with timer("update"):
                stats, info = update(cfg, run, step, share, rollout, rewards, correct)

            # step 5. metrics, evaluation, checkpoint
            row = run.step_metrics(
                stats, rewards, grouped_prompts, responses, rollout, timer, scored
            )
            every = run.all_rows(judged)  # over every rank's
            row.update(info, correct_fraction=(every > cfg.reward_threshold).float().mean().item())
            if not warned and not (every > cfg.reward_threshold).any() and _threshold_decides(cfg):
                warned = True
                log.warning(nothing_correct(cfg, step + 1, every.max().item()))
            run.end_step(step + 1, row, result)

    # step 6. the final policy, loadable with AutoModelForCausalLM.from_pretrained
    run.save_final()
    return result
