import random
import re

import pytest

from rlhfkit.data.formats import PromptExample
from rlhfkit.tasks.arith import (
    ADD_PHRASES,
    MUL_PHRASES,
    SUB_PHRASES,
    ArithTask,
    Step,
    _flawed,
    apply_op,
    parse_answer,
    parse_steps,
    solution_text,
)


def first_wrong_step(steps: list[Step]) -> int | None:
    """Index of the first step whose arithmetic is wrong, by checking each equation on its own."""
    return next(
        (k for k, s in enumerate(steps) if apply_op(s.left, s.op, s.right) != s.result), None
    )


def true_steps_from_question(question: str) -> list[Step]:
    """The correct solution, read back from the question's words alone."""
    start = int(re.search(r" has (\d+) ", question).group(1))
    clauses = question.split(", ", 1)[1].split(". How many")[0].split(", then ")
    patterns = [
        (re.escape(p).replace(r"\{n\}", r"(\d+)"), op)
        for op, phrases in (("+", ADD_PHRASES), ("-", SUB_PHRASES))
        for p in phrases
    ]
    steps, value = [], start
    for clause in clauses:
        factor = next((f for f, phrase in MUL_PHRASES.items() if clause == phrase), None)
        if factor is not None:
            op, right = "*", factor
        else:
            op, right = next(
                (op, int(m.group(1)))
                for pattern, op in patterns
                if (m := re.fullmatch(pattern, clause))
            )
        steps.append(Step(value, op, right, apply_op(value, op, right)))
        value = steps[-1].result
    return steps


def prompt_with(steps: list[Step]) -> PromptExample:
    return PromptExample(
        "q",
        answer=str(steps[-1].result),
        metadata={"task": "arith", "steps": [[s.left, s.op, s.right, s.result] for s in steps]},
    )


def test_solution_text_parses_back():
    steps = [Step(3, "+", 4, 7), Step(7, "*", 2, 14), Step(14, "-", 5, 9)]
    text = solution_text(steps)
    assert text == " 3 + 4 = 7. 7 * 2 = 14. 14 - 5 = 9. The answer is 9."
    assert parse_steps(text) == steps
    assert parse_answer(text) == 9
    assert parse_answer("no answer here") is None


@pytest.mark.parametrize("min_steps, max_steps", [(2, 2), (2, 4)])
def test_prompts_carry_the_true_steps_and_answer(min_steps, max_steps):
    task = ArithTask(min_steps=min_steps, max_steps=max_steps)
    lengths = set()
    for prompt in task.prompts(200, random.Random(0)):
        steps = [Step(*s) for s in prompt.metadata["steps"]]
        assert steps == true_steps_from_question(prompt.prompt)
        assert prompt.answer == str(steps[-1].result)
        assert first_wrong_step(steps) is None and all(s.result >= 0 for s in steps)
        lengths.add(len(steps))
    assert lengths == set(range(min_steps, max_steps + 1))


def test_reward_is_one_for_the_right_answer_else_zero():
    task = ArithTask()
    prompt = task.prompts(1, random.Random(1))[0]
    steps = [Step(*s) for s in prompt.metadata["steps"]]
    assert task.reward(prompt, solution_text(steps)) == 1.0
    assert task.reward(prompt, f" The answer is {steps[-1].result + 1}.") == 0.0
    assert task.reward(prompt, " I do not know.") == 0.0


def test_step_rewards_of_a_correct_solution_are_all_one():
    task = ArithTask()
    for prompt in task.prompts(50, random.Random(2)):
        steps = [Step(*s) for s in prompt.metadata["steps"]]
        assert task.step_rewards(prompt, solution_text(steps)) == [1.0] * len(steps)
    assert task.step_rewards(prompt, "no steps") == []


def test_step_rewards_mark_exactly_the_wrong_step_onwards():
    """One reward per written step: 1 before the wrong step, 0 from it on (the error
    propagates). Checked on many flawed solutions, including those whose later steps go
    below zero."""
    task, rng = ArithTask(), random.Random(3)
    for _ in range(400):
        _, truth = task._problem(rng)
        written = _flawed(rng, truth)
        bad = first_wrong_step(written)
        assert bad is not None
        expected = [1.0] * bad + [0.0] * (len(written) - bad)
        assert task.step_rewards(prompt_with(truth), solution_text(written)) == expected


def test_negative_intermediate_results_parse():
    text = " 5 - 2 = 1. 1 - 3 = -2. -2 + 4 = 2. The answer is 2."
    assert parse_steps(text) == [Step(5, "-", 2, 1), Step(1, "-", 3, -2), Step(-2, "+", 4, 2)]


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_flawed_share_of_demonstrations(fraction):
    examples = ArithTask(flawed_fraction=fraction).sft_examples(2000, random.Random(4))
    flawed = 0
    for example in examples:
        written = parse_steps(example.completion)
        truth = true_steps_from_question(example.prompt)
        assert len(written) == len(truth)
        assert parse_answer(example.completion) == written[-1].result
        is_flawed = first_wrong_step(written) is not None
        assert is_flawed == (written != truth)
        flawed += is_flawed
    assert abs(flawed / len(examples) - fraction) <= 0.03


def test_no_flawed_demonstrations_when_the_fraction_is_zero():
    examples = ArithTask(flawed_fraction=0.0).sft_examples(300, random.Random(5))
    assert all(first_wrong_step(parse_steps(e.completion)) is None for e in examples)


def test_shortcut_demonstrations_state_only_the_right_answer():
    examples = ArithTask(flawed_fraction=0.0, shortcut_fraction=0.4).sft_examples(
        2000, random.Random(7)
    )
    shortcuts = [e for e in examples if not parse_steps(e.completion)]
    assert abs(len(shortcuts) / len(examples) - 0.4) <= 0.03
    for example in shortcuts:
        assert (
            example.completion
            == f" The answer is {true_steps_from_question(example.prompt)[-1].result}."
        )
    for example in examples:
        assert (example in shortcuts) or parse_steps(
            example.completion
        ) == true_steps_from_question(example.prompt)


def test_step_examples_labels_agree_with_the_verifier():
    task = ArithTask()
    examples = task.step_examples(300, random.Random(6))
    flawed = 0
    for example in examples:
        truth = true_steps_from_question(example.prompt)
        prompt = prompt_with(truth)
        response = " " + " ".join(example.completions)
        assert len(example.labels) == len(truth) + 1  # every step, then the answer
        assert [float(x) for x in example.labels[:-1]] == task.step_rewards(prompt, response)
        assert float(example.labels[-1]) == task.reward(prompt, response)
        flawed += not all(example.labels)
    assert 0.4 <= flawed / len(examples) <= 0.6  # "half correct, half with one wrong step"


def test_evaluate_keys_and_values():
    task = ArithTask()
    prompts = task.prompts(4, random.Random(7))
    right = [solution_text([Step(*s) for s in p.metadata["steps"]]) for p in prompts]
    metrics = task.evaluate(prompts, right[:2] + ["nothing", " The answer is -1."])
    assert set(metrics) == {"accuracy", "step_accuracy", "gold_score"}
    assert metrics["accuracy"] == metrics["gold_score"] == 0.5
    assert metrics["step_accuracy"] == 1.0  # only the written steps count


def test_process_rewards_put_each_step_and_the_answer_where_they_end():
    task = ArithTask()
    prompt = PromptExample(
        prompt="q",
        answer="13",
        metadata={"task": "arith", "steps": [[3, "+", 4, 7], [7, "+", 6, 13]]},
    )
    right = " 3 + 4 = 7. 7 + 6 = 13. The answer is 13."
    assert task.process_rewards(prompt, right) == [(10, 1.0), (22, 1.0), (40, 1.0)]
    wrong = " 3 + 4 = 8. 8 + 6 = 14. The answer is 14."
    assert task.process_rewards(prompt, wrong) == [(10, 0.0), (22, 0.0), (40, 0.0)]
    no_answer = " 3 + 4 = 7. and then"
    assert task.process_rewards(prompt, no_answer) == [(10, 1.0), (len(no_answer), 0.0)]
