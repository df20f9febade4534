"""RLOO: REINFORCE with a leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024), the
critic-free sibling of GRPO.

Each step samples G responses per prompt. The KL to the reference is a penalty in the reward
(k1, summed over the response), and each response's baseline is the mean of the others':
    R_i = r_i - beta * sum_t (log pi_old(y_t) - log pi_ref(y_t))
    A_i = R_i - mean_{j != i} R_j
The loss is PPO's clipped surrogate on the sequence-level ratio
exp(sum_t log pi - sum_t log pi_old), one term per response. The old log-probs are the sampling
log-probs (no extra forward pass).
Under torchrun each rank samples and scores the groups of its own prompts, computes their
baselines and runs its rows of every mini-batch; the loss divides by the mini-batch's responses
over all ranks, so each update is the one-process update of the same global batch
(`policy_run`).
"""

from dataclasses import dataclass

from rlhfkit.objectives.advantages import kl_shaped_sequence_rewards, penalise_unfinished
from rlhfkit.objectives.group_advantages import rloo_advantages
from rlhfkit.objectives.kl import KLEstimator, sequence_kl
from rlhfkit.objectives.masked import masked_mean
from rlhfkit.objectives.policy import sequence_sum_clip_loss
from rlhfkit.train.grpo import check_batch_sizes, check_kl_settings
from rlhfkit.train.micro_batches import mismatch_stats, row_stat, token_stat
from rlhfkit.train.phase_timer import PhaseTimer
from rlhfkit.train.policy_config import GroupRolloutConfig
from rlhfkit.train.policy_run import PolicyRun
from rlhfkit.train.result import TrainResult


@dataclass(frozen=True)
class RLOOConfig(GroupRolloutConfig):
    """The shared settings (`PolicyRunConfig`, `GroupRolloutConfig`) plus RLOO's own."""

    clip_eps: float = 0.2
    """The sequence ratio is clipped to [1 - clip_eps, 1 + clip_eps]."""
    beta: float = 0.05
    """KL coefficient in the reward (k1, summed over the response); 0 loads no reference model."""


@dataclass
class RLOOResult(TrainResult):
    """RLOO's result: `TrainResult`'s fields."""


def _micro_loss(cfg: RLOOConfig, run: PolicyRun, micro: dict, rows: int) -> tuple:
    """The sequence-level clipped loss of a micro-batch over the mini-batch's `rows`."""
    mask = micro["response_mask"]
    current = run.policy_logprobs(
        micro, temperature=cfg.temperature, with_entropy=True, group_size=cfg.group_size
    )
    policy = sequence_sum_clip_loss(
        current.logprobs, micro["old_logprobs"], micro["advantages"], mask, cfg.clip_eps, rows
    )
    return policy.loss, {
        "clip_fraction": row_stat(policy.clip_fraction, mask),
        "entropy": token_stat(masked_mean(current.entropy, mask), mask),
        **mismatch_stats(current.logprobs, micro["old_logprobs"], mask),
    }


def train_rloo(cfg: RLOOConfig, run_dir, *, resume: bool = False) -> RLOOResult:
    """Optimise `cfg.model` with RLOO; the final model goes to `run_dir.final`."""
    check_batch_sizes(cfg)
    check_kl_settings(cfg)
    # step 1. policy (+ reference when beta > 0), reward source, prompts; restored on resume
    run = PolicyRun(cfg, run_dir, resume=resume, needs_reference=cfg.beta > 0, stage="rloo")
    result = RLOOResult(model_dir=run_dir.final)
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
            with timer("reward"):
                scored = run.score(grouped_prompts, responses, share.first_sample(cfg.group_size))
                rewards = penalise_unfinished(
                    scored.rewards.to(run.models.device), rollout.finished, cfg.missing_eos_penalty
                )
            batch = {
                "input_ids": rollout.input_ids,
                "attention_mask": rollout.attention_mask,
                "response_mask": rollout.response_mask,
                "old_logprobs": rollout.logprobs,
            }

            # step 3. the KL penalty (k1 summed over each response) in the reward, then the
            # leave-one-out advantages
            shaped, kl = rewards, None
            if cfg.beta > 0:
                with timer("reference"):
                    ref = run.reference_logprobs(
                        batch, cfg.temperature, cfg.precision, group_size=cfg.group_size
                    )
                kl = sequence_kl(
                    rollout.logprobs, ref, rollout.response_mask, KLEstimator.K1, cfg.kl_clamp
                )
                shaped = kl_shaped_sequence_rewards(rewards, kl, cfg.beta)
            batch["advantages"] = rloo_advantages(shaped, cfg.group_size)

            # step 4. mu passes of clipped sequence-level updates over mini-batches (this rank's
            # rows of each, maybe none), each over the mini-batch's responses on every rank
            stats = []
            for _ in range(cfg.mu):
                for start in range(0, rollout_size, cfg.mini_batch_size):
                    own = share.rows(start, cfg.mini_batch_size, cfg.group_size)
                    part = {k: v[own] for k, v in batch.items()}
                    with timer("forward_backward"):
                        loss, part_stats = run.backward(
                            part,
                            cfg.micro_batch_size,
                            # mini_batch_size divides the rollout: every mini-batch is whole
                            lambda micro: _micro_loss(cfg, run, micro, cfg.mini_batch_size),
                        )
                    with timer("optimizer"):
                        part_stats["loss"] = loss
                        part_stats["grad_norm"] = run.optimizer_step(step, loss)
                    stats.append(part_stats)

            # step 5. metrics, evaluation, checkpoint
            row = run.step_metrics(
                stats, rewards, grouped_prompts, responses, rollout, timer, scored
            )
            if kl is not None:
                kl, tokens = run.all_rows(kl), run.all_rows(rollout.response_lengths)  # all ranks'
                row["kl_per_sequence"] = kl.mean().item()
                row["kl_per_token"] = (kl.sum() / tokens.sum().clamp(min=1)).item()
            run.end_step(step + 1, row, result)

    # step 6. the final policy, loadable with AutoModelForCausalLM.from_pretrained
    run.save_final()
    return result
