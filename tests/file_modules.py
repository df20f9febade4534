"""Import a script or benchmark module by its file path (they are not in the package)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_file_module(path: Path, name: str):
    """The module in `path`, executed under `name` (a name of its own, so that two files with
    the same stem do not collide)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
