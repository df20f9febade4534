"""rlhfkit's messages go through the standard `logging` module, under the logger "rlhfkit"
(each module logs as `logging.getLogger(__name__)`): data reports and notices at INFO, what a
user should act on at WARNING. A caller can filter, silence or redirect them as any library's.

The command line and `rlhfkit.run` show them on the console as plain lines (INFO on stdout,
WARNING and above on stderr, prefixed "warning: "), unless the caller has configured logging
itself; a run directory also keeps them, with times, in `RUN_DIR/log.txt`."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT_LOGGER = "rlhfkit"
RUN_LOG = "log.txt"


class ConsoleHandler(logging.Handler):
    """INFO as the bare message on stdout, WARNING and above as "warning: ..." on stderr. The
    streams are looked up at each message, so a redirected `sys.stdout` (quiet torchrun ranks,
    captured output) is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                stream, message = sys.stderr, f"{record.levelname.lower()}: {message}"
            else:
                stream = sys.stdout
            stream.write(message + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def caller_configured_logging() -> bool:
    """True when the program has set up logging itself: a handler on the root logger or on
    rlhfkit's (then its handlers and levels decide, as for any library)."""
    return bool(logging.getLogger().handlers or logging.getLogger(ROOT_LOGGER).handlers)


@contextmanager
def console_messages(*, quiet: bool = False, program: bool = False) -> Iterator[None]:
    """rlhfkit's messages on the console while inside.

    Args:
        quiet: show only errors (torchrun's ranks other than 0: rank 0 speaks for the job).
        program: the command line, which owns its process's logging: the console shows the
            messages and they go nowhere else. Otherwise (`rlhfkit.run`, a library call inside
            someone's program) nothing is added when the caller configured logging.
    """
    if not program and caller_configured_logging():
        yield
        return
    logger = logging.getLogger(ROOT_LOGGER)
    handler = ConsoleHandler(level=logging.ERROR if quiet else logging.INFO)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.propagate = not program
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """rlhfkit's messages appended to `run_dir/log.txt` with their time, level and module: a
    resumed run continues the same file. It holds what the logger's level lets through (INFO
    under `console_messages`; a caller's own logging levels otherwise, never lowered here, since
    that would also send INFO to the caller's handlers)."""
    logger = logging.getLogger(ROOT_LOGGER)
    handler = logging.FileHandler(Path(run_dir) / RUN_LOG, encoding="utf-8", delay=True)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
