"""Reward-model accuracy on held-out comparisons."""

import torch

from rlhfkit.data.ranking_batch import RankedGroup, collate_groups
from rlhfkit.models.reward import RewardModel
from rlhfkit.objectives.preference import pair_outcomes
from rlhfkit.objectives.ranking import ranking_to_pairs
from rlhfkit.runtime.device import move_batch


@torch.no_grad()
def score_groups(model: RewardModel, groups: list[RankedGroup], pad_token_id: int, batch_size: int):
    """Mean-over-heads reward of every response, group by group: list of (K,) tensors."""
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(groups), batch_size):
        chunk = groups[start : start + batch_size]
        batch = move_batch(collate_groups(chunk, pad_token_id), model.device)
        rewards = (
            model.rewards_by_length(batch["input_ids"], batch["attention_mask"])
            .float()
            .mean(dim=-1)
            .cpu()
        )
        offset = 0
        for group in chunk:
            scores.append(rewards[offset : offset + len(group.responses)])
            offset += len(group.responses)
    model.train(was_training)
    return scores


def pair_accuracy(scores: list[torch.Tensor], groups: list[RankedGroup]) -> float:
    """Share of labelled pairs (ties excluded) the model orders like the label; a score tie
    (equal up to float rounding, see `pair_outcomes`) counts one half."""
    outcomes = [o for group in pair_outcomes_by_group(scores, groups) for o in group]
    return sum(outcomes) / max(1, len(outcomes))


def pair_outcomes_by_group(
    scores: list[torch.Tensor], groups: list[RankedGroup]
) -> list[list[float]]:
    """Each group's labelled pairs (ties in the label excluded) as outcomes: 1 ordered like the
    label, 0.5 a score tie, 0 the other way round."""
    outcomes = []
    for group_scores, group in zip(scores, groups):
        winners, losers, _ = ranking_to_pairs(group.ranks)
        outcomes.append(pair_outcomes(group_scores[winners], group_scores[losers]).tolist())
    return outcomes
