"""Turning a K-way ranking into weighted Bradley-Terry pairs (InstructGPT, seed 001)."""

import math

import torch


def ranking_comparisons(num_responses: int) -> int:
    """C(K,2): the pairwise comparisons a ranking of K responses stands for, the unit in which
    labels are counted and budgeted (a pair is a ranking of two: one comparison)."""
    return math.comb(num_responses, 2)


def ranking_to_pairs(
    ranks: list[int] | tuple[int, ...],
) -> tuple[list[int], list[int], list[float]]:
    """All ordered pairs (winner, loser) of a ranking, each weighted 1 / (number of pairs).

    InstructGPT puts all C(K,2) comparisons of one prompt in one batch and divides that
    prompt's loss by C(K,2), so a prompt counts once however many responses it has.

    Args:
        ranks: rank of each response, 0 = best; equal ranks are ties and form no pair.
    Returns:
        winners, losers: response indices; weights: 1 / number_of_pairs for each pair
        (= 1 / C(K,2) without ties).
    """
    winners, losers = [], []
    for i, rank_i in enumerate(ranks):
        for j, rank_j in enumerate(ranks):
            if rank_i < rank_j:
                winners.append(i)
                losers.append(j)
    weight = 1.0 / len(winners) if winners else 0.0
    return winners, losers, [weight] * len(winners)


def gather_pair_rewards(
    rewards: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick (chosen, rejected) rewards for each pair from the per-response rewards.

    Args:
        rewards: (responses,) or (responses, heads) one reward per scored response.
        winners, losers: (pairs,) long indices into the responses.
    """
    return rewards[winners], rewards[losers]
