"""What every built-in task provides, so trainers and the pipeline treat them alike.

`Task` is what every task must have. The protocols after it are optional capabilities: a feature
that needs one asks `isinstance(task, HasFinalAnswer)` (and so on) and, for a task without it,
is skipped (pass@k, the steps file) or refused by name (`reward=process`, critique, the judge's
gold agreement). Each docstring names the feature its capability enables; docs/tasks.md ("Adding
a task") lists them.
"""

import random
from typing import Protocol, runtime_checkable

from rlhfkit.data.conversation import Principle
from rlhfkit.data.formats import PromptExample, SFTExample, StepsExample


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


@runtime_checkable
class HasFinalAnswer(Protocol):
    """Enables pass@k and maj@k in `rlhfkit eval` (eval/model_eval.py); without it they are
    absent from the metrics. A task with it whose `reward` gives 1 for a right answer and 0
    otherwise has its sampled gold score read as verdicts (a Wilson interval, not a bootstrap)."""

    def final_answer(self, response: str) -> str | None:
        """The answer `response` states, written as `PromptExample.answer` writes it (compared
        with it for pass@k, and the vote of maj@k); None when it states none."""


@runtime_checkable
class HasProcessRewards(Protocol):
    """Enables the reward source `reward=process` (rewards/task.py: GRPO's
    `supervision=process`); without it that source is refused by name."""

    def process_rewards(self, prompt: PromptExample, response: str) -> list[tuple[int, float]]:
        """(character where it ends, reward) of every written step, then of the final answer
        with the outcome reward."""


@runtime_checkable
class HasStepExamples(Protocol):
    """Enables the step-labelled file `<task>_steps.jsonl` of `rlhfkit tasks export` (cli.py),
    the data of a process reward model; without it the file is not written."""

    def step_examples(self, n: int, rng: random.Random) -> list[StepsExample]:
        """`n` solutions split into steps, each step labelled right or wrong."""


@runtime_checkable
class HasPrinciples(Protocol):
    """Enables `rlhfkit critique` with the task's own principles (train/constitutional.py);
    without it critique needs `principles=PATH`."""

    @property
    def principles(self) -> list[Principle]:
        """The principles a critique checks a response against and a revision follows."""


@runtime_checkable
class HasPromptExample(Protocol):
    """Enables `rlhfkit judge task=...` (train/rlaif.py): the gold scores of pairs whose prompts
    are read from a file as text, against which the judge's verdicts are measured; without it
    the run is refused by name."""

    def prompt_example(self, prompt: str) -> PromptExample:
        """`prompt` as the task's reward reads it (its metadata recovered from the text); raises
        RlhfkitError for a prompt the task cannot score."""
