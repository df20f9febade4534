"""The frontier report's table rows, for the sentiment task (its own sign) and any other."""

from rlhfkit.eval.frontier_report import POINT_COLUMNS, Point, point_rows

GENERIC = {
    "kl_k1_per_sequence": 1.5,
    "kl_k1_per_sequence_low": 1.0,
    "kl_k1_per_sequence_high": 2.0,
    "gold_sampled": 0.25,
    "gold_sampled_low": 0.125,
    "gold_sampled_high": 0.5,
    "sampled_distinct_1": 0.5,
    "sampled_words": 12.25,
}


def test_a_task_without_positive_repeats_leaves_that_cell_empty():
    # task=arith or advice: no `positive_repeats` of their own (the frontier once stopped with
    # a KeyError here, after every stage had run)
    (row,) = point_rows([Point("sft", "sft", "SFT", 0, GENERIC)])
    assert len(row) == len(POINT_COLUMNS)
    assert row[:4] == ["SFT", "0", "1.50 [1.00, 2.00]", "0.250 [0.125, 0.500]"]
    assert row[-3:] == ["", "0.500", "12.2"]


def test_the_sentiment_tasks_positive_repeats_are_shown():
    metrics = {**GENERIC, "sampled_positive_repeats": 0.004}
    (row,) = point_rows([Point("ppo", "ppo", "PPO", 2, metrics)])
    assert row[-3:] == ["0.004", "0.500", "12.2"]


def test_a_rounded_zero_shows_no_minus_sign_as_in_the_eval_table():
    # SFT against itself: a KL of rounding noise read "0.00 [-0.00, 0.00]", and a gold score
    # just below 0 "-0.000 [...]"; the eval table writes both without the sign (`fixed`)
    metrics = {
        **GENERIC,
        "kl_k1_per_sequence": 1e-7,
        "kl_k1_per_sequence_low": -2e-7,
        "kl_k1_per_sequence_high": 3e-7,
        "gold_sampled": -0.0004,
        "gold_sampled_low": -0.05,
        "gold_sampled_high": 0.05,
    }
    (row,) = point_rows([Point("sft", "sft", "SFT", 0, metrics)])
    assert row[2:4] == ["0.00 [0.00, 0.00]", "0.000 [-0.050, 0.050]"]
