"""The optional task capabilities of tasks/base.py: each built-in task that has a capability's
member passes its isinstance check (the way the features that use it probe) with the declared
signature, and a task without the member does not."""

import inspect
import re
import typing
from pathlib import Path

import pytest

from rlhfkit.tasks import base
from rlhfkit.tasks.registry import TASKS, TaskName

TASKS_DOC = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"
CAPABILITIES = [
    obj
    for obj in vars(base).values()
    if inspect.isclass(obj)
    and obj.__module__ == base.__name__
    and typing.Protocol in obj.__bases__
    and obj is not base.Task
]


def member(capability: type) -> str:
    """The one member a capability declares."""
    (name,) = [name for name in vars(capability) if not name.startswith("_")]
    return name


def test_every_capability_is_one_member_checked_at_run_time():
    assert CAPABILITIES
    for capability in CAPABILITIES:
        member(capability)
        # a static-only protocol raises TypeError on isinstance
        assert not isinstance(object(), capability)


@pytest.mark.parametrize("name", list(TaskName))
@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: c.__name__)
def test_a_task_has_a_capability_exactly_when_it_has_its_member(name, capability):
    task, attribute = TASKS[name](), member(capability)
    assert isinstance(task, capability) == hasattr(task, attribute)
    declared = vars(capability)[attribute]
    if hasattr(task, attribute) and inspect.isfunction(declared):
        assert inspect.signature(getattr(type(task), attribute)) == inspect.signature(declared)


@pytest.mark.parametrize("name", list(TaskName))
def test_every_built_in_task_has_the_required_members(name):
    task = TASKS[name]()
    assert task.name == name and task.description
    required = [n for n in vars(base.Task) if not n.startswith("_")]
    required += list(typing.get_type_hints(base.Task))
    for attribute in required:
        assert hasattr(task, attribute), f"task '{name}' has no {attribute}"


def test_the_task_docs_list_exactly_the_capabilities():
    section = TASKS_DOC.read_text().split("## Adding a task", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(Has\w+)`", section))
    assert documented == {capability.__name__ for capability in CAPABILITIES}
