"""The built-in tasks by name."""

from rlhfkit.errors import RlhfkitError
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.arith import ArithTask

TASKS = {"arith": ArithTask, "advice": AdviceTask}


def get_task(name: str, **kwargs):
    if name not in TASKS:
        raise RlhfkitError(f"unknown task '{name}': built-in tasks are {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)
