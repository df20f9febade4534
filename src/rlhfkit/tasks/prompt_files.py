"""Prompt files read for a built-in task: every row is checked by the task (`prompt_problem`), so
a file without the task's answer or metadata fails when it is read, naming the row and field,
instead of scoring every response 0 or failing at the first evaluation."""

from pathlib import Path

from rlhfkit.data.formats import Format, PromptExample, validate_rows
from rlhfkit.data.loading import read_rows
from rlhfkit.errors import DataError
from rlhfkit.tasks.base import Task


def load_task_prompts(path: str | Path, task: Task | None) -> list[PromptExample]:
    """The prompt-only rows of `path`, each one readable by `task` (None: any prompt)."""
    rows = read_rows(path)
    prompts = validate_rows(rows, Format.PROMPT, str(path))
    if task is not None:
        for (row_number, _), prompt in zip(rows, prompts):
            problem = task.prompt_problem(prompt)
            if problem is not None:
                raise DataError(str(path), row_number, *problem)
    return prompts
