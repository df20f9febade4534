"""Batches for reward models: every response of a group (a K-way ranking, or a pair) is
scored once, and all the group's pairs index into those scores (InstructGPT's C(K,2) trick:
K forward passes instead of 2 * C(K,2))."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.collate import pad_batch
from rlhfkit.data.detect import detect_format
from rlhfkit.data.formats import Format
from rlhfkit.data.loading import load_examples
from rlhfkit.data.tokenize import (
    EncodedExample,
    TokenizeReport,
    Truncation,
    tokenize_preferences,
    tokenize_rankings,
)
from rlhfkit.errors import RlhfkitError
from rlhfkit.objectives.ranking import ranking_comparisons, ranking_to_pairs


@dataclass(frozen=True)
class RankedGroup:
    responses: list[EncodedExample]  # best first
    ranks: tuple[int, ...]  # 0 = best; equal ranks are ties
    margin: float = 0.0  # the margin the winner must clear (pairs only)


def groups_from_pairs(
    pairs: list[tuple[EncodedExample, EncodedExample, float]],
) -> list[RankedGroup]:
    return [RankedGroup([chosen, rejected], (0, 1), margin) for chosen, rejected, margin in pairs]


def groups_from_rankings(
    rankings: list[tuple[list[EncodedExample], tuple[int, ...]]],
) -> list[RankedGroup]:
    return [RankedGroup(responses, ranks) for responses, ranks in rankings]


def load_ranked_groups(
    path: str | Path,
    tokenizer: Any,
    *,
    max_length: int,
    truncation: Truncation | str,
    needed_by: str,
) -> tuple[list[RankedGroup], TokenizeReport]:
    """Preference pairs or K-way rankings read from `path` and tokenised, as ranked groups (a
    pair is a ranking of two), with the report of what tokenising truncated and dropped.

    Raises:
        RlhfkitError: the data has another format (the message names `needed_by`, e.g. "DPO"),
            or no row is left with two responses of different rank.
    """
    fmt = detect_format(path)
    if fmt is Format.RANKING:
        rankings, report = tokenize_rankings(
            tokenizer, load_examples(path, fmt), max_length=max_length, truncation=truncation
        )
        groups = groups_from_rankings(rankings)
    elif fmt is Format.PREFERENCE:
        pairs, report = tokenize_preferences(
            tokenizer, load_examples(path, fmt), max_length=max_length, truncation=truncation
        )
        groups = groups_from_pairs(pairs)
    else:
        hint = ""
        if fmt is Format.STEPS:
            hint = " (step labels train a process reward model: rlhfkit rm objective=process)"
        raise RlhfkitError(
            f"{path}: {needed_by} needs preference pairs (prompt, chosen, rejected) "
            f"or rankings (prompt, responses, ranks), found {fmt.value} data{hint}"
        )
    if not any(len(set(group.ranks)) > 1 for group in groups):
        raise RlhfkitError(
            f"{path}: no row left with two responses of different rank "
            f"({report.summary()}): nothing to prefer"
        )
    return groups, report


def group_labels(groups: list[RankedGroup]) -> int:
    """Labels the groups cost: C(K,2) pairwise comparisons per ranking of K (ties included: a
    tie is a judgement too)."""
    return sum(ranking_comparisons(len(group.responses)) for group in groups)


def first_groups_within(groups: list[RankedGroup], max_labels: int) -> list[RankedGroup]:
    """The leading groups whose labels add up to at most `max_labels` (0 = all): runs compared
    at the same labelling budget see the same rows."""
    if max_labels <= 0:
        return groups
    kept, used = [], 0
    for group in groups:
        used += ranking_comparisons(len(group.responses))
        if used > max_labels:
            break
        kept.append(group)
    return kept


def collate_groups(groups: list[RankedGroup], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One padded batch of all responses plus the pair structure.

    Returns the `pad_batch` tensors over all responses and, per pair: `winners`, `losers`
    (indices into the responses), `pair_weights` (1 / pairs of its group), `margins`,
    `pair_group` (index of its group in `groups`); per group: `best` (index of its top response).
    """
    flat = [response for group in groups for response in group.responses]
    batch = pad_batch(flat, pad_token_id)
    winners, losers, weights, margins, pair_group, best = [], [], [], [], [], []
    offset = 0
    for g, group in enumerate(groups):
        w, lo, wt = ranking_to_pairs(group.ranks)
        winners += [offset + i for i in w]
        losers += [offset + j for j in lo]
        weights += wt
        margins += [group.margin] * len(w)
        pair_group += [g] * len(w)
        best.append(offset + min(range(len(group.ranks)), key=lambda i: group.ranks[i]))
        offset += len(group.responses)
    batch.update(
        winners=torch.tensor(winners, dtype=torch.long),
        losers=torch.tensor(losers, dtype=torch.long),
        pair_weights=torch.tensor(weights),
        margins=torch.tensor(margins),
        pair_group=torch.tensor(pair_group, dtype=torch.long),
        best=torch.tensor(best, dtype=torch.long),
    )
    return batch


def ranking_layout(groups: list[RankedGroup]) -> dict[str, torch.Tensor]:
    """The groups as rows of a (groups, K_max) table over the flat responses of `collate_groups`,
    for listwise losses: `ranking_index` (long, the response's index in the flat batch),
    `ranking_ranks` (long, 0 = best) and `ranking_mask` (bool, True = a real response; groups
    with fewer than K_max responses are padded with index 0 and rank 0)."""
    width = max(len(group.responses) for group in groups)
    index = torch.zeros(len(groups), width, dtype=torch.long)
    ranks = torch.zeros(len(groups), width, dtype=torch.long)
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    offset = 0
    for g, group in enumerate(groups):
        size = len(group.responses)
        index[g, :size] = torch.arange(offset, offset + size)
        ranks[g, :size] = torch.tensor(group.ranks)
        mask[g, :size] = True
        offset += size
    return {"ranking_index": index, "ranking_ranks": ranks, "ranking_mask": mask}
