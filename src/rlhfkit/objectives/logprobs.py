"""Token and sequence log-probabilities from logits."""

import torch

from rlhfkit.objectives.masked import masked_sum


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_ids) under softmax(logits), without a full log-softmax copy.

    Args:
        logits: (batch, seq, vocab) unnormalised scores for each position.
        token_ids: (batch, seq) the token whose log-probability is wanted at each position.
    Returns:
        (batch, seq) log-probabilities, float32 or the logits' dtype if wider.

    Naive equivalent: `logits.log_softmax(-1).gather(-1, token_ids[..., None]).squeeze(-1)`,
    which materialises a (batch, seq, vocab) tensor; here only the chosen logit and the
    logsumexp are kept: log p = logit[token] - logsumexp(logits).
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    chosen = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def shift_for_next_token(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor):
    """Align position t's logits with token t+1, the token they predict.

    Args:
        logits: (batch, seq, vocab); input_ids: (batch, seq); mask: (batch, seq) bool over input_ids.
    Returns:
        logits (batch, seq-1, vocab), targets (batch, seq-1), target mask (batch, seq-1).
    """
    return logits[:, :-1], input_ids[:, 1:], mask[:, 1:]


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log pi(response | prompt) = sum over response tokens of log p(x_t | x_<t) (DPO's sequence log-prob).

    Args:
        logits: (batch, seq, vocab) model outputs for `input_ids` (right padding is fine).
        input_ids: (batch, seq) prompt then response tokens.
        response_mask: (batch, seq) bool over `input_ids`, True = a response token that counts
            (prompt and padding are False).
    Returns:
        (batch,) summed log-probabilities, float32 or the logits' dtype if wider; 0 for a row
        without response tokens.
    """
    logits, targets, mask = shift_for_next_token(logits, input_ids, response_mask)
    return masked_sum(token_logprobs(logits, targets), mask, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H = -sum_v p_v log p_v of softmax(logits) at every position.

    Args:
        logits: (batch, seq, vocab) unnormalised scores.
    Returns:
        (batch, seq) entropies in nats, float32 or the logits' dtype if wider.

    Naive equivalent: `-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)`, which keeps two
    (batch, seq, vocab) tensors; since log p_v = logit_v - logsumexp, the entropy is
    logsumexp(logits) - sum_v p_v * logit_v and needs only the softmax.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
