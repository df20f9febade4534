"""run.lock: one process per run directory, stale locks of dead processes taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.runtime.run_lock import LOCK_NAME, acquire_run_lock, release_run_lock


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(root, pid, host=None):
    (root / LOCK_NAME).write_text(
        json.dumps({"pid": pid, "host": host or socket.gethostname(), "token": "t"}) + "\n"
    )


def test_the_lock_names_this_process_and_is_released(tmp_path):
    lock = acquire_run_lock(tmp_path)
    held = json.loads((tmp_path / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    assert lock.notice is None
    release_run_lock(lock)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_second_holder_is_refused_with_the_holding_pid(tmp_path):
    lock = acquire_run_lock(tmp_path)
    with pytest.raises(RlhfkitError) as err:
        acquire_run_lock(tmp_path)
    assert str(err.value).startswith(f"run {tmp_path} is in use by process {os.getpid()}")
    assert "\n" not in str(err.value)
    release_run_lock(lock)
    release_run_lock(acquire_run_lock(tmp_path))  # free again once released


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    lock = acquire_run_lock(tmp_path)
    assert lock.notice == (
        f"run {tmp_path}: taking over its lock from process {pid}, which is no longer running"
    )
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # no renamed copy left


def test_a_lock_from_another_host_is_refused_not_guessed(tmp_path):
    write_lock(tmp_path, dead_pid(), host="elsewhere")
    with pytest.raises(RlhfkitError, match="locked by process .* on host elsewhere: if that run"):
        acquire_run_lock(tmp_path)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "elsewhere"


def test_a_damaged_lock_is_refused_with_what_to_do(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(RlhfkitError, match="names no process .* delete it"):
        acquire_run_lock(tmp_path)


def test_release_leaves_a_lock_that_changed_hands(tmp_path):
    lock = acquire_run_lock(tmp_path)
    write_lock(tmp_path, 1)  # taken over meanwhile (pid 1 is alive: init)
    release_run_lock(lock)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == 1
