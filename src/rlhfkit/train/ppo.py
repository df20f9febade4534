"""PPO with a learned reward, the InstructGPT recipe (Ouyang et al. 2022; seeds 001, 003, 004).

Four models: the actor (policy), a critic (value head, started from the reward model or the
policy), the frozen reference (the SFT model) and the frozen reward model. Per token,
    r_t = -beta * KL_t  (+ the reward model's score on the last response token)
with KL_t = log pi(y_t) - log pi_ref(y_t) (k1); advantages by GAE(gamma, lambda) on the critic's
values, whitened over the batch; then several epochs of the clipped surrogate (actor) and the
clipped value loss (critic) over mini-batches. `advantage_estimator=reinforce_pp` is REINFORCE++
(Hu et al. 2025): no critic, each token's discounted return of the same rewards, whitened over
the batch, is its advantage. beta is fixed or follows the adaptive controller of
Ziegler et al. (2019) towards a target KL; a run whose KL passes `kl_limit` stops (seed 003:
beyond 10-20 nats the policy has left the reward model's domain).
Departures: the old log-probs are the sampling log-probs (no extra forward pass), with one update
per rollout the critic's rollout values come from its training pass (`shared_critic_pass`), and
the critic has its own optimizer and learning rate instead of a shared loss with a value
coefficient. Logged: kl_per_sequence and kl_per_token (k1 on the rollout's samples, the KL of
the penalty), kl_coef, proxy_reward, value_loss, explained_variance, and the shared metrics.
Under torchrun each rank samples for its own prompts and runs the reward model, reference and
critic on its rows (actor and critic sharded; reference and reward model whole on every rank,
or sharded alike with `frozen_models=sharded`); the advantages are whitened over every rank's
tokens, the loss denominators count every rank's, and the KL controller and the KL limit read
the global KL, so each update is the one-process update of the same global batch
(`policy_run`). The critic's rollout values then come from a separate pass (`shared_critic_pass`
is off).
"""

import logging
from dataclasses import dataclass
from enum import Enum

import torch

from rlhfkit.errors import ConfigError
from rlhfkit.objectives.advantages import (
    discounted_returns,
    gae,
    kl_shaped_rewards,
    penalise_unfinished,
)
from rlhfkit.objectives.aggregate import LossAggregation, loss_denominator
from rlhfkit.objectives.kl import KLEstimator, adaptive_kl_coef, kl_penalty, sequence_kl
from rlhfkit.objectives.masked import masked_mean, masked_var, masked_whiten
from rlhfkit.objectives.policy import ppo_policy_loss, value_loss
from rlhfkit.rollout.forward import response_values
from rlhfkit.runtime.config import written
from rlhfkit.runtime.device import autocast
from rlhfkit.runtime.distributed import gather_parameters
from rlhfkit.train.micro_batches import mismatch_stats, token_stat
from rlhfkit.train.optim import clipped_step
from rlhfkit.train.phase_timer import PhaseTimer
from rlhfkit.train.policy_config import PolicyRunConfig, check_reference_model
from rlhfkit.train.policy_prompts import PromptShare, run_reward
from rlhfkit.train.policy_run import PolicyRun
from rlhfkit.train.result import TrainResult
from rlhfkit.train.schedule import linear_warmup

log = logging.getLogger(__name__)


class AdvantageEstimator(str, Enum):
    GAE = "gae"
    """GAE(gamma, lambda) on the critic's values, whitened over the batch (InstructGPT)."""
    REINFORCE_PP = "reinforce_pp"
    """REINFORCE++ (Hu et al. 2025; OpenRLHF's `reinforce`): no critic, each token's discounted
    return of the same KL-shaped rewards, whitened over the batch
    (`objectives.advantages.reinforce_pp_advantages`)."""


class CriticInit(str, Enum):
    REWARD_MODEL = "reward_model"
    """The critic starts as the reward model (backbone and head; an ensemble's heads averaged)."""
    POLICY = "policy"
    """A fresh value head on the starting policy."""


@dataclass(frozen=True)
class PPOConfig(PolicyRunConfig):
    """The shared settings (`PolicyRunConfig`) plus PPO's own."""

    reward_model: str = ""
    """Saved reward-model directory: the frozen reward (unless `reward` says otherwise) and the
    critic's start."""
    advantage_estimator: AdvantageEstimator = AdvantageEstimator.GAE
    """gae: a critic (`critic_init`, `critic_lr`, `value_clip`, `lam`) and GAE on its values;
    reinforce_pp: REINFORCE++, no critic loaded or trained (those four settings unused): half
    the trained weights, and nothing learns a baseline that could lag the policy."""
    critic_init: CriticInit = CriticInit.REWARD_MODEL
    """reward_model: the critic starts as the reward model; policy: a fresh value head on the
    policy."""
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
    kl_clamp: float = 0.0
    """Clamp each token's KL estimate to [-kl_clamp, kl_clamp] (OpenRLHF and veRL use 10); 0 = no
    clamp."""
    kl_target: float = 0.0
    """Target KL per sequence (nats) of the adaptive controller; 0 = a fixed beta."""
    kl_horizon: int = 10000
    """Samples over which the adaptive controller closes the gap to the target."""
    kl_limit: float = 15.0
    """Stop the run when the mean KL per sequence passes this many nats."""
    critic_lr: float = 1e-4
    """Critic learning rate."""
    shared_critic_pass: bool = True
    """With one update per rollout (ppo_epochs=1 and mini_batch_size=prompts_per_step), take the
    critic's rollout values from the pass its update differentiates: one critic forward per step
    instead of two, the same values and losses. false, several updates per rollout (where a
    later mini-batch meets an updated critic) or micro-batches: a separate pass without
    autograd."""
    # the defaults PolicyRunConfig leaves to each trainer (see its fields)
    max_new_tokens: int = 64
    max_steps: int = 100
    lr: float = 1e-5
    eval_every: int = 25
    eval_max_new_tokens: int = 64
    save_every: int = 25


@dataclass
class PPOResult(TrainResult):
    stopped_at_kl_limit: bool = False


def check_ppo_config(cfg: PPOConfig) -> None:
    if not cfg.reward_model and not cfg.reward:
        raise ConfigError("PPO needs reward_model=PATH (a saved reward model) or a reward= source")
    if (
        uses_critic(cfg)
        and CriticInit(cfg.critic_init) is CriticInit.REWARD_MODEL
        and not cfg.reward_model
    ):
        model = cfg.reward.removeprefix("model:") if cfg.reward.startswith("model:") else ""
        named = f" (with reward={cfg.reward}: reward_model={model})" if model else ""
        raise ConfigError(
            f"critic_init=reward_model needs reward_model=PATH, the critic's start{named}; or "
            "set critic_init=policy"
        )
    check_reference_model(cfg, loads_reference=True)
    if cfg.kl_target > 0 and cfg.kl_coef == 0:
        # the controller multiplies beta: from 0 it never moves, and the target is ignored
        raise ConfigError(
            f"kl_target={cfg.kl_target} with kl_coef=0: the adaptive controller scales kl_coef "
            "by a factor each step, so from 0 it never moves; set kl_coef > 0 as its starting "
            "value, or kl_target=0 for a fixed beta"
        )
    if cfg.mini_batch_size <= 0 or cfg.prompts_per_step % cfg.mini_batch_size:
        raise ConfigError(
            f"mini_batch_size={cfg.mini_batch_size} does not divide prompts_per_step="
            f"{cfg.prompts_per_step}: change one of them"
        )
    run_reward(cfg, ppo_reward(cfg))  # a mistyped reward file, before a job's first stage


def ppo_reward(cfg: PPOConfig) -> str:
    """The spec PPO scores with: `reward`, else its reward model."""
    return cfg.reward or f"model:{cfg.reward_model}"


def uses_critic(cfg: PPOConfig) -> bool:
    """Whether the advantages come from a critic (GAE) or from the returns alone (REINFORCE++)."""
    return AdvantageEstimator(cfg.advantage_estimator) is AdvantageEstimator.GAE


def unread_reward_model(cfg: PPOConfig) -> bool:
    """Whether `reward_model` is given but neither the reward (`reward=` is) nor the critic's
    start: a wrong or even missing path would pass unnoticed. A warning, not a refusal: the
    pipeline fills it whatever the user sets for the reward."""
    critic_from_it = uses_critic(cfg) and CriticInit(cfg.critic_init) is CriticInit.REWARD_MODEL
    return bool(cfg.reward_model and cfg.reward and not critic_from_it)


def unused_critic_settings(cfg: PPOConfig) -> list[str]:
    """The critic's settings given other values than their defaults in a run without a critic
    (REINFORCE++), which would otherwise pass unnoticed."""
    if uses_critic(cfg):
        return []
    names = ("critic_init", "critic_lr", "value_clip", "lam")
    default = PPOConfig()
    return [
        f"{n}={written(getattr(cfg, n))}" for n in names if getattr(cfg, n) != getattr(default, n)
    ]


def shares_critic_pass(cfg: PPOConfig) -> bool:
    """Whether the critic's rollout pass is also its training pass (see `shared_critic_pass`)."""
    one_update = cfg.ppo_epochs == 1 and cfg.mini_batch_size == cfg.prompts_per_step
    # micro-batches exist to hold one slice's graph at a time; a shared pass holds them all
    unsplit = cfg.micro_batch_size == 0 or cfg.micro_batch_size >= cfg.mini_batch_size
    return cfg.shared_critic_pass and one_update and unsplit


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the counted tokens (1 = a perfect critic)."""
    variance = masked_var(returns, mask, unbiased=False)
    if variance <= 0:
        return 0.0
    return (1 - masked_var(returns - values, mask, unbiased=False) / variance).item()


def train_ppo(cfg: PPOConfig, run_dir, *, resume: bool = False) -> PPOResult:
    """Optimise `cfg.model` against the reward with PPO; the final policy goes to
    `run_dir.final`."""
    check_ppo_config(cfg)
    # step 1. actor + reference, the critic (GAE), their optimizers, reward, prompts; restored
    # on resume
    critic_start = ""  # REINFORCE++: no critic
    if uses_critic(cfg):
        from_reward_model = CriticInit(cfg.critic_init) is CriticInit.REWARD_MODEL
        critic_start = cfg.reward_model if from_reward_model else cfg.model
    if unread_reward_model(cfg):
        log.warning(
            f"ppo: reward_model={cfg.reward_model} is read by nothing: reward={cfg.reward} is the "
            "reward, and the critic does not start from it (critic_init=reward_model would)"
        )
    if unused := unused_critic_settings(cfg):
        log.warning(
            f"ppo: {', '.join(unused)} has no effect with advantage_estimator=reinforce_pp, "
            "which trains no critic"
        )
    run = PolicyRun(
        cfg,
        run_dir,
        resume=resume,
        needs_reference=True,
        stage="ppo",
        reward=ppo_reward(cfg),
        critic_start=critic_start,
        critic_lr=cfg.critic_lr,
    )
    critic, device = run.models.critic, run.models.device
    kl_coef = run.trainer_state.get("kl_coef", cfg.kl_coef)  # the adaptive controller's beta
    # sharded, the critic's gradients are reduced once around its update's own passes
    shared_pass = shares_critic_pass(cfg) and not run.ranks.sharded
    result = PPOResult(model_dir=run_dir.final)

    with run:
        run.begin(result)  # the starting policy's evaluation, the baseline of the run
        for step in range(run.start_step, cfg.max_steps):
            timer = PhaseTimer()
            share = run.rank_prompts(step, cfg.prompts_per_step)  # one process: every prompt
            prompts = share.prompts

            # step 2. one response per prompt, with its sampling log-probs
            with timer("generation"):
                rollout, responses = run.sample(
                    share, 1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature
                )
            batch = {
                "input_ids": rollout.input_ids,
                "attention_mask": rollout.attention_mask,
                "response_mask": rollout.response_mask,
                "old_logprobs": rollout.logprobs,
            }
            response_mask = rollout.response_mask

            # step 3. the reward model's score, the reference's log-probs, the critic's values
            with timer("reward"):
                scored = run.score(prompts, responses, share.first_sample(1))
                scores = penalise_unfinished(
                    scored.rewards.to(device), rollout.finished, cfg.missing_eos_penalty
                )
            with timer("reference"):
                batch["ref_logprobs"] = run.reference_logprobs(
                    batch, cfg.temperature, cfg.precision
                )
            values = None
            if critic is not None:
                gather_parameters(critic)  # sharded: its backbone runs without the root's forward
                with (
                    timer("values"),
                    torch.set_grad_enabled(shared_pass),
                    autocast(device, cfg.precision),
                ):
                    values = response_values(
                        critic, batch["input_ids"], batch["attention_mask"], response_mask.shape[1]
                    )
                batch["old_values"] = values.detach()

            # step 4. per-token rewards (KL penalty + score at the end); the advantages by GAE
            # or REINFORCE++, whitened over every rank's tokens
            logprobs, ref_logprobs = batch["old_logprobs"], batch["ref_logprobs"]
            kl = kl_penalty(logprobs, ref_logprobs, KLEstimator.K1, cfg.kl_clamp)
            rewards = kl_shaped_rewards(scores, kl, response_mask, kl_coef)
            batch["advantages"], batch["returns"] = _advantages(
                cfg, run, share, rewards, batch.get("old_values"), response_mask
            )
            kl_per_sequence = sequence_kl(
                logprobs, ref_logprobs, response_mask, KLEstimator.K1, cfg.kl_clamp
            )

            # step 5. PPO epochs over mini-batches: critic and actor each take a clipped step
            stats = []
            for _ in range(cfg.ppo_epochs):
                for start in range(0, cfg.prompts_per_step, cfg.mini_batch_size):
                    own = share.rows(start, cfg.mini_batch_size, 1)  # this rank's rows, maybe none
                    part = {k: v[own] for k, v in batch.items()}
                    part_values = values if shared_pass else None  # None: run the critic
                    stats.append(_ppo_minibatch(cfg, run, part, step, timer, part_values))

            # step 6. metrics and the KL coefficient (over every rank's rows); evaluation, log
            # and checkpoint when due, or the end of the run when the KL passes its limit
            row = run.step_metrics(stats, scores, prompts, responses, rollout, timer, scored)
            kl_per_sequence = run.all_rows(kl_per_sequence)
            mean_kl = kl_per_sequence.mean().item()
            tokens = run.all_rows(rollout.response_lengths).sum().clamp(min=1)
            row.update(
                {
                    "kl_per_sequence": mean_kl,
                    "kl_per_token": (kl_per_sequence.sum() / tokens).item(),
                    "kl_coef": kl_coef,
                    "proxy_reward": run.all_rows(scores).mean().item(),
                }
            )
            if critic is not None:
                row["explained_variance"] = explained_variance(
                    run.all_rows(batch["old_values"]),
                    run.all_rows(batch["returns"]),
                    run.all_rows(response_mask),
                )
            if cfg.kl_target > 0:
                kl_coef = adaptive_kl_coef(
                    kl_coef, mean_kl, cfg.kl_target, cfg.kl_horizon, cfg.prompts_per_step
                )
            stop = mean_kl > cfg.kl_limit
            run.end_step(
                step + 1, row, result, state=lambda kl_coef=kl_coef: {"kl_coef": kl_coef}, stop=stop
            )
            if stop:
                if run.ranks.is_main:
                    log.info(
                        f"ppo: KL {mean_kl:.1f} nats passed kl_limit={cfg.kl_limit}: "
                        f"stopping at step {step + 1}"
                    )
                result.stopped_at_kl_limit = True
                break

    # step 7. the final policy, loadable with AutoModelForCausalLM.from_pretrained
    run.save_final()
    return result


def _advantages(
    cfg: PPOConfig,
    run: PolicyRun,
    share: PromptShare,
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The advantages, whitened over every rank's tokens, and the returns, (batch,
    response_len) each: by GAE on the critic's `values`, or (None) by REINFORCE++, whose
    advantage is the return itself (`reinforce_pp_advantages`, here whitened over every rank)."""
    if values is None:
        raw = returns = discounted_returns(rewards, mask, cfg.gamma)
    else:
        raw, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    return _whitened(run, share, raw, mask), returns


def _whitened(
    run: PolicyRun, share: PromptShare, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """This rank's rows of the advantages whitened over every rank's tokens: the whole batch is
    gathered as one process holds it and whitened alike (one process: these advantages)."""
    every = masked_whiten(run.all_rows(advantages), run.all_rows(mask), unbiased=False)
    own = slice(share.first, share.first + len(share.prompts))
    return every[own, : mask.shape[1]]


def _ppo_minibatch(
    cfg: PPOConfig,
    run: PolicyRun,
    part: dict,
    step: int,
    timer: PhaseTimer,
    values: torch.Tensor | None,
) -> dict:
    """One clipped critic step and one clipped actor step on a slice of the rollout, each
    accumulated over micro-batches; `values`: the critic's values of this slice with autograd
    already there (None = run the critic). The critic steps first, so its graphs are freed
    before the actor's are built."""
    # the slice's tokens on every rank (this rank's rows may be none of them)
    denominator = run.global_sum(
        loss_denominator(part["response_mask"], LossAggregation.TOKEN_MEAN)
    )
    if run.models.critic is None:  # REINFORCE++: the actor alone
        return _actor_step(cfg, run, part, step, timer, denominator)
    with timer("forward_backward"):
        if values is not None:  # the shared pass (one process): its graph covers the slice
            critic_loss = _critic_loss(cfg, run, part, denominator, values)
            critic_loss.backward()
            critic_value = critic_loss.item()
        else:
            critic_value, _ = run.backward(
                part,
                cfg.micro_batch_size,
                lambda micro, d=denominator: (_critic_loss(cfg, run, micro, d, None), {}),
                model=run.models.critic,
            )
    with timer("optimizer"):
        critic_lr = linear_warmup(step, cfg.warmup_steps) * cfg.critic_lr
        clipped_step(
            run.models.critic_optimizer,
            critic_lr,
            cfg.max_grad_norm,
            guard=run.guard,
            step=step,
            loss=critic_value,
        )
    return {**_actor_step(cfg, run, part, step, timer, denominator), "value_loss": critic_value}


def _actor_step(
    cfg: PPOConfig, run: PolicyRun, part: dict, step: int, timer: PhaseTimer, denominator
) -> dict:
    """One clipped actor step on a slice of the rollout, accumulated over micro-batches."""
    with timer("forward_backward"):
        loss, stats = run.backward(
            part,
            cfg.micro_batch_size,
            lambda micro, d=denominator: _actor_loss(cfg, run, micro, d),
        )
    with timer("optimizer"):
        grad_norm = run.optimizer_step(step, loss)
    return {"loss": loss, "grad_norm": grad_norm, **stats}


def _critic_loss(
    cfg: PPOConfig, run: PolicyRun, micro: dict, denominator, values: torch.Tensor | None
) -> torch.Tensor:
    """The clipped value loss of a micro-batch over the mini-batch's token count."""
    mask = micro["response_mask"]
    if values is None:
        with autocast(run.models.device, cfg.precision):
            values = response_values(
                run.models.critic, micro["input_ids"], micro["attention_mask"], mask.shape[1]
            )
    return value_loss(
        values,
        micro["old_values"],
        micro["returns"],
        mask,
        cfg.value_clip or None,
        LossAggregation.TOKEN_MEAN,
        denominator,
    )


def _actor_loss(cfg: PPOConfig, run: PolicyRun, micro: dict, denominator) -> tuple:
    """The clipped surrogate of a micro-batch over the mini-batch's token count."""
    mask = micro["response_mask"]
    current = run.policy_logprobs(micro, temperature=cfg.temperature, with_entropy=True)
    policy = ppo_policy_loss(
        current.logprobs,
        micro["old_logprobs"],
        micro["advantages"],
        mask,
        clip_low=cfg.clip_eps,
        clip_high=cfg.clip_eps,
        aggregation=LossAggregation.TOKEN_MEAN,
        denominator=denominator,
    )
    return policy.loss, {
        "clip_fraction": token_stat(policy.clip_fraction, mask),
        "entropy": token_stat(masked_mean(current.entropy, mask), mask),
        **mismatch_stats(current.logprobs, micro["old_logprobs"], mask),
    }
