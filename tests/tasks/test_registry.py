import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.tasks.registry import TASKS, TaskName, get_task
from tests.tasks.test_base import TASKS_DOC


def test_every_task_name_has_its_task_and_the_task_its_name():
    assert list(TASKS) == list(TaskName)
    assert all(TASKS[name].name == name for name in TaskName)


def test_an_unknown_task_names_the_built_in_ones_sorted():
    with pytest.raises(RlhfkitError) as caught:
        get_task("chess")
    names = ", ".join(sorted(TaskName))
    assert str(caught.value) == f"unknown task 'chess': built-in tasks are {names}"


def test_the_task_docs_have_a_section_per_task():
    headings = [line for line in TASKS_DOC.read_text().splitlines() if line.startswith("## `")]
    expected = sorted(f"## `{name}`" for name in TaskName)
    assert sorted(headings) == expected, "docs/tasks.md needs one section per built-in task"
