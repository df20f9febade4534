"""The run directory: one folder per run holding its config, metrics, checkpoints and final model.

```
runs/<name>/
  config.yaml      the resolved config the run used (and, as comments at its end, every
                   --resume-with-changes: when, and which keys changed from what to what)
  metrics.jsonl    one JSON line per logged step
  starts.jsonl     one line per start: time, command, code version, machine (provenance.py)
  log.txt          every message of the run, with its time (logs.py)
  checkpoints/     step_00000042/ ... (see checkpoint.py)
  final/           the trained model
  tensorboard/     event files
  run.lock         while a process runs it: its pid and host (see run_lock.py)
```

The CLI opens a run with `open_run`, which never loses a run:

- `--name` is a plain name inside `--runs-dir` (`run_root`): no path separators, not `.` or `..`,
  not hidden, so a run can neither be written nor replaced outside the runs directory.
- One process per run: `run.lock` refuses a second one (a lock left by a dead process is taken
  over).
- `--overwrite` does not delete the earlier run up front. It renames it to the hidden sibling
  `runs/.<name>.replaced-<pid>` and starts the new run in `runs/<name>`. The earlier run is
  deleted once the new one has succeeded, or, for a command that resumes, has failed after
  saving progress (a complete checkpoint or a final model, its own or a sub-run's): a run that
  can be resumed replaces it; a failed run of a command that cannot resume never does.
  A new run that fails before saving any progress (bad input, any exception, Ctrl-C) is
  removed and the earlier run is moved back untouched. A process killed outright leaves the
  earlier run in `runs/.<name>.replaced-<pid>`, to move back or delete by hand.
- A fresh run (nothing replaced) stopped by bad input (an `RlhfkitError`) before saving progress
  leaves no directory behind, so the corrected command starts cleanly; after other failures
  its logs are kept for inspection, and so are they after a `NumericalFault` (it ran: its
  metrics and log show how it diverged; `--overwrite` starts it afresh). A resumed run keeps
  everything.
- `--resume` refuses a config that differs from the saved `config.yaml`, naming each changed key
  with its old and new value, unless the changes are asked for (`--resume-with-changes`): then
  the new config is saved and the change is recorded at the end of `config.yaml`
  (`resume_with_config`).

`prepare_run_dir` is the plain version for jobs that make their own sub-run directories inside a
run they already hold (the pipeline's stages, iterative GRPO's rounds): no lock, and
`overwrite=True` deletes at once.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhfkit.errors import NumericalFault, RlhfkitError
from rlhfkit.runtime.checkpoint import MARKER_NAME, latest_checkpoint
from rlhfkit.runtime.config import config_to_dict, load_config, save_config
from rlhfkit.runtime.config_changes import config_changes, flat_config
from rlhfkit.runtime.logs import RUN_LOG
from rlhfkit.runtime.provenance import STARTS_FILE
from rlhfkit.runtime.run_lock import LOCK_NAME, RunLock, acquire_run_lock, release_run_lock

_HISTORY_PREFIX = "# resumed at "
# folder names stop at 255 bytes; the hidden `.<name>.replaced-<pid>` of --overwrite needs room
MAX_NAME_BYTES = 200
FIXED_ON_RESUME = frozenset(
    {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "advantage_estimator"}
)
"""Settings, by field name in any section, that the checkpoints are made of: a LoRA run's
checkpoint holds adapters of its rank, scale, dropout and layers (a full run's, whole weights),
and the policy trainers load them as saved, so a changed value would be recorded but not used;
a PPO checkpoint holds a critic with GAE and none with REINFORCE++ (`advantage_estimator`)."""


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory; creating it is `open_run`'s or `prepare_run_dir`'s job."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


def run_root(
    runs_dir: Path, name: str, *, name_key: str = "--name", dir_key: str = "--runs-dir"
) -> Path:
    """`runs_dir / name`, refusing a name that is not a plain name inside `runs_dir`.

    `name_key` and `dir_key` are how the user gave them, for the error: the command line's flags,
    or a job's config keys (`name`, `runs_dir`: the pipeline and the frontier).

    Raises:
        RlhfkitError: the name is empty, holds a path separator or NUL, or starts with "." (".",
            "..", and the hidden names where replaced runs are kept); `runs_dir` is a file.
    """
    separators = [sep for sep in (os.sep, os.altsep, "/") if sep]
    if not name.strip() or name.startswith(".") or any(c in name for c in [*separators, "\0"]):
        raise RlhfkitError(
            f"{name_key} {name!r} is not a plain run name: it must be a folder name inside "
            f"{dir_key} (no '/', not empty, not starting with '.')"
        )
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise RlhfkitError(
            f"{name_key} is {len(os.fsencode(name))} bytes long: a run name must fit in "
            f"{MAX_NAME_BYTES} bytes (a folder name on common file systems)"
        )
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise RlhfkitError(f"{dir_key} {runs_dir} is a file, not a directory")
    return runs_dir / name


@contextmanager
def open_run(
    root: Path,
    *,
    resume: bool,
    overwrite: bool,
    resume_needs_checkpoint: bool = True,
    resumable: bool = True,
) -> Iterator[tuple[RunDir, RunLock]]:
    """Lock and open a run directory for the run inside the `with` block (the module docstring
    gives the rules); yields the run directory and the lock (`lock.notice`: tell the user).

    Args:
        root: the run directory (`run_root`).
        resume: continue the run: the directory must hold a complete checkpoint.
        overwrite: replace an earlier run, which is moved aside until the new one has progress.
        resume_needs_checkpoint: False for a run made of sub-runs that checkpoint themselves
            (iterative GRPO): then resuming needs only the run's config.
        resumable: False for a command that does not resume (an evaluation): a run of the same
            name then points to --overwrite alone.

    Raises:
        RlhfkitError: as `prepare_run_dir`, and: another process runs it, or its directory
            cannot be made.
    """
    root, run_dir = Path(root), RunDir(Path(root))
    _check_request(root, resume=resume, overwrite=overwrite)
    if resume:  # checked before locking, so resuming a mistyped name creates nothing
        _check_resumable(run_dir, resume_needs_checkpoint)
    created = _make_dir(root)
    lock, aside = _lock(root, created), None
    try:
        if not resume and _has_content(root):
            if not overwrite:
                # a run stopped before its first checkpoint has nothing --resume could take
                can_resume = resumable and (
                    not resume_needs_checkpoint or latest_checkpoint(run_dir.checkpoints)
                )
                raise _already_exists(root, bool(can_resume))
            _check_replaceable(run_dir)
            aside, lock = _move_aside(run_dir, lock)
    except BaseException:
        release_run_lock(lock)
        if created:
            _remove_if_empty(root)
        raise
    try:
        yield run_dir, lock
    except BaseException as error:
        _after_failure(run_dir, aside, resume=resume, resumable=resumable, error=error)
        raise
    else:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        release_run_lock(lock)


def has_progress(run: RunDir) -> bool:
    """Whether the run saved something to resume from or use: a complete checkpoint or a final
    model, its own or a sub-run's (iterative GRPO's rounds, the judge's SFT)."""
    checkpoints = run.root.glob(f"**/checkpoints/step_*/{MARKER_NAME}")
    return any(checkpoints) or any(path.is_dir() for path in run.root.glob("**/final"))


def resume_with_config(run: RunDir, cfg: Any, *, allow_changes: bool) -> None:
    """Check the config of a resumed run against its saved `config.yaml`.

    Nothing is exempt from the comparison: every key shapes what the run computes or records,
    and a resumed run must be the run the file describes. Changes asked for are saved, with
    a comment line at the end of the file recording them (`# resumed at <UTC time> with changes:
    lr: 0.001 -> 0.002`); comments keep the file loadable as a config.

    Raises:
        RlhfkitError: the configs differ and `allow_changes` is False (each changed key is
            named with its old and new value), a key of `FIXED_ON_RESUME` differs, or the
            saved config cannot be read.
    """
    path = run.config_path
    if not path.is_file():  # a run without its config (copied checkpoints): record this one
        save_config(cfg, path)
        return
    try:
        saved = config_to_dict(load_config(type(cfg), path))
    except RlhfkitError as err:
        raise RlhfkitError(f"--resume cannot read the run's saved config: {err}") from None
    old, new = flat_config(saved), flat_config(config_to_dict(cfg))
    changes = config_changes(old, new)
    if not changes:
        return
    fixed = [k for k in new if k.rsplit(".", 1)[-1] in FIXED_ON_RESUME and k in old]
    fixed_changes = config_changes({k: old[k] for k in fixed}, {k: new[k] for k in fixed})
    if fixed_changes:
        raise RlhfkitError(
            f"--resume cannot change {fixed_changes}: the run's checkpoints hold the model "
            "these settings made; start afresh (--overwrite) or choose another run directory "
            "(--name)"
        )
    if not allow_changes:
        raise RlhfkitError(
            f"--resume: the config differs from the run's {path}: {changes}; pass "
            "--resume-with-changes to continue with the new values (recorded in config.yaml)"
        )
    history = [line for line in path.read_text().splitlines() if line.startswith(_HISTORY_PREFIX)]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    history.append(f"{_HISTORY_PREFIX}{now} with changes: {changes}")
    # written beside and renamed over, so a crash cannot leave half a config
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_config(cfg, tmp)
    with tmp.open("a", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in history))
    os.replace(tmp, path)


@contextmanager
def resumed_with_config(run: RunDir, cfg: Any, *, allow_changes: bool) -> Iterator[None]:
    """`resume_with_config` for the run inside the `with` block, undone when the run then fails
    before saving anything: a change the run refuses (a mistyped path) must not become the
    saved config, which a plain `--resume` of the original command would then be refused by."""
    path = run.config_path
    before, saved = path.read_bytes() if path.is_file() else None, _saved_results(run.root)
    resume_with_config(run, cfg, allow_changes=allow_changes)
    try:
        yield
    except BaseException:
        if before is not None and _saved_results(run.root) == saved:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(before)
            os.replace(tmp, path)
        raise


def _saved_results(root: Path) -> set:
    """What a run has saved: its complete checkpoints and final models (its own or a
    sub-run's), and the size of each file it writes its results into directly (sample's
    candidates.jsonl); not its config, metrics, lock, starts or log, which every start rewrites
    or appends to."""
    rewritten = {"config.yaml", "metrics.jsonl", LOCK_NAME, STARTS_FILE, RUN_LOG}
    marks: set = {str(p) for p in root.glob(f"**/checkpoints/step_*/{MARKER_NAME}")}
    marks |= {str(p) for p in root.glob("**/final") if p.is_dir()}
    marks |= {
        (f.name, f.stat().st_size)
        for f in root.iterdir()
        if f.is_file() and f.name not in rewritten
    }
    return marks


def prepare_run_dir(
    root: Path, *, resume: bool, overwrite: bool, resume_needs_checkpoint: bool = True
) -> RunDir:
    """Create (or reopen) a run directory, without a lock: for sub-runs inside a held run.

    Args:
        root: the run directory.
        resume: continue a run: the directory must hold a complete checkpoint.
        resume_needs_checkpoint: False for a run made of sub-runs that checkpoint themselves
            (iterative GRPO): then resuming needs only the run's config.
        overwrite: delete an earlier run's content first. Refused for a directory that does not
            look like a run directory, so a mistyped path cannot wipe unrelated files.

    Raises:
        RlhfkitError: the directory already holds a run and neither flag was given, there is
            nothing to resume, or both flags were given.
    """
    root = Path(root)
    run_dir = RunDir(root)
    _check_request(root, resume=resume, overwrite=overwrite)
    if resume:
        _check_resumable(run_dir, resume_needs_checkpoint)
        return run_dir
    if _has_content(root):
        if not overwrite:
            raise _already_exists(root)
        _check_replaceable(run_dir)
        shutil.rmtree(root)
    _make_dir(root)
    return run_dir


def _check_request(root: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise RlhfkitError("pass either --resume or --overwrite, not both")
    if root.exists() and not root.is_dir():
        raise RlhfkitError(f"run directory {root} is a file, not a directory")


def require_run_dir(root: Path) -> None:
    """Refuse to resume a run directory that does not exist (a mistyped name)."""
    if not Path(root).is_dir():
        raise RlhfkitError(
            f"nothing to resume: there is no run directory {root} (check --runs-dir and --name)"
        )


def _check_resumable(run_dir: RunDir, resume_needs_checkpoint: bool) -> None:
    root = run_dir.root
    require_run_dir(root)
    if not resume_needs_checkpoint:
        if not run_dir.config_path.is_file():
            raise RlhfkitError(
                f"nothing to resume in run directory {root}: it holds no config.yaml"
            )
    elif latest_checkpoint(run_dir.checkpoints) is None:
        if run_dir.final.is_dir():  # save_every past max_steps: no checkpoint on the way
            raise RlhfkitError(
                f"nothing to resume in run directory {root}: the run has finished, with no "
                f"checkpoint kept; its model is {run_dir.final} (to train on from it, start a "
                f"new run with model={run_dir.final})"
            )
        raise RlhfkitError(
            f"nothing to resume in run directory {root}: it holds no complete checkpoint "
            "(it stopped before its first): start it again with --overwrite"
        )


def _has_content(root: Path) -> bool:
    """Anything in the directory besides a lock."""
    return root.is_dir() and any(entry.name != LOCK_NAME for entry in root.iterdir())


def _already_exists(root: Path, resumable: bool = True) -> RlhfkitError:
    resume = "--resume to continue it, " if resumable else ""
    return RlhfkitError(
        f"run directory {root} already exists: pass {resume}--overwrite to replace it, "
        "or choose another name (--name)"
    )


# People's rankings (the labelling page's store and its log) cost hours, so --overwrite never
# deletes them with a run (a sample run's folder is often served as a labels folder).
HUMAN_LABEL_FILES = ("labels.db", "submissions.jsonl")


def _check_replaceable(run_dir: RunDir) -> None:
    """Refuse to replace what may not be a run, or the directory the user stands in."""
    markers = (run_dir.config_path, run_dir.metrics_path, run_dir.checkpoints)
    if not any(path.exists() for path in markers):
        raise RlhfkitError(
            f"refusing to overwrite {run_dir.root}: it does not look like a run directory "
            "(no config.yaml, metrics.jsonl or checkpoints/)"
        )
    if run_dir.root.is_symlink():
        raise RlhfkitError(f"refusing to overwrite {run_dir.root}: it is a symbolic link")
    labels = next((p for name in HUMAN_LABEL_FILES for p in run_dir.root.rglob(name)), None)
    if labels is not None:
        raise RlhfkitError(
            f"refusing to overwrite {run_dir.root}: it holds people's labels ({labels}); "
            "move them out first, or choose another name (--name)"
        )
    if Path.cwd().resolve().is_relative_to(run_dir.root.resolve()):
        raise RlhfkitError(
            f"refusing to overwrite {run_dir.root}: it contains the current directory"
        )


def _make_dir(root: Path) -> bool:
    """Make the directory (and its parents); True when it did not exist before."""
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RlhfkitError(f"cannot create run directory {root}: {err.strerror}") from None
    return created


def _lock(root: Path, created: bool) -> RunLock:
    try:
        return acquire_run_lock(root)
    except BaseException:
        if created:
            _remove_if_empty(root)
        raise


def _remove_if_empty(root: Path) -> None:
    try:
        root.rmdir()
    except OSError:
        pass  # not empty: someone else's now


def _move_aside(run_dir: RunDir, lock: RunLock) -> tuple[Path, RunLock]:
    """Rename the earlier run to its hidden sibling and lock a fresh directory in its place;
    returns the sibling and the new lock."""
    root = run_dir.root
    aside = root.with_name(f".{root.name}.replaced-{os.getpid()}")
    if aside.exists():
        raise RlhfkitError(
            f"cannot move {root} aside: {aside} is in the way (an earlier run left by a "
            "killed --overwrite): move it back or delete it"
        )
    try:
        os.rename(root, aside)
    except OSError as err:
        raise RlhfkitError(f"cannot move {root} aside to {aside}: {err.strerror}") from None
    moved_lock = replace(lock, path=aside / LOCK_NAME)
    try:
        root.mkdir()
        new_lock = acquire_run_lock(root)
    except (OSError, RlhfkitError):
        # another process made the directory in the instant it did not exist: it is theirs
        release_run_lock(moved_lock)
        raise RlhfkitError(
            f"run directory {root} was taken by another process while it was being replaced; "
            f"the earlier run is kept in {aside}"
        ) from None
    release_run_lock(moved_lock)
    return aside, replace(new_lock, notice=lock.notice)  # a stale lock taken over: still said


def _after_failure(
    run_dir: RunDir, aside: Path | None, *, resume: bool, resumable: bool, error: BaseException
) -> None:
    """What a failed run leaves: the module docstring's rules. A run that cannot be resumed
    (judge, eval, the pipeline) never replaces the earlier one by failing: what it saved is no
    progress, since nothing can continue from it."""
    if resume:
        return
    if has_progress(run_dir) and (resumable or aside is None):
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return
    if aside is not None:
        _restore(run_dir.root, aside)
    elif isinstance(error, RlhfkitError) and not isinstance(error, NumericalFault):
        # bad input, refused before anything ran; a run that diverged trained, and its metrics
        # and log are how the user sees where
        shutil.rmtree(run_dir.root, ignore_errors=True)


def _restore(root: Path, aside: Path) -> None:
    """Put the earlier run back in place of a failed new one."""
    failed = root.with_name(f".{root.name}.failed-{os.getpid()}")
    try:
        os.rename(root, failed)
        os.rename(aside, root)
    except OSError as err:
        raise RlhfkitError(
            f"the new run failed, and the earlier run could not be moved back to {root} "
            f"({err.strerror}): it is kept in {aside}"
        ) from None
    shutil.rmtree(failed, ignore_errors=True)
