"""Schedules as pure functions of the step, so resuming needs no scheduler state: the learning
rate, and when periodic work (evaluation, samples, checkpoints) is due."""

import math


def linear_warmup(step: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based): linear from
    1/warmup_steps to 1 over `warmup_steps` steps, then 1 (0 steps: 1 from the start)."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    `linear_warmup` over `warmup_steps`, then cosine decay to `min_ratio` at `total_steps`.
    """
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def is_due(done: int, every: int, total_steps: int, *, at_end: bool) -> bool:
    """Whether periodic work runs after `done` of `total_steps` steps: every `every` steps
    (0 = never on the way), and at the last step exactly when `at_end`."""
    if done == total_steps:
        return at_end
    return every > 0 and done % every == 0
