"""PPO losses: the clipped policy surrogate (with dual clip) and the clipped value loss.

Policy (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"), per token:
    ratio = exp(logprobs - old_logprobs)
    loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
Separate low/high clip ranges allow DAPO's "clip-higher". Dual clip (Ye et al. 2020, "Mastering
Complex Control in MOBA Games with Deep RL") caps the loss of a negative advantage at -c * A,
so a token whose ratio has exploded cannot dominate the batch.
Value (OpenAI baselines ppo2): 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -e, e) - R)^2).
"""

from typing import NamedTuple

import torch

from rlhfkit.objectives.aggregate import LossAggregation, aggregate_loss
from rlhfkit.objectives.masked import masked_mean


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
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    aggregation: LossAggregation,
    denominator: float | torch.Tensor,
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
    Returns:
        PolicyLoss(loss, clip_fraction).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    ratio = torch.exp(logprobs - old_logprobs)
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
