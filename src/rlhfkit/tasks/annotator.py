"""The simulated human annotator: gold scores plus Bradley-Terry noise.

Ranking K responses by `gold / temperature + Gumbel noise` samples a Plackett-Luce order
whose pairwise marginals are exactly Bradley-Terry: P(i above j) = sigmoid((g_i - g_j) / T),
because the difference of two Gumbels is logistic. The temperature T is set so that two
independent annotators agree on a chosen share of pairs (real labellers: ~70-75%, seed 003).
"""

import math
import random


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def noisy_ranking(gold: list[float], temperature: float, rng: random.Random) -> list[int]:
    """Indices of the responses ordered best to worst by one noisy annotator."""
    keys = [g / temperature - math.log(-math.log(rng.random() or 1e-300)) for g in gold]
    return sorted(range(len(gold)), key=lambda i: -keys[i])


def expected_agreement(gold_diffs: list[float], temperature: float) -> float:
    """Mean over pairs of P(two independent annotators order the pair the same way):
    p^2 + (1-p)^2 with p = sigmoid(diff / T)."""
    total = 0.0
    for diff in gold_diffs:
        p = sigmoid(diff / temperature)
        total += p * p + (1 - p) * (1 - p)
    return total / max(1, len(gold_diffs))


LOWEST_TEMPERATURE, HIGHEST_TEMPERATURE = 1e-3, 1e3


def agreement_out_of_reach(gold_diffs: list[float], target_agreement: float) -> str | None:
    """What to tell the user when no temperature reaches the target agreement, else None: tied
    gold scores (a 0/1 verifier's, mostly) are a coin flip for any annotator, so agreement
    cannot pass 1 - (share of tied pairs) / 2, and `calibrate_temperature` then settles for the
    lowest temperature, nearly noise-free labels on every other pair."""
    reachable = expected_agreement(gold_diffs, LOWEST_TEMPERATURE)
    if reachable >= target_agreement:
        return None
    return (
        f"the simulated annotators agree on at most {reachable:.3f} of pairs, below the target "
        f"{target_agreement} (tied gold scores are a coin flip): labelling as noise-free as it "
        "can, at that agreement"
    )


def calibrate_temperature(gold_diffs: list[float], target_agreement: float) -> float:
    """The temperature at which expected inter-annotator agreement equals the target (the
    lowest one where it cannot be reached: `agreement_out_of_reach`).

    Agreement falls monotonically from (share of non-tied pairs) towards 0.5 as T grows,
    so a bisection on log T finds it.
    """
    low, high = math.log(LOWEST_TEMPERATURE), math.log(HIGHEST_TEMPERATURE)
    if expected_agreement(gold_diffs, math.exp(low)) < target_agreement:
        return math.exp(low)
    for _ in range(60):
        mid = (low + high) / 2
        if expected_agreement(gold_diffs, math.exp(mid)) > target_agreement:
            low = mid
        else:
            high = mid
    return math.exp((low + high) / 2)


def order_to_ranks(order: list[int]) -> list[int]:
    """ranks[i] = position of response i in the order (0 = best)."""
    ranks = [0] * len(order)
    for position, index in enumerate(order):
        ranks[index] = position
    return ranks
