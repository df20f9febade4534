"""Atomic checkpoints, the latest one, pruning, RNG state, and an exact resume end to end."""

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.runtime.checkpoint import (
    capture_rng_state,
    checkpoint_damage,
    checkpoint_step,
    latest_checkpoint,
    load_torch_state,
    restore_rng_state,
    resumable_checkpoint,
    save_checkpoint,
    save_torch_state,
)


def write_file(name: str, content: bytes = b"x"):
    def write(directory):
        (directory / name).write_bytes(content)

    return write


def step_dirs(checkpoints_dir):
    return sorted(p.name for p in checkpoints_dir.iterdir() if p.name.startswith("step_"))


def test_a_saved_checkpoint_holds_the_files_and_the_marker(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", 42, write=write_file("model.bin", b"weights"))
    assert path == tmp_path / "ckpt" / "step_00000042"
    assert (path / "model.bin").read_bytes() == b"weights"
    assert json.loads((path / "checkpoint.json").read_text()) == {
        "step": 42,
        "format": 2,
        # sha256 of b"weights", computed with `printf weights | sha256sum`
        "sha256": {"model.bin": "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"},
    }
    assert checkpoint_step(path) == 42
    assert latest_checkpoint(tmp_path / "ckpt") == path


def test_a_crash_inside_write_leaves_no_new_checkpoint(tmp_path):
    checkpoints = tmp_path / "ckpt"
    previous = save_checkpoint(checkpoints, 1, write=write_file("model.bin"))

    def crash_midway(directory):
        (directory / "model.bin").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        save_checkpoint(checkpoints, 2, write=crash_midway)
    assert step_dirs(checkpoints) == ["step_00000001"]
    assert latest_checkpoint(checkpoints) == previous
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]


def test_leftovers_of_a_killed_save_are_ignored_then_removed(tmp_path):
    checkpoints = tmp_path / "ckpt"
    previous = save_checkpoint(checkpoints, 1, write=write_file("model.bin"))
    leftover = checkpoints / ".tmp-step_00000009-abc"
    leftover.mkdir()
    (leftover / "checkpoint.json").write_text('{"step": 9, "format": 1}')
    no_marker = checkpoints / "step_00000005"
    no_marker.mkdir()
    assert latest_checkpoint(checkpoints) == previous

    save_checkpoint(checkpoints, 2, write=write_file("model.bin"))
    assert not leftover.exists()
    assert latest_checkpoint(checkpoints) == checkpoints / "step_00000002"


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    checkpoints = tmp_path / "ckpt"
    for step in (10, 20, 30, 40):
        save_checkpoint(checkpoints, step, write=write_file("model.bin"))
    assert step_dirs(checkpoints) == ["step_00000030", "step_00000040"]
    save_checkpoint(checkpoints, 50, write=write_file("model.bin"), keep_last=1)
    assert step_dirs(checkpoints) == ["step_00000050"]


def test_steps_are_ordered_by_number_not_by_name(tmp_path):
    checkpoints = tmp_path / "ckpt"
    save_checkpoint(checkpoints, 99_999_999, write=write_file("a"), keep_last=5)
    (checkpoints / "step_100000000").mkdir()  # wider than 8 digits: still a number
    (checkpoints / "step_100000000" / "checkpoint.json").write_text(
        '{"step": 100000000, "format": 1}'
    )
    assert latest_checkpoint(checkpoints) == checkpoints / "step_100000000"


def test_saving_the_same_step_again_replaces_it(tmp_path):
    checkpoints = tmp_path / "ckpt"
    save_checkpoint(checkpoints, 5, write=write_file("model.bin", b"old"))
    path = save_checkpoint(checkpoints, 5, write=write_file("model.bin", b"new"))
    assert (path / "model.bin").read_bytes() == b"new"
    assert step_dirs(checkpoints) == ["step_00000005"]


def test_no_checkpoint_directory_means_no_latest(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.random(), np.random.randn(), torch.rand(1)  # randn leaves a cached gaussian
    save_torch_state(tmp_path / "rng.pt", capture_rng_state())
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    # Move every generator on, then restore.
    random.random(), np.random.rand(5), torch.rand(5)
    restore_rng_state(load_torch_state(tmp_path / "rng.pt"))
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


def three_checkpoints(tmp_path):
    root = tmp_path / "ckpt"
    for step in (1, 2, 3):
        save_checkpoint(root, step, write=write_file("model.bin", bytes([step]) * 64), keep_last=3)
    return root


def test_a_damaged_checkpoint_is_named_and_the_one_before_used(tmp_path, caplog):
    root = three_checkpoints(tmp_path)
    newest = root / "step_00000003" / "model.bin"
    data = bytearray(newest.read_bytes())
    data[10] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    assert checkpoint_damage(root / "step_00000003") == "model.bin does not match its sha256"
    assert resumable_checkpoint(root) == root / "step_00000002"
    assert "step_00000003 is damaged" in caplog.text


def test_a_missing_file_is_damage(tmp_path):
    root = three_checkpoints(tmp_path)
    (root / "step_00000003" / "model.bin").unlink()
    assert checkpoint_damage(root / "step_00000003") == "model.bin is missing"
    assert resumable_checkpoint(root) == root / "step_00000002"


def test_an_earlier_format_without_a_manifest_is_not_resumed(tmp_path):
    root = three_checkpoints(tmp_path)
    (root / "step_00000003" / "checkpoint.json").write_text('{"step": 3, "format": 1}')
    assert "format 1" in checkpoint_damage(root / "step_00000003")
    assert resumable_checkpoint(root) == root / "step_00000002"


def test_when_every_checkpoint_is_damaged_resuming_is_an_error(tmp_path):
    root = three_checkpoints(tmp_path)
    for step in (1, 2, 3):
        (root / f"step_{step:08d}" / "model.bin").write_bytes(b"zeros")
    with pytest.raises(RlhfkitError, match="every checkpoint .* is damaged"):
        resumable_checkpoint(root)
    assert resumable_checkpoint(tmp_path / "none") is None


class _Payload:
    """Unpickling this object runs `os.system`: what a planted state file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_payload_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "optimizer.pt"
    with open(path, "wb") as file:
        pickle.dump({"state": _Payload(marker)}, file, protocol=2)
    with pytest.raises(RlhfkitError, match="refusing to load .*optimizer.pt"):
        load_torch_state(path)
    assert not marker.exists()
    # the same payload inside torch.save's zip format
    torch.save({"state": _Payload(marker)}, path)
    with pytest.raises(RlhfkitError, match="refusing to load"):
        load_torch_state(path)
    assert not marker.exists()


def make_model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def train_steps(model, optimizer, steps):
    for _ in range(steps):
        batch = torch.randn(16, 4)  # data drawn from the global generator, like a shuffling loader
        loss = model(batch).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_a_resumed_run_ends_with_bitwise_identical_weights(tmp_path):
    model, optimizer = make_model_and_optimizer()
    train_steps(model, optimizer, 6)
    uninterrupted = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    model, optimizer = make_model_and_optimizer()
    train_steps(model, optimizer, 3)

    def write(directory):
        torch.save(model.state_dict(), directory / "model.pt")
        save_torch_state(directory / "optimizer.pt", optimizer.state_dict())
        save_torch_state(directory / "rng.pt", capture_rng_state())

    save_checkpoint(tmp_path / "ckpt", 3, write=write)
    train_steps(model, optimizer, 1)  # the killed run got a little further; its work is lost
    torch.manual_seed(12345)  # a new process starts from other generator states

    checkpoint = latest_checkpoint(tmp_path / "ckpt")
    model, optimizer = make_model_and_optimizer()
    model.load_state_dict(torch.load(checkpoint / "model.pt"))
    optimizer.load_state_dict(load_torch_state(checkpoint / "optimizer.pt"))
    restore_rng_state(load_torch_state(checkpoint / "rng.pt"))
    train_steps(model, optimizer, 6 - checkpoint_step(checkpoint))

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, uninterrupted[name]), name


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_a_published_checkpoint_takes_its_mode_from_the_umask(tmp_path, umask, mode):
    # as any directory the user makes: other users and a serving process can read the model
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "ckpt", 1, write=write_file("model.bin"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
