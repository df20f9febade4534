"""Jobs made of stages (the demo pipeline, the frontier): each stage timed under a heading, each
training stage in a fresh run directory of its own beside the job's."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhfkit.runtime.config import save_config
from rlhfkit.runtime.rundir import prepare_run_dir


def timed_stage(console: Console, stages: dict, name: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` under a heading `name`; its wall time goes to `stages[name]["seconds"]`."""
    console.rule(f"[bold]{name}")
    started = time.perf_counter()
    out = fn()
    stages[name] = {"seconds": time.perf_counter() - started}
    return out


def train_stage(root: Path, name: str, train_fn: Callable[[Any, Any], Any], cfg: Any) -> Any:
    """`train_fn(cfg, run)` in a fresh run directory `root / name` holding its config."""
    run = prepare_run_dir(root / name, resume=False, overwrite=True)
    save_config(cfg, run.config_path)
    return train_fn(cfg, run)
