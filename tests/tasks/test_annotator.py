import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.tasks.annotator import (
    LOWEST_TEMPERATURE,
    agreement_out_of_reach,
    calibrate_temperature,
    expected_agreement,
    noisy_ranking,
    order_to_ranks,
    sigmoid,
)


def test_sigmoid_hand_values_and_stability():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0


def test_expected_agreement_hand_value():
    # p = sigmoid(ln 3) = 3/4: agreement 9/16 + 1/16; a tie always agrees half the time
    assert expected_agreement([math.log(3.0)], 1.0) == pytest.approx(10 / 16)
    assert expected_agreement([math.log(3.0), 0.0], 1.0) == pytest.approx((10 / 16 + 0.5) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.6, 0.725, 0.85])
def test_calibrated_temperature_hits_the_target_agreement(seed, target):
    rng = random.Random(seed)
    diffs = [rng.gauss(0, 2) for _ in range(200)]
    temperature = calibrate_temperature(diffs, target)
    assert expected_agreement(diffs, temperature) == pytest.approx(target, abs=1e-3)


def test_agreement_tends_to_one_half_at_huge_temperature():
    diffs = [1.0, -2.0, 3.0]
    assert expected_agreement(diffs, 1e6) == pytest.approx(0.5, abs=1e-6)
    assert expected_agreement(diffs, 1e-3) == pytest.approx(1.0)


def test_unreachable_target_returns_the_smallest_temperature():
    # half the pairs are ties, so agreement cannot exceed 0.75
    assert calibrate_temperature([1.0, 0.0], 0.9) == pytest.approx(1e-3)


def test_noisy_ranking_pairwise_marginals_are_bradley_terry():
    gold, temperature, draws = [1.0, 0.0, 0.5, -0.5], 0.7, 4000
    rng = random.Random(0)
    above = [[0] * 4 for _ in range(4)]
    for _ in range(draws):
        ranks = order_to_ranks(noisy_ranking(gold, temperature, rng))
        for i in range(4):
            for j in range(4):
                above[i][j] += ranks[i] < ranks[j]
    for i in range(4):
        for j in range(i + 1, 4):
            expected = sigmoid((gold[i] - gold[j]) / temperature)
            assert above[i][j] / draws == pytest.approx(expected, abs=0.03)


def test_noisy_ranking_is_a_permutation_and_exact_at_low_temperature():
    gold = [0.2, 3.0, -1.0, 1.0]
    assert noisy_ranking(gold, 1e-6, random.Random(0)) == [1, 3, 0, 2]
    order = noisy_ranking(gold, 5.0, random.Random(0))
    assert sorted(order) == [0, 1, 2, 3]


def test_order_to_ranks_hand_case():
    # best is response 2, then 0, then 1
    assert order_to_ranks([2, 0, 1]) == [1, 2, 0]


@settings(max_examples=50, deadline=None)
@given(st.permutations(list(range(7))))
def test_order_to_ranks_inverts_the_order(order):
    ranks = order_to_ranks(order)
    assert [order[r] for r in ranks] == list(range(7))
    assert sorted(range(7), key=lambda i: ranks[i]) == order


def test_an_agreement_that_tied_gold_scores_put_out_of_reach_is_named():
    # half the pairs tied (a 0/1 verifier): annotators agree on at most 1/2 + 1/2 * 1/2 = 0.75
    diffs = [1.0, 0.0] * 50
    message = agreement_out_of_reach(diffs, 0.8)
    assert message is not None and "at most 0.750" in message and "0.8" in message
    assert agreement_out_of_reach(diffs, 0.7) is None
    assert calibrate_temperature(diffs, 0.8) == pytest.approx(LOWEST_TEMPERATURE)
