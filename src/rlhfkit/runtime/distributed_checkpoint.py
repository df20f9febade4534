"""Checkpoints of a run under torchrun: the trainer state sharded with
`torch.distributed.checkpoint` (DCP), each rank writing its own part.

A checkpoint written by N processes holds, beside what rank 0 alone writes (the model as
Hugging Face files, see `train.checkpointing`):

    trainer/.metadata        DCP's index of the saved tensors (written by rank 0)
    trainer/__<r>_0.distcp   rank r's shard of the optimizer state (and of further models'
                             optimizers: PPO's critic), its RNG state, the step and the
                             trainer's extras (the data position, the sampling generator)

It is assembled in a temporary directory that rank 0 opens and names to the other ranks; every
rank writes its shard; once all have finished (DCP's save ends with a gather on rank 0), rank 0
adds its files and the marker (`checkpoint.json`, with the world size and the sha256 of every
file) and renames the directory into place, exactly as a single process does
(`runtime.checkpoint`). A job killed at any moment leaves the previous checkpoints whole. Every
rank writes into the run directory, so a job over several machines needs it on a filesystem
they share.

Only tensors are stored: the optimizer's per-parameter state (its hyper-parameters come from
the config), the step and the extras as tensors, and each rank's RNG state as the bytes of
`torch.save`, read back with `torch.load(weights_only=True)`. DCP's own `.metadata` index is a
pickle that torch reads; `--resume` reads it only after its sha256 matched the marker.

Resuming on the same number of processes restores every rank's optimizer shard and RNG state:
the run continues bitwise as if never stopped. On another number DCP re-shards the optimizer
state, rank r takes the RNG state of saved rank r (rank 0's when there was none), and the run
continues, not bitwise; one line says so.
"""

import io
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from rlhfkit.errors import RlhfkitError, Terminated
from rlhfkit.runtime.checkpoint import (
    MARKER_NAME,
    begin_checkpoint,
    capture_rng_state,
    finish_checkpoint,
    restore_rng_state,
)
from rlhfkit.runtime.distributed import Ranks, broadcast_from_main

log = logging.getLogger(__name__)

TRAINER_SUBDIR = "trainer"
_METADATA = ".metadata"
T = TypeVar("T")
Trained = Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]]
"""Further (sharded) models and their optimizers, by the key their state is saved under."""


def is_sharded_checkpoint(checkpoint: Path) -> bool:
    """Whether `checkpoint` was written under torchrun (its trainer state is DCP shards)."""
    return (Path(checkpoint) / TRAINER_SUBDIR / _METADATA).is_file()


def saved_world_size(checkpoint: Path) -> int:
    """How many processes wrote `checkpoint` (1 for a single process's checkpoint)."""
    info = json.loads((Path(checkpoint) / MARKER_NAME).read_text())
    return int(info.get("world_size", 1))


def warn_if_resharded(checkpoint: Path, ranks: Ranks) -> None:
    """One line (from rank 0) when `checkpoint` was written by another number of processes:
    the run continues from it, but not bitwise."""
    saved = saved_world_size(checkpoint)
    if saved != ranks.world_size and ranks.is_main:
        log.warning(
            f"{checkpoint} was written by {saved} process{'es' * (saved > 1)}, this "
            f"run has {ranks.world_size}: it continues from there, but not bitwise as an "
            "uninterrupted run would"
        )


def on_main(fn: Callable[[], T], ranks: Ranks) -> T:
    """`fn()` run by rank 0 alone, its result given to every rank; every rank waits for it. An
    error on rank 0 is raised there and, in one line, on the others (no rank is left waiting)."""
    if not ranks.sharded:
        return fn()
    if not ranks.is_main:
        result, error = broadcast_from_main(None, ranks)
        if error in _STOPS:  # torchrun stopping the job: this rank stops as rank 0 did
            raise _STOPS[error]()
        if error is not None:
            raise RlhfkitError(f"rank 0 failed: {error}")
        return result
    try:
        result = fn()
    except BaseException as error:
        stop = type(error).__name__ if isinstance(error, tuple(_STOPS.values())) else None
        broadcast_from_main((None, stop or str(error) or type(error).__name__), ranks)
        raise
    broadcast_from_main((result, None), ranks)
    return result


_STOPS = {"Terminated": Terminated, "KeyboardInterrupt": KeyboardInterrupt}


@contextmanager
def _stops_kept():
    """DCP wraps every rank's error in one CheckpointException (a BaseException): a SIGTERM or
    Ctrl-C that reached a rank inside it comes out as that stop, so the run stops as a stopped
    run does, not with DCP's traceback."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as error:
        for failure, _ in error.failures.values():
            if isinstance(failure, tuple(_STOPS.values())):
                raise type(failure)() from None
        raise


def save_sharded_checkpoint(
    checkpoints_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict,
    write_main: Callable[[Path], None],
    keep_last: int,
    ranks: Ranks,
    also: Trained | None = None,
) -> Path:
    """Write checkpoint `step` from every rank (all must call it); returns its directory.

    Args:
        model: the (sharded) model the optimizer trains, whose parameter names key its state.
        extra: numbers and tensors (nested dicts of them) the trainer restores, e.g. the data
            position; a sharded tensor is saved as shards.
        write_main: writes rank 0's own files (the model) into the directory it is given.
        also: further models' optimizers to save alike (PPO's critic), by key.
    """
    import torch.distributed.checkpoint as dcp

    # step 1. every rank: its shard of the optimizer state, its RNG state, the step, the extras
    state = _trainer_state(model, optimizer, extra, step, ranks)
    state.update({key: _optimizer_shard(m, o) for key, (m, o) in (also or {}).items()})
    # step 2. rank 0 opens the temporary directory and names it to the others
    final, tmp = on_main(
        lambda: begin_checkpoint(checkpoints_dir, step, keep_last=keep_last), ranks
    )
    # step 3. every rank writes its shard; DCP's save ends once all have (it fails on all alike)
    try:
        with _without_process_group_warning(), _stops_kept():
            dcp.save(state, checkpoint_id=tmp / TRAINER_SUBDIR)
    except BaseException:
        if ranks.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    # step 4. rank 0 adds its files and the marker, renames and prunes; the others wait
    def publish() -> Path:
        try:
            write_main(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        info = {"world_size": ranks.world_size}
        return finish_checkpoint(tmp, final, step, keep_last=keep_last, info=info)

    return on_main(publish, ranks)


def load_sharded_checkpoint(
    checkpoint: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_like: dict,
    ranks: Ranks,
    also: Trained | None = None,
) -> tuple[int, dict]:
    """Restore the optimizer state and this rank's RNG state from a checkpoint written by
    `save_sharded_checkpoint`, on any number of processes (one, without a process group, too).

    Args:
        extra_like: the extras as the trainer would save them now: the shapes and types to
            load into (a sharded tensor is loaded into its shards in place).
        also: further models' optimizers, as `save_sharded_checkpoint` was given them.

    Returns:
        (step, extra): the step the checkpoint holds and the saved extras.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    saved = saved_world_size(checkpoint)
    warn_if_resharded(checkpoint, ranks)
    source = ranks.rank if ranks.rank < saved else 0
    reader = dcp.FileSystemReader(checkpoint / TRAINER_SUBDIR)
    rng_size = reader.read_metadata().state_dict_metadata[f"rng.rank{source}"].size
    # a fresh optimizer gets its state set up (a step at lr 0) so that DCP can load into it
    trained = {"optimizer": (model, optimizer), **(also or {})}
    optimizer_states = {key: get_optimizer_state_dict(m, o) for key, (m, o) in trained.items()}
    state = {
        "step": torch.zeros((), dtype=torch.int64),
        **{key: value["state"] for key, value in optimizer_states.items()},
        "rng": {f"rank{source}": torch.empty(rng_size, dtype=torch.uint8)},
        "extra": _as_tensors(extra_like),
    }
    with _without_process_group_warning(), _stops_kept():
        dcp.load(state, storage_reader=reader)
    # DCP loaded into the optimizers' own tensors where it could; this sets the rest
    for key, (m, o) in trained.items():
        set_optimizer_state_dict(m, o, optimizer_states[key])
    rng = torch.load(io.BytesIO(state["rng"][f"rank{source}"].numpy().tobytes()), weights_only=True)
    restore_rng_state(rng)
    return int(state["step"]), _like(state["extra"], extra_like)


def load_full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Put a single process's `optimizer.state_dict()` (parameters numbered in the order the
    optimizer holds them) into the optimizer of a sharded `model`: each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {order[index]: value for index, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [order[index] for index in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )


def shard_like(value: Any, template: Any) -> Any:
    """`value` (whole tensors in nested dicts, as a single process saved them) with each tensor
    whose `template` counterpart is a sharded DTensor cut into this rank's shard like it. Every
    rank must call it with the same values (the tensors are scattered from rank 0)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(value, dict) and isinstance(template, dict):
        return {key: shard_like(item, template.get(key)) for key, item in value.items()}
    if isinstance(template, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value, template.device_mesh, template.placements)
    return value


@contextmanager
def _without_process_group_warning():
    """DCP warns when it runs without a process group: one process reading a checkpoint of
    several does so on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _optimizer_shard(model, optimizer) -> dict:
    """This rank's per-parameter optimizer state only: the hyper-parameters come from the
    config."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer)["state"]


def _trainer_state(model, optimizer, extra: dict, step: int, ranks: Ranks) -> dict:
    """What DCP saves for this rank: tensors only (see the module docstring)."""
    buffer = io.BytesIO()
    torch.save(capture_rng_state(all_cuda_devices=False), buffer)  # this rank's device
    rng = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    return {
        "step": torch.tensor(step, dtype=torch.int64),
        "optimizer": _optimizer_shard(model, optimizer),
        # one key per rank: DCP keeps one copy of a key that several ranks save
        "rng": {f"rank{ranks.rank}": rng},
        "extra": _as_tensors(extra),
    }


def _as_tensors(value: Any) -> Any:
    """Numbers as 0-d tensors, in nested dicts; tensors unchanged."""
    if isinstance(value, dict):
        return {key: _as_tensors(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool | int):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    raise TypeError(f"a sharded checkpoint stores numbers and tensors, not {type(value).__name__}")


def _like(loaded: Any, template: Any) -> Any:
    """`loaded` with the numbers of `template` back as Python numbers."""
    if isinstance(template, dict):
        return {key: _like(loaded[key], item) for key, item in template.items()}
    if isinstance(template, bool | int | float):
        return type(template)(loaded.item())
    return loaded
