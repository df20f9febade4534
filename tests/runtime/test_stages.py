import io
from dataclasses import dataclass

import yaml
from rich.console import Console

from rlhfkit.runtime.stages import timed_stage, train_stage


@dataclass(frozen=True)
class Small:
    lr: float = 0.5


def test_a_stage_returns_its_result_and_records_its_time_under_its_name():
    out, stages = io.StringIO(), {}
    result = timed_stage(Console(file=out), stages, "sft", lambda: 7)
    assert result == 7 and set(stages) == {"sft"} and stages["sft"]["seconds"] >= 0
    assert "sft" in out.getvalue()


def test_a_training_stage_runs_in_its_own_directory_with_its_config(tmp_path):
    seen = []
    result = train_stage(
        tmp_path, "rm", lambda cfg, run: seen.append((cfg, run.root)) or "done", Small()
    )
    assert result == "done" and seen == [(Small(), tmp_path / "rm")]
    assert yaml.safe_load((tmp_path / "rm" / "config.yaml").read_text()) == {"lr": 0.5}
