"""File systems that cannot take a run, and run directories that must not be taken: each is
refused with one line naming the path, leaving every run as it was (the catalogue's promise:
harness.py).

Permissions do not stop root, so the unwritable and unreadable cases are skipped there (the
reason is shown); a full or read-only disk is posed with a small tmpfs, which only root can
mount, so those are skipped for anyone else.
"""

import errno
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from rlhfkit.runtime.checkpoint import save_checkpoint
from tests.reliability.harness import (
    QUIET,
    Case,
    Env,
    Invocation,
    check_case,
    make_earlier_run,
    params,
)

IS_ROOT = os.geteuid() == 0
ROOT_IGNORES_PERMISSIONS = "running as root, whom file permissions do not stop" if IS_ROOT else ""
NEEDS_ROOT_TO_MOUNT = "" if IS_ROOT else "mounting the small tmpfs it needs takes root"


def sft_into(runs_dir: Path | str, env: Env, *extra: str) -> list[str]:
    argv = ["sft", f"model={env.model}", f"train_data={env.good_sft()}", *QUIET]
    return [*argv, *extra, "--runs-dir", str(runs_dir)]


def mount_tmpfs(env: Env, name: str, size: str) -> Path:
    """A fresh tmpfs of `size` at `env.root / name`, unmounted when the case ends."""
    mount = env.root / name
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    env.defer(lambda: subprocess.run(["umount", str(mount)], check=True))
    return mount


def fill(path: Path) -> None:
    """Write `path` until the disk it is on has not a byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break
    finally:
        os.close(fd)


def runs_on_a_tmpfs(env: Env, size: str) -> Path:
    """Move the case's runs directory, earlier run included, onto a fresh tmpfs."""
    disk = mount_tmpfs(env, "disk", size)
    env.runs = disk / "runs"
    env.earlier = make_earlier_run(env.runs / "earlier", env.model, env.good_sft())
    return disk


def full_disk(env: Env) -> Invocation:
    disk = runs_on_a_tmpfs(env, "1m")
    fill(disk / "filler")
    return Invocation(env.sft(), (str(env.runs / "sft"), "No space left on device"))


def read_only_disk(env: Env) -> Invocation:
    disk = runs_on_a_tmpfs(env, "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    return Invocation(env.sft(), (str(env.runs / "sft"), "Read-only file system"))


def unwritable_runs_dir(env: Env) -> Invocation:
    env.runs.chmod(0o555)
    env.defer(lambda: env.runs.chmod(0o755))
    return Invocation(env.sft(), (str(env.runs / "sft"), "Permission denied"))


def unreadable_data(env: Env) -> Invocation:
    data = env.file("train.jsonl", '{"prompt": "Q:", "completion": " 4."}\n')
    data.chmod(0)
    argv = ["sft", f"model={env.model}", f"train_data={data}", *QUIET, *env.flags()]
    return Invocation(argv, (str(data), "Permission denied"))


def lock(run: Path, pid: int, host: str | None = None) -> Path:
    """A run.lock in `run` (made if missing) held by `pid` on `host` (this one by default)."""
    run.mkdir(exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "token": "0" * 32}
    path = run / "run.lock"
    path.write_text(json.dumps(owner) + "\n")
    return path


def live_process(env: Env) -> int:
    """The pid of a process that lives until the case ends."""
    holder = subprocess.Popen(["sleep", "300"])
    env.defer(lambda: (holder.kill(), holder.wait()))
    return holder.pid


def run_in_use(env: Env) -> Invocation:
    pid = live_process(env)
    lock(env.runs / "sft", pid)
    return Invocation(env.sft(), (str(env.runs / "sft"), f"in use by process {pid}"))


def overwriting_a_run_in_use(env: Env) -> Invocation:
    pid = live_process(env)
    lock(env.earlier, pid)
    argv = env.sft("--name", "earlier", "--overwrite")
    return Invocation(argv, (str(env.earlier), f"in use by process {pid}"))


def run_locked_on_another_host(env: Env) -> Invocation:
    path = lock(env.earlier, 4242, host="elsewhere.example")
    argv = env.sft("--name", "earlier", "--overwrite")
    return Invocation(argv, ("process 4242 on host elsewhere.example", str(path)))


def damaged_lock(env: Env) -> Invocation:
    path = env.earlier / "run.lock"
    path.write_text("{half a lock")
    argv = env.sft("--name", "earlier", "--overwrite")
    return Invocation(argv, (str(path), "names no process"))


def leftover_of_a_killed_overwrite(env: Env) -> Invocation:
    aside = env.runs / f".earlier.replaced-{os.getpid()}"
    aside.mkdir()
    (aside / "config.yaml").write_text("lr: 0.1\n")
    argv = env.sft("--name", "earlier", "--overwrite")
    return Invocation(argv, (str(aside), "in the way"))


def overwrite_from_inside_the_run(env: Env) -> Invocation:
    env.cwd = env.earlier / "final"
    argv = env.sft("--name", "earlier", "--overwrite")
    return Invocation(argv, (str(env.earlier), "contains the current directory"))


def overwrite_through_a_link(env: Env) -> Invocation:
    (env.runs / "link").symlink_to(env.earlier, target_is_directory=True)
    argv = env.sft("--name", "link", "--overwrite")
    return Invocation(argv, (str(env.runs / "link"), "symbolic link"))


def overwrite_what_is_no_run(env: Env) -> Invocation:
    notes = env.runs / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("buy milk\n")
    argv = env.sft("--name", "notes", "--overwrite")
    return Invocation(argv, (str(notes), "does not look like a run directory"))


def run_name_taken_by_a_file(env: Env) -> Invocation:
    (env.runs / "sft").write_text("not a run\n")
    return Invocation(env.sft(), (str(env.runs / "sft"), "is a file"))


def resume_with_a_damaged_saved_config(env: Env) -> Invocation:
    run = env.runs / "broken"
    run.mkdir()
    (run / "config.yaml").write_text("lr: [0.1\n")
    save_checkpoint(run / "checkpoints", 1, write=lambda d: (d / "state.txt").write_text("1\n"))
    argv = env.sft("--name", "broken", "--resume")
    return Invocation(argv, ("cannot read the run's saved config", str(run / "config.yaml")))


CASES = [
    Case(
        "runs-dir-is-a-file",
        lambda env: Invocation(
            sft_into(env.file("runs.txt", ""), env), ("--runs-dir", "runs.txt", "is a file")
        ),
    ),
    Case(
        "runs-dir-inside-a-file",
        lambda env: Invocation(
            sft_into(env.file("runs.txt", "") / "sub", env),
            ("cannot create run directory", "runs.txt/sub/sft", "Not a directory"),
        ),
    ),
    Case("run-name-taken-by-a-file", run_name_taken_by_a_file),
    Case(
        "run-name-too-long",
        lambda env: Invocation(env.sft("--name", "r" * 300), ("--name is 300 bytes long",)),
    ),
    Case("run-in-use-by-a-live-process", run_in_use),
    Case("overwrite-a-run-in-use", overwriting_a_run_in_use),
    Case("run-locked-on-another-host", run_locked_on_another_host),
    Case("damaged-lock", damaged_lock),
    Case("leftover-of-a-killed-overwrite", leftover_of_a_killed_overwrite),
    Case("overwrite-from-inside-the-run", overwrite_from_inside_the_run),
    Case("overwrite-through-a-symbolic-link", overwrite_through_a_link),
    Case("overwrite-what-is-no-run", overwrite_what_is_no_run),
    Case("resume-with-a-damaged-saved-config", resume_with_a_damaged_saved_config),
    Case("unwritable-runs-dir", unwritable_runs_dir, skip=ROOT_IGNORES_PERMISSIONS),
    Case("unreadable-data-file", unreadable_data, skip=ROOT_IGNORES_PERMISSIONS),
    Case("read-only-disk", read_only_disk, skip=NEEDS_ROOT_TO_MOUNT),
    Case(
        "full-disk",
        full_disk,
        skip=NEEDS_ROOT_TO_MOUNT,
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_filesystem(case: Case, env: Env, monkeypatch, capsys):
    check_case(case, env, monkeypatch, capsys)
