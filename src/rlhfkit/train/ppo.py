"""PPO with a learned reward, the InstructGPT recipe (Ouyang et al. 2022; seeds 001, 003, 004).

Four models: the actor (policy), a critic (value head, started from the reward model or the
policy), the frozen reference (the SFT model) and the frozen reward model. Per token,
    r_t = -beta * KL_t  (+ the reward model's score on the last response token)
with KL_t = log pi(y_t) - log pi_ref(y_t) (k1); advantages by GAE(gamma, lambda) on the critic's
values, whitened over the batch; then several epochs of the clipped surrogate (actor) and the
clipped value loss (critic) over mini-batches. beta is fixed or follows the adaptive controller of
Ziegler et al. (2019) towards a target KL; a run whose KL passes `kl_limit` stops (seed 003:
beyond 10-20 nats the policy has left the reward model's domain).
Departures: the old log-probs are the sampling log-probs (no extra forward pass), with one update
per rollout the critic's rollout values come from its training pass, and the critic has its own
optimizer and learning rate instead of a shared loss with a value coefficient.
"""

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.errors import ConfigError
from rlhfkit.models.reward import value_model_from
from rlhfkit.objectives.advantages import gae, kl_shaped_rewards
from rlhfkit.objectives.aggregate import LossAggregation, loss_denominator
from rlhfkit.objectives.kl import KLEstimator, adaptive_kl_coef, kl_penalty
from rlhfkit.objectives.masked import masked_mean, masked_sum, masked_var, masked_whiten
from rlhfkit.objectives.policy import ppo_policy_loss, value_loss
from rlhfkit.rollout.forward import response_logprobs, response_values
from rlhfkit.runtime.device import autocast
from rlhfkit.train.policy_config import PolicyRunConfig
from rlhfkit.train.policy_run import PhaseTimer, PolicyRun
from rlhfkit.train.schedule import is_due


@dataclass(frozen=True)
class PPOConfig(PolicyRunConfig):
    """The shared settings (`PolicyRunConfig`) plus PPO's own; defaults that differ for PPO
    are redeclared at the end."""

    reward_model: str = ""
    """Saved reward-model directory: the frozen reward (unless `reward` says otherwise) and the critic's start."""
    critic_init: str = "reward_model"
    """reward_model: the critic starts as the reward model; policy: a fresh value head on the policy."""
    prompts_per_step: int = 64
    """Prompts per rollout (one response each)."""
    mini_batch_size: int = 32
    """Responses per optimizer step; must divide prompts_per_step."""
    ppo_epochs: int = 4
    """Passes over each rollout."""
    clip_eps: float = 0.2
    """Policy ratio clip."""
    value_clip: float = 0.2
    """Value clip around the rollout's values (0 = no clipping)."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    kl_coef: float = 0.05
    """beta: the KL penalty in the per-token reward (initial value when adaptive)."""
    kl_target: float = 0.0
    """Target KL per sequence (nats) of the adaptive controller; 0 = a fixed beta."""
    kl_horizon: int = 10000
    """Samples over which the adaptive controller closes the gap to the target."""
    kl_limit: float = 15.0
    """Stop the run when the mean KL per sequence passes this many nats."""
    critic_lr: float = 1e-4
    """Critic learning rate."""
    # defaults that differ from PolicyRunConfig's
    task: str = "advice"
    """Built-in task: prompts (unless `train_data`), gold score and evaluation."""
    reward: str = ""
    """Reward source spec (see `rlhfkit grpo`); empty = model:<reward_model>."""
    max_new_tokens: int = 64
    """Response length limit."""
    lr: float = 1e-5
    """Actor learning rate (AdamW), constant after warm-up."""
    eval_max_new_tokens: int = 64
    """Length limit at evaluation."""


@dataclass
class PPOResult:
    model_dir: Path
    history: list[dict] = field(default_factory=list)
    evals: list[tuple[int, dict]] = field(default_factory=list)
    stopped_at_kl_limit: bool = False


def check_ppo_config(cfg: PPOConfig) -> None:
    if not cfg.reward_model and not cfg.reward:
        raise ConfigError("PPO needs reward_model=PATH (a saved reward model) or a reward= source")
    if cfg.critic_init == "reward_model" and not cfg.reward_model:
        raise ConfigError("critic_init=reward_model needs reward_model=PATH; or set critic_init=policy")
    if cfg.mini_batch_size <= 0 or cfg.prompts_per_step % cfg.mini_batch_size:
        raise ConfigError(f"mini_batch_size={cfg.mini_batch_size} does not divide prompts_per_step="
                          f"{cfg.prompts_per_step}: change one of them")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the counted tokens (1 = a perfect critic)."""
    variance = masked_var(returns, mask, unbiased=False)
    return (1 - masked_var(returns - values, mask, unbiased=False) / variance).item() if variance > 0 else 0.0


def train_ppo(cfg: PPOConfig, run_dir, *, resume: bool = False) -> PPOResult:
    """Optimise `cfg.model` against the reward with PPO; the final policy goes to `run_dir.final`."""
    check_ppo_config(cfg)
    spec = cfg.reward or f"model:{cfg.reward_model}"
    # step 1. actor + reference, reward, prompts (shared bookkeeping), then the critic
    run = PolicyRun(cfg, run_dir, resume=resume, needs_reference=True, stage="ppo", reward_spec=spec)
    critic_dir = cfg.reward_model if cfg.critic_init == "reward_model" else cfg.model
    critic = run.extra_model("critic", value_model_from, critic_dir)
    run.extra_optimizer("critic", critic.parameters(), cfg.critic_lr)
    kl_coef = run.extra_state.get("kl_coef", cfg.kl_coef)
    result = PPOResult(model_dir=run_dir.final)

    with run:
        if run.start_step == 0 and cfg.eval_every >= 0:
            result.evals.append((0, run.evaluate({})))
        for step in range(run.start_step, cfg.max_steps):
            timer = PhaseTimer()
            prompts = run.prompts_for_step(step, cfg.prompts_per_step)

            # step 2. one response per prompt, with its sampling log-probs
            with timer("generation"):
                rollout, responses = run.sample(prompts, 1, max_new_tokens=cfg.max_new_tokens,
                                                temperature=cfg.temperature)
            batch = {"input_ids": rollout.input_ids, "attention_mask": rollout.attention_mask,
                     "response_mask": rollout.response_mask, "old_logprobs": rollout.logprobs}
            response_mask = rollout.response_mask

            # step 3. the reward model's score, the reference's log-probs, the critic's values
            with timer("reward"):
                scores = run.reward.score(prompts, responses).rewards.to(run.device)
            with timer("reference"):
                batch["ref_logprobs"] = run.reference_logprobs(batch, cfg.temperature, cfg.precision)
            # with one update per rollout the critic is unchanged until its step, so the pass that
            # gives the rollout's values (with autograd) is also the pass its loss differentiates
            single_update = cfg.ppo_epochs == 1 and cfg.mini_batch_size == cfg.prompts_per_step
            with timer("values"), nullcontext() if single_update else torch.no_grad(), \
                    autocast(run.device, cfg.precision):
                values = response_values(critic, batch["input_ids"], batch["attention_mask"], response_mask.shape[1])
            batch["old_values"] = values.detach()

            # step 4. per-token rewards (KL penalty + score at the end), GAE, whitened advantages
            kl = kl_penalty(batch["old_logprobs"], batch["ref_logprobs"], KLEstimator.K1)
            rewards = kl_shaped_rewards(scores, kl, response_mask, kl_coef)
            advantages, batch["returns"] = gae(rewards, batch["old_values"], response_mask, cfg.gamma, cfg.lam)
            batch["advantages"] = masked_whiten(advantages, response_mask, unbiased=False)
            sequence_kl = masked_sum(kl, response_mask, dim=1).mean().item()

            # step 5. PPO epochs over mini-batches: actor and critic each take a clipped step
            stats = []
            for _ in range(cfg.ppo_epochs):
                for start in range(0, cfg.prompts_per_step, cfg.mini_batch_size):
                    part = {k: v[start : start + cfg.mini_batch_size] for k, v in batch.items()}
                    stats.append(_ppo_minibatch(cfg, run, critic, part, step, timer,
                                                values if single_update else None))

            # step 6. the KL coefficient, metrics, evaluation, checkpoint, the KL limit
            row = run.step_metrics(stats, scores, prompts, responses, rollout, timer)
            row.update({"kl": sequence_kl, "kl_coef": kl_coef, "proxy_reward": scores.mean().item(),
                        "explained_variance": explained_variance(batch["old_values"], batch["returns"],
                                                                 response_mask)})
            if cfg.kl_target > 0:
                kl_coef = adaptive_kl_coef(kl_coef, sequence_kl, cfg.kl_target, cfg.kl_horizon, cfg.prompts_per_step)
            result.history.append(row)
            done = step + 1
            stop = sequence_kl > cfg.kl_limit
            if cfg.eval_every >= 0 and (is_due(done, cfg.eval_every, cfg.max_steps, at_end=True) or stop):
                result.evals.append((done, run.evaluate(row)))
            run.log(done, row)
            if stop:
                print(f"ppo: KL {sequence_kl:.1f} nats passed kl_limit={cfg.kl_limit}: stopping at step {done}")
                result.stopped_at_kl_limit = True
                break
            if is_due(done, cfg.save_every, cfg.max_steps, at_end=False):
                run.extra_state["kl_coef"] = kl_coef
                run.save_checkpoint(done)

    # step 7. the final policy, loadable with AutoModelForCausalLM.from_pretrained
    run.save_final()
    return result


def _ppo_minibatch(cfg: PPOConfig, run, critic, part: dict, step: int, timer: PhaseTimer,
                   values: torch.Tensor | None) -> dict:
    """One clipped actor step and one clipped critic step on a slice of the rollout; `values`:
    the critic's values of this slice with autograd already there (None = run the critic).
    The critic steps first, so its graph is freed before the actor's is built."""
    mask = part["response_mask"]
    denominator = loss_denominator(mask, LossAggregation.TOKEN_MEAN)
    with timer("forward_backward"):
        if values is None:
            with autocast(run.device, cfg.precision):
                values = response_values(critic, part["input_ids"], part["attention_mask"], mask.shape[1])
        critic_loss = value_loss(values, part["old_values"], part["returns"], mask, cfg.value_clip or None,
                                 LossAggregation.TOKEN_MEAN, denominator)
        critic_loss.backward()
    with timer("optimizer"):
        run.extra_optimizer_step("critic", step, cfg.critic_lr, cfg)
    with timer("forward_backward"):
        with autocast(run.device, cfg.precision):
            current = response_logprobs(run.policy, part["input_ids"], part["attention_mask"], mask.shape[1],
                                        temperature=cfg.temperature, with_entropy=True)
        policy = ppo_policy_loss(current.logprobs, part["old_logprobs"], part["advantages"], mask, cfg.clip_eps,
                                 cfg.clip_eps, None, LossAggregation.TOKEN_MEAN, denominator)
        policy.loss.backward()
    with timer("optimizer"):
        grad_norm = run.optimizer_step(step, cfg)
    return {"loss": policy.loss.item(), "value_loss": critic_loss.item(), "grad_norm": grad_norm,
            "clip_fraction": policy.clip_fraction.item(), "entropy": masked_mean(current.entropy, mask).item()}
