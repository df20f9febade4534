"""The ranking rows iterative GRPO writes and reads: each round's labelled samples as rankings
(`ranked_rows`), the user's `reward_data` as rankings (`reward_history`), and the share of
earlier rows replayed into a round's reward-model data (`replay_rows`)."""

import random
from pathlib import Path

from rlhfkit.data.detect import detect_format
from rlhfkit.data.formats import Format, PreferenceExample, RankingExample
from rlhfkit.data.loading import load_examples, read_rows
from rlhfkit.errors import RlhfkitError


def replay_rows(
    new: list[dict], history: list[dict], fraction: float, rng: random.Random
) -> list[dict]:
    """Rows drawn from `history` so they make up `fraction` of new + replayed (fewer if history is
    short)."""
    wanted = round(len(new) * fraction / (1.0 - fraction))
    return rng.sample(history, min(wanted, len(history)))


def read_plain_rows(path: str | Path) -> list[dict]:
    """A dataset's rows (JSONL, JSON, Parquet, a saved dataset) as plain dicts."""
    return [row for _, row in read_rows(path)]


def reward_history(path: str | Path) -> list[dict]:
    """`reward_data` as ranking rows, checked as a reward model's data is, so a bad row stops
    the run before round 1, naming the user's file, row and field (not round 1's mix)."""
    fmt = detect_format(path)
    if fmt not in (Format.PREFERENCE, Format.RANKING):
        raise RlhfkitError(
            f"{path}: reward_data needs preference pairs (prompt, chosen, rejected) or rankings "
            f"(prompt, responses, ranks), found {fmt.value} data"
        )
    return [as_ranking_row(example) for example in load_examples(path, fmt)]


def as_ranking_row(example: PreferenceExample | RankingExample) -> dict:
    """A pair as a ranking of two (an implicit prompt already split off), a ranking as itself,
    so replayed pairs and new rankings share one file."""
    if isinstance(example, PreferenceExample):
        return {"prompt": example.prompt, "responses": [example.chosen, example.rejected]}
    return {
        "prompt": example.prompt,
        "responses": list(example.responses),
        "ranks": list(example.ranks),
    }


def ranked_rows(prompts, texts, rankings: list[tuple[int, ...] | None]) -> list[dict]:
    """Ranking rows, responses best first (with `ranks` where some are tied), without empty
    responses, and without prompts left with no preference (none given, one response, or
    every one tied)."""
    rows = []
    for prompt, responses, ranks in zip(prompts, texts, rankings):
        if ranks is None:
            continue
        kept = sorted(
            (i for i in range(len(responses)) if responses[i].strip()), key=lambda i: ranks[i]
        )
        kept_ranks = [ranks[i] for i in kept]
        levels = sorted(set(kept_ranks))
        if len(levels) < 2:
            continue
        row = {"prompt": prompt.prompt, "responses": [responses[i] for i in kept]}
        if len(levels) < len(kept):  # a tie: the ranks say which
            row["ranks"] = [levels.index(rank) for rank in kept_ranks]
        rows.append(row)
    return rows
