"""The math of pairwise AI judgements: combining the two presentation orders, measuring the
judge's position bias, and its agreement with a gold preference. Tensors in, tensors out.

A pair (x, y) is asked twice, x shown first ("Reply A") and then y shown first. With
p_ab = P(A better | x is A) and p_ba = P(A better | y is A), the judge's probability that x is
better, with the position effect cancelled to first order (Zheng et al. 2023, "Judging
LLM-as-a-judge", swap the positions and combine), is

    P(x better) = (p_ab + (1 - p_ba)) / 2

and an unbiased judge has p_ab + p_ba = 1: the excess (p_ab + p_ba) / 2 - 1/2 is how much
probability it moves to whichever reply stands first.
"""

import torch


def combine_orders(prob_ab: torch.Tensor, prob_ba: torch.Tensor) -> torch.Tensor:
    """P(first better) averaged over both presentation orders.

    Args:
        prob_ab: (n,) P(reply A better) when the first response is shown as A.
        prob_ba: (n,) P(reply A better) when the second response is shown as A.
    Returns:
        (n,) (prob_ab + 1 - prob_ba) / 2.
    """
    return (prob_ab + 1.0 - prob_ba) / 2


def position_shift(prob_ab: torch.Tensor, prob_ba: torch.Tensor) -> torch.Tensor:
    """(n,) the probability each judgement moves towards position A: (prob_ab + prob_ba) / 2 - 1/2.

    0 for an unbiased judge, +1/2 for one that always answers A, -1/2 for one that always answers B.
    """
    return (prob_ab + prob_ba) / 2 - 0.5


def order_flips(prob_ab: torch.Tensor, prob_ba: torch.Tensor) -> torch.Tensor:
    """(n,) bool: True where the verdict on the first response changes with the order.

    The verdict is win, tie or loss: sign(prob_ab - 1/2) in the first order against
    sign(1/2 - prob_ba) in the swapped one. A judge that picks the same position in both
    orders flips; so does one that calls a tie in one order only.
    """
    return torch.sign(prob_ab - 0.5) != torch.sign(0.5 - prob_ba)


def gold_agreement(
    first_better: torch.Tensor, gold_first: torch.Tensor, gold_second: torch.Tensor
) -> tuple[float | None, int]:
    """Share of the gold-ordered pairs that a judgement orders like the gold score.

    Args:
        first_better: (n,) the judge's P(first better); exactly 1/2 is a tie and counts half.
            Hard labels are probabilities 1 (the first was chosen) or 0.
        gold_first, gold_second: (n,) gold scores of the two responses.
    Returns:
        (agreement, count): the mean over the pairs whose gold scores differ (gold ties say
        nothing about the judge and are left out), and how many such pairs there were;
        agreement is None when there are none (undefined, not a judge at chance).
    """
    gold_sign = torch.sign(gold_first - gold_second)
    judged_sign = torch.sign(first_better - 0.5)
    ordered = gold_sign != 0
    count = int(ordered.sum())
    if count == 0:
        return None, 0
    # 1 when the signs agree, 1/2 on a judge tie, 0 when they disagree: exact in any dtype, so
    # the share is the count's (13 / 24 is 0.5416666666666666, not float32's 0.5416666865...)
    score = (1 + gold_sign[ordered] * judged_sign[ordered]) / 2
    return float(score.double().sum()) / count, count
