"""One process per run directory: a lock file `run.lock` inside it.

The lock is created with `O_CREAT | O_EXCL`, so of two processes starting on the same run exactly
one creates it; the other is refused with a one-line error naming the process that holds it. The
file holds one JSON line: the holder's pid, host and a random token (two locks taken by the same
process are told apart by the token).

A run killed outright (SIGKILL, power loss) cannot remove its lock. A lock whose process is no
longer alive on this host is stale and is taken over, and the caller is told so. A lock written on
another host cannot be checked from here: it is refused, and the message says which file to
delete once that run has ended.
"""

import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhfkit.errors import RlhfkitError

LOCK_NAME = "run.lock"
# Two processes may find the same stale lock and take it over at once; a few rounds settle who
# holds it, and a run that keeps changing hands past that is reported instead.
_ATTEMPTS = 3


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: written into the lock file."""

    pid: int
    host: str
    token: str


@dataclass(frozen=True)
class RunLock:
    """A lock this process holds; give it back with `release_run_lock`."""

    path: Path
    owner: LockOwner
    notice: str | None = None
    """A one-line message for the user (a stale lock was taken over), or None."""


def acquire_run_lock(run_root: Path) -> RunLock:
    """Lock the existing directory `run_root` for this process.

    Raises:
        RlhfkitError: another live process holds the lock (named by pid), a lock from another
            host or an unreadable lock is in the way, or the lock file cannot be created.
    """
    path = Path(run_root) / LOCK_NAME
    owner = LockOwner(pid=os.getpid(), host=socket.gethostname(), token=uuid.uuid4().hex)
    notice = None
    for _ in range(_ATTEMPTS):
        if _create(path, owner):
            return RunLock(path, owner, notice)
        holder = _read_owner(path)
        if holder is None:  # released between our attempt and our read: try again
            continue
        _refuse_unless_stale(run_root, path, holder)
        if _break_stale_lock(path, holder):
            notice = (
                f"run {run_root}: taking over its lock from process {holder.pid}, "
                "which is no longer running"
            )
    raise RlhfkitError(f"run {run_root}: could not take its lock {path}: try again")


def release_run_lock(lock: RunLock) -> None:
    """Remove the lock file if this lock still holds it (a moved or deleted one is left alone)."""
    try:
        if _read_owner(lock.path) == lock.owner:
            lock.path.unlink()
    except (OSError, RlhfkitError):
        pass  # gone already, or taken over: not ours to remove


def _create(path: Path, owner: LockOwner) -> bool:
    """Create the lock file holding `owner`; False when it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as err:
        raise RlhfkitError(f"cannot create the lock {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(asdict(owner)) + "\n")
    except OSError as err:  # a full disk: an empty lock left behind would block the next run
        path.unlink(missing_ok=True)
        raise RlhfkitError(f"cannot write the lock {path}: {err.strerror}") from None
    return True


def _read_owner(path: Path) -> LockOwner | None:
    """The lock's owner; None when there is no lock file.

    Raises:
        RlhfkitError: the file does not name an owner (being written this instant, or damaged).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RlhfkitError(f"cannot read the lock {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
        return LockOwner(pid=int(data["pid"]), host=str(data["host"]), token=str(data["token"]))
    except (ValueError, TypeError, KeyError):
        raise RlhfkitError(
            f"the lock {path} names no process (damaged, or being written): if no run is using "
            "this directory, delete it"
        ) from None


def _refuse_unless_stale(run_root: Path, path: Path, holder: LockOwner) -> None:
    if holder.host != socket.gethostname():
        raise RlhfkitError(
            f"run {run_root} is locked by process {holder.pid} on host {holder.host}: if that "
            f"run has ended, delete {path}"
        )
    if _is_alive(holder.pid):
        raise RlhfkitError(
            f"run {run_root} is in use by process {holder.pid} (its lock is {path}): wait for "
            "it to end or choose another --name"
        )


def _is_alive(pid: int) -> bool:
    if pid <= 0:  # 0 and negatives address process groups in os.kill, not one process
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _break_stale_lock(path: Path, stale: LockOwner) -> bool:
    """Remove the stale lock `stale`; False when the file changed hands since it was read.

    The lock is renamed away before it is checked, so a lock that another process has just
    taken over is never deleted by mistake: it is put back instead.
    """
    moved = path.with_name(f".{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return False  # another process broke it first
    try:
        is_stale = _read_owner(moved) == stale
    except RlhfkitError:
        is_stale = False
    if is_stale:
        moved.unlink()
        return True
    try:
        os.link(moved, path)  # put the live lock back, unless yet another one is in place
    except FileExistsError:
        pass
    moved.unlink()
    return False
