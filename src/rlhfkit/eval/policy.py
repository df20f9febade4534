"""A policy on a built-in task: generate for held-out prompts, score with the task itself."""

from rlhfkit.data.formats import PromptExample
from rlhfkit.eval.model_eval import first_indices
from rlhfkit.eval.win_rate import WinRate, win_rate
from rlhfkit.rollout.sample import sample_responses


def evaluate_policy(
    model,
    tokenizer,
    task,
    prompts: list[PromptExample],
    *,
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    progress: str | None = None,
    dtype=None,
) -> tuple[dict[str, float], list[str]]:
    """The task's `evaluate()` on one response per prompt; returns (metrics, responses).
    `dtype`: as `sample_responses`'s."""
    samples = sample_responses(
        model,
        tokenizer,
        [p.prompt for p in prompts],
        greedy=greedy,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        dtype=dtype,
    )
    responses = [texts[0] for texts in samples.texts]
    return task.evaluate(prompts, responses), responses


def gold_scores(
    model,
    tokenizer,
    task,
    prompts: list[PromptExample],
    *,
    max_new_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    samples_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 256,
) -> list[float]:
    """The task's gold score of each response, prompt by prompt (`samples_per_prompt` each, or
    one greedy answer): (prompts * samples) floats."""
    samples = sample_responses(
        model,
        tokenizer,
        [p.prompt for p in prompts],
        greedy=greedy,
        num_samples=1 if greedy else samples_per_prompt,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    return [task.reward(p, text) for p, texts in zip(prompts, samples.texts) for text in texts]


def gold_win_rate(
    candidate,
    baseline,
    tokenizer,
    task,
    prompts: list[PromptExample],
    *,
    max_new_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    samples_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 256,
) -> WinRate:
    """Win rate of `candidate` against `baseline` judged by the task's gold score: both answer
    the same prompts (`samples_per_prompt` each, or one greedy answer) and sample i of one is
    compared with sample i of the other; the interval counts the comparisons on one prompt as
    correlated (`win_rate`'s clusters)."""
    settings = dict(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        samples_per_prompt=samples_per_prompt,
        seed=seed,
        batch_size=batch_size,
    )
    per_prompt = 1 if greedy else samples_per_prompt
    return win_rate(
        gold_scores(candidate, tokenizer, task, prompts, **settings),
        gold_scores(baseline, tokenizer, task, prompts, **settings),
        # a prompt's samples together (by its first index: a chat prompt is not hashable)
        clusters=[i for i in first_indices([p.prompt for p in prompts]) for _ in range(per_prompt)],
    )
