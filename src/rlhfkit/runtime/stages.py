"""Jobs made of stages (the demo pipeline, the frontier): each stage timed under a heading, each
training stage in a fresh run directory of its own beside the job's. Under torchrun every rank
runs every stage; a stage that is not a trainer runs on rank 0 alone (`main_stage`)."""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhfkit.runtime.config import save_config
from rlhfkit.runtime.distributed import current_ranks
from rlhfkit.runtime.distributed_checkpoint import on_main
from rlhfkit.runtime.logs import run_log
from rlhfkit.runtime.provenance import record_start, start_record
from rlhfkit.runtime.rundir import RunDir, open_run, prepare_run_dir

log = logging.getLogger(__name__)


def timed_stage(console: Console, stages: dict, name: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` under a heading `name`; its wall time goes to `stages[name]["seconds"]`."""
    console.rule(f"[bold]{name}")
    started = time.perf_counter()
    out = fn()
    stages[name] = {"seconds": time.perf_counter() - started}
    return out


def main_stage(fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` made to run on rank 0 alone (data, sampling, evaluation, tables), its result on every
    rank. Rank 0 hands it over only once `fn` has finished, so the files it wrote are there
    before any rank reads them; one process just runs it."""
    return lambda: on_main(fn, current_ranks())


@contextmanager
def job_run_dir(root: Path, cfg: Any) -> Iterator[RunDir]:
    """The job's run directory, holding its config, for the `with` block. A job reruns under its
    name as `--overwrite` replaces a run (runtime/rundir.py): the earlier run is moved aside,
    deleted once the new one has finished, and moved back if it fails or is stopped, so a
    mistyped rerun never costs the earlier results. Its messages, the stages' included, go to
    its `log.txt`. Under torchrun rank 0 opens and holds it; the other ranks wait until it is
    open."""
    ranks = current_ranks()
    if not ranks.is_main:
        on_main(lambda: None, ranks)
        yield RunDir(root)
        return
    with ExitStack() as held:

        def open_dir() -> RunDir:
            # a job does not resume: a rerun that fails keeps the earlier run, whatever it saved
            run, lock = held.enter_context(
                open_run(root, resume=False, overwrite=True, resumable=False)
            )
            held.enter_context(run_log(run.root))
            if lock.notice:
                log.warning(lock.notice)
            save_config(cfg, run.config_path)
            record_start(run.root, start_record(ranks.world_size))  # provenance.py
            return run

        yield on_main(open_dir, ranks)


def train_stage(root: Path, name: str, train_fn: Callable[[Any, Any], Any], cfg: Any) -> Any:
    """`train_fn(cfg, run)` in a fresh run directory `root / name` holding its config. Under
    torchrun rank 0 makes the directory while the others wait (so they also wait for whatever
    rank 0 wrote before: the last stage's final model), then every rank trains, sharded."""

    def prepare():
        run = prepare_run_dir(root / name, resume=False, overwrite=True)
        save_config(cfg, run.config_path)
        return run

    return train_fn(cfg, main_stage(prepare)())
