"""scripts/demo_seeds.py: the demo's targets read from each seed's summary."""

from tests.file_modules import ROOT, load_file_module

demo_seeds = load_file_module(ROOT / "scripts" / "demo_seeds.py", "demo_seeds")


def _summary(sft: float, grpo: float, raft: float, greedy: float) -> dict:
    method = {
        "win_rate_greedy": greedy,
        "win_rate_greedy_low": greedy - 0.15,
        "win_rate_sampled": 0.7,
        "win_rate_sampled_low": 0.65,
    }
    return {
        "eval": {
            "arith": {
                "sft": {"greedy_accuracy": sft},
                "grpo": {"greedy_accuracy": grpo},
                "raft": {"greedy_accuracy": raft},
            },
            "advice": {"ppo": method, "dpo": method},
        },
        "stages": {"sft": {"seconds": 60.0}, "ppo": {"seconds": 30.5}},
    }


def test_a_gain_of_exactly_five_points_meets_the_five_point_target():
    # 0.215 - 0.165 is 0.04999999999999999 in floats: five points, not a hair short of them
    rows = [demo_seeds.seed_row(_summary(0.165, 0.215, 0.215, 0.5)) for _ in range(3)]
    assert rows[0]["grpo_gain_points"] == 5.0 and rows[0]["seconds"] == 90.5
    met = dict(demo_seeds.targets(rows))
    assert met["GRPO: +5 points at the median"] and met["RAFT: +5 points at the median"]
    assert met["PPO: greedy win rate >= 50% on every seed"]  # all ties: exactly 50%


def test_a_gain_short_of_five_points_does_not_meet_it():
    rows = [demo_seeds.seed_row(_summary(0.165, 0.21, 0.21, 29 / 60)) for _ in range(3)]
    met = dict(demo_seeds.targets(rows))
    assert not met["GRPO: +5 points at the median"]
    assert not met["DPO: greedy win rate >= 50% on every seed"]
