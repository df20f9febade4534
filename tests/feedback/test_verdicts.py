import pytest
import torch

from rlhfkit.feedback.verdicts import combine_orders, gold_agreement, order_flips, position_shift

# Three pairs (x, y), each asked as (A=x, B=y) -> prob_ab and as (A=y, B=x) -> prob_ba:
#   pair 0: consistent judge, x better:      p_ab 0.8, p_ba 0.2
#   pair 1: always says A:                   p_ab 0.9, p_ba 0.7
#   pair 2: leans to B, y better:            p_ab 0.3, p_ba 0.5
PROB_AB = torch.tensor([0.8, 0.9, 0.3])
PROB_BA = torch.tensor([0.2, 0.7, 0.5])


def test_combine_orders_by_hand():
    # (p_ab + 1 - p_ba) / 2: (0.8 + 0.8) / 2, (0.9 + 0.3) / 2, (0.3 + 0.5) / 2
    assert torch.allclose(combine_orders(PROB_AB, PROB_BA), torch.tensor([0.8, 0.6, 0.4]))


def test_combining_cancels_a_constant_position_shift():
    # a judge that adds 0.1 to whichever reply is A in both orders gets the unbiased answer back
    unbiased = torch.tensor([0.7, 0.4])
    assert torch.allclose(combine_orders(unbiased + 0.1, (1 - unbiased) + 0.1), unbiased)


def test_position_shift_by_hand():
    # (p_ab + p_ba) / 2 - 1/2: 0.0, 0.3, -0.1
    assert torch.allclose(
        position_shift(PROB_AB, PROB_BA), torch.tensor([0.0, 0.3, -0.1]), atol=1e-6
    )
    assert position_shift(torch.ones(1), torch.ones(1)).item() == pytest.approx(0.5)  # always A
    assert position_shift(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(-0.5)  # always B


def test_order_flips_by_hand():
    # pair 0 keeps its verdict; pair 1 picks A both times; pair 2 calls a tie in one order only
    assert order_flips(PROB_AB, PROB_BA).tolist() == [False, True, True]


def test_gold_agreement_counts_ties_half_and_skips_gold_ties():
    first_better = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.1])
    gold_first = torch.tensor([2.0, 2.0, 1.0, 1.0, 0.0])
    gold_second = torch.tensor([1.0, 1.0, 0.0, 1.0, 3.0])
    # pair 3 is a gold tie (left out); agree, disagree, judge tie (1/2), agree -> 2.5 / 4
    assert gold_agreement(first_better, gold_first, gold_second) == (pytest.approx(0.625), 4)


def test_gold_agreement_of_hard_labels_and_of_no_pairs():
    labels = torch.ones(3)  # the labels chose the first response each time
    gold_first, gold_second = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])
    assert gold_agreement(labels, gold_first, gold_second)[0] == pytest.approx(2 / 3)
    assert gold_agreement(torch.ones(2), torch.ones(2), torch.ones(2)) == (None, 0)


def test_an_agreement_is_its_count_over_n_in_float64():
    # 13 of 24 ordered pairs agree: the report shows 13/24 = 0.5416666666666666, where float32's
    # mean wrote 0.5416666865348816 into report.json
    first_better = torch.tensor([0.9] * 13 + [0.1] * 11)
    assert gold_agreement(first_better, torch.ones(24), torch.zeros(24)) == (13 / 24, 24)
