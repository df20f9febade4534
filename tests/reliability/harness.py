"""The catalogue of bad inputs: what every entry promises, and the one check that holds it to it.

A user who gives rlhfkit a bad input (a data row, a config value, a model directory, a reward
file, a command-line argument, or a file system that cannot take the run) gets, whatever the
input:

- exit status 2;
- exactly one line on stderr, `error: ...`, naming what to fix: the file, row and field of a
  data row, the config key, the model directory and its fault, the reward function, the flag
  or the path (each case lists the fragments its line must hold), and no traceback;
- no run directory left behind, hidden `.`-entries included: nothing new appears anywhere in
  the case's folder (runs directory, working directory, data folder);
- an earlier run in the same runs directory (config.yaml, metrics.jsonl, a complete checkpoint,
  final/) is left byte for byte as it was, even when the bad command names it.

The CLI is called in this process (`rlhfkit.cli.main()` with `sys.argv` patched), so the
catalogue stays fast; the working directory is the case's own empty folder.

Usage errors are argparse's own: it too exits with status 2, but prints its usage block
(`usage: rlhfkit sft ...`, possibly wrapped over several lines) before one line
`rlhfkit sft: error: ...`. Those cases (`usage=True`) accept that block and still require
exactly one error line, last.
"""

import hashlib
import json
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rlhfkit import cli
from rlhfkit.runtime.checkpoint import save_checkpoint
from rlhfkit.runtime.config import load_config, save_config
from rlhfkit.train.sft import SFTConfig

GOOD_SFT = {"prompt": "Q: 1 + 1?\nA:", "completion": " 2."}
GOOD_PAIR = {"prompt": "User: Hi\nAssistant:", "chosen": " Hello!", "rejected": " Go away."}
GOOD_PROMPT = {"prompt": "Q: 2 + 3?\nA:", "answer": "5"}
# Settings that keep any run that gets going short and quiet.
QUIET = ("progress=false", "tensorboard=false")


@dataclass
class Env:
    """One case's folder: `cwd/` (the working directory), `runs/` holding the earlier run
    `runs/earlier/`, and room for the case's own files."""

    root: Path
    model: Path
    """The shared tiny model directory: read only (`model_copy` for one to break)."""
    runs: Path = field(init=False)
    earlier: Path = field(init=False)
    cwd: Path = field(init=False)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self):
        self.cwd = self.root / "cwd"
        self.cwd.mkdir()
        self.runs = self.root / "runs"
        self.earlier = make_earlier_run(self.runs / "earlier", self.model, self.good_sft())

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def jsonl(self, name: str, rows: list) -> Path:
        """Rows as JSON lines; a str row is written as it is (its own newline included)."""
        return self.file(
            name, "".join(row if isinstance(row, str) else json.dumps(row) + "\n" for row in rows)
        )

    def good_sft(self) -> Path:
        path = self.root / "good_sft.jsonl"
        return path if path.exists() else self.jsonl("good_sft.jsonl", [GOOD_SFT, GOOD_SFT])

    def model_copy(self, name: str = "model") -> Path:
        return Path(shutil.copytree(self.model, self.root / name))

    def flags(self, *extra: str) -> list[str]:
        """The runs-directory flags every run-making case passes, so a run would land in `runs/`."""
        return ["--runs-dir", str(self.runs), *extra]

    def sft(self, *extra: str) -> list[str]:
        """`rlhfkit sft` argv, on good data, that would make a run in `runs/`; `extra` adds
        overrides and flags. The config is the one the earlier run saved."""
        return [
            "sft",
            f"model={self.model}",
            f"train_data={self.good_sft()}",
            *QUIET,
            *extra,
            *self.flags(),
        ]

    def defer(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` when the case ends (unmount, stop a process), last deferred first."""
        self.cleanups.append(cleanup)


def make_earlier_run(root: Path, model: Path, train_data: Path) -> Path:
    """A finished-looking SFT run: its saved config, metrics, a complete checkpoint, final/."""
    root.mkdir(parents=True)
    cfg = load_config(SFTConfig, overrides=[f"model={model}", f"train_data={train_data}", *QUIET])
    save_config(cfg, root / "config.yaml")
    (root / "metrics.jsonl").write_text('{"stage": "sft", "step": 1, "loss": 2.5}\n')

    def write(directory: Path) -> None:
        (directory / "state.txt").write_text("step 1\n")

    save_checkpoint(root / "checkpoints", 1, write=write)
    (root / "final").mkdir()
    (root / "final" / "model.safetensors").write_bytes(b"earlier weights")
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root`, hidden ones included: relative path -> sha256 of a file's
    bytes, "dir" or "link -> target"."""
    if not root.exists():
        return {}
    entries = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            entries[name] = f"link -> {path.readlink()}"
        elif path.is_dir():
            entries[name] = "dir"
        else:
            entries[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    """`rlhfkit ARGV`."""
    expect: tuple[str, ...]
    """Fragments the error line must hold: the file, row and field, the key, the path."""


@dataclass(frozen=True)
class Case:
    """One bad input: builds its files in the case's `Env` and says how rlhfkit is called."""

    id: str
    build: Callable[[Env], Invocation]
    usage: bool = False
    """An argparse usage error: its usage block is allowed before the error line."""
    xfail: str = ""
    """What the library does instead, for a case that does not yet behave."""
    skip: str = ""
    """Why this machine cannot pose the case (decided when the catalogue is collected)."""


def params(cases: list[Case]) -> list:
    """The cases as pytest parameters: the misbehaving ones marked strict xfail, the ones this
    machine cannot pose skipped with the reason."""
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "case ids must be distinct"
    marked = []
    for case in cases:
        # raises=AssertionError: a case fails as expected only when the promise is what breaks
        xfail = pytest.mark.xfail(strict=True, raises=AssertionError, reason=case.xfail)
        marks = [xfail] if case.xfail else []
        if case.skip:
            marks.append(pytest.mark.skip(reason=case.skip))
        marked.append(pytest.param(case, id=case.id, marks=marks))
    return marked


def run_cli(monkeypatch, capsys, argv: list[str]) -> tuple[int | str | None, str]:
    """`rlhfkit ARGV` in this process: (exit status, stderr), as a real process would end: a
    warning is printed to stderr, an exception that escapes `main` is a traceback and status 1."""
    monkeypatch.setattr(sys, "argv", ["rlhfkit", *map(str, argv)])
    # a reward file imported by the run would otherwise leave __pycache__/ beside it
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        _python_default_warning_filters()
        try:
            cli.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        except Exception:
            code = 1
            print(traceback.format_exc(), file=sys.stderr, end="")
    err = capsys.readouterr().err
    err += "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return code, err


def _python_default_warning_filters() -> None:
    """The filters a plain `python` process starts with (pytest shows more): what a user sees."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def check_case(case: Case, env: Env, monkeypatch, capsys) -> None:
    """Run one case and hold it to the catalogue's promise (module docstring)."""
    invocation = case.build(env)
    monkeypatch.chdir(env.cwd)
    before, earlier_before = tree_digest(env.root), tree_digest(env.earlier)
    runs_before = sorted(p.name for p in env.runs.iterdir()) if env.runs.is_dir() else []

    code, err = run_cli(monkeypatch, capsys, invocation.argv)

    assert code == 2, f"exit status {code!r}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.usage:
        # argparse: "usage: ..." (maybe wrapped), then exactly one "rlhfkit CMD: error: ..."
        errors = [line for line in lines if line.startswith("rlhfkit") and ": error: " in line]
        assert lines and lines[0].startswith("usage: "), err
        assert len(errors) == 1 and lines[-1] == errors[0], err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in invocation.expect:
        assert fragment in lines[-1], f"{fragment!r} not in: {lines[-1]}"
    runs_after = sorted(p.name for p in env.runs.iterdir()) if env.runs.is_dir() else []
    assert runs_after == runs_before, "a run directory was left behind"
    assert tree_digest(env.earlier) == earlier_before, "the earlier run was touched"
    after = tree_digest(env.root)
    new = sorted(set(after) - set(before))
    changed = sorted(name for name in before if after.get(name) != before[name])
    assert not new and not changed, f"new: {new}; changed or removed: {changed}"
