"""rlhfkit: train language models from human feedback.

From Python, `rlhfkit.run(command, run_dir, **settings)` runs any command as the command line
does (`docs/python.md`); `rlhfkit.read_metrics` reads a run's `metrics.jsonl`. Importing the
package loads neither torch nor transformers: each command does when it runs.
"""

from importlib.metadata import PackageNotFoundError, version

from rlhfkit.api import run
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.runtime.metrics import read_metrics

try:
    __version__ = version("rlhfkit")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "unknown"

__all__ = ["ConfigError", "DataError", "RlhfkitError", "__version__", "read_metrics", "run"]
