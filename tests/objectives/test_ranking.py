import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.ranking import gather_pair_rewards, ranking_to_pairs


def pairs_of(ranks):
    winners, losers, weights = ranking_to_pairs(ranks)
    return list(zip(winners, losers)), weights


def test_three_way_ranking():
    pairs, weights = pairs_of([0, 1, 2])
    assert sorted(pairs) == [(0, 1), (0, 2), (1, 2)]
    assert weights == pytest.approx([1 / 3] * 3)


def test_four_way_ranking_weights_are_one_over_c_4_2():
    pairs, weights = pairs_of((0, 1, 2, 3))
    assert sorted(pairs) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert weights == pytest.approx([1 / math.comb(4, 2)] * 6)


def test_ties_form_no_pair():
    pairs, weights = pairs_of([0, 1, 1, 2])
    assert sorted(pairs) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert (1, 2) not in pairs and (2, 1) not in pairs
    assert weights == pytest.approx([1 / 5] * 5)


def test_ranking_that_is_all_ties_has_no_pairs():
    assert ranking_to_pairs([0, 0, 0]) == ([], [], [])


def test_winner_is_the_better_ranked_response_whatever_the_order():
    pairs, _ = pairs_of([2, 0, 1])
    assert sorted(pairs) == [(1, 0), (1, 2), (2, 0)]


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 9))
def test_strict_ranking_gives_c_k_2_pairs_summing_to_one(k):
    pairs, weights = pairs_of(list(range(k)))
    assert len(pairs) == len(set(pairs)) == math.comb(k, 2)
    assert sum(weights) == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=9))
def test_pairs_are_exactly_the_strictly_ordered_pairs(ranks):
    pairs, weights = pairs_of(ranks)
    expected = {(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]}
    assert set(pairs) == expected and len(pairs) == len(expected)
    if expected:
        assert sum(weights) == pytest.approx(1.0)


def test_gather_pair_rewards_one_and_several_heads():
    rewards = torch.tensor([10.0, 20.0, 30.0, 40.0])
    winners, losers = torch.tensor([0, 0, 2]), torch.tensor([1, 3, 3])
    chosen, rejected = gather_pair_rewards(rewards, winners, losers)
    assert torch.equal(chosen, torch.tensor([10.0, 10.0, 30.0]))
    assert torch.equal(rejected, torch.tensor([20.0, 40.0, 40.0]))
    heads = torch.stack([rewards, -rewards], dim=1)  # (responses, heads)
    chosen, rejected = gather_pair_rewards(heads, winners, losers)
    assert chosen.shape == rejected.shape == (3, 2)
    assert torch.equal(chosen[:, 1], torch.tensor([-10.0, -10.0, -30.0]))
    assert torch.equal(rejected[:, 0], torch.tensor([20.0, 40.0, 40.0]))
