"""What a command prints when it ends: numbers a reader can take in at a glance."""

import math
from pathlib import Path
from types import SimpleNamespace

from rlhfkit import cli_commands
from rlhfkit.runtime.metrics import MetricsLogger
from rlhfkit.runtime.rundir import RunDir


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


def test_a_resumed_run_compares_its_end_with_the_start_the_run_logged(tmp_path, capsys):
    # the process that began the run evaluated the start; this one, resumed at step 8,
    # evaluated after steps 9 and 12
    run = RunDir(tmp_path)
    with MetricsLogger(run.metrics_path, None) as metrics:
        metrics.log(0, {"eval_accuracy": 0.125, "eval_gold_score": math.nan}, stage="grpo")
        for step in range(1, 13):
            metrics.log(step, {"loss": 1.0, "eval_accuracy": 0.5}, stage="grpo")
    cfg = SimpleNamespace(task="arith", eval_data="")
    result = SimpleNamespace(
        evals=[
            (9, {"accuracy": 0.5, "gold_score": 1.0}),
            (12, {"accuracy": 0.75, "gold_score": 2.0}),
        ],
        model_dir=run.final,
    )
    cli_commands._print_policy_eval(cfg, run, result)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "held-out arith at the start: accuracy 0.125, gold_score nan",
        "held-out arith after step 12: accuracy 0.75, gold_score 2",
    ]
    # a run with no start evaluation logged says which step its first one came after
    run.metrics_path.unlink()
    cli_commands._print_policy_eval(cfg, run, result)
    assert capsys.readouterr().out.splitlines()[0].startswith("held-out arith after step 9: ")


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
