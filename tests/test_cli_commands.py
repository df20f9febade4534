"""What a command prints when it ends: numbers a reader can take in at a glance."""

from pathlib import Path
from types import SimpleNamespace

from rlhfkit import cli_commands


def test_a_policy_runs_evaluations_print_to_four_significant_digits(capsys):
    cfg = SimpleNamespace(task="arith", eval_data="")
    result = SimpleNamespace(
        evals=[(0, {"accuracy": 0.30512345, "n": 200}), (5, {"accuracy": 1 / 3, "n": 200})],
        model_dir=Path("runs/grpo/final"),
    )
    cli_commands._print_policy_eval(cfg, None, result)
    out = capsys.readouterr().out
    assert "held-out arith at the start: accuracy 0.3051, n 200\n" in out
    assert "held-out arith after step 5: accuracy 0.3333, n 200\n" in out


def test_each_round_prints_its_held_out_score_or_says_there_was_none(capsys):
    rounds = [
        {"round": 1, "accuracy_before": 0.61, "accuracy_after": 0.7, "eval_gold_end": 3.14159},
        {
            "round": 2,
            "accuracy_before": 0.6,
            "accuracy_after": 0.7,
            "eval_gold_end": None,
            "eval_reward_end": -0.123456,
        },
        {
            "round": 3,
            "accuracy_before": 0.6,
            "accuracy_after": 0.7,
            "eval_gold_end": None,
            "eval_reward_end": None,
        },
        {  # no held-out rankings: no accuracy to print ("nan -> nan" before)
            "round": 4,
            "accuracy_before": float("nan"),
            "accuracy_after": float("nan"),
            "eval_gold_end": 1.0,
        },
    ]
    result = SimpleNamespace(rounds=rounds, model_dir=Path("runs/it/final"))
    cli_commands._print_rounds(None, None, result)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "round 1: gold 3.142, reward-model accuracy on the new policy 0.610 -> 0.700"
    assert lines[1].startswith("round 2: held-out reward -0.1235, ")
    assert lines[2].startswith("round 3: no evaluation, ")
    assert lines[3].endswith("accuracy on the new policy not measured (no held-out rankings)")
