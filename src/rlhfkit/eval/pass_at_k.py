"""pass@k and maj@k: how often k sampled answers to a problem contain, or vote for, the right one.

pass@k is estimated from n >= k samples per problem of which c are correct with the estimator of
Chen et al. 2021 (Codex, "Evaluating Large Language Models Trained on Code"):
1 - C(n-c, k) / C(n, k) is the exact probability that k of the n samples drawn without
replacement are all wrong, so it is unbiased, while plugging the pass@1 estimate c / n into
1 - (1 - p)^k is biased (it underestimates pass@k, by Jensen's inequality). maj@k (majority
voting, self-consistency, Wang et al. 2023) scores the most frequent of k parsed answers.
"""

import math
from collections import Counter


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples with c correct (Chen et al. 2021, eq. 1).

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

    The product replaces the naive ratio of binomial coefficients, which pass float range for
    large n (C(1100, 550) > 1e329) and are slow as exact integers; the factors (i - k) / i
    telescope to that ratio.

    Args:
        num_samples: n, answers sampled for the problem.
        num_correct: c, how many of them are correct, 0 <= c <= n.
        k: answers allowed per attempt, 1 <= k <= n.

    Returns:
        The probability that at least one of k answers drawn from the n without replacement
        is correct.
    """
    n, c = num_samples, num_correct
    if n < 0 or c < 0 or k < 1:
        raise ValueError(f"pass_at_k: needs n >= 0, c >= 0 and k >= 1, got n={n}, c={c}, k={k}")
    if c > n or k > n:
        raise ValueError(f"pass_at_k: needs c <= n and k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # fewer than k wrong answers: every draw of k holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct_counts: list[int], num_samples: int, k: int) -> float:
    """pass@k averaged over problems, each with `num_samples` answers of which
    `correct_counts[j]` are correct."""
    if not correct_counts:
        raise ValueError("mean_pass_at_k: no problems")
    return math.fsum(pass_at_k(num_samples, c, k) for c in correct_counts) / len(correct_counts)


def majority_vote_accuracy(answers: list, correct_answer) -> float:
    """maj@k of one problem: the expected accuracy of the most common of its k answers.

    None stands for an answer that could not be parsed and does not vote. When t answers tie for
    the most votes, one is picked uniformly at random, so the expected accuracy is 1 / t if the
    correct answer is among them and 0 otherwise; with no votes at all it is 0.

    Args:
        answers: the k answers (hashable, compared with ==), None for unparseable ones.
        correct_answer: the reference answer.

    Returns:
        The expected accuracy, in [0, 1].
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    most = max(votes.values())
    leaders = [answer for answer, count in votes.items() if count == most]
    return 1.0 / len(leaders) if correct_answer in leaders else 0.0


def mean_maj_at_k(answers_per_problem: list[list], correct_answers: list, k: int) -> float:
    """maj@k averaged over problems; each problem's n answers form n // k disjoint votes of k
    answers (answers[0:k], answers[k:2k], ...), and its maj@k is their mean. Using every answer
    as pass@k does keeps maj@1 equal to pass@1 (the share of correct answers) rather than the
    correctness of the first answer alone."""
    if len(answers_per_problem) != len(correct_answers):
        raise ValueError(
            f"mean_maj_at_k: {len(answers_per_problem)} problems answered "
            f"against {len(correct_answers)} correct answers"
        )
    if not answers_per_problem:
        raise ValueError("mean_maj_at_k: no problems")
    if k < 1:
        raise ValueError(f"mean_maj_at_k: k must be at least 1, got {k}")
    short = [j for j, answers in enumerate(answers_per_problem) if len(answers) < k]
    if short:
        raise ValueError(
            f"mean_maj_at_k: problem {short[0]} has "
            f"{len(answers_per_problem[short[0]])} answers, fewer than k={k}"
        )
    return math.fsum(
        math.fsum(
            majority_vote_accuracy(answers[j * k : (j + 1) * k], correct)
            for j in range(len(answers) // k)
        )
        / (len(answers) // k)
        for answers, correct in zip(answers_per_problem, correct_answers)
    ) / len(correct_answers)
