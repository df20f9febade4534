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


def python_term(fn: Callable, named: dict[str, Callable]) -> str:
    """Keep `fn` and return the spec term that names it: `python:` and its module and qualified
    name (a callable object: its class's). `named` holds the functions one `rlhfkit.run` call
    has named so far: another function of the same name (two lambdas, two closures of one
    factory) gets `#2`, `#3`, ... Across calls the latest function of a name wins, as when a
    notebook cell defines it again."""
    if not callable(fn):
        raise RlhfkitError(
            f"a reward must be a function, a spec string or a list of them, got {fn!r}"
        )
    owner = fn if hasattr(fn, "__qualname__") else type(fn)
    base = f"{getattr(owner, '__module__', None) or 'python'}.{owner.__qualname__}"
    base = "".join(c for c in base if not c.isspace() and c not in "+*#")  # the spec's separators
    name, count = base, 1
    while name in named and named[name] is not fn:
        count += 1
        name = f"{base}#{count}"
    named[name] = _FUNCTIONS[name] = fn
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
