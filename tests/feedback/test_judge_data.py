import random

from rlhfkit.feedback.judge import judge_prompt
from rlhfkit.feedback.judge_data import judge_sft_rows

PAIRS = [
    {
        "prompt": f"User: Question {i}?\nAssistant:",
        "chosen": f" Good reply {i}.",
        "rejected": f" Bad reply {i}.",
    }
    for i in range(5)
]


def test_every_pair_in_both_orders_with_the_chosen_reply_as_the_answer():
    rows = judge_sft_rows(PAIRS, random.Random(0))
    assert len(rows) == 2 * len(PAIRS)
    expected = []
    for pair in PAIRS:
        expected.append(
            {
                "prompt": judge_prompt(pair["prompt"], pair["chosen"], pair["rejected"]),
                "completion": " A",
            }
        )
        expected.append(
            {
                "prompt": judge_prompt(pair["prompt"], pair["rejected"], pair["chosen"]),
                "completion": " B",
            }
        )
    assert sorted(map(str, rows)) == sorted(map(str, expected))
    # balanced answers: a judge cannot score by preferring a position
    assert sum(row["completion"] == " A" for row in rows) == len(PAIRS)


def test_rows_are_shuffled_by_the_rng():
    first = judge_sft_rows(PAIRS, random.Random(0))
    assert judge_sft_rows(PAIRS, random.Random(0)) == first
    assert judge_sft_rows(PAIRS, random.Random(1)) != first
