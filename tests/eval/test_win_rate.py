import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhfkit.eval.win_rate import effective_count, wilson_interval, win_rate


def test_wilson_interval_matches_hand_computed_values():
    # 8 of 10: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71674, half-width 0.22658
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94331, abs=1e-4)
    # 0 of 10 still has a non-zero upper bound: z^2 / (n + z^2) = 0.27753
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.27753, abs=1e-4)


def test_wilson_interval_without_data_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_win_rate_counts_ties_as_half():
    result = win_rate([3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0])
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    assert result.rate == pytest.approx(2.5 / 4)
    assert (result.low, result.high) == pytest.approx(wilson_interval(2.5, 4))


def test_win_rate_rejects_unpaired_scores():
    with pytest.raises(ValueError, match="3 candidate scores against 2"):
        win_rate([1.0, 2.0, 3.0], [1.0, 2.0])


@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=50))
def test_win_rate_is_symmetric_and_inside_its_interval(pairs):
    a, b = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
    forward, backward = win_rate(a, b), win_rate(b, a)
    assert forward.rate + backward.rate == pytest.approx(1.0)
    assert forward.low <= forward.rate <= forward.high
    assert math.isclose(forward.low, 1 - backward.high, abs_tol=1e-9)


def test_a_clean_sweep_has_an_interval_that_reaches_one():
    # Wilson at p = 1: high = 1 exactly and low = n / (n + z^2) = 10 / 13.8415 = 0.72247
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.72247, abs=1e-5)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(1 - 0.72247, abs=1e-5))


@pytest.mark.parametrize("unit", [1e-9, 1e-6, 1.0, 1e3])
def test_ties_do_not_depend_on_the_judges_units(unit):
    # 3 wins, 1 tie, 1 loss in any unit: a judge scoring in millionths (a probability, a
    # length in millions of words) decides as many comparisons as one scoring in ones
    candidate, baseline = [3.0, 8.0, 2.0, 5.0, 1.0], [1.0, 1.0, 1.0, 5.0, 4.0]
    result = win_rate([unit * c for c in candidate], [unit * b for b in baseline])
    assert (result.wins, result.ties, result.losses) == (3, 1, 1)
    assert result.rate == pytest.approx(3.5 / 5)


def test_rounding_is_still_a_tie_in_the_judges_units():
    # the same score from two batches, a few float32 roundings apart, is a tie at any scale
    for unit in (1e-6, 1.0, 1e3):
        result = win_rate([unit * 2.0 * (1 + 3e-7)], [unit * 2.0])
        assert result.ties == 1
    assert win_rate([0.0], [0.0]).ties == 1


def test_one_outlier_does_not_turn_close_scores_into_ties():
    # a score of a million among scores near 1: 1.001 against 1.0 is still a win
    result = win_rate([1.001, 1e6, 2.0], [1.0, 1.0, 2.0])
    assert (result.wins, result.ties, result.losses) == (2, 1, 0)


def test_effective_count_by_hand():
    # outcomes [1, 1] in cluster a, [0, 1] in b: p = 3/4, deviations 1/4, 1/4 | -3/4, 1/4;
    # squared one by one 12/16, summed per cluster then squared (1/2)^2 + (-1/2)^2 = 8/16:
    # n = 4 * 12 / 8 = 6, past 4, so 4 (a negative correlation never narrows the interval)
    assert effective_count([1.0, 1.0, 0.0, 1.0], ["a", "a", "b", "b"]) == 4
    # [1, 1] in a, [0, 0] in b: deviations 1/2, 1/2 | -1/2, -1/2; one by one 1, per cluster
    # 1 + 1 = 2: n = 4 * 1 / 2 = 2, the two clusters
    assert effective_count([1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b"]) == pytest.approx(2.0)
    # [1, 0.5, 0] in a, [1] in b: p = 5/8; deviations 3/8, -1/8, -5/8 | 3/8; one by one
    # (9 + 1 + 25 + 9) / 64 = 44/64, per cluster (-3/8)^2 + (3/8)^2 = 18/64: n = 4 * 44 / 18,
    # past 4, so 4
    assert effective_count([1.0, 0.5, 0.0, 1.0], [0, 0, 0, 1]) == 4


@given(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=40))
def test_one_outcome_per_cluster_is_the_independent_count(outcomes):
    n = len(outcomes)
    assert effective_count(outcomes, list(range(n))) == pytest.approx(n)


def test_outcomes_that_all_agree_count_one_per_cluster():
    assert effective_count([1.0] * 6, [0, 0, 0, 1, 1, 1]) == 2


def test_win_rate_with_clusters():
    # the candidate wins both samples of prompt 0 and loses both of prompt 1: the interval of
    # 1 win in 2, not 2 in 4; one comparison per cluster is the unclustered interval
    candidate, baseline = [2.0, 2.0, 0.0, 0.0], [1.0] * 4
    clustered = win_rate(candidate, baseline, clusters=[0, 0, 1, 1])
    assert clustered.rate == 0.5 and clustered.n == 4
    assert (clustered.low, clustered.high) == pytest.approx(wilson_interval(1, 2))
    alone = win_rate(candidate, baseline, clusters=[0, 1, 2, 3])
    assert (alone.low, alone.high) == pytest.approx(wilson_interval(2, 4))
    with pytest.raises(ValueError):
        win_rate(candidate, baseline, clusters=[0, 1])
