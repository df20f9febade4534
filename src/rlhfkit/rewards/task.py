"""A built-in task's own verifier as a reward source: the outcome reward (RLVR) and, for tasks
that can check every step (arith), process rewards."""

from collections.abc import Callable

import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError, SampleError
from rlhfkit.rewards.base import RewardScores, check_same_length, describe_sample
from rlhfkit.tasks.base import HasProcessRewards, Task


def _verify(
    name: str,
    task: Task,
    check: Callable,
    prompts: list[PromptExample],
    responses: list[str],
    first: int,
) -> list:
    """`check(prompt, response)` on every pair; a prompt the verifier cannot read (e.g. from a
    dataset without the task's metadata) is an error naming the sample (`first`: the index of
    `prompts[0]` among the step's samples), not a reward of 0."""
    out = []
    for index, (prompt, response) in enumerate(zip(prompts, responses)):
        try:
            out.append(check(prompt, response))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            cannot = f"reward source '{name}': task '{task.name}' cannot verify"
            raise SampleError(
                f"{cannot} {describe_sample(first + index, prompt.prompt)}: "
                f"{type(error).__name__} {error} (the prompts need the task's answer and metadata)",
                kind=f"{cannot} a sample: {type(error).__name__}",
            ) from error
    return out


class TaskReward:
    """The task's verifiable `reward(prompt, response)` of each response."""

    def __init__(self, task: Task, name: str = "task"):
        self.task, self.name = task, name

    def score(
        self, prompts: list[PromptExample], responses: list[str], *, first: int = 0
    ) -> RewardScores:
        check_same_length(self.name, prompts, responses)
        rewards = _verify(self.name, self.task, self.task.reward, prompts, responses, first)
        return RewardScores(rewards=torch.tensor(rewards, dtype=torch.float32))


class ProcessReward:
    """Verified step rewards (`task.process_rewards`: where each written step ends and whether
    it is right, then the final answer) plus the outcome reward of the whole response as
    `rewards`."""

    def __init__(self, task: Task, name: str = "process"):
        if not isinstance(task, HasProcessRewards):
            raise RlhfkitError(
                f"reward source '{name}': task '{task.name}' cannot check single steps (it has no "
                "process_rewards); use the outcome reward 'task' instead"
            )
        self.task, self.name = task, name

    def score(
        self, prompts: list[PromptExample], responses: list[str], *, first: int = 0
    ) -> RewardScores:
        check_same_length(self.name, prompts, responses)
        task = self.task
        steps = _verify(self.name, task, task.process_rewards, prompts, responses, first)
        rewards = _verify(self.name, task, task.reward, prompts, responses, first)
        return RewardScores(
            rewards=torch.tensor(rewards, dtype=torch.float32),
            step_rewards=[[(int(end), float(x)) for end, x in row] for row in steps],
        )
