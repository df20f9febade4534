"""A user's reward function, named as `path/to/file.py:function`, as a reward source.

The function is called once per batch, like TRL's reward functions:

    fn(prompts: list, responses: list[str], *, answer: list, **metadata_columns) -> list[float]

`prompts[i]` is the prompt as the dataset holds it (a string, or a list of messages for
conversational data), `answer` the reference answers (None where a row has none), and every
other column of the prompt rows comes as one keyword list (None where a row lacks it); a
function that does not need them takes `**kwargs`. Anything wrong with what it does (it raises,
calls `sys.exit`, hangs past the timeout, returns NaN/inf, a non-number or the wrong count) is a
`RewardFunctionError` naming the function and the sample: nothing is silently turned into 0.
"""

import hashlib
import importlib.util
import inspect
import math
import numbers
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.formats import PromptExample, type_name
from rlhfkit.errors import RlhfkitError, SampleError, Terminated, one_line
from rlhfkit.rewards.base import RewardScores, check_same_length, describe_sample, excerpt

RESERVED_COLUMNS = ("prompts", "responses")


class RewardFunctionError(SampleError):
    """A user reward function failed on some sample; the message names both, the `kind` the
    function and how it failed (what it raised, what it returned wrong)."""


def load_reward_function(spec: str) -> Callable:
    """The function `spec = "path/to/file.py:function"` names, the file loaded from its path.

    Raises:
        RlhfkitError: naming the spec, when the spec is malformed, the file is missing or fails
            to load, or it has no such name, or the name is not callable.
    """
    path_text, _, fn_name = spec.rpartition(":")
    if not path_text.endswith(".py") or not fn_name.isidentifier():
        raise RlhfkitError(f"reward function '{spec}': expected 'path/to/file.py:function'")
    path = Path(path_text)
    if not path.is_file():
        raise RlhfkitError(f"reward function '{spec}': no file {path}")
    module = _load_module(path, spec)
    if not hasattr(module, fn_name):
        raise RlhfkitError(f"reward function '{spec}': {path} defines no '{fn_name}'")
    fn = getattr(module, fn_name)
    if not callable(fn):
        raise RlhfkitError(
            f"reward function '{spec}': '{fn_name}' in {path} is a {type_name(fn)}, not a function"
        )
    return fn


def _load_module(path: Path, spec: str):
    # A name from the full path, so two files both called `rewards.py` do not collide; the
    # module is registered in sys.modules because dataclasses and pickling look it up there.
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) and Path(main.__file__).resolve() == path.resolve():
        # the running script itself (a script that trains with a function it defines): loading
        # it again would run the whole script a second time, inside the first run
        return main
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"rlhfkit_reward_fn_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # sys.exit() at import would end the run silently
        del sys.modules[module_name]
        raise RlhfkitError(
            f"reward function '{spec}': loading {path} raised {_one_line(error)}"
        ) from error
    return module


def _one_line(error: BaseException) -> str:
    if isinstance(error, EscapedCall):
        error = error.error
        if isinstance(error, SystemExit):
            return (
                f"SystemExit({error.code!r}) from sys.exit (a reward function returns its "
                "rewards, it does not end the run)"
            )
    return one_line(error)


class _Timeout(Exception):
    pass


class EscapedCall(Exception):
    """The function raised a BaseException that is not an Exception (`sys.exit()`'s SystemExit,
    its own KeyboardInterrupt, ...), carried as an ordinary failure: let through, it would end
    the run with no message, no final model and an exit status of the function's choosing."""

    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


def call_catching_exits(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """`fn(*args, **kwargs)`, with any BaseException it raises that is not an Exception wrapped
    in `EscapedCall`, except a KeyboardInterrupt on the main thread.

    Python delivers Ctrl-C to the main thread only, as a KeyboardInterrupt raised in whatever
    code runs there, `fn` included: on the main thread one that `fn` raised itself cannot be
    told from the user's Ctrl-C, so it stops the run as a Ctrl-C does. On any other thread (the
    deadline's worker) it can only be `fn`'s own, and is reported as its failure.
    """
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, Terminated) as error:  # SIGTERM arrives the same way
        if threading.current_thread() is threading.main_thread():
            raise
        raise EscapedCall(error) from error
    except Exception:
        raise
    except BaseException as error:
        raise EscapedCall(error) from error


def call_with_deadline(fn: Callable, args: tuple, kwargs: dict, timeout_s: float | None) -> Any:
    """`fn(*args, **kwargs)`, raising `_Timeout` when it has not returned after `timeout_s`.

    The call runs on a worker thread the caller waits on with a deadline. Not SIGALRM: signals
    are delivered only to the main thread (and not on every platform), and rewards may be
    computed off it. A Python thread cannot be killed, so a call that times out is abandoned
    as a daemon thread; the run stops with an error anyway. What `fn` raises is re-raised here,
    `sys.exit()` and the like as `EscapedCall` (see `call_catching_exits`).
    """
    if timeout_s is None:
        return call_catching_exits(fn, args, kwargs)
    outcome: dict[str, Any] = {}

    def run():
        try:
            outcome["value"] = call_catching_exits(fn, args, kwargs)
        except BaseException as error:  # handed to the caller, re-raised on its thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="reward-function", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _Timeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def metadata_columns(prompts: list[PromptExample]) -> dict[str, list]:
    """`answer` plus every metadata key as a column of one value per prompt (None where a
    prompt lacks the key, as a table column would hold it)."""
    keys = list(dict.fromkeys(key for prompt in prompts for key in prompt.metadata))
    for key in keys:
        if key in RESERVED_COLUMNS or key == "answer":
            raise RlhfkitError(
                f"prompt metadata column '{key}' clashes with a reward function argument: rename it"
            )
    columns = {"answer": [prompt.answer for prompt in prompts]}
    columns.update({key: [prompt.metadata.get(key) for prompt in prompts] for key in keys})
    return columns


class FunctionReward:
    """A user reward function as a reward source.

    Args:
        fn: called as `fn(prompts, responses, answer=[...], **metadata_columns)`.
        name: how errors and metrics name it (the spec it was loaded from).
        timeout_s: the longest one call may take; None = no limit.
        first_call_timeout_s: the limit of calls until one has returned, when longer (None =
            timeout_s, inf = no limit): a function that loads a model or a judge on its first
            call takes that long once.
    """

    def __init__(
        self,
        fn: Callable,
        name: str,
        timeout_s: float | None = None,
        first_call_timeout_s: float | None = None,
    ):
        for key, value in (
            ("timeout_s", timeout_s),
            ("first_call_timeout_s", first_call_timeout_s),
        ):
            if value is not None and not value > 0:
                raise RlhfkitError(f"reward function '{name}': {key} must be positive, got {value}")
        self.fn, self.name, self.timeout_s = fn, name, timeout_s
        self.first_call_timeout_s = first_call_timeout_s
        self.returned_once = False

    @property
    def limit_s(self) -> float | None:
        """The limit of the next call (None = none): the first call's until one has returned."""
        if self.returned_once or self.timeout_s is None or self.first_call_timeout_s is None:
            return self.timeout_s
        if math.isinf(self.first_call_timeout_s):
            return None
        return max(self.timeout_s, self.first_call_timeout_s)

    def score(
        self, prompts: list[PromptExample], responses: list[str], *, first: int = 0
    ) -> RewardScores:
        check_same_length(self.name, prompts, responses)
        if not prompts:
            return RewardScores(rewards=torch.zeros(0))
        values = self._call(prompts, list(responses), first)
        rewards = self._check(values, prompts, first)
        return RewardScores(rewards=torch.tensor(rewards, dtype=torch.float32))

    def _call_once(
        self, prompts: list[PromptExample], responses: list[str], columns: dict[str, list]
    ) -> Any:
        args = ([prompt.prompt for prompt in prompts], responses)
        value = call_with_deadline(self.fn, args, columns, self.limit_s)
        self.returned_once = True
        return value

    def _call(self, prompts: list[PromptExample], responses: list[str], first: int) -> Any:
        columns = metadata_columns(
            prompts
        )  # outside the try: a clash is the data's fault, not the function's
        limit = self.limit_s
        try:
            value = self._call_once(prompts, responses, columns)
        except _Timeout:
            which = "" if limit == self.timeout_s else " (the limit of a first call)"
            late = f"did not return within {limit:g} s"
            raise self._error(f"{late}{which} on {_batch(prompts, first)}", late) from None
        except Exception as error:
            index, error = self._first_failing(prompts, responses, columns, error)
            where = (
                _batch(prompts, first)
                if index is None
                else describe_sample(first + index, prompts[index].prompt)
            )
            raised = f"raised {_type_name(error)}"
            raise self._error(f"raised {_one_line(error)} on {where}", raised) from error
        if inspect.iscoroutine(value):
            value.close()  # never awaited: closed here, so Python does not warn about it
            plain = "is async (async def): a reward function must be a plain function"
            raise self._error(plain, "is async")
        return value

    def _first_failing(
        self, prompts, responses, columns, error: Exception
    ) -> tuple[int | None, Exception]:
        """The first sample the function fails on when called on it alone, and that failure:
        a batch error names no sample, and the user needs to know which response broke it.
        None when every sample passes alone (the batch as a whole is what fails)."""
        if len(prompts) == 1:
            return 0, error
        for index in range(len(prompts)):
            try:
                alone = {key: values[index : index + 1] for key, values in columns.items()}
                self._call_once(prompts[index : index + 1], responses[index : index + 1], alone)
            except _Timeout:
                return index, TimeoutError(f"timed out after {self.limit_s:g} s alone")
            except Exception as single_error:
                return index, single_error
        return None, error

    def _check(self, values: Any, prompts: list[PromptExample], first: int) -> list[float]:
        """The rewards `values` holds, one finite number per prompt (`first`: the index of
        `prompts[0]` among the step's samples, as errors name them)."""
        if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
            values = values.tolist()  # a tensor or an array of rewards
        batch = _batch(prompts, first)
        if not isinstance(values, (list, tuple)):
            returned = f"returned {type_name(values)}"
            expected = f"expected a list of {len(prompts)} numbers"
            raise self._error(f"{returned} on {batch}, {expected}", returned)
        if len(values) != len(prompts):
            raise self._error(
                f"returned {len(values)} rewards for {len(prompts)} responses on {batch}",
                "returned the wrong number of rewards",
            )
        rewards = []
        for index, value in enumerate(values):
            where = describe_sample(first + index, prompts[index].prompt)
            if not isinstance(value, numbers.Real) and getattr(value, "ndim", None) == 0:
                value = value.item()  # a numpy scalar (np.bool_ included) or a 0-d tensor
            # bool counts as a number: a verifier returning True/False means 1/0.
            if not isinstance(value, numbers.Real):
                raise self._error(
                    f"returned {_describe(value)} for {where}, expected a number",
                    f"returned {type_name(value)} for a sample, expected a number",
                )
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int beyond float's range
                finite = False
            if not finite:
                shown = _describe(value) if isinstance(value, numbers.Integral) else float(value)
                raise self._error(
                    f"returned {shown} for {where}, expected a finite number",
                    "returned a reward that is not a finite number",
                )
            rewards.append(float(value))
        return rewards

    def _error(self, message: str, kind: str) -> RewardFunctionError:
        """The error `message` says, of the `kind` that says the same without the sample."""
        name = f"reward function '{self.name}'"
        return RewardFunctionError(f"{name} {message}", kind=f"{name} {kind}")


def _batch(prompts: list[PromptExample], first: int) -> str:
    """The samples `first` .. `first + len(prompts) - 1` of a step, for one-line errors."""
    if len(prompts) == 1:
        return describe_sample(first, prompts[0].prompt)
    last = first + len(prompts) - 1
    return f"samples {first}-{last} (first: {excerpt(prompts[0].prompt)})"


def _type_name(error: BaseException) -> str:
    """The type of what the function raised (`sys.exit()`'s SystemExit, not `EscapedCall`)."""
    return type(error.error if isinstance(error, EscapedCall) else error).__name__


def _describe(value: Any) -> str:
    """`str 'high'`, `None`: a returned value, short and on one line."""
    text = " ".join(repr(value).split())
    text = text if len(text) <= 30 else text[:27] + "..."
    return text if value is None else f"{type(value).__name__} {text}"
