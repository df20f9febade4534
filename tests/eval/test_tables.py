from rlhfkit.eval.tables import EVAL_METRICS, fixed, metric_table, sample_rows, score


def test_a_rounded_zero_never_shows_a_minus_sign():
    assert fixed(-1e-7) == "0.000" and fixed(-0.0) == "0.000"
    assert fixed(-0.0004, 4) == "-0.0004" and fixed(-0.0006) == "-0.001"
    assert fixed(0.12345, 2) == "0.12"


def test_the_kl_of_a_model_against_itself_reads_as_zero():
    # the baseline's KL to itself, from cached against full-pass log-probs: -1e-7, not -0.000
    m = {"kl_k1_per_sequence": -1e-7, "kl_k1_per_sequence_low": -3e-7}
    m |= {"kl_k1_per_sequence_high": 2e-7, "kl_k1_per_token": -1e-9, "kl_k3_per_token": 0.0}
    rows = {label: write(m) for label, key, write in EVAL_METRICS if key.startswith("kl_")}
    assert rows == {
        "KL/sequence k1 [95%]": "0.000 [0.000, 0.000]",
        "KL/token k1 / k3": "0.0000 / 0.0000",
    }


def test_a_judge_scoring_in_millionths_is_not_shown_as_zero():
    # 3 decimals showed "0.000 [0.000, 0.000]" where eval.json held 3.2e-5
    m = {"gold_sampled": 3.2e-5, "gold_sampled_low": 2.91e-5, "gold_sampled_high": 3.5e-5}
    m |= {"greedy_gold_score": 1.5e-6}
    rows = {label: write(m) for label, key, write in EVAL_METRICS if key in m}
    assert rows == {"gold, greedy": "1.5e-06", "gold, sampled [95%]": "3.2e-05 [2.91e-05, 3.5e-05]"}
    assert score(0.0) == "0.000" and score(1.5) == "1.500" and score(-0.0004) == "-0.0004"


def test_side_by_side_answers_show_a_small_gold_as_the_table_does():
    items = [{"prompt": "p", "a": {"response": "r", "gold": 3.7e-05}}]
    assert sample_rows(items) == (["prompt", "a"], [["p", "r\n[gold 3.7e-05]"]])


def test_one_sample_per_prompt_shows_pass_at_1_once():
    m = {"pass@1": 0.25, "maj@1": 0.25}
    assert [row[0] for row in metric_table({"model": m})[1]] == ["pass@1"]
    two = {"pass@1": 0.25, "pass@2": 0.4, "maj@1": 0.25, "maj@2": 0.3}
    assert [row[0] for row in metric_table({"model": two})[1]] == ["pass@1", "pass@2", "maj@2"]


def test_an_ai_judges_flips_have_their_row():
    # a flip rate near 1 says the judge's win rates mean little: the table must show it
    columns, rows = metric_table(
        {"m": {"judge_flip_rate_greedy": 1.0, "judge_flip_rate_sampled": 0.5}, "base": {}}
    )
    assert columns == ["metric", "m", "base"]
    assert ["judge flips, greedy / sampled", "100.0% / 50.0%", ""] in rows


def test_an_interval_that_cannot_be_estimated_reads_as_absent():
    # one distinct prompt: eval.json holds null bounds, the table a "-", not "9.662 [9.662, 9.662]"
    m = {"kl_k1_per_sequence": 9.662, "kl_k1_per_sequence_low": None}
    m |= {"kl_k1_per_sequence_high": None, "gold_sampled": 0.5, "gold_sampled_low": None}
    m |= {"gold_sampled_high": None}
    rows = {label: write(m) for label, key, write in EVAL_METRICS if key in m}
    assert rows == {"gold, sampled [95%]": "0.500 [-]", "KL/sequence k1 [95%]": "9.662 [-]"}
