"""Labels to training data: K-way rankings (`rlhfkit rm`, `rlhfkit dpo`) or TRL preference
pairs, from plain lists of `Item` and `Submission`, whatever stored them; and the flagged
responses, for review.

Rules, the same for both formats:
- Each labeller's latest submission of an item counts (`latest_submissions`); skipped ones are
  left out.
- Ranks are made dense (0, 1, 2, ... by distinct value), so a rank gap counts the levels
  between two responses whatever numbers the labeller's tool used.
- Empty responses are left out (a training row needs text), and so is every copy of a text
  the ranking places at two different ranks (it would be preferred to itself: the pairs would
  contradict each other); copies at one rank are a tie and stay. A ranking left with fewer
  than two responses or with every response tied is left out: it prefers nothing.
- Flagged responses stay in the ranking; a ranking row carries `flags`, aligned with
  `responses`: the flags each response got (an empty list when none).
- `merge=True` gives one ranking per item instead of one per labeller: each response's mean
  dense rank across the item's labellers (exact fractions), equal means tied, then made dense.
- A conversational prompt (a message list) gets each response as one assistant message, the
  form rlhfkit and TRL read for conversations.
"""

from collections import defaultdict
from collections.abc import Sequence
from enum import Enum
from fractions import Fraction
from pathlib import Path

from rlhfkit.data.loading import write_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.candidates import cannot_write, submission_problem
from rlhfkit.labelling.records import Item, Submission


class ExportFormat(str, Enum):
    RANKINGS = "rankings"
    """`prompt`, `responses` best to worst, `ranks` (equal = tie), `flags`, `item_id`,
    `labeller`, `submitted_at`."""
    PAIRS = "pairs"
    """`prompt`, `chosen`, `rejected`, `margin` (the rank gap), `ranking_id`."""
    FLAGS = "flags"
    """One row per flagged response, skipped items' too: `prompt`, `response`, `flag`,
    `item_id`, `labeller`, `skipped`, `comment`, `submitted_at`. For review, not training."""


def latest_submissions(submissions: list[Submission]) -> list[Submission]:
    """One submission per (item, labeller): the latest by `submitted_at` (of equal times, the
    later in the list), so a labeller who revises an item is counted once, as revised."""
    latest: dict[tuple[str, str], Submission] = {}
    for submission in submissions:
        key = (submission.item_id, submission.labeller)
        if key not in latest or submission.submitted_at >= latest[key].submitted_at:
            latest[key] = submission
    return list(latest.values())


def dense_ranks(values: Sequence) -> tuple[int, ...]:
    """Ranks 0, 1, 2, ... by distinct value, smallest first: (0, 3, 3, 7) -> (0, 1, 1, 2)."""
    level = {value: index for index, value in enumerate(sorted(set(values)))}
    return tuple(level[value] for value in values)


def mean_ranks(rank_lists: list[Sequence[int]]) -> list[Fraction]:
    """Each response's mean dense rank over several labellers' rankings, as exact fractions
    (so equal means compare equal): (0, 1, 2) and (1, 0, 2) -> (1/2, 1/2, 2)."""
    dense = [dense_ranks(ranks) for ranks in rank_lists]
    return [Fraction(sum(column), len(dense)) for column in zip(*dense)]


def judged_by_item(
    items: list[Item], submissions: list[Submission]
) -> list[tuple[Item, list[Submission]]]:
    """Every item with its labellers' latest non-skipped submissions (sorted by labeller), in
    the items' order; items nobody ranked are left out.

    Raises:
        RlhfkitError: a submission of an unknown item, or one that does not fit its item.
    """
    by_id = {item.item_id: item for item in items}
    judged: dict[str, list[Submission]] = defaultdict(list)
    for submission in latest_submissions(submissions):
        item = by_id.get(submission.item_id)
        problem = "no such item" if item is None else submission_problem(item, submission)
        if problem is not None:
            raise RlhfkitError(
                f"submission of item {submission.item_id!r} by {submission.labeller!r}: {problem}"
            )
        if not submission.skipped:
            judged[submission.item_id].append(submission)
    return [
        (item, sorted(judged[item.item_id], key=lambda s: s.labeller))
        for item in items
        if judged[item.item_id]
    ]


def rankings_rows(
    items: list[Item], submissions: list[Submission], *, merge: bool = False
) -> list[dict]:
    """K-way ranking rows: one per (item, labeller), or with `merge` one per item (the module
    docstring gives the rules)."""
    rows = []
    for item, judged in judged_by_item(items, submissions):
        groups = [judged] if merge else [[submission] for submission in judged]
        for group in groups:
            ranks = mean_ranks([s.ranks for s in group])
            flags = [sorted({s.flags[i] for s in group if i in s.flags}) for i in range(len(ranks))]
            labeller = ",".join(s.labeller for s in group)
            submitted_at = max(s.submitted_at for s in group)
            row = ranking_row(item, ranks, flags, labeller, submitted_at)
            if row is not None:
                rows.append(row)
    return rows


def ranking_row(
    item: Item, ranks: Sequence, flags: list[list[str]], labeller: str, submitted_at: str
) -> dict | None:
    """One ranking row from per-response ranks (in `item.responses` order, smaller = better);
    None when fewer than two non-empty, uncontradicted responses are left or all of them tie."""
    kept = [i for i, response in enumerate(item.responses) if response.strip()]
    ranks_of_text: dict[str, set] = defaultdict(set)
    for i in kept:
        ranks_of_text[item.responses[i]].add(ranks[i])
    kept = [i for i in kept if len(ranks_of_text[item.responses[i]]) == 1]
    order = sorted(kept, key=lambda i: (ranks[i], i))
    dense = dense_ranks([ranks[i] for i in order])
    if len(order) < 2 or dense[0] == dense[-1]:
        return None
    return {
        "prompt": item.prompt,
        "responses": [as_response(item.prompt, item.responses[i]) for i in order],
        "ranks": list(dense),
        "flags": [flags[i] for i in order],
        "item_id": item.item_id,
        "labeller": labeller,
        "submitted_at": submitted_at,
    }


def as_response(prompt, text: str):
    """A response in the prompt's form: a string, or one assistant message after a chat."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def pair_rows(
    items: list[Item], submissions: list[Submission], *, merge: bool = False
) -> list[dict]:
    """TRL preference pairs: every pair of responses at different ranks of every ranking
    (`rankings_rows`), the better one chosen; `margin` is the dense rank gap, `ranking_id`
    names the ranking (`item_id:labeller`)."""
    rows = []
    for ranking in rankings_rows(items, submissions, merge=merge):
        responses, ranks = ranking["responses"], ranking["ranks"]
        ranking_id = f"{ranking['item_id']}:{ranking['labeller']}"
        for i in range(len(ranks)):
            for j in range(i + 1, len(ranks)):
                if ranks[i] < ranks[j]:
                    rows.append(
                        {
                            "prompt": ranking["prompt"],
                            "chosen": responses[i],
                            "rejected": responses[j],
                            "margin": ranks[j] - ranks[i],
                            "ranking_id": ranking_id,
                        }
                    )
    return rows


def flag_rows(items: list[Item], submissions: list[Submission]) -> list[dict]:
    """Every response a labeller flagged, in their latest submission of its item, ranked or
    skipped: a response flagged unsafe is often skipped rather than ranked, and the rankings
    keep flags only of what they rank. In the items' order, then by labeller and response."""
    by_id = {item.item_id: item for item in items}
    order = {item.item_id: index for index, item in enumerate(items)}
    latest = [s for s in latest_submissions(submissions) if s.flags]
    rows = []
    for submission in sorted(latest, key=lambda s: (order.get(s.item_id, -1), s.labeller)):
        item = by_id.get(submission.item_id)
        problem = "no such item" if item is None else submission_problem(item, submission)
        if problem is not None:
            raise RlhfkitError(
                f"submission of item {submission.item_id!r} by {submission.labeller!r}: {problem}"
            )
        for index, flag in sorted(submission.flags.items()):
            rows.append(
                {
                    "prompt": item.prompt,
                    "response": as_response(item.prompt, item.responses[index]),
                    "flag": flag,
                    "item_id": item.item_id,
                    "labeller": submission.labeller,
                    "skipped": submission.skipped,
                    "comment": submission.comment,
                    "submitted_at": submission.submitted_at,
                }
            )
    return rows


def write_export(
    items: list[Item],
    submissions: list[Submission],
    path: str | Path,
    fmt: ExportFormat,
    *,
    merge: bool = False,
) -> int:
    """Write rankings, pairs or flags as JSON lines; returns the number of rows.

    Raises:
        RlhfkitError: nothing to write (no ranking prefers one response to another; for flags,
            no response is flagged), or `path` cannot be written (a directory, a folder that
            cannot be made).
    """
    fmt = ExportFormat(fmt)
    if fmt is ExportFormat.FLAGS:
        if merge:
            raise RlhfkitError("--merge merges rankings: the flags export has none")
        rows, none = flag_rows(items, submissions), "no submission flags a response"
    else:
        make_rows = pair_rows if fmt is ExportFormat.PAIRS else rankings_rows
        rows = make_rows(items, submissions, merge=merge)
        none = "no submission ranks two responses apart"
    if not rows:
        raise RlhfkitError(f"nothing to export to {path}: {none}")
    try:
        write_jsonl(path, rows)
    except OSError as error:
        raise cannot_write(path, error) from None
    return len(rows)
