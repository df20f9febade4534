"""Supervised fine-tuning loss: next-token cross-entropy on response tokens only."""

import torch

from rlhfkit.objectives.logprobs import shift_for_next_token, token_logprobs
from rlhfkit.objectives.masked import masked_sum


def sft_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    denominator: float | torch.Tensor,
) -> torch.Tensor:
    """Summed negative log-likelihood of the response tokens, divided by `denominator`.

    Args:
        logits: (batch, seq, vocab) model outputs for `input_ids`.
        input_ids: (batch, seq) token ids.
        response_mask: (batch, seq) bool, True = the token is a response token and counts
            (prompt and padding are False).
        denominator: what the sum is divided by: the number of response tokens in the whole
            (possibly accumulated or distributed) batch gives the token mean.
    Returns:
        scalar loss = -sum_t mask_t * log p(x_t | x_<t) / denominator.
    """
    logits, targets, mask = shift_for_next_token(logits, input_ids, response_mask)
    return -masked_sum(token_logprobs(logits, targets), mask) / denominator
