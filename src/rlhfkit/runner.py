"""One command run in its run directory: the lock, `config.yaml`, and the rules of resume and
overwrite (`runtime/rundir.py`). Shared by the command line (`cli.py`) and the Python API
(`api.py`), so a run started either way leaves the same directory."""

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rlhfkit.cli_commands import Command, load_object
from rlhfkit.errors import NumericalFault, RlhfkitError, Terminated

log = logging.getLogger(__name__)


def silence_libraries() -> None:
    """transformers and datasets quiet: rlhfkit's own progress bars and messages replace their
    per-file ones (the command line for its whole process; `rlhfkit.run` for one run)."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def check_made_by(root: Path, name: str) -> None:
    """Refuse to resume, with `rlhfkit name`, a run another command made: its checkpoint holds
    another trainer's state."""
    from rlhfkit.runtime.provenance import first_command_name

    made_by = first_command_name(root)
    if made_by not in (None, name):
        raise RlhfkitError(
            f"{root} is a run of rlhfkit {made_by}, not rlhfkit {name}: resume it with "
            f"rlhfkit {made_by}, or choose another run directory (--name)"
        )


def run_in_dir(
    name: str,
    command: Command,
    cfg,
    root: Path,
    *,
    resume: bool,
    allow_changes: bool,
    overwrite: bool,
    before_run: Callable[[Any], None] | None = None,
    wording: Callable[[str], str] = str,
):
    """Lock and open the run directory `root`, save (or, on resume, check) the config, run.
    What a failed run leaves behind, and when a replaced run is deleted, is `open_run`'s rule.

    Args:
        name: the command's name, for messages; command: its row of `COMMANDS`.
        resume: continue the run in `root`; allow_changes: with a config that differs from its
            `config.yaml` (the change is recorded there).
        overwrite: replace an earlier run in `root`.
        before_run: called with the opened run directory once its config is saved or checked,
            before the run (the Python API writes in-memory data there).
        wording: rewrites the advice logged after Ctrl-C (the Python API's, in its keywords).
    Returns:
        (the run directory, the run function's result); (None, its result) on a rank other
        than 0 under torchrun, which uses rank 0's directory and reports nothing.
    """
    from rlhfkit.runtime.config import save_config
    from rlhfkit.runtime.distributed import broadcast_from_main, current_ranks
    from rlhfkit.runtime.host_memory import keep_freed_memory
    from rlhfkit.runtime.logs import run_log
    from rlhfkit.runtime.lost_rank import job_stop_told_apart
    from rlhfkit.runtime.provenance import record_start, start_record
    from rlhfkit.runtime.rundir import RunDir, open_run, resumed_with_config

    if resume and not command.resumable:
        raise RlhfkitError(f"rlhfkit {name} does not resume: run it again with --overwrite")
    if command.needs and not all(getattr(cfg, key) for key in command.needs):
        paths = " and ".join(f"{key}=PATH" for key in command.needs)
        raise RlhfkitError(f"rlhfkit {name} needs {paths}")
    run_fn = load_object(command.run)
    keep_freed_memory()  # a run owns its process: freed blocks are reused, not refaulted
    ranks = current_ranks()
    if not ranks.is_main:  # under torchrun rank 0 holds the run directory; the others use it
        if broadcast_from_main(None, ranks) is not None:
            raise SystemExit(2)  # rank 0 could not open it, and says why
        run = RunDir(root)
        with next_steps_after_a_fault(command, run), job_stop_told_apart():
            return None, run_fn(cfg, run, resume=resume) if command.resumable else run_fn(cfg, run)
    ready = False
    try:
        with (
            open_run(
                root,
                resume=resume,
                overwrite=overwrite,
                resume_needs_checkpoint=command.resume_needs_checkpoint,
                resumable=command.resumable,
            ) as (run, lock),
            run_log(run.root),
        ):
            if lock.notice:
                log.warning(lock.notice)
            with ExitStack() as config_kept:
                if resume:  # a change the run then refuses is undone (rundir.py)
                    check_made_by(run.root, name)
                    config_kept.enter_context(
                        resumed_with_config(run, cfg, allow_changes=allow_changes)
                    )
                else:
                    save_config(cfg, run.config_path)
                record_start(run.root, start_record(ranks.world_size, command_name=name))
                if before_run is not None:
                    before_run(run)
                ready = broadcast_from_main(None, ranks) is None
                with next_steps_after_a_fault(command, run), job_stop_told_apart():
                    result = (
                        run_fn(cfg, run, resume=resume) if command.resumable else run_fn(cfg, run)
                    )
    except BaseException as error:
        if not ready:  # the other ranks wait for the run directory: tell them it failed
            broadcast_from_main(str(error) or type(error).__name__, ranks)
        if isinstance(error, (KeyboardInterrupt, Terminated)) and command.resumable:
            _say_how_to_continue(RunDir(root), wording)
        raise
    return run, result


@contextmanager
def next_steps_after_a_fault(command: Command, run) -> Iterator[None]:
    """A `NumericalFault` raised inside, told what the user can do next with this run: continue
    it with a lower rate, or start it afresh. Looked at while the run directory is still the
    run's (a failed --overwrite then puts the earlier run back); every rank words it alike."""
    from rlhfkit.runtime.checkpoint import latest_checkpoint

    try:
        yield
    except NumericalFault as fault:
        if not command.resumable:
            then = "run it again with --overwrite"
        elif not command.resume_needs_checkpoint or latest_checkpoint(run.checkpoints):
            then = "continue with --resume-with-changes, or start afresh with --overwrite"
        else:  # --resume would refuse: there is nothing to continue from
            then = "start afresh with --overwrite (no checkpoint to --resume from)"
        fault.args = (f"{fault}; lower the learning rate, then {then}",)
        raise


def _say_how_to_continue(run, wording: Callable[[str], str]) -> None:
    """After Ctrl-C or SIGTERM: where the stopped run can continue from, if anywhere."""
    from rlhfkit.runtime.checkpoint import latest_checkpoint

    last = latest_checkpoint(run.checkpoints) if run.root.is_dir() else None
    if last is not None:
        log.warning(wording(f"{run.root} continues from {last} with the same command and --resume"))
