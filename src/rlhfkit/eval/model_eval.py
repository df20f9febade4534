"""Everything measured of one policy on one task's held-out prompts, from one set of samples.

Per model: greedy answers (the task's own metrics and gold scores), and `samples_per_prompt`
answers at temperature 1 from which come the gold score with its interval, the KL to the
reference (per sequence and per token, estimators k1 and k3), the reward-hacking signs (length,
repetition, distinct-n, the proxy reward next to the gold score) and, on a task with a final
answer (`arith`), pass@k and maj@k. Win rates compare two such evaluations prompt by prompt.
"""

import json
import math
from dataclasses import dataclass, field

from rlhfkit.data.formats import PromptExample
from rlhfkit.data.text_stats import distinct_n, repetition_rate
from rlhfkit.eval.intervals import mean_with_interval, with_interval
from rlhfkit.eval.pass_at_k import mean_maj_at_k, mean_pass_at_k
from rlhfkit.eval.sampling import EvalSamples, sample_for_eval
from rlhfkit.eval.win_rate import proportion_interval, win_rate
from rlhfkit.runtime.device import Precision
from rlhfkit.tasks.base import HasFinalAnswer


@dataclass
class ModelEval:
    greedy: EvalSamples
    sampled: EvalSamples
    greedy_scores: list[float]
    """Gold score of each greedy answer, prompt by prompt."""
    sampled_scores: list[float]
    """Gold score of each sampled answer, (prompts * samples) in prompt order."""
    greedy_proxy: list[float] = field(default_factory=list)
    sampled_proxy: list[float] = field(default_factory=list)
    """The proxy's score of each answer, in the same order; empty without a proxy."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Every number of this model, flat (`summary.json`)."""
    distinct: list[int] = field(default_factory=list)
    """Index of the first occurrence of each distinct prompt: the greedy comparisons."""
    sampled_prompts: list[int] = field(default_factory=list)
    """The distinct prompt (its first index) of each sampled answer: the clusters of the
    sampled intervals, whose answers to one prompt are correlated."""


def evaluate_model(
    model,
    tokenizer,
    task,
    prompts: list[PromptExample],
    *,
    reference=None,
    proxy=None,
    samples_per_prompt: int = 2,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 256,
    gold=None,
    precision: Precision = Precision.FP32,
    progress: str | None = None,
) -> ModelEval:
    """Greedy and sampled answers of `model` to `prompts`, scored by `task`'s gold reward.

    Args:
        task: a built-in task (its gold reward, its own metrics, pass@k where it has a final
            answer), or None with `gold`.
        gold: a reward source that plays the gold annotator instead of the task's (a user's own
            judge: `file.py:function`, `model:PATH`, weighted sums); None = the task's reward.
        reference: the model the KL is measured to (the SFT model); None = no KL.
        proxy: a reward source (`.score(prompts, responses)`, e.g. the reward model) whose mean
            on the sampled answers is reported beside the gold score; None = none.
        samples_per_prompt: sampled answers per prompt (temperature 1); pass@k for k up to it.
        precision: bf16 samples and measures the KL as a bf16 run does (`sample_for_eval`).
        progress: a name shows a progress bar for the greedy and the sampled answers; None =
            silent.
    """
    texts = [p.prompt for p in prompts]  # rendered (chat prompts) and tokenised by the sampler
    common = dict(
        max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, precision=precision
    )
    bars = [None, None] if progress is None else [f"{progress} greedy", f"{progress} sampled"]
    greedy = sample_for_eval(model, tokenizer, texts, greedy=True, progress=bars[0], **common)
    sampled = sample_for_eval(
        model,
        tokenizer,
        texts,
        num_samples=samples_per_prompt,
        reference=reference,
        progress=bars[1],
        **common,
    )
    greedy_texts, sampled_texts = greedy.flat(greedy.texts), sampled.flat(sampled.texts)
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    result = ModelEval(
        greedy,
        sampled,
        greedy_scores=gold_scores(task, gold, prompts, greedy_texts),
        sampled_scores=gold_scores(task, gold, repeated, sampled_texts),
        distinct=distinct_indices(texts),
        sampled_prompts=[p for p in first_indices(texts) for _ in range(samples_per_prompt)],
    )
    m = result.metrics
    by_prompt = {"clusters": result.sampled_prompts}  # a prompt's samples resampled together
    # greedy answers once per distinct prompt, as the greedy win rate counts them: a repeated
    # prompt repeats the same answer, which would weigh its question more, not add information
    once = result.distinct
    if task is not None:
        answers = [greedy_texts[i] for i in once]
        m.update(
            {
                f"greedy_{k}": v
                for k, v in task.evaluate([prompts[i] for i in once], answers).items()
            }
        )
    if gold is not None:  # the judge's mean replaces the task's own gold score
        m["greedy_gold_score"] = sum(result.greedy_scores[i] for i in once) / max(1, len(once))
    verdicts = is_verdicts(task, gold, result.sampled_scores)
    gold_sampled = gold_with_interval(result.sampled_scores, result.sampled_prompts, verdicts)
    m.update(_prefixed("gold_sampled", gold_sampled))
    tokens = sum(sampled.flat(sampled.lengths))
    # step 1. KL to the reference on the policy's own samples
    for name, values in sampled.kl.items():
        per_sequence = sampled.flat(values)
        m.update(
            _prefixed(f"kl_{name}_per_sequence", mean_with_interval(per_sequence, **by_prompt))
        )
        m[f"kl_{name}_per_token"] = sum(per_sequence) / max(1, tokens)
    # step 2. the reward-hacking signs
    m["length_tokens"] = tokens / max(1, len(sampled_texts))
    m["repetition"] = repetition_rate(sampled_texts)
    m["distinct_1"], m["distinct_2"] = distinct_n(sampled_texts, 1), distinct_n(sampled_texts, 2)
    if proxy is not None:
        result.greedy_proxy = proxy.score(prompts, greedy_texts).rewards.tolist()
        result.sampled_proxy = proxy.score(repeated, sampled_texts).rewards.tolist()
        m.update(_prefixed("proxy_sampled", mean_with_interval(result.sampled_proxy, **by_prompt)))
    # step 3. pass@k and maj@k where the task has a checkable final answer
    if isinstance(task, HasFinalAnswer):
        answers = [[task.final_answer(t) for t in row] for row in sampled.texts]
        correct = [
            sum(a is not None and a == p.answer for a in row) for p, row in zip(prompts, answers)
        ]
        for k in sorted({1, samples_per_prompt // 2, samples_per_prompt} - {0}):
            m[f"pass@{k}"] = mean_pass_at_k(correct, samples_per_prompt, k)
            m[f"maj@{k}"] = mean_maj_at_k(answers, [p.answer for p in prompts], k)
    return result


def is_verdicts(task, gold, scores: list[float]) -> bool:
    """Whether the gold scores are a verifier's verdicts, 1 right and 0 wrong: the task's own
    reward (no `gold` source) of a task with a checkable final answer (`HasFinalAnswer`, e.g.
    arith), every score 0 or 1."""
    return gold is None and isinstance(task, HasFinalAnswer) and set(scores) <= {0.0, 1.0}


def gold_with_interval(scores: list[float], clusters: list[int], verdicts: bool) -> dict:
    """The sampled gold score with its 95% interval, a prompt's samples counted together: for
    `verdicts` (0/1 per sample) Wilson's at the effective count (`proportion_interval`), which
    stays wide where every verdict agrees (0 of 8 right: [0, 0.32]); else the cluster bootstrap.
    Either is absent (None) from fewer than two distinct prompts: nothing says how others vary.
    `clusters`: the prompt of each score.
    """
    if not verdicts:
        return mean_with_interval(scores, clusters=clusters)
    few = len(set(clusters)) < 2
    return with_interval(scores, (math.nan,) * 2 if few else proportion_interval(scores, clusters))


def gold_scores(task, gold, prompts: list[PromptExample], responses: list[str]) -> list[float]:
    """The gold score of each response: by the `gold` reward source when given, else by the
    task's own gold reward."""
    if gold is not None:
        return gold.score(prompts, responses).rewards.tolist()
    return [task.reward(p, r) for p, r in zip(prompts, responses)]


def distinct_indices(prompts: list) -> list[int]:
    """Index of the first occurrence of each distinct prompt (text or chat messages), in order."""
    return sorted(set(first_indices(prompts)))


def first_indices(prompts: list) -> list[int]:
    """For each prompt (text or chat messages), the index where that prompt first occurs."""
    first: dict[str, int] = {}
    return [
        first.setdefault(prompt if isinstance(prompt, str) else json.dumps(prompt), i)
        for i, prompt in enumerate(prompts)
    ]


def win_rates(
    candidate: ModelEval, baseline: ModelEval, *, by_proxy: bool = False
) -> dict[str, float]:
    """Win rate of `candidate` over `baseline` on greedy and on sampled answers (ties half, 95%
    Wilson interval): answer i of one against answer i of the other, same prompt. Judged by the
    gold scores, or (`by_proxy`) by the proxy's.

    A greedy answer is a function of its prompt, so a prompt drawn twice repeats the same
    comparison: greedy answers count once per distinct prompt (a task with 30 questions gives
    30 greedy comparisons however many prompts were drawn, and an interval that says so).
    Sampled answers all count, and their interval counts those of one prompt as correlated
    (`win_rate`'s clusters): they are fresh draws on the same question."""
    greedy_c, greedy_b = (
        (candidate.greedy_proxy, baseline.greedy_proxy)
        if by_proxy
        else (candidate.greedy_scores, baseline.greedy_scores)
    )
    sampled_c, sampled_b = (
        (candidate.sampled_proxy, baseline.sampled_proxy)
        if by_proxy
        else (candidate.sampled_scores, baseline.sampled_scores)
    )
    once = baseline.distinct or list(range(len(greedy_b)))
    return {
        **win_rate([greedy_c[i] for i in once], [greedy_b[i] for i in once]).as_dict(
            "win_rate_greedy"
        ),
        **win_rate(sampled_c, sampled_b, baseline.sampled_prompts or None).as_dict(
            "win_rate_sampled"
        ),
    }


def _prefixed(prefix: str, stats: dict[str, float]) -> dict[str, float]:
    return {prefix if key == "mean" else f"{prefix}_{key}": value for key, value in stats.items()}
