"""What every built-in task provides, so trainers and the pipeline treat them alike."""

import random
from typing import Protocol

from rlhfkit.data.formats import PromptExample, SFTExample


class Task(Protocol):
    name: str
    description: str

    def sft_examples(self, n: int, rng: random.Random) -> list[SFTExample]:
        """Demonstrations for supervised fine-tuning."""

    def prompts(self, n: int, rng: random.Random) -> list[PromptExample]:
        """Prompts with the hidden information the task's reward needs, in `metadata`."""

    def prompt_problem(self, prompt: PromptExample) -> tuple[str, str] | None:
        """(field, what is wrong) when the task's reward or evaluation cannot read `prompt` (a
        prompt file without the task's answer or metadata), else None: checked when a file is
        loaded, so it fails there, naming the row, rather than scoring 0 or crashing later."""

    def reward(self, prompt: PromptExample, response: str) -> float:
        """The task's gold reward of one response (hidden from training unless asked for)."""

    def evaluate(self, prompts: list[PromptExample], responses: list[str]) -> dict[str, float]:
        """Aggregate metrics of one response per prompt (same function as the reward)."""
