"""prepare_run_dir: fresh, existing, resume and overwrite."""

import os

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.runtime.checkpoint import save_checkpoint
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir


def test_paths_inside_the_run_directory(tmp_path):
    run = RunDir(tmp_path)
    assert run.config_path == tmp_path / "config.yaml"
    assert run.metrics_path == tmp_path / "metrics.jsonl"
    assert run.checkpoints == tmp_path / "checkpoints"
    assert run.final == tmp_path / "final"
    assert run.tensorboard == tmp_path / "tensorboard"


def test_a_new_directory_is_created(tmp_path):
    run = prepare_run_dir(tmp_path / "runs" / "a", resume=False, overwrite=False)
    assert run.root.is_dir()


def test_an_existing_empty_directory_is_reused(tmp_path):
    (tmp_path / "a").mkdir()
    assert prepare_run_dir(tmp_path / "a", resume=False, overwrite=False).root == tmp_path / "a"


def test_an_existing_run_is_not_silently_reused(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    (root / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(RlhfkitError) as err:
        prepare_run_dir(root, resume=False, overwrite=False)
    expected = (
        f"run directory {root} already exists: pass --resume to continue it or choose another name"
    )
    assert str(err.value) == expected


def test_overwrite_removes_the_old_run(tmp_path):
    root = tmp_path / "a"
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text("seed: 1\n")
    run = prepare_run_dir(root, resume=False, overwrite=True)
    assert run.root.is_dir() and list(run.root.iterdir()) == []


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(RlhfkitError, match="does not look like a run directory"):
        prepare_run_dir(root, resume=False, overwrite=True)
    assert (root / "thesis.tex").exists()


def test_overwrite_refuses_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RlhfkitError, match="contains the current directory"):
        prepare_run_dir(tmp_path, resume=False, overwrite=True)
    assert os.path.exists(tmp_path / "config.yaml")


def test_resume_needs_a_complete_checkpoint(tmp_path):
    root = tmp_path / "a"
    (root / "checkpoints" / "step_00000005").mkdir(parents=True)  # no marker: incomplete
    with pytest.raises(RlhfkitError, match="nothing to resume"):
        prepare_run_dir(root, resume=True, overwrite=False)
    with pytest.raises(RlhfkitError, match="nothing to resume"):
        prepare_run_dir(tmp_path / "never-ran", resume=True, overwrite=False)


def test_resume_keeps_the_content(tmp_path):
    root = tmp_path / "a"
    save_checkpoint(root / "checkpoints", 3, write=lambda d: (d / "w.bin").write_bytes(b"w"))
    (root / "metrics.jsonl").write_text("{}\n")
    run = prepare_run_dir(root, resume=True, overwrite=False)
    assert (run.metrics_path).read_text() == "{}\n"
    assert (run.checkpoints / "step_00000003" / "w.bin").exists()


def test_resume_and_overwrite_together_is_an_error(tmp_path):
    with pytest.raises(RlhfkitError, match="not both"):
        prepare_run_dir(tmp_path, resume=True, overwrite=True)
