"""Where a result came from: each start of a run (the first and every resume) appends one line to
`RUN_DIR/starts.jsonl` with the time, the command, the code's version and commit, the library
versions and the machine, so a number in a report can be traced to what made it. Reports and
summaries quote the latest start."""

import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

STARTS_FILE = "starts.jsonl"
# how the running command was started, set by the command line and `rlhfkit.run`
_COMMAND_LINE: ContextVar[str] = ContextVar("command_line", default="")
# the CPU flags that change which kernels run, and so the last bits of every float result
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@contextmanager
def started_by(command_line: str) -> Iterator[None]:
    """Name how the command inside was started (`rlhfkit sft ...`, `rlhfkit.run("sft", ...)`):
    every run directory it opens records it."""
    token = _COMMAND_LINE.set(command_line)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def git_commit(source: Path) -> tuple[str | None, bool | None]:
    """(commit, whether tracked files differ from it) of the git checkout holding `source`, or
    (None, None) when rlhfkit is not run from a checkout (an installed wheel) or git is absent."""
    root = next((p for p in [source, *source.parents] if (p / ".git").exists()), None)
    if root is None:
        return None, None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(changed)


def cpu_description(cpuinfo: str) -> dict:
    """The CPU's model name and the flags of `KERNEL_FLAGS` it has, from /proc/cpuinfo text."""
    model, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags":
            flags.update(value.split())
    return {
        "cpu": model or platform.processor() or None,
        "cpu_flags": [f for f in KERNEL_FLAGS if f in flags],
    }


def rlhfkit_version() -> str:
    """The installed package's version (`rlhfkit.__version__`, read here without importing the
    package's top, which imports the layers above this one)."""
    try:
        return version("rlhfkit")
    except PackageNotFoundError:
        return "unknown"


def start_record(
    world_size: int = 1, command: str | None = None, command_name: str | None = None
) -> dict:
    """This start of a run: when (UTC), what command (default: `started_by`'s) and which
    rlhfkit command it ran (`command_name`: "grpo"), which code and libraries, which machine."""
    import torch
    import transformers

    commit, dirty = git_commit(Path(__file__).resolve().parent)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": _COMMAND_LINE.get() if command is None else command,
        "command_name": command_name,
        "rlhfkit": rlhfkit_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "host": socket.gethostname(),
        **cpu_description(cpuinfo),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "world_size": world_size,
    }


def record_start(run_root: Path, record: dict) -> None:
    """Append `record` to the run's starts file (a resumed run adds its own line)."""
    with open(Path(run_root) / STARTS_FILE, "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def latest_start(run_root: Path) -> dict | None:
    """The run's latest start record, or None when it has none (a run from before the file)."""
    path = Path(run_root) / STARTS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None


def first_command_name(run_root: Path) -> str | None:
    """The rlhfkit command that made the run (its first start's `command_name`), or None when
    its first start named none or the run has no starts file (made before it was kept)."""
    path = Path(run_root) / STARTS_FILE
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline()
        return json.loads(first).get("command_name") if first.strip() else None
    except (OSError, ValueError, AttributeError):
        return None


def start_line(record: dict) -> str:
    """One line for a report: `rlhfkit 0.1.0 (commit 1a2b3c4, changed), 2026-12-06 08:00 UTC,
    Intel(R) Xeon(R) Processor (avx2, avx512f, amx_bf16), 2 threads, torch 2.13.0`."""
    code = f"rlhfkit {record['rlhfkit']}"
    if record.get("git_commit"):
        changed = ", with uncommitted changes" if record.get("git_dirty") else ""
        code += f" (commit {record['git_commit'][:7]}{changed})"
    when = record["started"].replace("T", " ").removesuffix("Z") + " UTC"
    machine = record.get("gpu") or record.get("cpu") or "unknown machine"
    if not record.get("gpu") and record.get("cpu_flags"):
        machine += f" ({', '.join(record['cpu_flags'])})"
    ranks = f", {record['world_size']} processes" if record.get("world_size", 1) > 1 else ""
    return (
        f"{code}, {when}, {machine}, {record['threads']} threads{ranks}, "
        f"torch {record['torch']}, transformers {record['transformers']}"
    )
