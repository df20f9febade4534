"""Reward functions handed over as Python objects (`rlhfkit.run(..., reward=my_function)`),
named in a reward spec as `python:MODULE.QUALNAME`.

A config is data: it is saved as `config.yaml` and read again on resume, and a function object
cannot be. So the object is kept here, in the process that was given it, and the config holds
its name. A run that names one resumes from Python, with the function passed again; from the
command line it stops with that message.
"""

from collections.abc import Callable

from rlhfkit.errors import RlhfkitError

PREFIX = "python:"
_FUNCTIONS: dict[str, Callable] = {}


def python_term(fn: Callable) -> str:
    """Keep `fn` and return the spec term that names it: `python:` and its module and qualified
    name (a callable object: its class's). The latest function of a name wins, as when a
    notebook cell defines it again."""
    if not callable(fn):
        raise RlhfkitError(
            f"a reward must be a function, a spec string or a list of them, got {fn!r}"
        )
    owner = fn if hasattr(fn, "__qualname__") else type(fn)
    name = f"{getattr(owner, '__module__', None) or 'python'}.{owner.__qualname__}"
    name = "".join(c for c in name if not c.isspace() and c not in "+*")  # the spec's separators
    _FUNCTIONS[name] = fn
    return PREFIX + name


def is_python_term(term: str) -> bool:
    return term.startswith(PREFIX)


def python_function(term: str) -> Callable:
    """The function a `python:NAME` term names, given in this process."""
    fn = _FUNCTIONS.get(term[len(PREFIX) :])
    if fn is None:
        raise RlhfkitError(
            f"reward '{term}' is a Python function that was passed to rlhfkit.run in another "
            "process: a run that uses one continues only from Python, with the function passed "
            "again (or name it as path/to/file.py:function)"
        )
    return fn
