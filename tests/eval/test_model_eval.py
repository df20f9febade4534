import random

import pytest
import torch

from rlhfkit.eval.model_eval import (
    ModelEval,
    distinct_indices,
    evaluate_model,
    first_indices,
    gold_with_interval,
    is_verdicts,
    win_rates,
)
from rlhfkit.eval.sampling import EvalSamples
from rlhfkit.eval.win_rate import wilson_interval
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.rewards.base import RewardScores
from rlhfkit.tasks.registry import get_task


class LengthProxy:
    """A reward source that pays for characters: a stand-in proxy with a known answer."""

    def score(self, prompts, responses):
        return RewardScores(rewards=torch.tensor([float(len(r)) for r in responses]))


def test_one_evaluation_holds_every_metric_and_its_own_samples(tiny_model_dir):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    task = get_task("arith")
    prompts = task.prompts(5, random.Random(0))
    result = evaluate_model(
        model,
        tokenizer,
        task,
        prompts,
        reference=model,
        proxy=LengthProxy(),
        samples_per_prompt=4,
        max_new_tokens=10,
    )
    m = result.metrics
    assert len(result.greedy_scores) == 5 and len(result.sampled_scores) == 20
    assert m["gold_sampled"] == sum(result.sampled_scores) / 20 and m["gold_sampled_n"] == 20
    assert m["gold_sampled_low"] <= m["gold_sampled"] <= m["gold_sampled_high"]
    assert abs(m["kl_k1_per_sequence"]) < 1e-4 and abs(m["kl_k3_per_token"]) < 1e-5
    # the proxy's mean is the mean character count of the sampled answers
    texts = result.sampled.flat(result.sampled.texts)
    assert abs(m["proxy_sampled"] - sum(map(len, texts)) / 20) < 1e-4
    assert m["length_tokens"] == sum(result.sampled.flat(result.sampled.lengths)) / 20
    assert {
        "pass@1",
        "pass@2",
        "pass@4",
        "maj@1",
        "maj@2",
        "maj@4",
        "repetition",
        "distinct_1",
        "distinct_2",
    } <= set(m)
    assert m["pass@1"] <= m["pass@2"] <= m["pass@4"]
    assert m["greedy_accuracy"] == sum(result.greedy_scores) / 5


def test_a_model_against_itself_ties_everywhere(tiny_model_dir):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    task = get_task("advice")
    prompts = task.prompts(4, random.Random(1))
    one = evaluate_model(
        model, tokenizer, task, prompts, proxy=LengthProxy(), samples_per_prompt=2, max_new_tokens=8
    )
    two = evaluate_model(
        model, tokenizer, task, prompts, proxy=LengthProxy(), samples_per_prompt=2, max_new_tokens=8
    )
    for by_proxy in (False, True):
        rates = win_rates(one, two, by_proxy=by_proxy)
        assert rates["win_rate_greedy"] == 0.5 and rates["win_rate_greedy_ties"] == 1.0
        assert rates["win_rate_sampled"] == 0.5 and rates["win_rate_sampled_n"] == 8
    assert "kl_k1_per_sequence" not in one.metrics  # no reference, no KL


def test_greedy_metrics_count_each_distinct_prompt_once(tiny_model_dir):
    # prompts a, b, a, a: the greedy answer to a is the same each time, and counts once, as in
    # the greedy win rate; the gold judge's greedy mean and the task's own evaluation alike
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    task = get_task("advice")
    a, b = task.prompts(2, random.Random(3))
    assert a.prompt != b.prompt
    prompts = [a, b, a, a]
    for gold in (None, LengthProxy()):
        result = evaluate_model(
            model, tokenizer, task, prompts, samples_per_prompt=1, max_new_tokens=6, gold=gold
        )
        scores = result.greedy_scores
        assert result.distinct == [0, 1] and scores[0] == scores[2] == scores[3]
        assert abs(result.metrics["greedy_gold_score"] - (scores[0] + scores[1]) / 2) < 1e-6
        texts = result.greedy.flat(result.greedy.texts)
        assert result.metrics["greedy_sentences"] == task.evaluate([a, b], texts[:2])["sentences"]


def _scored(greedy: list[float], sampled: list[float], distinct: list[int]) -> ModelEval:
    empty = EvalSamples(texts=[], lengths=[], kl={})
    return ModelEval(empty, empty, greedy, sampled, distinct=distinct)


def test_a_prompt_drawn_twice_is_one_greedy_comparison():
    # prompts a, b, a, a: the candidate wins b and loses a, which was drawn three times
    assert distinct_indices(["a", "b", "a", "a"]) == [0, 1]
    assert distinct_indices([[{"role": "user", "content": "a"}]] * 2) == [0]
    baseline = _scored([2.0, 0.0, 2.0, 2.0], [1.0] * 4, distinct=[0, 1])
    candidate = _scored([1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 0.0, 2.0], distinct=[0, 1])
    rates = win_rates(candidate, baseline)
    assert rates["win_rate_greedy"] == 0.5 and rates["win_rate_greedy_n"] == 2
    assert rates["win_rate_sampled"] == 0.75 and rates["win_rate_sampled_n"] == 4


def test_evaluation_records_the_distinct_prompts(tiny_model_dir):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    task = get_task("advice")
    prompts = task.prompts(2, random.Random(1))
    result = evaluate_model(model, tokenizer, task, prompts * 2, max_new_tokens=4)
    assert result.distinct == distinct_indices([p.prompt for p in prompts])
    assert win_rates(result, result)["win_rate_greedy_n"] == len(result.distinct)
    # two samples per prompt, clustered by the prompt's first occurrence: the copy at index 2
    # and 3 is the same question as 0 and 1
    assert result.sampled_prompts == [p for p in [0, 1, 0, 1] for _ in range(2)]


def test_first_indices_names_each_prompts_first_occurrence():
    assert first_indices(["a", "b", "a", "c", "b"]) == [0, 1, 0, 3, 1]
    assert distinct_indices(["a", "b", "a", "c", "b"]) == [0, 1, 3]


def test_the_sampled_interval_counts_one_prompts_samples_as_correlated():
    # two prompts, four samples each: the candidate wins every sample of prompt 0 and loses
    # every one of prompt 1: two pieces of evidence, not eight
    baseline = _scored([0.0, 0.0], [1.0] * 8, distinct=[0, 1])
    baseline.sampled_prompts = [0] * 4 + [1] * 4
    candidate = _scored([0.0, 0.0], [2.0] * 4 + [0.0] * 4, distinct=[0, 1])
    rates = win_rates(candidate, baseline)
    assert rates["win_rate_sampled"] == 0.5 and rates["win_rate_sampled_n"] == 8
    assert (rates["win_rate_sampled_low"], rates["win_rate_sampled_high"]) == pytest.approx(
        wilson_interval(1, 2)
    )


def test_a_verifiers_verdicts_have_a_wilson_interval_that_all_alike_do_not_collapse():
    # 8 prompts, 2 samples each, none answered right: the bootstrap gave [0, 0] (certainty);
    # Wilson at the effective count (every verdict agrees: each prompt once, n = 8) gives
    # [0, z^2/8 / (1 + z^2/8)] = [0, 0.3244]
    clusters = [p for p in range(8) for _ in range(2)]
    stats = gold_with_interval([0.0] * 16, clusters, verdicts=True)
    assert stats["mean"] == 0.0 and stats["n"] == 16 and stats["low"] == 0.0
    assert stats["high"] == pytest.approx(0.32441, abs=1e-5)
    assert (stats["low"], stats["high"]) == wilson_interval(0, 8)
    # mixed verdicts: the interval of the win rates (`proportion_interval`), the same clusters
    mixed = [1.0, 1.0, 0.0, 0.0] * 4
    baseline = _scored([0.0] * 8, [0.5] * 16, distinct=list(range(8)))
    baseline.sampled_prompts = clusters
    # a win where the verdict is 1, a loss where it is 0
    rates = win_rates(_scored([0.0] * 8, mixed, list(range(8))), baseline)
    stats = gold_with_interval(mixed, clusters, verdicts=True)
    assert (stats["low"], stats["high"]) == pytest.approx(
        (rates["win_rate_sampled_low"], rates["win_rate_sampled_high"])
    )
    # scores that are not verdicts keep the cluster bootstrap: [0, 0] for values all alike
    stats = gold_with_interval([0.0] * 16, clusters, verdicts=False)
    assert (stats["low"], stats["high"]) == (0.0, 0.0)


def test_one_distinct_prompt_gives_no_interval_whatever_the_scores_are():
    for verdicts, scores in ((True, [0.0, 1.0]), (False, [9.5, 9.8])):
        stats = gold_with_interval(scores, [3, 3], verdicts=verdicts)
        assert stats["low"] is None and stats["high"] is None, verdicts


def test_only_a_checkable_tasks_own_zero_one_reward_reads_as_verdicts():
    arith, advice = get_task("arith"), get_task("advice")
    assert is_verdicts(arith, None, [0.0, 1.0, 1.0])
    assert not is_verdicts(arith, LengthProxy(), [0.0, 1.0])  # a judge's scores, not arith's
    assert not is_verdicts(arith, None, [0.0, 0.5])  # partial credit: not a verdict
    assert not is_verdicts(advice, None, [0.0, 1.0])  # a score that happens to be 0 or 1
