"""The run directory: names confined to the runs directory, fresh / existing / resume /
overwrite, an overwritten run kept until the new one has progress, the resumed config checked."""

import dataclasses
import json
import os

import pytest
import yaml

from rlhfkit.errors import NumericalFault, RlhfkitError
from rlhfkit.runtime.checkpoint import save_checkpoint
from rlhfkit.runtime.config import load_config, save_config
from rlhfkit.runtime.run_lock import LOCK_NAME, acquire_run_lock, release_run_lock
from rlhfkit.runtime.rundir import (
    RunDir,
    has_progress,
    open_run,
    prepare_run_dir,
    resume_with_config,
    run_root,
)
from rlhfkit.train.ppo import PPOConfig


@dataclasses.dataclass(frozen=True)
class Optim:
    betas: tuple[float, float] = (0.9, 0.99)


@dataclasses.dataclass(frozen=True)
class Tiny:
    lr: float = 1e-3
    max_steps: int = 10
    data: str = "train.jsonl"
    optim: Optim = dataclasses.field(default_factory=Optim)


def old_run(root, *, checkpoint=False):
    """An earlier finished run: config, metrics and final model (and a checkpoint if asked)."""
    (root / "final").mkdir(parents=True)
    (root / "final" / "model.bin").write_bytes(b"old weights")
    (root / "config.yaml").write_text("lr: 0.001\n")
    (root / "metrics.jsonl").write_text('{"step": 1}\n')
    if checkpoint:
        save_checkpoint(root / "checkpoints", 1, write=lambda d: (d / "w").write_bytes(b"w"))
    return root


def contents(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


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
        f"run directory {root} already exists: pass --resume to continue it, --overwrite to "
        "replace it, or choose another name (--name)"
    )
    assert str(err.value) == expected


def test_a_run_that_does_not_resume_points_to_overwrite_alone(tmp_path):
    root = tmp_path / "eval"
    root.mkdir()
    (root / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(RlhfkitError) as err:
        with open_run(root, resume=False, overwrite=False, resumable=False):
            pass
    assert "pass --overwrite to replace it" in str(err.value) and "--resume" not in str(err.value)


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


@pytest.mark.parametrize("labels", ["labels.db", "labels/labels.db", "submissions.jsonl"])
def test_overwrite_refuses_a_run_that_holds_peoples_labels(tmp_path, labels):
    root = tmp_path / "cands"
    root.mkdir()
    (root / "config.yaml").write_text("seed: 1\n")
    (root / labels).parent.mkdir(parents=True, exist_ok=True)
    (root / labels).write_text("hours of ranking")
    with pytest.raises(RlhfkitError, match="holds people's labels"):
        prepare_run_dir(root, resume=False, overwrite=True)
    assert (root / labels).read_text() == "hours of ranking"


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


@pytest.mark.parametrize("name", ["../x", "/abs/path", "a/b", ".", "..", "", "  ", ".hidden"])
def test_a_run_name_must_be_a_plain_name_inside_the_runs_dir(tmp_path, name):
    with pytest.raises(RlhfkitError) as err:
        run_root(tmp_path / "runs", name)
    assert str(err.value).startswith(f"--name {name!r} is not a plain run name")


def test_a_plain_name_is_a_folder_of_the_runs_dir(tmp_path):
    assert run_root(tmp_path / "runs", "sft-1.b") == tmp_path / "runs" / "sft-1.b"


def test_runs_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").write_text("")
    with pytest.raises(RlhfkitError, match=f"--runs-dir {tmp_path / 'runs'} is a file"):
        run_root(tmp_path / "runs", "sft")


def test_a_run_directory_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RlhfkitError, match="cannot create run directory"):
        with open_run(tmp_path / "file" / "sft", resume=False, overwrite=False):
            pass


def test_open_run_holds_the_lock_while_the_run_runs(tmp_path):
    root = tmp_path / "a"
    with open_run(root, resume=False, overwrite=False) as (run, lock):
        assert run.root == root and lock.path == root / LOCK_NAME
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(RlhfkitError, match=f"run {root} is in use by process {os.getpid()}"):
            with open_run(root, resume=False, overwrite=True):
                pass
        (run.final).mkdir()
    assert not (root / LOCK_NAME).exists() and run.final.is_dir()


def test_a_locked_run_is_not_overwritten(tmp_path):
    root = old_run(tmp_path / "a", checkpoint=True)
    before = contents(root)
    lock = acquire_run_lock(root)  # another process runs it
    with pytest.raises(RlhfkitError, match="is in use by process"):
        with open_run(root, resume=False, overwrite=True):
            pass
    with pytest.raises(RlhfkitError, match="is in use by process"):
        with open_run(root, resume=True, overwrite=False):
            pass
    release_run_lock(lock)
    assert contents(root) == before


def test_a_lock_alone_is_not_an_existing_run(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    (root / LOCK_NAME).write_text(json.dumps({"pid": 0, "host": "h", "token": "t"}))
    with pytest.raises(RlhfkitError, match="on host h"):  # refused by the lock, not "exists"
        with open_run(root, resume=False, overwrite=False):
            pass


def test_resuming_a_run_that_never_ran_creates_nothing(tmp_path):
    with pytest.raises(RlhfkitError, match="nothing to resume"):
        with open_run(tmp_path / "never-ran", resume=True, overwrite=False):
            pass
    assert not (tmp_path / "never-ran").exists()


def test_overwrite_keeps_the_old_run_aside_until_the_new_run_succeeds(tmp_path):
    root = old_run(tmp_path / "runs" / "a")
    with open_run(root, resume=False, overwrite=True) as (run, _):
        aside = tmp_path / "runs" / f".a.replaced-{os.getpid()}"
        assert (aside / "final" / "model.bin").read_bytes() == b"old weights"
        assert not (aside / LOCK_NAME).exists()
        assert sorted(p.name for p in run.root.iterdir()) == [LOCK_NAME]
        (run.final).mkdir()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]
    assert sorted(p.name for p in root.iterdir()) == ["final"]


@pytest.mark.parametrize(
    "failure",
    [RlhfkitError("train.jsonl: no such file"), KeyboardInterrupt(), RuntimeError("bug")],
    ids=["bad-input", "ctrl-c", "crash"],
)
def test_a_failed_overwrite_before_any_progress_puts_the_old_run_back(tmp_path, failure):
    root = old_run(tmp_path / "runs" / "a", checkpoint=True)
    before = contents(root)
    with pytest.raises(type(failure)):
        with open_run(root, resume=False, overwrite=True) as (run, _):
            run.config_path.write_text("lr: 0.002\n")
            run.metrics_path.write_text('{"step": 1}\n')
            raise failure
    assert contents(root) == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]


def test_a_failed_overwrite_after_a_checkpoint_keeps_the_new_run(tmp_path):
    root = old_run(tmp_path / "runs" / "a")
    with pytest.raises(KeyboardInterrupt):
        with open_run(root, resume=False, overwrite=True) as (run, _):
            save_checkpoint(run.checkpoints, 5, write=lambda d: (d / "w").write_bytes(b"new"))
            raise KeyboardInterrupt
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoints"]  # resumable, old one gone


def test_a_fresh_run_stopped_by_bad_input_leaves_nothing(tmp_path):
    root = tmp_path / "a"
    with pytest.raises(RlhfkitError):
        with open_run(root, resume=False, overwrite=False) as (run, _):
            run.config_path.write_text("lr: 1\n")
            raise RlhfkitError("bad row")
    assert not root.exists()
    with pytest.raises(RuntimeError):  # a crash keeps its logs for inspection, unlocked
        with open_run(root, resume=False, overwrite=False) as (run, _):
            run.metrics_path.write_text('{"step": 1}\n')
            raise RuntimeError("bug")
    assert sorted(p.name for p in root.iterdir()) == ["metrics.jsonl"]


def test_a_fresh_run_that_diverged_keeps_its_metrics_and_log(tmp_path):
    root = tmp_path / "a"
    with pytest.raises(NumericalFault):  # before its first checkpoint: nothing to resume
        with open_run(root, resume=False, overwrite=False) as (run, _):
            run.config_path.write_text("lr: 1\n")
            run.metrics_path.write_text('{"step": 1}\n')
            (run.root / "log.txt").write_text("update skipped\n")
            raise NumericalFault("step 2: loss nan")
    assert sorted(p.name for p in root.iterdir()) == ["config.yaml", "log.txt", "metrics.jsonl"]


def test_a_failed_resume_keeps_everything(tmp_path):
    root = old_run(tmp_path / "a", checkpoint=True)
    with pytest.raises(RlhfkitError):
        with open_run(root, resume=True, overwrite=False) as (run, _):
            (run.root / "new.txt").write_text("x")
            raise RlhfkitError("diverged")
    assert (root / "new.txt").exists() and (root / "final" / "model.bin").exists()
    assert not (root / LOCK_NAME).exists()


def test_progress_is_a_complete_checkpoint_or_a_final_model_of_the_run_or_a_sub_run(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "checkpoints" / "step_00000001").mkdir(parents=True)  # no marker: incomplete
    assert not has_progress(run)
    save_checkpoint(tmp_path / "round_01" / "grpo" / "checkpoints", 1, write=lambda d: None)
    assert has_progress(run)
    assert has_progress(RunDir(old_run(tmp_path / "b")))


def test_resume_with_the_same_config_leaves_the_file_alone(tmp_path):
    run = RunDir(tmp_path)
    save_config(Tiny(), run.config_path)
    run.config_path.write_text(run.config_path.read_text() + "# resumed at T with changes: x\n")
    before = run.config_path.read_text()
    resume_with_config(run, Tiny(), allow_changes=False)
    assert run.config_path.read_text() == before


def test_resume_with_another_config_is_refused_naming_each_change(tmp_path):
    run = RunDir(tmp_path)
    save_config(Tiny(), run.config_path)
    before = run.config_path.read_text()
    changed = Tiny(lr=0.002, optim=Optim(betas=(0.9, 0.95)))
    with pytest.raises(RlhfkitError) as err:
        resume_with_config(run, changed, allow_changes=False)
    message = str(err.value)
    assert "lr: 0.001 -> 0.002; optim.betas: [0.9, 0.99] -> [0.9, 0.95]; pass" in message
    assert "--resume-with-changes" in message and "\n" not in message
    assert run.config_path.read_text() == before


def test_resume_with_changes_saves_the_config_and_records_the_change(tmp_path):
    run = RunDir(tmp_path)
    save_config(Tiny(), run.config_path)
    resume_with_config(run, Tiny(lr=0.002), allow_changes=True)
    resume_with_config(run, Tiny(lr=0.002, data="fixed\nname"), allow_changes=True)
    assert load_config(Tiny, run.config_path) == Tiny(lr=0.002, data="fixed\nname")
    history = [line for line in run.config_path.read_text().splitlines() if line.startswith("#")]
    assert len(history) == 2
    assert history[0].startswith("# resumed at ") and history[0].endswith(
        "Z with changes: lr: 0.001 -> 0.002"
    )
    assert history[1].endswith('with changes: data: "train.jsonl" -> "fixed\\nname"')
    assert yaml.safe_load(run.config_path.read_text())["lr"] == 0.002
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_failed_overwrite_of_a_run_that_does_not_resume_puts_the_old_run_back(tmp_path):
    """judge, eval and the pipeline do not resume: a checkpoint or final model their failed
    rerun saved (the judge's SFT, the pipeline's first stages) is nothing to continue from, so
    the earlier, complete run must come back."""
    root = old_run(tmp_path / "runs" / "a", checkpoint=True)
    before = contents(root)
    with pytest.raises(KeyboardInterrupt):
        with open_run(root, resume=False, overwrite=True, resumable=False) as (run, _):
            save_checkpoint(run.checkpoints, 5, write=lambda d: (d / "w").write_bytes(b"new"))
            (run.root / "sft" / "final").mkdir(parents=True)
            raise KeyboardInterrupt
    assert contents(root) == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]


def test_a_run_stopped_before_its_first_checkpoint_points_to_overwrite(tmp_path):
    """Ctrl-C or a kill before the first checkpoint leaves config.yaml: a plain rerun must not
    send the user to --resume, which has nothing to take, and --resume names --overwrite."""
    root = tmp_path / "a"
    root.mkdir()
    (root / "config.yaml").write_text("lr: 0.001\n")
    with pytest.raises(RlhfkitError) as error:
        with open_run(root, resume=False, overwrite=False):
            pass
    assert "--resume" not in str(error.value) and "--overwrite" in str(error.value)
    with pytest.raises(RlhfkitError, match="nothing to resume.*--overwrite"):
        with open_run(root, resume=True, overwrite=False):
            pass


@dataclasses.dataclass(frozen=True)
class LoraTiny:
    lr: float = 1e-3
    lora_r: int = 4
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    grpo: Tiny = dataclasses.field(default_factory=Tiny)


@pytest.mark.parametrize(
    "changed",
    [
        {"lora_r": 8},
        {"lora_r": 0},
        {"lora_alpha": 32},
        {"lora_dropout": 0.1},
        {"lora_target_modules": ("q_proj",)},
    ],
)
def test_resume_with_changes_refuses_the_lora_settings_the_checkpoints_are_made_of(
    tmp_path, changed
):
    """A LoRA checkpoint's adapters load with the rank, alpha, dropout and layers they were saved
    with: a new value would be recorded in config.yaml and silently not used (or fail in the
    loading)."""
    run = RunDir(tmp_path)
    save_config(LoraTiny(), run.config_path)
    before = run.config_path.read_text()
    with pytest.raises(RlhfkitError) as err:
        resume_with_config(run, LoraTiny(lr=0.002, **changed), allow_changes=True)
    [(key, value)] = changed.items()
    message = str(err.value)
    assert message.startswith(f"--resume cannot change {key}: ")
    if key != "lora_target_modules":  # written as YAML: "all-linear" -> ["q_proj"]
        assert f"{key}: {getattr(LoraTiny(), key)} -> {value}:" in message
    assert "lr:" not in message and "\n" not in message
    assert run.config_path.read_text() == before
    resume_with_config(run, LoraTiny(lr=0.002), allow_changes=True)  # other keys still change


def test_resume_with_changes_refuses_another_advantage_estimator(tmp_path):
    # a GAE run's checkpoints hold a critic, a REINFORCE++ run's none
    run = RunDir(tmp_path)
    save_config(PPOConfig(model="m"), run.config_path)
    expected = '^--resume cannot change advantage_estimator: "gae" -> "reinforce_pp": '
    with pytest.raises(RlhfkitError, match=expected):
        resume_with_config(
            run, PPOConfig(model="m", advantage_estimator="reinforce_pp"), allow_changes=True
        )
    resume_with_config(run, PPOConfig(model="m", lr=2e-5), allow_changes=True)


def test_resume_takes_the_lora_layers_named_in_another_order_as_the_same(tmp_path):
    run = RunDir(tmp_path)
    save_config(LoraTiny(lora_target_modules=("q_proj", "v_proj")), run.config_path)
    before = run.config_path.read_text()
    for same in (("v_proj", "q_proj"), ("q_proj", "v_proj", "q_proj")):
        resume_with_config(run, LoraTiny(lora_target_modules=same), allow_changes=False)
    assert run.config_path.read_text() == before
    with pytest.raises(RlhfkitError, match="^--resume cannot change lora_target_modules: "):
        resume_with_config(run, LoraTiny(lora_target_modules=("q_proj",)), allow_changes=True)
