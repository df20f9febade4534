"""Where optimising a proxy reward stops helping: the gold score peaks while the proxy climbs.

Gao et al. (2022, "Scaling laws for reward model overoptimization"): as the policy moves away
from its start (KL), the proxy reward keeps rising while the gold reward rises, peaks and falls.
This finds that peak in a training log, after smoothing away step-to-step noise.
"""


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def gold_peak(
    proxy: list[float], gold: list[float], *, window: int = 3, min_drop: float = 0.1
) -> int | None:
    """Index where the smoothed gold score peaks before falling while the proxy keeps rising.

    Args:
        proxy, gold: the proxy reward and the gold score at each logged step.
        window: steps of the trailing moving average applied to both.
        min_drop: how far the smoothed gold must fall after its peak, as a share of its range,
            to count as a turn (not noise).
    Returns:
        The step index of the peak, or None when gold does not turn down, or the proxy does not
        keep rising after it (then there is no over-optimisation to mark).
    """
    if len(gold) != len(proxy):
        raise ValueError(f"gold_peak: {len(proxy)} proxy values against {len(gold)} gold values")
    if len(gold) < 3:
        return None
    smooth_gold, smooth_proxy = moving_average(gold, window), moving_average(proxy, window)
    peak = max(range(len(smooth_gold)), key=smooth_gold.__getitem__)
    spread = max(smooth_gold) - min(smooth_gold)
    fell = smooth_gold[-1] < smooth_gold[peak] - min_drop * spread
    proxy_rose = smooth_proxy[-1] > smooth_proxy[peak]
    return peak if peak < len(gold) - 1 and spread > 0 and fell and proxy_rose else None
