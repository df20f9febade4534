"""GRPO: group-relative policy optimisation (DeepSeekMath, Shao et al. 2024; seeds 000, 001, 003).

Each step samples G responses per prompt, scores them, and replaces PPO's critic with the group:
    outcome:  A_i = (r_i - mean(r_group)) / (std(r_group) + eps)   on every token of response i
    process:  step rewards normalised over the group, A_t = sum of those of steps ending at or
              after t
The loss is PPO's clipped surrogate on those advantages plus beta * KL(pi || pi_ref) in the loss
(k3 estimator, not in the reward), over `mu` passes that reuse the rollout's log-probs.
Departures: the old log-probs are the sampling log-probs themselves (no extra forward pass;
exact because the rollout engine returns them), and Dr. GRPO's normalisation and loss
aggregation are options.
Under torchrun each rank samples, scores and normalises the groups of its own prompts (a group
never straddles two ranks) and runs its rows of every mini-batch; the loss denominators are
summed over the ranks, so each update is the one-process update of the same global batch
(`policy_run`).
"""

from dataclasses import dataclass, fields
from enum import Enum

import torch

from rlhfkit.errors import ConfigError
from rlhfkit.objectives.advantages import penalise_unfinished
from rlhfkit.objectives.aggregate import LossAggregation, aggregate_loss, loss_denominator
from rlhfkit.objectives.group_advantages import GroupNorm, group_advantages, process_advantages
from rlhfkit.objectives.kl import KLEstimator, kl_penalty, sequence_kl
from rlhfkit.objectives.masked import masked_mean
from rlhfkit.objectives.policy import RatioLevel, ppo_policy_loss
from rlhfkit.rewards.builder import parse_spec
from rlhfkit.rollout.engine import Rollout
from rlhfkit.rollout.text import char_to_token_index, response_token_ids, token_char_ends
from rlhfkit.runtime.config import written
from rlhfkit.train.micro_batches import Stats, mismatch_stats, row_stat, token_stat
from rlhfkit.train.phase_timer import PhaseTimer
from rlhfkit.train.policy_config import GroupRolloutConfig, check_reference_model
from rlhfkit.train.policy_run import PolicyRun
from rlhfkit.train.result import TrainResult


class Supervision(str, Enum):
    OUTCOME = "outcome"
    """One reward per response, spread over all its tokens."""
    PROCESS = "process"
    """Step rewards placed on the tokens where each step ends (process supervision)."""


@dataclass(frozen=True)
class GRPOConfig(GroupRolloutConfig):
    """The shared settings (`PolicyRunConfig`, `GroupRolloutConfig`) plus GRPO's own."""

    supervision: Supervision = Supervision.OUTCOME
    """outcome: one reward per response; process: step rewards placed on the tokens where steps
    end."""
    clip_eps: float = 0.2
    """Lower clip: the ratio may fall to 1 - clip_eps."""
    clip_eps_high: float = 0.2
    """Upper clip: the ratio may rise to 1 + clip_eps_high (DAPO's clip-higher when larger)."""
    beta: float = 0.04
    """KL coefficient in the loss; 0 loads no reference model."""
    kl_estimator: KLEstimator = KLEstimator.K3
    """KL estimator in the loss (k3 in DeepSeekMath)."""
    norm: GroupNorm = GroupNorm.GRPO
    """grpo: divide by the group's std; dr_grpo: only subtract the group mean."""
    std_unbiased: bool = True
    """Group std with Bessel's correction, n - 1 (True, as TRL, OpenRLHF and veRL: rewards [1, 0]
    get advantages +-0.707), or the population std, n (False: +-1.0)."""
    adv_eps: float = 1e-4
    """Added to the group std."""
    loss_aggregation: LossAggregation = LossAggregation.SEQUENCE_MEAN
    """token_mean, sequence_mean (GRPO) or constant_length (Dr. GRPO)."""
    ratio_level: RatioLevel = RatioLevel.TOKEN
    """token: one importance ratio per token (GRPO); sequence: one per response,
    exp(mean_t (log pi - log pi_old)), clipped per response (GSPO, Zheng et al. 2025; it uses
    far smaller clip ranges, e.g. clip_eps=3e-4 clip_eps_high=4e-4). Outcome supervision only."""


@dataclass
class GRPOResult(TrainResult):
    """GRPO's result: `TrainResult`'s fields."""


@dataclass
class StepTensors:
    rewards: torch.Tensor  # (batch, max_steps) reward of each step
    mask: torch.Tensor  # (batch, max_steps) bool, True = a real step
    ends: torch.Tensor  # (batch, max_steps) long, response-token index where the step ends


def step_rewards_on_tokens(
    tokenizer, rollout: Rollout, responses: list[str], steps: list[list[tuple[int, float]]], device
) -> StepTensors:
    """Turn (character where a step ends, reward) lists into padded per-token step tensors."""
    width = max(1, max(len(s) for s in steps))
    rewards = torch.zeros(len(steps), width)
    mask = torch.zeros(len(steps), width, dtype=torch.bool)
    ends = torch.zeros(len(steps), width, dtype=torch.long)
    rows = zip(response_token_ids(rollout), responses, steps)
    for row, (ids, text, row_steps) in enumerate(rows):
        char_ends = token_char_ends(tokenizer, ids, text)
        for k, (char_end, reward) in enumerate(row_steps):
            rewards[row, k], mask[row, k] = reward, True
            ends[row, k] = char_to_token_index(char_ends, char_end) if char_ends else 0
    return StepTensors(rewards.to(device), mask.to(device), ends.to(device))


def check_batch_sizes(cfg: GroupRolloutConfig) -> None:
    """Reject sizes that cannot form whole groups or whole mini-batches, saying what to change."""
    rollout = cfg.prompts_per_step * cfg.group_size
    if cfg.group_size < 2:
        raise ConfigError(
            f"group_size={cfg.group_size}: group baselines need at least 2 responses per prompt"
        )
    if cfg.mini_batch_size <= 0 or rollout % cfg.mini_batch_size:
        divisors = [d for d in range(1, rollout + 1) if rollout % d == 0]
        raise ConfigError(
            f"mini_batch_size={cfg.mini_batch_size} does not divide the rollout of "
            f"prompts_per_step * group_size = {cfg.prompts_per_step} * {cfg.group_size} = "
            f"{rollout} responses: use one of {divisors[-6:]} "
            "or change prompts_per_step / group_size"
        )


def check_kl_settings(cfg: GroupRolloutConfig) -> None:
    """Refuse KL settings with beta=0: no reference is loaded and no KL term is computed (nor a
    `reference_model` to load, `check_reference_model`)."""
    check_reference_model(cfg, loads_reference=cfg.beta > 0)
    if cfg.beta == 0:
        refuse_unread(
            cfg,
            ("kl_estimator", "kl_clamp"),
            "shapes the KL penalty, and beta=0 has none: leave it out, or set beta > 0",
        )


def check_norm_settings(cfg: GRPOConfig) -> None:
    """Refuse the group std's settings with norm=dr_grpo, which divides by no std."""
    if cfg.norm == GroupNorm.DR_GRPO:
        refuse_unread(
            cfg,
            ("std_unbiased", "adv_eps"),
            "shapes the division by the group's std, and norm=dr_grpo divides by none: "
            "leave it out, or set norm=grpo",
        )


def refuse_unread(cfg, names: tuple[str, ...], reason: str) -> None:
    """Refuse each setting of `names` that `cfg` has and sets away from its default: the other
    settings (`reason`) leave it unread, so it would change nothing, silently."""
    defaults = {f.name: f.default for f in fields(cfg)}
    for name in names:
        value = getattr(cfg, name, defaults.get(name))
        if name in defaults and value != defaults[name]:
            raise ConfigError(f"{name}={written(value)} {reason}")


def check_supervision(cfg: GRPOConfig) -> None:
    """The missing-EOS penalty lowers an outcome reward; process supervision's advantages come
    from the step rewards alone, where it would silently do nothing. A sequence-level ratio
    (GSPO) weighs one advantage per response; process supervision gives one per token."""
    if cfg.supervision == Supervision.PROCESS and cfg.ratio_level == RatioLevel.SEQUENCE:
        raise ConfigError(
            "ratio_level=sequence (GSPO) needs one advantage per response: use "
            "supervision=outcome, or ratio_level=token with supervision=process"
        )
    if cfg.supervision == Supervision.PROCESS and len(parse_spec(cfg.reward or "task")) > 1:
        # the advantages come from the one stepped source's step rewards: every other term of
        # the sum (and the outcome part of `process`) would be logged but never trained on
        raise ConfigError(
            f"reward={cfg.reward}: with supervision=process the advantages come from the step "
            "rewards alone, and the other terms of a sum would be logged but not trained on: "
            "use reward=process, or supervision=outcome for a weighted sum"
        )
    if cfg.supervision == Supervision.PROCESS and cfg.missing_eos_penalty:
        raise ConfigError(
            f"missing_eos_penalty={cfg.missing_eos_penalty} applies to outcome rewards: with "
            "supervision=process the advantages come from the step rewards alone; set it to 0"
        )
    terms = parse_spec(cfg.reward or "task")
    if cfg.supervision == Supervision.PROCESS and len(terms) == 1 and terms[0][0] != "process":
        # only the task's `process` source judges steps: any other would fail at the first step,
        # after the models, the prompts and the starting evaluation
        raise ConfigError(
            f"supervision=process needs step rewards, and reward '{terms[0][0]}' scores whole "
            "responses only: use reward=process (arith's verifier), or supervision=outcome"
        )


def _minibatch_loss(
    cfg: GRPOConfig, run: PolicyRun, batch: dict, denominator
) -> tuple[torch.Tensor, Stats]:
    """Clipped surrogate + beta * KL for one micro-batch (a slice of a mini-batch), over the
    mini-batch's `denominator`."""
    mask = batch["response_mask"]
    current = run.policy_logprobs(
        batch, temperature=cfg.temperature, with_entropy=True, group_size=cfg.group_size
    )
    policy = ppo_policy_loss(
        current.logprobs,
        batch["old_logprobs"],
        batch["advantages"],
        mask,
        clip_low=cfg.clip_eps,
        clip_high=cfg.clip_eps_high,
        aggregation=cfg.loss_aggregation,
        denominator=denominator,
        ratio_level=cfg.ratio_level,
    )
    loss, stats = (
        policy.loss,
        {
            "clip_fraction": token_stat(policy.clip_fraction, mask),
            "entropy": token_stat(masked_mean(current.entropy, mask), mask),
            **mismatch_stats(current.logprobs, batch["old_logprobs"], mask),
        },
    )
    if cfg.beta > 0:
        kl = kl_penalty(current.logprobs, batch["ref_logprobs"], cfg.kl_estimator, cfg.kl_clamp)
        loss = loss + cfg.beta * aggregate_loss(kl, mask, cfg.loss_aggregation, denominator)
        stats["kl_per_token"] = token_stat(masked_mean(kl.detach(), mask), mask)
        per_sequence = sequence_kl(
            current.logprobs.detach(), batch["ref_logprobs"], mask, cfg.kl_estimator, cfg.kl_clamp
        )
        stats["kl_per_sequence"] = row_stat(per_sequence.mean(), mask)
    return loss, stats


def train_grpo(cfg: GRPOConfig, run_dir, *, resume: bool = False) -> GRPOResult:
    """Optimise `cfg.model` with GRPO; the final model goes to `run_dir.final`."""
    check_batch_sizes(cfg)
    check_kl_settings(cfg)
    check_norm_settings(cfg)
    check_supervision(cfg)
    # step 1. policy (+ reference when beta > 0), reward source, prompts; restored on resume
    run = PolicyRun(cfg, run_dir, resume=resume, needs_reference=cfg.beta > 0, stage="grpo")
    result = GRPOResult(model_dir=run_dir.final)
    rollout_size = cfg.prompts_per_step * cfg.group_size

    with run:
        run.begin(result)  # the starting policy's evaluation, the baseline of the run
        for step in range(run.start_step, cfg.max_steps):
            timer = PhaseTimer()
            share = run.rank_prompts(step, cfg.prompts_per_step)  # one process: every prompt
            prompts = share.prompts

            # step 2. sample G responses per prompt, keeping the sampling log-probs
            with timer("generation"):
                rollout, responses = run.sample(
                    share,
                    cfg.group_size,
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    top_k=cfg.top_k,
                )
                grouped_prompts = [p for p in prompts for _ in range(cfg.group_size)]

            # step 3. rewards, and the advantages relative to each group
            with timer("reward"):
                scores = run.score(grouped_prompts, responses, share.first_sample(cfg.group_size))
                rewards = penalise_unfinished(
                    scores.rewards.to(run.models.device), rollout.finished, cfg.missing_eos_penalty
                )
                if cfg.supervision == Supervision.PROCESS:
                    if scores.step_rewards is None:
                        raise ConfigError(
                            "supervision=process needs step rewards, and reward "
                            f"'{run.reward.name}' scores whole responses only: "
                            "use reward=process (arith's verifier)"
                        )
                    steps = step_rewards_on_tokens(
                        run.models.tokenizer,
                        rollout,
                        responses,
                        scores.step_rewards,
                        run.models.device,
                    )
                    advantages = process_advantages(
                        steps.rewards,
                        steps.mask,
                        steps.ends,
                        rollout.response_mask,
                        cfg.group_size,
                        cfg.norm,
                        cfg.std_unbiased,
                        cfg.adv_eps,
                    )
                else:
                    per_response = group_advantages(
                        rewards, cfg.group_size, cfg.norm, cfg.std_unbiased, cfg.adv_eps
                    )
                    advantages = per_response.unsqueeze(1) * rollout.response_mask

            # step 4. reference log-probs, once per rollout, without autograd
            batch = {
                "input_ids": rollout.input_ids,
                "attention_mask": rollout.attention_mask,
                "response_mask": rollout.response_mask,
                "old_logprobs": rollout.logprobs,
                "advantages": advantages,
            }
            if cfg.beta > 0:
                with timer("reference"):
                    batch["ref_logprobs"] = run.reference_logprobs(
                        batch, cfg.temperature, cfg.precision, group_size=cfg.group_size
                    )

            # step 5. mu passes of clipped updates over mini-batches (this rank's rows of each,
            # maybe none; the denominator counts every rank's)
            stats = []
            for _ in range(cfg.mu):
                for start in range(0, rollout_size, cfg.mini_batch_size):
                    rows = share.rows(start, cfg.mini_batch_size, cfg.group_size)
                    part = {k: v[rows] for k, v in batch.items()}
                    with timer("forward_backward"):
                        denominator = run.global_sum(
                            loss_denominator(
                                part["response_mask"], cfg.loss_aggregation, cfg.max_new_tokens
                            )
                        )
                        loss, part_stats = run.backward(
                            part,
                            cfg.micro_batch_size,
                            lambda micro, d=denominator: _minibatch_loss(cfg, run, micro, d),
                        )
                    with timer("optimizer"):
                        part_stats["loss"] = loss
                        part_stats["grad_norm"] = run.optimizer_step(step, loss)
                    stats.append(part_stats)

            # step 6. metrics, evaluation, checkpoint
            row = run.step_metrics(
                stats, rewards, grouped_prompts, responses, rollout, timer, scores
            )
            run.end_step(step + 1, row, result)

    # step 7. the final policy, loadable with AutoModelForCausalLM.from_pretrained
    run.save_final()
    return result
