import os
import signal
import threading
import time

import pytest
import torch.distributed as dist

from rlhfkit.errors import Terminated
from rlhfkit.runtime import lost_rank
from rlhfkit.runtime.lost_rank import (
    job_stop_told_apart,
    lost_a_rank,
    peer_stopped,
    say_stopped,
    stopped_soon,
)

PEER_GONE = "[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Connection closed by peer"


def test_a_collective_that_lost_a_peer_is_told_apart():
    lost = [
        RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [x]: ..."),
        RuntimeError("[c10d] Connection reset by peer"),
        RuntimeError("NCCL error: remote process exited or there was a network error"),
    ]
    assert all(lost_a_rank(error) for error in lost)
    assert not lost_a_rank(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not lost_a_rank(ValueError("Connection reset by peer"))  # not a collective's


@pytest.fixture
def sigterm_raises_terminated():
    def raise_terminated(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, raise_terminated)  # as the command line sets it
    yield
    signal.signal(signal.SIGTERM, before)


def sigterm_in(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    return timer


def test_a_peer_that_stopped_on_a_signal_then_our_own_is_the_job_stopping(
    monkeypatch, sigterm_raises_terminated
):
    # torchrun signals every worker: one that stopped first closed the collective under us
    monkeypatch.setattr(lost_rank, "peer_stopped", lambda env: True)
    timer = sigterm_in(0.2)
    with pytest.raises(Terminated):
        with job_stop_told_apart():
            raise RuntimeError(PEER_GONE)
    timer.join()


def test_a_peer_that_stopped_is_the_job_stopping_even_if_our_signal_came_and_went(monkeypatch):
    monkeypatch.setattr(lost_rank, "peer_stopped", lambda env: True)
    monkeypatch.setattr(lost_rank, "OWN_SIGNAL_WAIT_S", 0.05)
    with pytest.raises(Terminated):
        with job_stop_told_apart():
            raise RuntimeError(PEER_GONE)


def test_our_own_stop_caught_by_a_library_before_its_collective_failed_is_ours(monkeypatch):
    # DCP catches a rank's error to tell the others; the telling fails on a peer gone
    monkeypatch.setattr(lost_rank, "peer_stopped", lambda env: False)
    with pytest.raises(KeyboardInterrupt):
        with job_stop_told_apart():
            try:
                raise KeyboardInterrupt
            except BaseException:
                raise RuntimeError(PEER_GONE)  # noqa: B904  (as the library does)


def test_a_lost_peer_that_said_nothing_is_reported_at_once(monkeypatch, sigterm_raises_terminated):
    # a peer that died said nothing: no wait for a signal that will not come
    monkeypatch.setattr(lost_rank, "peer_stopped", lambda env: False)
    monkeypatch.setattr(lost_rank, "OWN_SIGNAL_WAIT_S", 30.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        with job_stop_told_apart():
            raise RuntimeError(PEER_GONE)
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError):  # another error: no wait, no change
        with job_stop_told_apart():
            raise ValueError("not a collective's")


def test_a_stopping_worker_is_heard_through_the_jobs_store():
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port)}
    assert not peer_stopped(env)
    say_stopped(env)
    assert peer_stopped(env)
    assert not peer_stopped({**env, "TORCHELASTIC_RESTART_COUNT": "1"})  # a restarted job's
    assert not peer_stopped({}) and say_stopped({}) is None  # no store: nothing to say


def test_stopped_soon_returns_the_signal_or_none(sigterm_raises_terminated):
    assert stopped_soon(0.01) is None
    timer = sigterm_in(0.05)
    assert isinstance(stopped_soon(5.0), Terminated)
    timer.join()
