import math

import pytest

from rlhfkit.eval.pass_at_k import majority_vote_accuracy, mean_maj_at_k, mean_pass_at_k, pass_at_k


def naive_pass_at_k(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # (1 - 1/4)(1 - 1/5) = 3/5 of draws miss
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3, 2) / C(5, 2) = 1 - 3/10
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0  # c = n
    assert pass_at_k(6, 1, 6) == 1.0  # k = n with one correct answer


def test_pass_at_k_equals_the_binomial_form():
    for n in range(1, 31):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(naive_pass_at_k(n, c, k), abs=1e-12), (
                    n,
                    c,
                    k,
                )


def test_pass_at_1_is_the_fraction_correct_and_pass_at_k_grows_with_k():
    for n in range(1, 21):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
            values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
            assert all(a <= b + 1e-12 for a, b in zip(values, values[1:])), (n, c)


def test_pass_at_k_is_right_where_the_binomials_leave_float_range():
    # C(1100, 550) is about 3e329 > the largest float; the reference is the exact big-integer
    # ratio, and with c = 3 the answer is moderate: 1 - (550/1100)(549/1099)(548/1098) = 0.8753
    assert math.comb(1100, 550) > 1e308
    exact = 1 - math.comb(1097, 550) / math.comb(1100, 550)
    assert pass_at_k(1100, 3, 550) == pytest.approx(exact, rel=1e-12)
    assert exact == pytest.approx(1 - (550 / 1100) * (549 / 1099) * (548 / 1098), rel=1e-12)
    assert pass_at_k(1100, 1, 550) == pytest.approx(0.5)  # one correct answer: k / n


def test_mean_pass_at_k_averages_problems():
    assert mean_pass_at_k([2, 0, 5], num_samples=5, k=2) == pytest.approx((0.7 + 0.0 + 1.0) / 3)


@pytest.mark.parametrize(
    "n, c, k", [(3, 1, 4), (3, 4, 1), (-1, 0, 1), (3, -1, 1), (3, 1, 0), (3, 1, -1)]
)
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_needs_problems():
    with pytest.raises(ValueError, match="no problems"):
        mean_pass_at_k([], num_samples=4, k=1)


def test_majority_vote_hand_cases():
    assert majority_vote_accuracy(["4", "4", "5"], "4") == 1.0
    assert majority_vote_accuracy(["4", "5", "5"], "4") == 0.0
    assert majority_vote_accuracy(["4", "5", "6", "6", "5"], "5") == 0.5  # 5 and 6 tie
    assert majority_vote_accuracy(["4", "5", "6"], "6") == pytest.approx(1 / 3)  # three-way tie
    assert majority_vote_accuracy(["4", "5", "6", "6", "5"], "4") == 0.0  # right but outvoted
    # unparseable answers do not vote: the single "3" beats nothing
    assert majority_vote_accuracy([None, None, "3"], "3") == 1.0
    assert majority_vote_accuracy([None, None, "3", "2", "2"], "3") == 0.0
    assert majority_vote_accuracy([None, None], "3") == 0.0
    assert majority_vote_accuracy([], "3") == 0.0
    assert majority_vote_accuracy([None, "1"], None) == 0.0  # None never wins


def test_mean_maj_at_k_votes_in_disjoint_blocks_of_k():
    answers = [["1", "2", "2", "1", "1"], ["7", "7", "8", "8", "8"]]
    # k = 1: every answer is its own vote, so maj@1 is pass@1 (3/5 and 2/5 right)
    assert mean_maj_at_k(answers, ["1", "7"], k=1) == pytest.approx((3 / 5 + 2 / 5) / 2)
    assert mean_maj_at_k(answers, ["1", "7"], k=1) == pytest.approx(mean_pass_at_k([3, 2], 5, 1))
    # k = 2: blocks [0:2], [2:4] (the fifth answer is left over): ties count 1/2
    assert mean_maj_at_k(answers, ["1", "7"], k=2) == pytest.approx(((0.5 + 0.5) / 2 + 0.5) / 2)
    assert mean_maj_at_k(answers, ["1", "7"], k=3) == pytest.approx((0.0 + 1.0) / 2)
    assert mean_maj_at_k(answers, ["1", "7"], k=4) == pytest.approx((0.5 + 0.5) / 2)
    assert mean_maj_at_k(answers, ["1", "7"], k=5) == pytest.approx((1.0 + 0.0) / 2)


def test_mean_maj_at_k_errors():
    with pytest.raises(ValueError, match="problem 1 has 2 answers, fewer than k=3"):
        mean_maj_at_k([["1", "1", "1"], ["2", "2"]], ["1", "2"], k=3)
    with pytest.raises(ValueError, match="2 problems answered against 1 correct answers"):
        mean_maj_at_k([["1"], ["2"]], ["1"], k=1)
    with pytest.raises(ValueError, match="no problems"):
        mean_maj_at_k([], [], k=1)
    with pytest.raises(ValueError, match="k must be at least 1"):
        mean_maj_at_k([["1"]], ["1"], k=0)
