import json
import random

import pytest

from rlhfkit.errors import DataError
from rlhfkit.tasks.prompt_files import load_task_prompts
from rlhfkit.tasks.registry import TaskName, get_task


def exported_rows(name: str, n: int = 3) -> list[dict]:
    """Rows as `rlhfkit tasks export` writes a task's prompt file."""
    prompts = get_task(name).prompts(n, random.Random(0))
    return [{"prompt": p.prompt, "answer": p.answer, **p.metadata} for p in prompts]


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("name", list(TaskName))
def test_a_tasks_own_prompt_file_loads_with_its_metadata(tmp_path, name):
    rows = exported_rows(name)
    prompts = load_task_prompts(write(tmp_path / "p.jsonl", rows), get_task(name))
    assert [p.prompt for p in prompts] == [row["prompt"] for row in rows]
    assert prompts == get_task(name).prompts(3, random.Random(0))


@pytest.mark.parametrize(
    "name, change, field, words",
    [
        ("arith", lambda row: row.pop("answer"), "answer", "checks each final answer"),
        ("arith", lambda row: row.update(steps=[[1, "+", 2]]), "steps", "[left, op, right"),
        ("arith", lambda row: row.update(steps=7), "steps", "tasks export arith"),
        ("advice", lambda row: row.update(topic="gardening"), "topic", "not one of"),
        (
            "advice",
            lambda row: (row.pop("topic"), row.update(prompt="User: Hi?\nAssistant:")),
            "prompt",
            "not one of task advice's questions",
        ),
    ],
)
def test_a_row_the_task_cannot_score_is_named_when_the_file_is_read(
    tmp_path, name, change, field, words
):
    rows = exported_rows(name)
    change(rows[1])
    with pytest.raises(DataError) as caught:
        load_task_prompts(write(tmp_path / "p.jsonl", rows), get_task(name))
    error = caught.value
    assert (error.row, error.field) == (2, field) and words in error.message
    assert "\n" not in str(error)


def test_without_a_task_any_prompt_loads(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "Anything?"}, {"prompt": "Else."}])
    assert [p.prompt for p in load_task_prompts(path, None)] == ["Anything?", "Else."]
    with pytest.raises(DataError, match="row 1: field 'answer'"):
        load_task_prompts(path, get_task("arith"))


def test_arith_prompts_with_answers_alone_load_and_evaluate_without_step_accuracy(tmp_path):
    # a benchmark's or a user's file: the outcome reward needs only the answer
    rows = [{k: v for k, v in row.items() if k != "steps"} for row in exported_rows("arith")]
    task = get_task("arith")
    prompts = load_task_prompts(write(tmp_path / "p.jsonl", rows), task)
    right = [f"The answer is {p.answer}." for p in prompts]
    assert task.evaluate(prompts, right) == {"accuracy": 1.0, "gold_score": 1.0}
    with_steps = get_task("arith").prompts(3, random.Random(0))
    assert "step_accuracy" in task.evaluate(with_steps, right)
