import random

import pytest

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError, SampleError
from rlhfkit.rewards.task import ProcessReward, TaskReward
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.arith import ArithTask, Step, solution_text

# Ann has 3, buys 2 more (3 + 2 = 5), then doubles them (5 * 2 = 10).
PROMPT = PromptExample(
    "Q: Ann has 3 pens, buys 2 more, then doubles them. How many pens does Ann have now?\nA:",
    answer="10",
    metadata={"task": "arith", "steps": [[3, "+", 2, 5], [5, "*", 2, 10]]},
)
RIGHT = " 3 + 2 = 5. 5 * 2 = 10. The answer is 10."
WRONG_FIRST_STEP = " 3 + 2 = 6. 6 * 2 = 12. The answer is 12."
WRONG_LAST_STEP = " 3 + 2 = 5. 5 * 2 = 11. The answer is 11."
RIGHT_STEPS_WRONG_ANSWER = " 3 + 2 = 5. 5 * 2 = 10. The answer is 9."


def test_task_reward_on_arith_pays_the_right_answer_only():
    responses = [RIGHT, WRONG_FIRST_STEP, RIGHT_STEPS_WRONG_ANSWER, "no idea"]
    scores = TaskReward(ArithTask()).score([PROMPT] * 4, responses)
    assert scores.rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert scores.uncertainty is None and scores.step_rewards is None


def test_task_reward_on_generated_arith_prompts():
    prompts = ArithTask(min_steps=2, max_steps=3).prompts(5, random.Random(0))
    right = [solution_text([Step(*s) for s in p.metadata["steps"]]) for p in prompts]
    wrong = [f" The answer is {int(p.answer) + 1}." for p in prompts]
    scores = TaskReward(ArithTask()).score(prompts + prompts, right + wrong)
    assert scores.rewards.tolist() == [1.0] * 5 + [0.0] * 5


def test_process_reward_marks_each_step_and_keeps_the_outcome():
    responses = [
        RIGHT,
        WRONG_FIRST_STEP,
        WRONG_LAST_STEP,
        RIGHT_STEPS_WRONG_ANSWER,
        "The answer is 10.",
    ]
    scores = ProcessReward(ArithTask()).score([PROMPT] * 5, responses)
    # (character where the step ends, reward): two equations, then the final answer
    assert scores.step_rewards == [
        [(10, 1.0), (22, 1.0), (40, 1.0)],
        [(10, 0.0), (22, 0.0), (40, 0.0)],
        [(10, 1.0), (22, 0.0), (40, 0.0)],
        [(10, 1.0), (22, 1.0), (39, 0.0)],
        [(16, 1.0)],
    ]
    assert scores.rewards.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_process_reward_needs_a_task_with_step_rewards():
    with pytest.raises(RlhfkitError, match="task 'advice' cannot check single steps"):
        ProcessReward(AdviceTask())


def test_prompts_without_the_task_metadata_are_an_error_naming_the_sample():
    bare = PromptExample("Q: what is 3 + 2?\nA:", answer="5")
    with pytest.raises(
        RlhfkitError, match=r"cannot verify sample 1 \('Q: what is 3 \+ 2\? A:'\).*KeyError"
    ):
        ProcessReward(ArithTask()).score([PROMPT, bare], [RIGHT, " 3 + 2 = 5. The answer is 5."])
    with pytest.raises(RlhfkitError, match="task 'advice' cannot verify sample 0"):
        TaskReward(AdviceTask()).score([PromptExample("User: hi\nAssistant:")], [" Hello."])


def test_a_share_of_a_step_names_its_samples_by_their_index_in_the_step():
    # under torchrun a rank scores the step's samples from `first` on; ranks failing alike on
    # their own samples share the error's kind
    bare = [
        PromptExample("Q: what is 3 + 2?\nA:", answer="5"),
        PromptExample("Q: what is 4 + 1?\nA:", answer="5"),
    ]
    errors = []
    for prompts, first in ((bare[:1], 0), ([PROMPT, bare[1]], 6)):
        with pytest.raises(SampleError) as caught:
            ProcessReward(ArithTask()).score(prompts, [RIGHT] * len(prompts), first=first)
        errors.append(caught.value)
    assert "cannot verify sample 0 ('Q: what is 3 + 2? A:')" in str(errors[0])
    assert "cannot verify sample 7 ('Q: what is 4 + 1? A:')" in str(errors[1])
    kind = "reward source 'process': task 'arith' cannot verify a sample: KeyError"
    assert errors[0].kind == errors[1].kind == kind
