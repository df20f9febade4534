"""Learning from one's own samples by their reward: which responses RAFT keeps, and online RFT's
binary gradient coefficients.

RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model
Alignment") samples K responses per prompt, keeps the best ones and fine-tunes on them:
    best of K (local ranking):     keep argmax_j r_{k,j} for every prompt k
    top fraction (global ranking): keep the max(1, round(f * n)) highest rewards of the round's
                                   n responses (round half to even, as Python's)
Either can also require the response to be correct (the trainer decides what is, e.g. r >
threshold), which with f = 1 is the rejection-sampling fine-tuning of Yuan et al. 2023 (keep
every correct sample).

Online RFT (seed 003; DeepSeekMath, Shao et al. 2024, section 5.2) weights the log-likelihood of
every sampled response by a gradient coefficient that only says whether it was right:
    GC_i = +1 if response i is correct else c_wrong,    loss = -sum_i GC_i * sum_t log pi(y_it)
Seed 003 writes c_wrong = -1; DeepSeekMath's indicator I(o) is c_wrong = 0. GRPO replaces GC_i
by the group-normalised reward, so its coefficients also say *how much* better a response is.

Rows are grouped contiguously: responses [k*K, (k+1)*K) answer prompt k.
"""

from enum import Enum

import torch

from rlhfkit.objectives.aggregate import LossAggregation, aggregate_loss


class Selection(str, Enum):
    BEST_OF_K = "best_of_k"
    """The highest-reward response of each prompt (RAFT's local ranking)."""
    TOP_FRACTION = "top_fraction"
    """The highest-reward `keep_fraction` of all the round's responses (RAFT's global ranking)."""


def best_of_k(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mark the best response of each prompt.

    Args:
        rewards: (num_prompts * group_size,) one scalar per response, groups contiguous.
        group_size: K, responses per prompt.
    Returns:
        (num_prompts * group_size,) bool, True for exactly one response per prompt: the first
        of the highest reward (samples are i.i.d., so the first of a tie is as good a pick as any).
    Raises:
        ValueError: the number of rewards is not a multiple of group_size.
    """
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"{rewards.shape[0]} responses cannot be split into groups of {group_size}"
        )
    grouped = rewards.reshape(-1, group_size)  # (prompts, K)
    best = grouped.argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    return torch.zeros_like(grouped, dtype=torch.bool).scatter(1, best, True).reshape(-1)


def top_fraction(rewards: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mark the max(1, round(fraction * n)) highest rewards of all n responses, `round` half to
    even (Python's: 2.5 -> 2, 3.5 -> 4).

    Args:
        rewards: (n,) one scalar per response.
        fraction: share to keep, in (0, 1].
    Returns:
        (n,) bool; among equal rewards at the cut the earlier responses are kept.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * rewards.shape[0]))
    # a stable descending sort keeps equal rewards in their original order
    order = torch.sort(rewards, descending=True, stable=True).indices[:count]
    return torch.zeros_like(rewards, dtype=torch.bool).scatter(0, order, True)


_SELECTIONS = {
    Selection.BEST_OF_K: lambda rewards, group_size, fraction: best_of_k(rewards, group_size),
    Selection.TOP_FRACTION: lambda rewards, group_size, fraction: top_fraction(rewards, fraction),
}


def select_responses(
    rewards: torch.Tensor,
    selection: Selection,
    group_size: int,
    keep_fraction: float,
    correct: torch.Tensor | None,
) -> torch.Tensor:
    """Which responses RAFT fine-tunes on.

    Args:
        rewards: (num_prompts * group_size,) one scalar per response, groups contiguous.
        selection: best of each group, or the top fraction of the round.
        group_size: K, read by best-of-K only.
        keep_fraction: read by top-fraction only.
        correct: None, or (num_prompts * group_size,) bool: a selected response is kept only
            where True as well (a prompt whose best answer is wrong then contributes nothing).
    Returns:
        (num_prompts * group_size,) bool, True = fine-tune on this response.
    """
    kept = _SELECTIONS[Selection(selection)](rewards, group_size, keep_fraction)
    return kept if correct is None else kept & correct


def binary_coefficients(correct: torch.Tensor, wrong: float = -1.0) -> torch.Tensor:
    """Online RFT's gradient coefficients: +1 for a correct response, `wrong` for the others.

    Args:
        correct: (n,) bool, True = the response is correct (e.g. its reward > a threshold).
        wrong: coefficient of an incorrect response (-1 in seed 003, 0 in DeepSeekMath's RFT).
    Returns:
        (n,) float32 coefficients; no group normalisation, unlike GRPO.
    """
    ones = torch.ones(correct.shape, device=correct.device)
    return torch.where(correct, ones, torch.full_like(ones, wrong))


def rft_loss(
    logprobs: torch.Tensor,
    coefficients: torch.Tensor,
    response_mask: torch.Tensor,
    aggregation: LossAggregation,
    denominator: float | torch.Tensor,
) -> torch.Tensor:
    """Log-likelihood weighted by a per-response gradient coefficient (DeepSeekMath's unified
    gradient, grad = E[GC_i * grad log pi(y_it)], without any ratio or clipping).

    Args:
        logprobs: (batch, response_len) log pi_theta of the sampled tokens (with gradient).
        coefficients: (batch,) GC_i, e.g. `binary_coefficients` (no gradient).
        response_mask: (batch, response_len) bool, True = the token counts.
        aggregation, denominator: see `aggregate_loss`.
    Returns:
        scalar: aggregate over tokens of -GC_i * log pi(y_it). With every GC_i = 1 and the
        token mean this is the SFT loss of the responses.
    """
    return aggregate_loss(
        -coefficients.unsqueeze(1) * logprobs, response_mask, aggregation, denominator
    )
