"""MetricsLogger: JSONL lines, nulls for non-finite values, resume truncation, TensorBoard."""

import json
import math

import numpy as np
import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.runtime.metrics import MetricsLogger, read_metrics


def test_each_log_call_appends_one_flushed_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path, None) as logger:
        logger.log(1, {"loss": 2.5, "tokens": 100})
        # Flushed at once: readable while the run goes on.
        assert json.loads(path.read_text().splitlines()[0])["loss"] == 2.5
        logger.log(1, {"accuracy": np.float32(0.5), "kl": torch.tensor(0.25)}, stage="eval")
    records = read_metrics(path)
    assert [(r["stage"], r["step"]) for r in records] == [("train", 1), ("eval", 1)]
    assert records[0]["tokens"] == 100
    assert (records[1]["accuracy"], records[1]["kl"]) == (0.5, 0.25)
    assert all(isinstance(r["time"], float) for r in records)


def test_non_finite_values_are_written_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path, None) as logger:
        logger.log(3, {"loss": math.nan, "grad_norm": math.inf, "lr": 0.1})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    record = read_metrics(path)[0]
    assert (record["loss"], record["grad_norm"], record["lr"]) == (None, None, 0.1)


def test_resume_drops_the_lines_after_the_checkpoint_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path, None) as logger:
        for step in range(1, 6):
            logger.log(step, {"loss": float(step)})
        logger.log(4, {"reward": 1.0}, stage="eval")
    with MetricsLogger(path, None, resume_from_step=3) as logger:
        logger.log(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "train", "step": 1, "loss": 1.0}\n{"stage": "train", "st')
    assert [r["step"] for r in read_metrics(path)] == [1]
    with MetricsLogger(path, None, resume_from_step=1) as logger:
        logger.log(2, {"loss": 2.0})
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_a_damaged_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RlhfkitError, match="line 2 is not valid JSON"):
        read_metrics(path)


def test_reserved_names_are_refused(tmp_path):
    with MetricsLogger(tmp_path / "m.jsonl", None) as logger:
        with pytest.raises(ValueError, match="reserved"):
            logger.log(1, {"step": 2.0})


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path / "m.jsonl", tmp_path / "tb") as logger:
        logger.log(1, {"loss": 2.0})
        logger.log(2, {"loss": 1.0})
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 1.0)]


def test_tensorboard_scalars_are_on_disk_when_log_returns(tmp_path):
    # a run killed right after a step's checkpoint must not lose that step's scalars, which the
    # resume keeps (it hides only the steps after its checkpoint)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path / "m.jsonl", tmp_path / "tb") as logger:
        logger.log(1, {"loss": 2.0})
        events = EventAccumulator(str(tmp_path / "tb"))
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0)]


def test_a_resume_hides_the_scalars_after_its_checkpoint_and_keeps_those_before(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path / "m.jsonl", tmp_path / "tb") as logger:
        for step in (1, 2, 3):
            logger.log(step, {"loss": float(step)})
    with MetricsLogger(tmp_path / "m.jsonl", tmp_path / "tb", resume_from_step=2) as logger:
        logger.log(3, {"loss": 30.0})
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]


def test_tensorboard_leaves_out_what_the_jsonl_writes_as_null(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path / "m.jsonl", tmp_path / "tb") as logger:
        logger.log(1, {"kept_reward_mean": math.nan, "loss": 1.0})
        logger.log(2, {"kept_reward_mean": 0.5, "loss": math.inf})
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/kept_reward_mean")] == [(2, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0)]


def test_without_tensorboard_installed_the_metrics_go_to_jsonl_only(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a),
    )
    with MetricsLogger(tmp_path / "m.jsonl", tmp_path / "tb") as logger:
        logger.log(1, {"loss": 2.0})
    assert read_metrics(tmp_path / "m.jsonl")[0]["loss"] == 2.0
    assert not (tmp_path / "tb").exists()
