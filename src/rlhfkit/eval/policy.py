"""A policy on a built-in task: generate for held-out prompts, score with the task itself."""

from rlhfkit.data.formats import PromptExample
from rlhfkit.rollout.sample import sample_responses


def evaluate_policy(
    model, tokenizer, task, prompts: list[PromptExample], *, max_new_tokens: int, greedy: bool = True,
    temperature: float = 1.0, seed: int = 0, batch_size: int = 128, progress: str | None = None,
) -> tuple[dict[str, float], list[str]]:
    """The task's `evaluate()` on one response per prompt; returns (metrics, responses)."""
    samples = sample_responses(model, tokenizer, [p.prompt for p in prompts], greedy=greedy,
                               temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                               batch_size=batch_size, progress=progress)
    responses = [texts[0] for texts in samples.texts]
    return task.evaluate(prompts, responses), responses
