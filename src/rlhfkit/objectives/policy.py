"""PPO losses: the clipped policy surrogate (with dual clip) and the clipped value loss.

Policy (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"), per token:
    ratio = exp(logprobs - old_logprobs)
    loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
Separate low/high clip ranges allow DAPO's "clip-higher". Dual clip (Ye et al. 2020, "Mastering
Complex Control in MOBA Games with Deep RL") caps the loss of a negative advantage at -c * A,
so a token whose ratio has exploded cannot dominate the batch.
GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization") replaces the per-token ratio by one
per response, the geometric mean of its tokens' ratios, clipped once per response:
    ratio_i = exp(mean_t (logprobs_it - old_logprobs_it))
Value (OpenAI baselines ppo2): 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -e, e) - R)^2).
"""

from enum import Enum
from typing import NamedTuple

import torch

from rlhfkit.objectives.aggregate import LossAggregation, aggregate_loss
from rlhfkit.objectives.masked import masked_mean, masked_sum


class RatioLevel(str, Enum):
    TOKEN = "token"
    """One ratio per token, exp(logprobs - old_logprobs) (PPO, GRPO)."""
    SEQUENCE = "sequence"
    """One ratio per response, exp(mean over its tokens of (logprobs - old_logprobs)), the same
    on every token of the response (GSPO)."""


def _token_log_ratio(logprobs, old_logprobs, response_mask):
    return logprobs - old_logprobs


def _sequence_log_ratio(logprobs, old_logprobs, response_mask):
    # (batch,) length-normalised log ratio, broadcast back to (batch, response_len)
    per_response = masked_mean(logprobs - old_logprobs, response_mask, dim=1)
    return per_response.unsqueeze(1).expand_as(logprobs)


_LOG_RATIOS = {
    RatioLevel.TOKEN: _token_log_ratio,
    RatioLevel.SEQUENCE: _sequence_log_ratio,
}


def log_ratio(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    level: RatioLevel,
) -> torch.Tensor:
    """log(pi / pi_old) at the given level.

    Args:
        logprobs, old_logprobs: (batch, response_len) log-probs of the sampled tokens.
        response_mask: (batch, response_len) bool, True = the token counts.
        level: TOKEN: logprobs - old_logprobs per token; SEQUENCE (GSPO): per response
            sum_t m_t (logprobs_t - old_logprobs_t) / sum_t m_t, on every token of it
            (0 for an empty response).
    Returns:
        (batch, response_len) log ratios; padded positions of SEQUENCE hold the row's value.
    """
    return _LOG_RATIOS[RatioLevel(level)](logprobs, old_logprobs, response_mask)


class PolicyLoss(NamedTuple):
    loss: torch.Tensor
    """Scalar loss to minimise, aggregated with the given denominator."""
    clip_fraction: torch.Tensor
    """Scalar, detached: share of this batch's counted tokens where the clipped term was the
    smaller objective (their gradient is zero). A metric, local to this batch."""


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    aggregation: LossAggregation,
    denominator: float | torch.Tensor,
    dual_clip: float | None = None,
    ratio_level: RatioLevel = RatioLevel.TOKEN,
) -> PolicyLoss:
    """Clipped surrogate loss of PPO, optionally dual-clipped, aggregated over tokens.

    Args:
        logprobs: (batch, response_len) log pi_theta of the sampled tokens (with gradient).
        old_logprobs: (batch, response_len) log pi_old, the policy that sampled them.
        advantages: (batch, response_len) per-token advantages (no gradient).
        response_mask: (batch, response_len) bool, True = the token counts.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high].
        dual_clip: c > 1 caps the loss at -c * A where A < 0; None = no dual clip.
        aggregation, denominator: see `aggregate_loss`.
        ratio_level: TOKEN (PPO) or SEQUENCE (GSPO: one length-normalised ratio per response,
            see `log_ratio`; with per-response advantages and `sequence_mean` aggregation the
            loss is GSPO's mean over responses of -min(s_i A_i, clip(s_i) A_i)).
    Returns:
        PolicyLoss(loss, clip_fraction).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, response_mask, ratio_level))
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    losses = -torch.minimum(unclipped, clipped)
    if dual_clip is not None:
        # only negative advantages are capped: for A >= 0, -c * A would lower the loss instead
        capped = torch.minimum(losses, -dual_clip * advantages)
        losses = torch.where(advantages < 0, capped, losses)
    clip_fraction = masked_mean((clipped < unclipped).to(logprobs.dtype), response_mask).detach()
    return PolicyLoss(
        aggregate_loss(losses, response_mask, aggregation, denominator), clip_fraction
    )


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range: float | None,
    aggregation: LossAggregation,
    denominator: float | torch.Tensor,
) -> torch.Tensor:
    """Squared error of the value head, pessimistically clipped around the rollout's values.

    Args:
        values: (batch, response_len) V_theta(s_t) (with gradient).
        old_values: (batch, response_len) V at rollout time, the values the returns came from.
        returns: (batch, response_len) targets R_t (e.g. GAE advantages + old values).
        response_mask: (batch, response_len) bool, True = the token counts.
        clip_range: e; None = the plain 0.5 * (V - R)^2.
        aggregation, denominator: see `aggregate_loss`.
    Returns:
        scalar: aggregate of 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -e, e) - R)^2).
    """
    losses = (values - returns).pow(2)
    if clip_range is not None:
        clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
        # the max, not the clipped term alone: a clipped step may not make the error look smaller
        losses = torch.maximum(losses, (clipped_values - returns).pow(2))
    return aggregate_loss(0.5 * losses, response_mask, aggregation, denominator)


def sequence_sum_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float,
    denominator: float | None = None,
) -> PolicyLoss:
    """PPO's clipped surrogate with one ratio per response, the product of its tokens' ratios,
    exp(sum_t logprobs - sum_t old_logprobs) (RLOO; unlike GSPO's `RatioLevel.SEQUENCE`, the
    geometric mean), on a per-response advantage, summed over the responses / `denominator`
    (None = these rows': a mean): the token-level loss on a response length of one.

    Args:
        logprobs, old_logprobs: (batch, response_len); advantages: (batch,);
        response_mask: (batch, response_len) bool.
    """
    sequence = masked_sum(logprobs, response_mask, dim=1).unsqueeze(1)
    old_sequence = masked_sum(old_logprobs, response_mask, dim=1).unsqueeze(1)
    every = torch.ones_like(sequence, dtype=torch.bool)
    return ppo_policy_loss(
        sequence,
        old_sequence,
        advantages.unsqueeze(1),
        every,
        clip_low=clip_eps,
        clip_high=clip_eps,
        aggregation=LossAggregation.TOKEN_MEAN,
        denominator=sequence.shape[0] if denominator is None else denominator,
    )
