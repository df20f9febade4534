"""Metrics: one JSON line per logged step (the record reports read) and optional TensorBoard
scalars.

Each line is `{"stage": "train", "step": 42, "time": 1718000000.0, "loss": 1.23, ...}`. Non-finite
values are written as null so that every line is strict JSON. A resumed run first drops the lines
after its checkpoint step (and hides TensorBoard's events after it), so neither holds the same
step twice; every line and scalar is flushed when logged, so none up to the checkpoint is lost.
"""

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rlhfkit.errors import RlhfkitError

_RESERVED_KEYS = frozenset({"stage", "step", "time"})


def tensorboard_available() -> bool:
    """TensorBoard is an optional extra (`pip install -e '.[tensorboard]'` in the rlhfkit
    checkout); without it the metrics go to JSONL only."""
    return importlib.util.find_spec("tensorboard") is not None


class MetricsLogger:
    """Append metrics to a JSONL file and, when given a directory, to TensorBoard.

    Args:
        metrics_path: the JSONL file (created if missing, appended to otherwise); None: log
            nothing (the ranks other than 0 of a torchrun job).
        tensorboard_dir: where TensorBoard event files go; None for no TensorBoard.
        resume_from_step: the step of the checkpoint a resumed run starts from: lines with a
            larger step are removed first (and hidden from TensorBoard).
    """

    def __init__(
        self,
        metrics_path: Path | None,
        tensorboard_dir: Path | None,
        *,
        resume_from_step: int | None = None,
    ):
        self._file, self._writer = None, None
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        if self.metrics_path is None:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from_step is not None and self.metrics_path.exists():
            drop_lines_after(self.metrics_path, resume_from_step)
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        if tensorboard_dir is not None and tensorboard_available():
            # Imported here: it takes seconds and most uses (tests, quiet runs) never need it.
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events from the killed run's steps after the checkpoint.
            purge_step = resume_from_step + 1 if resume_from_step is not None else None
            self._writer = SummaryWriter(log_dir=str(tensorboard_dir), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, float], *, stage: str = "train") -> None:
        """Write one line and one TensorBoard scalar `stage/key` per metric, both flushed at
        once: what a run writes after this call (a checkpoint, a round's summary) can never be on
        disk without them, so a resume that keeps the steps up to its checkpoint keeps these.

        Values may be Python numbers, numpy scalars or 0-dim tensors.
        """
        clashes = _RESERVED_KEYS & metrics.keys()
        if clashes:
            raise ValueError(
                f"metric names {sorted(clashes)} are reserved for the line's own fields"
            )
        if self._file is None:
            return
        values = {key: _plain_number(value) for key, value in metrics.items()}
        record = {"stage": stage, "step": step, "time": time.time()}
        record.update({key: value if _is_finite(value) else None for key, value in values.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                if _is_finite(value):  # null in the JSONL: no point in TensorBoard either
                    self._writer.add_scalar(f"{stage}/{key}", value, global_step=step)
            # the writer otherwise holds events for up to two minutes: a kill then loses them
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the file and the TensorBoard writer; calling it twice is harmless."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every line of a metrics file as a dict, in file order (null values come back as None);
    `path` is the file, or a run directory holding `metrics.jsonl`.

    A last line cut short by a killed process is skipped; a damaged line elsewhere is an error.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RlhfkitError(f"cannot read metrics {path}: {error.strerror}") from None
    return _parse_lines(text, path)


def drop_lines_after(path: Path, last_step: int) -> None:
    """Rewrite a JSONL file of `step` rows keeping only lines with step <= last_step
    (atomically, via a temp file): metrics.jsonl, and SFT's samples.jsonl, on resume."""
    kept = [record for record in read_metrics(path) if record.get("step", -1) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as file:
        for record in kept:
            file.write(json.dumps(record, allow_nan=False) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _parse_lines(text: str, path: Path) -> list[dict[str, Any]]:
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # Only the very last line (no newline after it) can be an interrupted write.
            if number == len(lines):
                break
            raise RlhfkitError(f"{path}: line {number} is not valid JSON") from None
    return records


def _plain_number(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars and 0-dim tensors
        value = value.item()
    if isinstance(value, int):  # bools included: they stay true/false
        return value
    return float(value)


def _is_finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)
