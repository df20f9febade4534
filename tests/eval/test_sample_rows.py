from rlhfkit.data.formats import PromptExample
from rlhfkit.eval.model_eval import ModelEval
from rlhfkit.eval.sample_rows import sample_rows
from rlhfkit.eval.sampling import EvalSamples
from rlhfkit.tasks.arith import ArithTask


def evaluation() -> tuple[list[PromptExample], ModelEval]:
    prompts = [PromptExample("2 + 3 =", answer="5"), PromptExample("1 + 1 =", answer="2")]
    greedy = EvalSamples([[" The answer is 5."], [" The answer is 3."]], [[2], [2]], {})
    kl = {"k1": [[0.1, 0.2], [0.3, 0.4]], "k3": [[0.01, 0.02], [0.03, 0.04]]}
    sampled = EvalSamples(
        [[" The answer is 5.", " The answer is 6."], [" x", " The answer is 2."]],
        [[2, 2], [3, 2]],
        kl,
    )
    result = ModelEval(
        greedy,
        sampled,
        greedy_scores=[1.0, 0.0],
        sampled_scores=[1.0, 0.0, 0.0, 1.0],
        sampled_proxy=[0.5, 0.6, 0.7, 0.8],
    )
    return prompts, result


def test_each_scored_answer_is_a_row_with_its_scores_in_prompt_order():
    prompts, result = evaluation()
    rows = sample_rows("runs/a/final", prompts, result, ArithTask())
    assert [(r["kind"], r["prompt_index"], r.get("sample")) for r in rows] == [
        ("greedy", 0, None),
        ("greedy", 1, None),
        ("sampled", 0, 0),
        ("sampled", 0, 1),
        ("sampled", 1, 0),
        ("sampled", 1, 1),
    ]
    assert rows[4] == {
        "model": "runs/a/final",
        "prompt_index": 1,
        "prompt": "1 + 1 =",
        "kind": "sampled",
        "sample": 0,
        "response": " x",
        "tokens": 3,
        "gold": 0.0,
        "proxy": 0.7,
        "kl_k1": 0.3,
        "kl_k3": 0.03,
        "final_answer": None,
        "correct": False,
    }
    # greedy answers are not samples of the policy: no KL; no proxy was asked of them
    assert rows[0]["kl_k1"] is None and rows[0]["proxy"] is None and rows[0]["correct"]
    assert [r["correct"] for r in rows[2:]] == [True, False, False, True]


def test_without_a_final_answer_there_is_no_correct_field():
    prompts, result = evaluation()
    rows = sample_rows("m", prompts, result, task=None)
    assert all("correct" not in r and "final_answer" not in r for r in rows)
