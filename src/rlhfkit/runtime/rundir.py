"""The run directory: one folder per run holding its config, metrics, checkpoints and final model.

```
runs/<name>/
  config.yaml      the resolved config the run used
  metrics.jsonl    one JSON line per logged step
  checkpoints/     step_00000042/ ... (see checkpoint.py)
  final/           the trained model
  tensorboard/     event files
```
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.errors import RlhfkitError
from rlhfkit.runtime.checkpoint import latest_checkpoint


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory; creating it is `prepare_run_dir`'s job."""

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


def prepare_run_dir(
    root: Path, *, resume: bool, overwrite: bool, resume_needs_checkpoint: bool = True
) -> RunDir:
    """Create (or reopen) a run directory.

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
    if resume and overwrite:
        raise RlhfkitError("pass either --resume or --overwrite, not both")
    if root.exists() and not root.is_dir():
        raise RlhfkitError(f"run directory {root} is a file, not a directory")
    has_content = root.is_dir() and any(root.iterdir())
    if resume and not resume_needs_checkpoint:
        if not run_dir.config_path.is_file():
            raise RlhfkitError(
                f"nothing to resume in run directory {root}: it holds no config.yaml"
            )
        return run_dir
    if resume:
        if latest_checkpoint(run_dir.checkpoints) is None:
            raise RlhfkitError(
                f"nothing to resume in run directory {root}: it holds no complete checkpoint"
            )
        return run_dir
    if has_content and not overwrite:
        raise RlhfkitError(
            f"run directory {root} already exists: pass --resume to continue it or choose "
            "another name"
        )
    if has_content:
        _remove_old_run(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    return run_dir


def _remove_old_run(run_dir: RunDir) -> None:
    markers = (run_dir.config_path, run_dir.metrics_path, run_dir.checkpoints)
    if not any(path.exists() for path in markers):
        raise RlhfkitError(
            f"refusing to overwrite {run_dir.root}: it does not look like a run directory "
            "(no config.yaml, metrics.jsonl or checkpoints/)"
        )
    if Path.cwd().resolve().is_relative_to(run_dir.root.resolve()):
        raise RlhfkitError(
            f"refusing to overwrite {run_dir.root}: it contains the current directory"
        )
    shutil.rmtree(run_dir.root)
