"""A training progress bar: steps done / total, latest loss, tokens per second, elapsed and ETA."""

import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_NO_VALUE = "-"


class ProgressBar:
    """A context manager around `rich.progress.Progress` for one training stage.

    Args:
        total: steps in the stage.
        description: shown at the left, e.g. "sft".
        enabled: False draws nothing (tests, quiet runs); counts are still kept.
        start: steps already done (a resumed run); the ETA uses only this run's speed.
        console: where to draw; standard error when None (as tqdm draws), so that a
            command's own output on standard output can be piped clean.
        clock: seconds as a float; a fake clock makes the rate testable.
        with_loss: show the loss (False for work that has none: sampling).
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        enabled: bool = True,
        start: int = 0,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
        with_loss: bool = True,
    ):
        self.total = total
        self.with_loss = with_loss
        self.description = description
        self.enabled = enabled
        self.completed = start
        self.tokens = 0
        self.last_loss: float | None = None
        self._clock = clock
        self._start_time = clock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._console = console

    def __enter__(self) -> "ProgressBar":
        self._start_time = self._clock()
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                *([TextColumn("loss {task.fields[loss]}")] if self.with_loss else []),
                TextColumn("{task.fields[tokens_per_second]} tok/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console or Console(stderr=True),
                get_time=self._clock,
                # on one screen, the lines printed meanwhile are drawn above the bar; printed to
                # a file or a pipe, they stay there
                redirect_stdout=sys.stdout.isatty(),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.description,
                total=self.total,
                completed=self.completed,
                loss=_NO_VALUE,
                tokens_per_second=_NO_VALUE,
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def tokens_per_second(self) -> float:
        """Tokens counted by `update` divided by the seconds since the bar started (0 at first)."""
        elapsed = self._clock() - self._start_time
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def update(self, advance: int = 1, *, loss: float | None = None, tokens: int = 0) -> None:
        """Count `advance` more steps and `tokens` more tokens; show `loss` when given."""
        self.completed += advance
        self.tokens += tokens
        if loss is not None:
            self.last_loss = float(loss)
        if self._progress is None or self._task is None:
            return
        self._progress.update(
            self._task,
            advance=advance,
            loss=f"{self.last_loss:.4g}" if self.last_loss is not None else _NO_VALUE,
            tokens_per_second=f"{self.tokens_per_second:,.0f}" if self.tokens else _NO_VALUE,
        )


def work_bar(total: int, description: str | None) -> ProgressBar:
    """A bar over `total` pieces of work that have no loss (batches of sampling or judging),
    drawn when `description` names it; None counts silently."""
    return ProgressBar(total, description or "", enabled=description is not None, with_loss=False)
