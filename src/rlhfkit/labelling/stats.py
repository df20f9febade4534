"""The numbers InstructGPT reports about its labels: agreement between labellers, position bias,
time per item, skips and flags. Each labeller's latest submission of an item counts
(`export.latest_submissions`).

Agreement, on items ranked by two or more labellers, over every two labellers of an item:
- pairwise agreement: of the item's response pairs (i, j), the share both labellers relate the
  same way: both prefer i, both prefer j, or both tie them. A tie is a third answer, so it
  agrees only with a tie. Beside it, the agreement on pairs neither labeller tied.
- Kendall tau-b between the two rankings: (concordant - discordant) pairs divided by
  sqrt((pairs - pairs tied by the first) * (pairs - pairs tied by the second)); 1 = the same
  order, -1 = reversed. Undefined (left out) when a labeller tied every response.
Position bias: how often the response shown first is ranked best. A response tied for best with
m - 1 others counts 1/m (a half for a two-way tie), so a labeller blind to position scores 1/K
on average, the chance level it is shown beside.
"""

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import combinations

from rlhfkit.labelling.export import judged_by_item, latest_submissions
from rlhfkit.labelling.records import Item, Submission


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def pair_relations(ranks: Sequence[int]) -> list[int]:
    """For each response pair i < j: -1 when i is ranked better, 1 when j is, 0 for a tie."""
    return [_sign(ranks[i] - ranks[j]) for i, j in combinations(range(len(ranks)), 2)]


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two rankings of the same items (Kendall 1945; scipy's default):

        tau_b = (n_c - n_d) / sqrt((n_0 - n_x) * (n_0 - n_y))

    n_c, n_d: concordant and discordant pairs, n_0 = n(n-1)/2 pairs, n_x and n_y: pairs tied in
    x and in y. None when either ranking ties every pair (the denominator is 0).
    """
    rx, ry = pair_relations(x), pair_relations(y)
    concordant = sum(1 for a, b in zip(rx, ry) if a * b > 0)
    discordant = sum(1 for a, b in zip(rx, ry) if a * b < 0)
    pairs = len(rx)
    untied_x, untied_y = pairs - rx.count(0), pairs - ry.count(0)
    if untied_x == 0 or untied_y == 0:
        return None
    return (concordant - discordant) / math.sqrt(untied_x * untied_y)


def pairwise_agreement(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int, int]:
    """(pairs related alike, pairs, untied pairs ordered alike, pairs neither labeller tied)."""
    ra, rb = pair_relations(a), pair_relations(b)
    untied = [(x, y) for x, y in zip(ra, rb) if x != 0 and y != 0]
    return (
        sum(x == y for x, y in zip(ra, rb)),
        len(ra),
        sum(x == y for x, y in untied),
        len(untied),
    )


def agreement(judged: list[tuple[Item, list[Submission]]]) -> dict:
    """Pairwise agreement and mean Kendall tau-b over every two labellers of every item ranked
    by two or more (the module docstring defines them); None where nothing was measured."""
    same = pairs = untied_same = untied = labeller_pairs = items = 0
    taus = []
    for _, group in judged:
        if len(group) < 2:
            continue
        items += 1
        for first, second in combinations(group, 2):
            labeller_pairs += 1
            counts = pairwise_agreement(first.ranks, second.ranks)
            same, pairs = same + counts[0], pairs + counts[1]
            untied_same, untied = untied_same + counts[2], untied + counts[3]
            tau = kendall_tau_b(first.ranks, second.ranks)
            if tau is not None:
                taus.append(tau)
    return {
        "items": items,
        "labeller_pairs": labeller_pairs,
        "response_pairs": pairs,
        "pairwise": same / pairs if pairs else None,
        "untied_pairs": untied,
        "pairwise_untied": untied_same / untied if untied else None,
        "kendall_tau_b": statistics.fmean(taus) if taus else None,
        "tau_pairs": len(taus),
    }


def first_shown_best(submission: Submission) -> float:
    """1 when the response shown first is ranked best alone, 1/m when it shares the best rank
    with m - 1 others, else 0."""
    best = min(submission.ranks)
    if submission.ranks[submission.shown_order[0]] != best:
        return 0.0
    return 1.0 / submission.ranks.count(best)


def position_bias(judged: list[tuple[Item, list[Submission]]]) -> dict:
    """How often the response shown first is ranked best, against chance (the mean of 1/K);
    rankings whose shown order is unknown (imported ones) are left out."""
    shown = [s for _, group in judged for s in group if s.shown_order]
    if not shown:
        return {"rankings": 0, "first_shown_best": None, "chance": None}
    return {
        "rankings": len(shown),
        "first_shown_best": statistics.fmean(first_shown_best(s) for s in shown),
        "chance": statistics.fmean(1 / len(s.ranks) for s in shown),
    }


def labeller_stats(submissions: list[Submission]) -> dict[str, dict]:
    """Per labeller: items ranked and skipped, responses flagged, and the median and mean
    seconds spent on a ranked item (None without one whose time was recorded)."""
    by_labeller: dict[str, list[Submission]] = defaultdict(list)
    for submission in submissions:
        by_labeller[submission.labeller].append(submission)
    out = {}
    for labeller in sorted(by_labeller):
        own = by_labeller[labeller]
        ranked = [s for s in own if not s.skipped]
        # an imported ranking without a recorded time (Argilla) is not one of 0 s
        seconds = [s.seconds for s in ranked if s.seconds is not None]
        out[labeller] = {
            "ranked": len(ranked),
            "skipped": sum(s.skipped for s in own),
            "flags": sum(len(s.flags) for s in own),
            "median_seconds": statistics.median(seconds) if seconds else None,
            "mean_seconds": statistics.fmean(seconds) if seconds else None,
        }
    return out


def label_stats(items: list[Item], submissions: list[Submission]) -> dict:
    """Every statistic of a set of labels, as plain data (`render_stats` prints it)."""
    latest = latest_submissions(submissions)
    judged = judged_by_item(items, submissions)
    flags = Counter(flag for s in latest for flag in s.flags.values())
    return {
        "items": len(items),
        "ranked_items": len(judged),
        "submissions": len(latest),
        "skipped": sum(s.skipped for s in latest),
        "flags": dict(sorted(flags.items())),
        "agreement": agreement(judged),
        "position_bias": position_bias(judged),
        "labellers": labeller_stats(latest),
    }


def render_stats(stats: dict) -> str:
    """`label_stats` as a plain-text report with one table of labellers."""
    flags = ", ".join(f"{name} {count}" for name, count in stats["flags"].items()) or "none"
    agree, bias = stats["agreement"], stats["position_bias"]
    lines = [
        f"items: {stats['items']}, ranked: {stats['ranked_items']}; submissions: "
        f"{stats['submissions']} ({stats['skipped']} skipped); flags: {flags}",
        f"agreement (items ranked by 2+ labellers: {agree['items']}, labeller pairs: "
        f"{agree['labeller_pairs']})",
        f"  pairwise        {_number(agree['pairwise'])}  over {agree['response_pairs']} "
        "response pairs (a tie agrees only with a tie)",
        f"  pairwise untied {_number(agree['pairwise_untied'])}  over {agree['untied_pairs']} "
        "pairs neither labeller tied",
        f"  Kendall tau-b   {_number(agree['kendall_tau_b'])}  mean of {agree['tau_pairs']} "
        "labeller pairs",
        f"position bias: first shown ranked best {_number(bias['first_shown_best'])} of "
        f"{bias['rankings']} rankings (chance 1/K: {_number(bias['chance'])})",
        "",
    ]
    width = max([20, *map(len, stats["labellers"])])  # a long name widens the column
    header = f"{'skipped':>7} {'flags':>6} {'median s':>9} {'mean s':>9}"
    lines.append(f"{'labeller':<{width}} {'ranked':>7} {header}")
    for name, row in stats["labellers"].items():
        lines.append(
            f"{name:<{width}} {row['ranked']:>7} {row['skipped']:>7} {row['flags']:>6} "
            f"{_number(row['median_seconds'], 1):>9} {_number(row['mean_seconds'], 1):>9}"
        )
    return "\n".join(lines)


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
