"""Atomic checkpoints, finding the latest one, and the RNG state that makes resume exact.

A checkpoint is a directory `checkpoints/step_00000042/` holding whatever the trainer writes (model
in HF format, optimizer, scheduler, RNG, data position) plus a `checkpoint.json` marker written
last, with the sha256 of every other file. It is assembled in a `.tmp-*` sibling and renamed into
place only when complete, so a run killed at any moment leaves either the whole new checkpoint or
none of it: `latest_checkpoint` never returns a half-written one, and `resumable_checkpoint`
skips (and names) one whose bytes were damaged since, falling back to the one before.

Nothing is unpickled: state files are read with `torch.load(weights_only=True)`, which accepts
tensors and plain containers of numbers and strings only, and refuses a planted object.

Exact resume (bitwise-identical weights to an uninterrupted run) also needs every random number
generator restored: `capture_rng_state` / `restore_rng_state`.
"""

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.errors import RlhfkitError

log = logging.getLogger(__name__)

MARKER_NAME = "checkpoint.json"
CHECKPOINT_FORMAT = 2  # 2: the marker holds a sha256 manifest; 1 pickled the RNG state
_STEP_DIR = re.compile(r"step_(\d+)")
_TMP_PREFIX = ".tmp-"


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    *,
    write: Callable[[Path], None],
    keep_last: int = 2,
) -> Path:
    """Write a complete checkpoint for `step` atomically and prune old ones.

    Args:
        checkpoints_dir: the run's `checkpoints/` directory (created if missing).
        step: the optimizer step the checkpoint holds; names the directory `step_{step:08d}`.
        write: saves the trainer's files into the directory it is given (a temporary one).
        keep_last: how many complete checkpoints to keep, newest first; the new one is always kept.

    Returns:
        The final checkpoint directory.
    """
    final, tmp = begin_checkpoint(checkpoints_dir, step, keep_last=keep_last)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return finish_checkpoint(tmp, final, step, keep_last=keep_last)


def begin_checkpoint(checkpoints_dir: Path, step: int, *, keep_last: int) -> tuple[Path, Path]:
    """The first half of `save_checkpoint`, for writers in several processes: remove what a
    crashed save left behind and open a temporary directory. Returns (final, tmp)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftover_tmp_dirs(checkpoints_dir)
    final = checkpoints_dir / f"step_{step:08d}"
    return final, temporary_sibling(final)


def finish_checkpoint(
    tmp: Path, final: Path, step: int, *, keep_last: int, info: dict | None = None
) -> Path:
    """The second half of `save_checkpoint`, once every file is in `tmp`: write the marker
    (with `info`'s fields beside the step and the sha256 manifest), rename, prune. On failure
    `tmp` is removed."""
    try:
        # The marker goes in last: its presence is what makes a checkpoint complete.
        marker = {
            "step": step,
            "format": CHECKPOINT_FORMAT,
            **(info or {}),
            "sha256": file_digests(tmp),
        }
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=1) + "\n")
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(final.parent, keep_last=keep_last, keep=final)
    return final


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None when there is none.

    Complete means a `step_*` directory holding the marker; `.tmp-*` directories and step
    directories without a marker (copied by hand, or damaged) are ignored.
    """
    complete = complete_checkpoints(Path(checkpoints_dir))
    return complete[-1][1] if complete else None


def resumable_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint whose files match their recorded sha256, or None when
    there is no complete checkpoint. A damaged one is named on stderr and the one before it
    used; when every checkpoint is damaged, that is an error."""
    complete = complete_checkpoints(Path(checkpoints_dir))
    for _, path in reversed(complete):
        problem = checkpoint_damage(path)
        if problem is None:
            return path
        log.warning(f"checkpoint {path} is damaged ({problem}); skipping it")
    if complete:
        raise RlhfkitError(
            f"every checkpoint in {checkpoints_dir} is damaged (see above): nothing to resume; "
            "start afresh with --overwrite"
        )
    return None


def checkpoint_damage(checkpoint_dir: Path) -> str | None:
    """What is wrong with a complete checkpoint's files (None: every file listed in the marker
    is there with its recorded sha256)."""
    checkpoint_dir = Path(checkpoint_dir)
    try:
        info = json.loads((checkpoint_dir / MARKER_NAME).read_text())
    except (OSError, ValueError) as err:
        return f"unreadable {MARKER_NAME}: {err}"
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        return (
            f"checkpoint format {info.get('format') if isinstance(info, dict) else None!r}, "
            f"this rlhfkit reads format {CHECKPOINT_FORMAT}"
        )
    recorded = info.get("sha256")
    if not isinstance(recorded, dict) or not recorded:
        return f"{MARKER_NAME} lists no files"
    for name, digest in sorted(recorded.items()):
        path = checkpoint_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its sha256"
    return None


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by path relative to it (POSIX separators)."""
    root = Path(root)
    return {
        path.relative_to(root).as_posix(): _sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_step(checkpoint_dir: Path) -> int:
    """The step a complete checkpoint holds, read from its marker."""
    marker = Path(checkpoint_dir) / MARKER_NAME
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        message = (
            f"{checkpoint_dir} is not a complete checkpoint: cannot read {MARKER_NAME} ({err})"
        )
        raise RlhfkitError(message) from None
    if info.get("format") != CHECKPOINT_FORMAT:
        raise RlhfkitError(
            f"{checkpoint_dir}: checkpoint format {info.get('format')!r} is not supported"
        )
    return int(info["step"])


def capture_rng_state(*, all_cuda_devices: bool = True) -> dict[str, Any]:
    """The state of every random number generator a run draws from: python, numpy, torch, CUDA.
    `all_cuda_devices=False`: only the current CUDA device's (a rank under torchrun, which
    would otherwise open a context on every GPU of its machine)."""
    cuda = torch.cuda.is_available()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        # as a tensor and numbers: plain data that weights_only loading accepts
        "numpy": (
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            position,
            has_gauss,
            cached_gaussian,
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda and all_cuda_devices else None,
    }
    if not all_cuda_devices:
        state["cuda_current"] = torch.cuda.get_rng_state() if cuda else None
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generators saved by `capture_rng_state`.

    CUDA states are restored when this machine has CUDA. A checkpoint written on another number of
    GPUs cannot resume exactly, so that is an error rather than a silently different run.
    """
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            raise RlhfkitError(
                f"the checkpoint holds RNG states for {len(cuda_states)} CUDA devices but this "
                f"machine has {torch.cuda.device_count()}: resume on the same number of devices"
            )
        torch.cuda.set_rng_state_all(cuda_states)
    if state.get("cuda_current") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_current"])  # to the current device


def save_torch_state(path: Path, state: dict[str, Any]) -> None:
    """Save an optimizer / scheduler / RNG state dict with `torch.save`."""
    torch.save(state, path)


def load_torch_state(path: Path) -> dict[str, Any]:
    """Load a state dict written by `save_torch_state`, tensors on CPU.

    `weights_only=True`: tensors and plain containers only, so a file with a planted object
    (pickle runs code on load) is refused, never run. Optimizers move their state to the
    parameters' device in `load_state_dict`.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RlhfkitError(
            f"refusing to load {path}: it holds more than tensors and plain data ({reason})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise RlhfkitError(f"cannot read {path}: {err}") from None


def publish_dir(tmp: Path, final: Path) -> None:
    """Flush the complete directory `tmp` to disk and rename it to `final` (replacing an older
    `final`): a reader sees the old directory or the whole new one, never a part."""
    _fsync_tree(tmp)
    _move_into_place(tmp, final)
    _fsync_dir(final.parent)


def publish_new_dir(tmp: Path, final: Path) -> bool:
    """`publish_dir` for a directory whose content is fixed by its name (a cache entry): never
    replaces. When `final` already exists, another process published the same content first
    and may be reading it: `tmp` is deleted and False returned."""
    _fsync_tree(tmp)
    try:
        os.rename(tmp, final)  # unlike os.replace, fails on an existing non-empty directory
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    _fsync_dir(final.parent)
    return True


def clear_new_output(out_dir: Path) -> None:
    """Refuse an output directory that holds anything; remove an empty one, so that
    `publish_new_dir` can rename the finished directory into its place."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RlhfkitError(f"{out_dir} already exists and is not empty: choose another --out")
    if out_dir.is_dir():
        out_dir.rmdir()


def remove_leftovers_of(final: Path) -> None:
    """Delete what a crash while publishing `final` left beside it: its `.tmp-` copies, which
    may each hold a whole model (one writer per run directory, so none is in use)."""
    if not final.parent.is_dir():
        return
    mine = (f"{_TMP_PREFIX}{final.name}-", f"{_TMP_PREFIX}old-{final.name}-")
    for entry in final.parent.iterdir():
        if entry.name.startswith(mine) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def temporary_sibling(final: Path) -> Path:
    """A fresh temporary directory beside `final`, on the same filesystem so a rename publishes
    it; leftovers of a crash carry the `.tmp-` prefix. Made with a plain mkdir, so the user's
    umask sets its mode as for any directory they create (mkdtemp's is 0700: a published model
    no other user or serving process could read)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def complete_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for entry in checkpoints_dir.iterdir():
        match = _STEP_DIR.fullmatch(entry.name)
        if match and entry.is_dir() and (entry / MARKER_NAME).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _move_into_place(tmp: Path, final: Path) -> None:
    # os.replace cannot overwrite a non-empty directory: move an older copy of the same step aside
    # first. A crash in between leaves the previous checkpoints, which is still a consistent state.
    if final.exists():
        aside = final.with_name(f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}")
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _prune(checkpoints_dir: Path, *, keep_last: int, keep: Path) -> None:
    complete = complete_checkpoints(checkpoints_dir)
    for _, path in complete[:-keep_last]:
        if path != keep:
            shutil.rmtree(path)


def _remove_leftover_tmp_dirs(checkpoints_dir: Path) -> None:
    """Delete temporary directories a crashed save left behind (one writer per run directory)."""
    for entry in checkpoints_dir.iterdir():
        if entry.name.startswith(_TMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to disk before the rename publishes them."""
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            with open(os.path.join(dirpath, filename), "rb") as file:
                os.fsync(file.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    # Directory fsync persists renames and new entries; not every platform supports it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
