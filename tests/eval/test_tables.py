from rlhfkit.eval.tables import EVAL_METRICS, fixed


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
