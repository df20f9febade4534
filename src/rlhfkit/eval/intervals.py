"""Percentile-bootstrap confidence intervals for any statistic of per-sample values.

A mean reward, a mean response length or a pass rate measured on a few hundred prompts is noisy;
reporting it without an interval invites reading noise as progress. The percentile bootstrap
(Efron 1979) needs no distributional assumption: resample the values with replacement, recompute
the statistic, and read the interval off the quantiles of those recomputations. Proportions with
ties have a closed-form interval instead (`wilson_interval` in `rlhfkit.eval.win_rate`).
"""

import math
import random
from collections.abc import Callable, Hashable, Sequence


def mean(values: list[float]) -> float:
    """Arithmetic mean, summed exactly (`math.fsum`) so that long lists lose no precision."""
    return math.fsum(values) / len(values)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Quantile q of already sorted values by linear interpolation between order statistics
    (Hyndman & Fan 1996 type 7, numpy's default): position q * (m - 1)."""
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * (position - below)


def bootstrap_interval(
    values: list[float],
    *,
    clusters: Sequence[Hashable] | None = None,
    statistic: Callable[[list[float]], float] = mean,
    num_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(values)` (Efron 1979).

    For b = 1..B draw x*_b, n values from `values` with replacement, and compute t*_b =
    statistic(x*_b); the interval is (Q(alpha / 2), Q(1 - alpha / 2)) of the t*_b with
    alpha = 1 - level and Q the linearly interpolated empirical quantile.

    With `clusters`, whole clusters are drawn instead of values (the cluster bootstrap, Davison
    & Hinkley 1997, 2.4): the samples of one prompt move together, so that the interval speaks
    of the prompts a task draws, not only of new samples on these prompts.

    Args:
        values: (n,) the per-sample values, e.g. one reward per prompt.
        clusters: (n,) the cluster of each value (e.g. its prompt), or None: each value alone.
        statistic: maps a list of values to one float; the mean by default.
        num_resamples: B, the number of bootstrap resamples.
        level: coverage of the interval, in (0, 1).
        seed: seeds a private `random.Random`; the global `random` state is never touched.

    Returns:
        (low, high); (nan, nan) when the interval cannot be estimated: fewer than two units
        (values, or clusters with `clusters`), where every resample is the data itself and the
        zero-width interval it would give says nothing of the spread.
    """
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_interval: level must lie in (0, 1), got {level}")
    if num_resamples < 1:
        raise ValueError(
            f"bootstrap_interval: num_resamples must be at least 1, got {num_resamples}"
        )
    units = [[v] for v in values] if clusters is None else grouped_by_cluster(values, clusters)
    if len(units) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    replicates = sorted(
        statistic([v for unit in rng.choices(units, k=len(units)) for v in unit])
        for _ in range(num_resamples)
    )
    alpha = 1 - level
    return _quantile(replicates, alpha / 2), _quantile(replicates, 1 - alpha / 2)


def grouped_by_cluster(values: Sequence, clusters: Sequence[Hashable]) -> list[list]:
    """The values cluster by cluster, in the order each cluster first appears."""
    groups: dict[Hashable, list[float]] = {}
    for value, cluster in zip(values, clusters, strict=True):
        groups.setdefault(cluster, []).append(value)
    return list(groups.values())


def mean_with_interval(values: list[float], **bootstrap_options) -> dict:
    """The mean of `values` with its bootstrap interval.

    Args:
        values: (n,) the per-sample values.
        **bootstrap_options: keyword arguments of `bootstrap_interval` (clusters, num_resamples,
            level, seed).

    Returns:
        {"mean", "low", "high", "n"}; mean is nan when `values` is empty, low and high None
        when the interval cannot be estimated (fewer than two values, or clusters).
    """
    return with_interval(values, bootstrap_interval(values, statistic=mean, **bootstrap_options))


def with_interval(values: list[float], interval: tuple[float, float]) -> dict:
    """{"mean", "low", "high", "n"} of `values` and an interval of their mean; a bound that is
    not a number (nan: no estimate) is None, so a report shows it absent and JSON writes null."""
    low, high = (None, None) if any(map(math.isnan, interval)) else interval
    return {
        "mean": mean(values) if values else math.nan,
        "low": low,
        "high": high,
        "n": len(values),
    }
