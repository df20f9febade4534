"""Reward-model losses: Bradley-Terry on pairs, reward centring, process (step) labels.

Bradley-Terry (InstructGPT; seeds 001-004): P(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l)),
trained by maximum likelihood, optionally with a margin the winner must clear (Llama 2).
"""

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    weights: torch.Tensor,
    denominator: float | torch.Tensor,
    margins: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_pairs w * -log sigmoid(r_w - r_l - margin) / denominator.

    Args:
        chosen_rewards, rejected_rewards: (pairs,) or (pairs, heads) scalar rewards.
        weights: (pairs,) or (pairs, heads) per-pair weight, e.g. 1/C(K,2) for the pairs
            of a K-way ranking, or bootstrap counts for an ensemble head.
        denominator: e.g. the number of prompts (ranking form) or pairs (pairwise mean).
        margins: (pairs,) optional margin, broadcast over heads.
    Returns:
        scalar loss. `-logsigmoid` is used instead of `log(sigmoid)`, which underflows.
    """
    diff = chosen_rewards - rejected_rewards
    if margins is not None:
        diff = diff - (margins if diff.dim() == 1 else margins.unsqueeze(-1))
    return (weights * -F.logsigmoid(diff)).sum() / denominator


def reward_centering_loss(rewards: torch.Tensor, denominator: float | torch.Tensor) -> torch.Tensor:
    """sum r^2 / denominator: pulls rewards towards zero mean (Eisenstein et al. 2023) so
    their scale stays comparable between reward models and across training."""
    return rewards.pow(2).sum() / denominator


def process_reward_loss(
    step_logits: torch.Tensor,
    step_labels: torch.Tensor,
    step_mask: torch.Tensor,
    denominator: float | torch.Tensor,
) -> torch.Tensor:
    """Binary cross-entropy of per-step correctness (process reward model, Lightman et al. 2023).

    Args:
        step_logits: (batch, steps) logit that each step is correct.
        step_labels: (batch, steps) float 1.0 = correct, 0.0 = wrong.
        step_mask: (batch, steps) bool, True = a real step (False = padding).
        denominator: number of steps counted (in the whole batch).
    """
    losses = F.binary_cross_entropy_with_logits(step_logits, step_labels, reduction="none")
    return torch.where(step_mask, losses, torch.zeros_like(losses)).sum() / denominator
