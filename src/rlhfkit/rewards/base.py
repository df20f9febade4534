"""The interface every reward source follows, so trainers score responses the same way
whatever the reward comes from (a reward model, a user function, a task's verifier, a sum)."""

from dataclasses import dataclass, field
from typing import Protocol

import torch

from rlhfkit.data.formats import PromptExample, Text

EXCERPT_CHARS = 40


@dataclass(frozen=True)
class RewardScores:
    """The scores of n responses, one per prompt."""

    rewards: torch.Tensor
    """(n,) float32 on the CPU: the reward each response gets (penalties already applied)."""
    uncertainty: torch.Tensor | None = None
    """(n,) float32: the ensemble std of each reward; None when the source has no notion of it."""
    step_rewards: list[list[tuple[int, float]]] | None = None
    """Process supervision: one list per response of (character where the step ends in the
    response, reward), one pair per judged step; None when the source does not judge steps."""
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    """Combined sources only: each part's own (n,) rewards, unweighted, by source name (for
    metrics); empty for a single source."""
    cut: dict[str, torch.Tensor] = field(default_factory=dict)
    """Reward models only: by source name, (n,) bool, True = the sample was longer than the
    model's max_length and it read a truncated sequence (for metrics); empty for other sources."""

    def __post_init__(self):
        n = self.rewards.shape[0] if self.rewards.dim() == 1 else None
        if n is None or self.rewards.dtype != torch.float32:
            got = f"{self.rewards.dtype} {tuple(self.rewards.shape)}"
            raise ValueError(f"rewards must be a (n,) float32 tensor, got {got}")
        if self.uncertainty is not None and self.uncertainty.shape != (n,):
            raise ValueError(
                f"uncertainty must have shape ({n},), got {tuple(self.uncertainty.shape)}"
            )
        if self.step_rewards is not None and len(self.step_rewards) != n:
            raise ValueError(f"step_rewards must hold {n} lists, got {len(self.step_rewards)}")
        for kind, by_name in (("component", self.components), ("cut", self.cut)):
            for name, values in by_name.items():
                if values.shape != (n,):
                    raise ValueError(
                        f"{kind} '{name}' must have shape ({n},), got {tuple(values.shape)}"
                    )


class RewardSource(Protocol):
    name: str
    """Short and unique within a run: it keys metrics and names the source in errors."""

    def score(
        self, prompts: list[PromptExample], responses: list[str], *, first: int = 0
    ) -> RewardScores:
        """Score `responses[i]` as the answer to `prompts[i]` (same length lists). `first`: the
        index of `prompts[0]` among the samples of a step (under torchrun this rank's share
        starts there), so that an error names a sample as one process would number it."""


def check_same_length(name: str, prompts: list, responses: list) -> None:
    if len(prompts) != len(responses):
        raise ValueError(
            f"reward source '{name}' got {len(prompts)} prompts and {len(responses)} responses"
        )


def excerpt(prompt: Text) -> str:
    """A short one-line quote of a prompt for error messages (the last message of a
    conversation: it is the one that asks)."""
    text = prompt[-1].get("content", "") if isinstance(prompt, list) and prompt else str(prompt)
    text = " ".join(str(text).split())
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 3] + "..."
    return repr(text)


def describe_sample(index: int, prompt: Text) -> str:
    """`sample 3 ('Q: Ann has 3 pens, buys 2 more...')`, for one-line errors."""
    return f"sample {index} ({excerpt(prompt)})"
