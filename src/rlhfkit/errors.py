"""Errors a user can fix. The CLI prints them as one line and exits with status 2 (3 for a
numerical fault)."""


class RlhfkitError(Exception):
    """Base class: a problem with the user's input, config or files, not a bug."""


class ConfigError(RlhfkitError):
    """A config file or override that does not match the config's fields or types."""


class DataError(RlhfkitError):
    """A bad dataset row, named by file, row number (1-based) and field."""

    def __init__(self, path: str, row: int | None, field: str | None, message: str):
        self.path, self.row, self.field, self.message = str(path), row, field, message
        where = self.path
        if row is not None:
            where += f": row {row}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


class SampleError(RlhfkitError):
    """A failure on one of a step's samples (a reward source's): the message names the sample,
    `kind` says what failed without naming it. Under torchrun each rank scores its own samples,
    so ranks that fail alike name different ones; one line speaks for the ranks whose kinds
    agree (`runtime.rank_errors`)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class NumericalFault(RlhfkitError):
    """Training diverged: non-finite losses or gradients past the allowed skips, or a model
    with non-finite weights about to be saved. The CLI exits with status 3. Unlike bad input, a
    run stopped by it keeps its run directory (metrics, log), checkpoint or not."""

    exit_status = 3


class Terminated(BaseException):
    """The process was sent SIGTERM (a scheduler preempting the job, `kill`, torchrun stopping
    its workers): raised on the main thread, it stops the run as Ctrl-C's KeyboardInterrupt
    does, so the run directory's rules apply (the lock released, progress kept) and the CLI says
    so and exits with status 143 (128 + SIGTERM)."""


def one_line(error: BaseException) -> str:
    """`Type: message` on one line, cut short: a library's message can run to a page."""
    message = " ".join(str(error).split())
    message = message if len(message) <= 200 else message[:197] + "..."
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
