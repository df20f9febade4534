"""The built-in tasks by name."""

from enum import StrEnum

from rlhfkit.errors import RlhfkitError
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.tasks.sentiment import SentimentTask


class TaskName(StrEnum):
    """A built-in task, as a config names it (`task=arith`); a StrEnum, so it prints as its name."""

    ARITH = "arith"
    """Multi-step arithmetic word problems: verifiable answers and steps."""
    ADVICE = "advice"
    """Short advice replies judged by a hidden multi-preference gold annotator."""
    SENTIMENT = "sentiment"
    """Movie-review openings to continue, judged by the VADER sentiment of the continuation."""


TASKS = {
    TaskName.ARITH: ArithTask,
    TaskName.ADVICE: AdviceTask,
    TaskName.SENTIMENT: SentimentTask,
}


def get_task(name: str, **kwargs):
    """The task called `name` (a TaskName or its string), built with `kwargs`."""
    if name not in TASKS:  # a StrEnum member equals and hashes as its string
        raise RlhfkitError(f"unknown task '{name}': built-in tasks are {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)
