"""A collective that failed because another process of the torchrun job went away, told apart
from other errors; and whether the job is being stopped rather than a process having died.

torchrun stops a job by sending SIGTERM to every worker at once. A worker outside a collective
stops at once, closing its connections; one blocked in a collective may see the closed
connection before its own signal arrives. A worker that stops on a signal says so in the job's
store first (`say_stopped`), so a peer that loses it waits for its own signal
(`job_stop_told_apart`) instead of reporting a process that died; torchrun signals the
survivors of a death too, but nobody said it stopped, so that is reported at once.
"""

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from rlhfkit.errors import Terminated
from rlhfkit.runtime.rank_errors import job_store

# what a collective says when a peer process has gone (gloo on CPUs, NCCL on GPUs)
PEER_LOST = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "Socket Timeout",
    "remote process exited",
)
# how long a process whose peer went away waits for its own stop signal: torchrun signals every
# worker within milliseconds; the wait delays only the message of a peer that really died
OWN_SIGNAL_WAIT_S = 2.0


def stopped_key(env: Mapping[str, str]) -> str:
    """The store key a stopping worker sets; per restart, as `rank_errors.error_key`."""
    return f"rlhfkit/stopped/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def say_stopped(env: Mapping[str, str]) -> None:
    """A worker stopping on SIGTERM or Ctrl-C: tell the job's other workers, before its
    connections close."""
    store = job_store(env)
    try:
        if store is not None:
            store.set(stopped_key(env), "1")
    except RuntimeError:  # the store has gone: the job is ending anyway
        pass


def peer_stopped(env: Mapping[str, str]) -> bool:
    """Whether a worker of the job said it stopped on a signal (`say_stopped`)."""
    store = job_store(env)
    try:
        return store is not None and store.check([stopped_key(env)])
    except RuntimeError:
        return False


def lost_a_rank(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank of the job went away."""
    import torch.distributed as dist

    message = str(error)
    if isinstance(error, getattr(dist, "DistNetworkError", ())) or "gloo/transport" in message:
        return True
    return isinstance(error, (RuntimeError, getattr(dist, "DistError", RuntimeError))) and any(
        text in message for text in PEER_LOST
    )


def stopped_soon(wait_s: float | None = None) -> BaseException | None:
    """The Terminated (SIGTERM) or KeyboardInterrupt (Ctrl-C) this process receives within
    `wait_s` seconds (None: `OWN_SIGNAL_WAIT_S`), or None. On the main thread, where Python
    raises them from its handlers."""
    try:
        time.sleep(OWN_SIGNAL_WAIT_S if wait_s is None else wait_s)
    except (KeyboardInterrupt, Terminated) as stop:
        return stop
    return None


@contextmanager
def job_stop_told_apart() -> Iterator[None]:
    """Inside, a collective failing over a peer that stopped on a signal becomes this process's
    own SIGTERM or Ctrl-C (`own_stop_after_a_peer`): the job is being stopped, and the run stops
    as a stopped run does (the resume advice, exit status 143 or 130)."""
    try:
        yield
    except Exception as error:
        if lost_a_rank(error) and (stop := own_stop_after_a_peer(error)) is not None:
            raise stop from None
        raise


def own_stop_after_a_peer(error: BaseException | None = None) -> BaseException | None:
    """After a collective lost a peer (`error`): this process's own SIGTERM or Ctrl-C, when one
    is what `error` was raised while handling (a library that caught it to tell the other ranks,
    whose collective then failed: DCP's), or when the peer said it stopped on one (torchrun
    stopping the job: ours follows within `stopped_soon`, or it already came and went); else
    None (the peer died)."""
    context = error.__context__ if error is not None else None
    while context is not None:
        if isinstance(context, (KeyboardInterrupt, Terminated)):
            return type(context)()
        context = context.__context__
    if not peer_stopped(os.environ):
        return None
    return stopped_soon() or Terminated()
