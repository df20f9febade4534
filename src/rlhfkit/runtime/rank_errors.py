"""One error line per torchrun job, not one per rank.

Under torchrun every rank reads the same config and data, so bad input fails on every rank with
the same message. Rank 0 posts what its error is (`error_kind`) to the job's key-value store (the
TCP store torchrun starts at MASTER_ADDR:MASTER_PORT); another rank that fails waits briefly for
it and leaves quietly when theirs is the same. An error on a step's samples (a reward function
that raises on each rank's own) names a different sample on each rank: what they share is its
kind (`SampleError.kind`: the function and how it failed), and rank 0's line (its samples come
first in the step) speaks for them all. An error only one rank has (another kind, its own share
of the data, its device) is still printed, named by its rank, so nothing is hidden.
"""

import time
from collections.abc import Mapping
from datetime import timedelta

import torch.distributed as dist

from rlhfkit.errors import SampleError

# how long a failing rank waits for rank 0's message: the ranks reach the same bad input at
# about the same time; a rank whose error rank 0 does not share prints it after this wait
WAIT_FOR_RANK_ZERO_S = 5.0
_POLL_S = 0.05


def job_store(env: Mapping[str, str]) -> dist.Store | None:
    """A client of the job's TCP store, or None where there is none to reach (rank 0 hosted it
    and has gone, or the variables are missing)."""
    try:
        return dist.TCPStore(
            env["MASTER_ADDR"],
            int(env["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=2),
            wait_for_workers=False,
        )
    except (KeyError, ValueError, RuntimeError):
        return None


def error_kind(error: BaseException) -> str:
    """What another rank's error must share with rank 0's for rank 0's line to speak for both:
    a `SampleError`'s kind (each rank names a sample of its own), else the whole message."""
    return error.kind if isinstance(error, SampleError) else str(error)


def error_key(env: Mapping[str, str]) -> str:
    """The store key of rank 0's error kind; per restart, since torchrun keeps its store across
    `--max-restarts`."""
    return f"rlhfkit/error/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def post_error(store: dist.Store, key: str, kind: str) -> None:
    """Rank 0: make the kind of its error known to the other ranks."""
    store.set(key, kind)


def rank_zero_error(store: dist.Store, key: str, wait_s: float | None = None) -> str | None:
    """The error kind rank 0 posted within `wait_s` seconds (None: `WAIT_FOR_RANK_ZERO_S`), or
    None. Polls rather than blocking in one wait, so that torchrun's SIGTERM, sent once rank 0
    has exited, interrupts it."""
    deadline = time.monotonic() + (WAIT_FOR_RANK_ZERO_S if wait_s is None else wait_s)
    while True:
        if store.check([key]):
            return store.get(key).decode("utf-8", errors="replace")
        if time.monotonic() >= deadline:
            return None
        time.sleep(_POLL_S)


def prints_error(rank: int, kind: str, env: Mapping[str, str]) -> bool:
    """Whether this rank prints its error, of `kind` (`error_kind`): rank 0 always (and posts
    the kind first); another rank unless rank 0 posted the same kind, or when the store cannot
    say."""
    store = job_store(env)
    if store is None:
        return True
    key = error_key(env)
    try:
        if rank == 0:
            post_error(store, key, kind)
            return True
        return rank_zero_error(store, key) != kind
    except RuntimeError:  # the store went away meanwhile
        return True
