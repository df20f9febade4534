"""One error line per torchrun job, not one per rank.

Under torchrun every rank reads the same config and data, so bad input fails on every rank with
the same message. Rank 0 posts its message to the job's key-value store (the TCP store torchrun
starts at MASTER_ADDR:MASTER_PORT); another rank that fails waits briefly for it and leaves
quietly when the messages agree. A message only one rank has (its own share of the data, its
device) is still printed, named by its rank, so nothing is hidden.
"""

import time
from collections.abc import Mapping
from datetime import timedelta

import torch.distributed as dist

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


def error_key(env: Mapping[str, str]) -> str:
    """The store key of rank 0's message; per restart, since torchrun keeps its store across
    `--max-restarts`."""
    return f"rlhfkit/error/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def post_error(store: dist.Store, key: str, message: str) -> None:
    """Rank 0: make its message known to the other ranks."""
    store.set(key, message)


def rank_zero_error(store: dist.Store, key: str, wait_s: float | None = None) -> str | None:
    """The message rank 0 posted within `wait_s` seconds (None: `WAIT_FOR_RANK_ZERO_S`), or None.
    Polls rather than blocking in one wait, so that torchrun's SIGTERM, sent once rank 0 has
    exited, interrupts it."""
    deadline = time.monotonic() + (WAIT_FOR_RANK_ZERO_S if wait_s is None else wait_s)
    while True:
        if store.check([key]):
            return store.get(key).decode("utf-8", errors="replace")
        if time.monotonic() >= deadline:
            return None
        time.sleep(_POLL_S)


def prints_error(rank: int, message: str, env: Mapping[str, str]) -> bool:
    """Whether this rank prints its error `message`: rank 0 always (and posts it first); another
    rank unless rank 0 posted the same message, or when the store cannot say."""
    store = job_store(env)
    if store is None:
        return True
    key = error_key(env)
    try:
        if rank == 0:
            post_error(store, key, message)
            return True
        return rank_zero_error(store, key) != message
    except RuntimeError:  # the store went away meanwhile
        return True
