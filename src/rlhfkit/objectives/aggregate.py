"""Reducing per-token losses to one number with an explicit denominator.

Each form is a sum over this batch divided by a count over the *global* batch (all micro-batches
and processes), so summing the losses of the parts equals the loss of the whole (OpenRLHF
`aggregate_loss`); dividing by a local count would weight short micro-batches more.
"""

from enum import Enum

import torch

from rlhfkit.objectives.masked import masked_mean, masked_sum


class LossAggregation(str, Enum):
    TOKEN_MEAN = "token_mean"
    """sum over all response tokens / number of response tokens (DAPO): long answers weigh more."""
    SEQUENCE_MEAN = "sequence_mean"
    """Mean over each sequence's tokens, then / number of sequences (GRPO, DeepSeekMath)."""
    CONSTANT_LENGTH = "constant_length"
    """sum over all response tokens / (number of sequences * a constant max length) (Dr. GRPO):
    no length normalisation, so no bias towards long wrong or short right answers."""


def _token_sum(losses: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    return masked_sum(losses, response_mask)


def _sequence_mean_sum(losses: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(losses, response_mask, dim=1).sum()


# Token mean and constant length share the numerator; only what the caller divides by differs.
_NUMERATORS = {
    LossAggregation.TOKEN_MEAN: _token_sum,
    LossAggregation.SEQUENCE_MEAN: _sequence_mean_sum,
    LossAggregation.CONSTANT_LENGTH: _token_sum,
}

_DENOMINATORS = {
    LossAggregation.TOKEN_MEAN: lambda mask, max_len: mask.sum(),
    LossAggregation.SEQUENCE_MEAN: lambda mask, max_len: torch.tensor(
        mask.shape[0], device=mask.device
    ),
    LossAggregation.CONSTANT_LENGTH: lambda mask, max_len: torch.tensor(
        mask.shape[0] * max_len, device=mask.device
    ),
}


def aggregate_loss(
    losses: torch.Tensor,
    response_mask: torch.Tensor,
    aggregation: LossAggregation,
    denominator: float | torch.Tensor,
) -> torch.Tensor:
    """One scalar from per-token losses: numerator(losses) / denominator.

    Args:
        losses: (batch, response_len) per-token losses; padded positions are ignored.
        response_mask: (batch, response_len) bool, True = the token counts.
        aggregation: which numerator, see `LossAggregation`.
        denominator: the global count that matches `aggregation`: the sum of
            `loss_denominator(...)` over every micro-batch and process of the step.
    Returns:
        scalar. token mean / constant length: sum_{i,t} m_it l_it / D;
        sequence mean: sum_i (sum_t m_it l_it / sum_t m_it) / D (an empty row adds 0).
    """
    return _NUMERATORS[LossAggregation(aggregation)](losses, response_mask) / denominator


def loss_denominator(
    response_mask: torch.Tensor, aggregation: LossAggregation, max_len: int | None = None
) -> torch.Tensor:
    """This batch's share of the denominator; sum it over micro-batches and processes.

    Args:
        response_mask: (batch, response_len) bool, True = the token counts.
        aggregation: token mean counts tokens; sequence mean counts rows (an empty response is
            still a sample); constant length counts rows * max_len.
        max_len: the constant of Dr. GRPO (e.g. the generation limit); only for CONSTANT_LENGTH.
    Returns:
        scalar long tensor.
    """
    aggregation = LossAggregation(aggregation)
    if aggregation is LossAggregation.CONSTANT_LENGTH and max_len is None:
        raise ValueError("constant_length aggregation needs max_len (the constant sequence length)")
    return _DENOMINATORS[aggregation](response_mask, max_len)
