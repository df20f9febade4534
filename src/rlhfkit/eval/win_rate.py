"""Win rate of one policy against another, judged by scores, with a 95% confidence interval.

A comparison is a win when the candidate's score is higher, a tie when equal up to float
rounding (`objectives.preference.pair_outcomes`, its absolute tolerance scaled by the scores'
median size so that ties do not depend on the judge's units; counted as half a win, the
convention of the DPO and AlpacaEval comparisons), else a loss.
"""

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from rlhfkit.eval.intervals import grouped_by_cluster
from rlhfkit.objectives.preference import TIE_ATOL, pair_outcomes

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class WinRate:
    wins: int
    ties: int
    losses: int
    rate: float  # (wins + ties / 2) / n
    low: float  # 95% Wilson interval
    high: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self, prefix: str = "win_rate") -> dict[str, float | int]:
        return {
            prefix: self.rate,
            f"{prefix}_low": self.low,
            f"{prefix}_high": self.high,
            f"{prefix}_ties": self.ties / max(1, self.n),
            f"{prefix}_n": self.n,  # a count, as gold_sampled_n
        }


def wilson_interval(successes: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes / n (Wilson 1927); (0, 1) when n = 0.

    successes may be fractional (ties counted as half a win), and n too (an effective count,
    `effective_count`)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the exact interval always holds p (it reaches 0 or 1 there); rounding can miss by 1e-16
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def effective_count(outcomes: Sequence[float], clusters: Sequence[Hashable]) -> float:
    """How many independent outcomes `outcomes` are worth when those of one cluster (the samples
    of one prompt, the pairs of one ranking) are correlated: n divided by the design effect
    (Kish 1965), the cluster-robust variance of the mean over the independent one,

        deff = sum_c (sum_{i in c} (o_i - p))^2 / sum_i (o_i - p)^2,    p = mean(o),

    never above n (a negative correlation within clusters does not make the interval narrower
    than independent outcomes give). Outcomes that all agree say nothing of the correlation:
    each cluster then counts once. One outcome per cluster gives n, the independent count.

    Args:
        outcomes: (n,) per-comparison values, e.g. 1 win, 0.5 tie, 0 loss.
        clusters: (n,) the cluster of each outcome (any hashable key).
    """
    n = len(outcomes)
    if n == 0:
        return 0.0
    p = math.fsum(outcomes) / n
    deviations = [o - p for o in outcomes]
    within = math.fsum(d * d for d in deviations)
    by_cluster = grouped_by_cluster(deviations, clusters)
    if within <= 1e-12 * n:
        return float(len(by_cluster))
    between = math.fsum(math.fsum(ds) ** 2 for ds in by_cluster)
    return n if between <= within else n * within / between


def proportion_interval(
    outcomes: Sequence[float], clusters: Sequence[Hashable] | None = None
) -> tuple[float, float]:
    """95% Wilson interval of the mean of `outcomes` (each in [0, 1]: 1 a success, 0 a failure,
    1/2 a tie), with the outcomes of one cluster counted as correlated: Wilson at the effective
    count n / deff (`effective_count`). None clusters: every outcome independent.

    Args:
        outcomes: (n,) per-comparison values.
        clusters: (n,) the cluster of each outcome (e.g. its prompt), or None.
    """
    successes = math.fsum(outcomes)
    if clusters is None:
        return wilson_interval(successes, len(outcomes))
    effective = effective_count(outcomes, clusters)
    return wilson_interval(successes / max(1, len(outcomes)) * effective, effective)


def win_rate(
    candidate: list[float], baseline: list[float], clusters: Sequence[Hashable] | None = None
) -> WinRate:
    """Pairwise win rate of `candidate[i]` over `baseline[i]` (same prompt, same sample index).

    `clusters` (the prompt of each comparison) makes the interval count correlated comparisons
    as fewer (`effective_count`): several samples of one prompt are not independent evidence
    about the prompts a task draws. None: every comparison is independent."""
    if len(candidate) != len(baseline):
        raise ValueError(
            f"win_rate: {len(candidate)} candidate scores against {len(baseline)} baseline scores"
        )
    # the same response scored in two batches can differ by rounding: a tie, not a win. The
    # absolute tolerance is in the judge's units (the median size of its scores, which one
    # outlier does not move): a judge that scores in millionths must not make every
    # comparison a tie
    scores = torch.tensor([candidate, baseline], dtype=torch.float64)  # (2, n)
    size = float(scores.abs().median()) if candidate else 0.0
    outcomes = pair_outcomes(scores[0], scores[1], atol=TIE_ATOL * size).tolist()
    wins, ties = outcomes.count(1.0), outcomes.count(0.5)
    n = len(candidate)
    rate = (wins + ties / 2) / n if n else 0.5
    low, high = proportion_interval(outcomes, clusters)
    return WinRate(wins=wins, ties=ties, losses=n - wins - ties, rate=rate, low=low, high=high)
