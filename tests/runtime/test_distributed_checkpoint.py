"""The sharded trainer state (runtime.distributed_checkpoint) in one process, without a process
group: what a checkpoint holds, what comes back, and what a failed save leaves. The 2-process
runs are in tests/distributed/test_resume.py."""

import json
import random

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint.filesystem
from torch.distributed.checkpoint import FileSystemReader

from rlhfkit.errors import Terminated
from rlhfkit.runtime.checkpoint import MARKER_NAME, checkpoint_damage, latest_checkpoint
from rlhfkit.runtime.distributed import Ranks
from rlhfkit.runtime.distributed_checkpoint import (
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    saved_world_size,
)


def _trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def _save(root, step, model, optimizer, extra, write_main=lambda tmp: None, keep_last=2):
    return save_sharded_checkpoint(
        root,
        step,
        model=model,
        optimizer=optimizer,
        extra=extra,
        write_main=write_main,
        keep_last=keep_last,
        ranks=Ranks(),
    )


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_a_checkpoint_brings_back_optimizer_rng_step_and_extras(tmp_path):
    model, optimizer = _trained()
    extra = {"micro_index": 6, "head": {"weight": torch.arange(4.0)}}
    path = _save(tmp_path, 3, model, optimizer, extra, lambda tmp: (tmp / "model").mkdir())
    after_save = _draws()

    assert is_sharded_checkpoint(path) and saved_world_size(path) == 1
    assert checkpoint_damage(path) is None  # the manifest covers the shards too
    manifest = json.loads((path / MARKER_NAME).read_text())["sha256"]
    assert {"trainer/.metadata", "trainer/__0_0.distcp"} <= manifest.keys()
    keys = FileSystemReader(path / "trainer").read_metadata().state_dict_metadata.keys()
    assert "rng.rank0" in keys and "extra.micro_index" in keys

    fresh_model, _ = _trained()
    fresh = torch.optim.AdamW(fresh_model.parameters(), lr=1e-2)
    _draws()  # the generators move on
    like = {"micro_index": 0, "head": {"weight": torch.zeros(4)}}
    step, loaded = load_sharded_checkpoint(
        path, model=fresh_model, optimizer=fresh, extra_like=like, ranks=Ranks()
    )
    assert step == 3 and loaded["micro_index"] == 6 and isinstance(loaded["micro_index"], int)
    assert torch.equal(loaded["head"]["weight"], torch.arange(4.0))
    assert _draws() == after_save
    for saved, restored in zip(optimizer.state.values(), fresh.state.values()):
        assert all(torch.equal(saved[key], restored[key]) for key in saved)


def test_keep_last_and_a_failed_save_leaves_the_previous_checkpoints(tmp_path):
    model, optimizer = _trained()
    for step in (1, 2, 3):
        _save(tmp_path, step, model, optimizer, {}, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000003"]

    def fail(tmp):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 4, model, optimizer, {}, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000003"]
    assert latest_checkpoint(tmp_path).name == "step_00000003"


@pytest.mark.parametrize("stop", [Terminated, KeyboardInterrupt])
def test_a_stop_signal_inside_the_save_stops_the_run_as_that_signal(tmp_path, monkeypatch, stop):
    # DCP wraps a rank's error in its CheckpointException: a SIGTERM while the shards are
    # written would end the job with DCP's traceback instead of "terminated"
    model, optimizer = _trained()
    _save(tmp_path, 1, model, optimizer, {})

    def signalled(*args, **kwargs):
        raise stop()

    monkeypatch.setattr(torch.distributed.checkpoint.filesystem, "_write_item", signalled)
    with pytest.raises(stop):
        _save(tmp_path, 2, model, optimizer, {})
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]


def test_extras_hold_numbers_and_tensors_only(tmp_path):
    model, optimizer = _trained()
    with pytest.raises(TypeError, match="numbers and tensors"):
        _save(tmp_path, 1, model, optimizer, {"name": "text"})
