"""Building a reward source from a short spec string.

The spec language:

    task                      the built-in verifier of the run's task (outcome reward, RLVR)
    process                   the task's verified step rewards plus its outcome reward (arith)
    model:PATH                a saved reward model directory (ensemble heads included)
    path/to/file.py:function  a user reward function (see `rewards.function`)
    python:MODULE.NAME        a function object given to `rlhfkit.run` (`rewards.python_functions`)
    0.7*model:PATH + 0.3*task a weighted sum of any of the above; a term without a weight
                              counts once (`task + 0.1*file.py:brevity`)

Each source is named by its term as written (`model:runs/rm`), which keys its metrics; paths
inside a sum cannot contain `+` (it separates the terms).
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.fused_layers import use_fastest_kernels
from rlhfkit.models.loading import load_tokenizer, read_model_config
from rlhfkit.models.reward import RewardModel, check_outcome_reward_model, is_reward_model
from rlhfkit.rewards.base import RewardSource
from rlhfkit.rewards.combined import WeightedSum
from rlhfkit.rewards.function import FunctionReward, load_reward_function
from rlhfkit.rewards.python_functions import is_python_term, python_function
from rlhfkit.rewards.reward_model import RewardModelSource
from rlhfkit.rewards.task import ProcessReward, TaskReward
from rlhfkit.runtime.device import Precision
from rlhfkit.tasks.registry import get_task

FUNCTION_TERM = re.compile(r".+\.py:[A-Za-z_]\w*")
WEIGHTED_TERM = re.compile(r"(?P<weight>[^*]+)\*(?P<source>.+)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


# a weight cut at the '+' of its exponent (`1e+2*task`): that '+' does not separate terms
EXPONENT_CUT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)[eE]")


def split_terms(spec: str) -> list[str]:
    """The terms of a spec, split at each '+' but those of a weight's exponent."""
    terms: list[str] = []
    for piece in spec.split("+"):
        if terms and EXPONENT_CUT.fullmatch(terms[-1]):
            terms[-1] += "+" + piece
        else:
            terms.append(piece)
    return terms


def parse_spec(spec: str) -> list[tuple[str, float | None]]:
    """`"0.7*model:rm + task"` -> `[("model:rm", 0.7), ("task", None)]` (None = no weight)."""
    terms = []
    for raw in split_terms(spec):
        term = raw.strip()
        if not term:
            raise RlhfkitError(f"reward spec '{spec}': empty term; expected {ACCEPTED}")
        match = WEIGHTED_TERM.fullmatch(term)
        if match is None:
            terms.append((term, None))
            continue
        try:
            weight = float(match["weight"])
        except ValueError:
            hint = " (terms are joined by '+': write 'a + -0.1*b' for a - 0.1*b)"
            raise RlhfkitError(
                f"reward spec '{spec}': weight '{match['weight'].strip()}' is not a number"
                + (hint if "-" in match["weight"] else "")
            ) from None
        if not math.isfinite(weight):
            # a NaN or infinite weight makes every reward NaN/inf: skipped updates, 0% win rates
            raise RlhfkitError(
                f"reward spec '{spec}': weight '{match['weight'].strip()}' is not a finite number"
            )
        terms.append((match["source"].strip(), weight))
    return terms


def check_spec(spec: str, *, uncertainty_coef: float = 0.0) -> None:
    """A one-line error, before anything loads, when a term of `spec` names no reward source
    or one that cannot be built (each kind's `check`: a reward function's missing file, a
    Python function not given in this process), or when `uncertainty_coef` would penalise the
    spread of a reward-model ensemble and `spec` has no reward model (it would do nothing)."""
    terms = parse_spec(spec)
    for term, _ in terms:
        source_kind(term).check(term)
    if uncertainty_coef > 0 and not any(term.startswith("model:") for term, _ in terms):
        raise ConfigError(
            f"reward_uncertainty_coef={uncertainty_coef} penalises the spread of a reward-model "
            f"ensemble, and reward '{spec}' has no reward model: set it to 0"
        )


def build_reward_source(
    spec: str,
    *,
    task_name: str | None,
    tokenizer,
    device: torch.device | str,
    batch_size: int,
    max_length: int,
    uncertainty_coef: float,
    timeout_s: float | None,
    first_call_timeout_s: float | None = None,
    precision: Precision = Precision.FP32,
    place_model: Callable[[nn.Module], nn.Module] | None = None,
    length_setting: str = "reward_max_length",
    warn_cut: bool = True,
) -> RewardSource:
    """The reward source a spec names (see the module docstring for the spec language).

    Args:
        spec: e.g. `"task"`, `"model:runs/rm/final"`, `"0.7*model:runs/rm/final + 0.3*task"`.
        task_name: the run's built-in task, for `task` and `process`; None when it has none.
        tokenizer: used for a reward model saved without its own tokenizer.
        device: where a reward model runs.
        batch_size: sequences per reward-model forward pass.
        max_length: tokens per sequence a reward model reads (as in its training).
        uncertainty_coef: ensemble std penalty of a reward model (0 = off).
        timeout_s: the longest one call of a reward function may take; None = no limit.
        first_call_timeout_s: the limit of a reward function's calls until one has returned,
            when longer (None = timeout_s, inf = no limit): the first call may load a model.
        precision: the run's; a reward model scores in it (bf16: under autocast).
        place_model: applied to each reward model once loaded on `device` (under torchrun with
            `frozen_models=sharded`: sharding it, `runtime.distributed.place_frozen`).
        length_setting: the setting `max_length` comes from, named when a reward model's
            samples are cut to fit it.
        warn_cut: whether a reward model warns about the samples each call cuts
            (`RewardModelSource`); False where the caller counts them over a whole step.
    """
    terms = parse_spec(spec)
    build = dict(
        task_name=task_name,
        tokenizer=tokenizer,
        device=device,
        batch_size=batch_size,
        max_length=max_length,
        uncertainty_coef=uncertainty_coef,
        timeout_s=timeout_s,
        first_call_timeout_s=first_call_timeout_s,
        precision=precision,
        place_model=place_model,
        length_setting=length_setting,
        warn_cut=warn_cut,
    )
    if len(terms) == 1 and terms[0][1] is None:
        return build_term(terms[0][0], **build)
    parts = [
        (build_term(term, **build), 1.0 if weight is None else weight) for term, weight in terms
    ]
    return WeightedSum(
        parts, name=" + ".join(f"{w:g}*{t}" if w is not None else t for t, w in terms)
    )


def build_term(term: str, **build) -> RewardSource:
    """One source of a spec, named by the term itself; `build`: `build_reward_source`'s
    settings."""
    return source_kind(term).build(term, **build)


@dataclass(frozen=True)
class SourceKind:
    """One kind of term of the spec language: how it is written, which terms it takes, what is
    checked before anything loads, and how the source is built."""

    form: str
    matches: Callable[[str], bool]
    check: Callable[[str], None]
    build: Callable[..., RewardSource]


def _task_source(term: str, *, task_name, **_) -> RewardSource:
    if task_name is None:
        raise RlhfkitError(f"reward source '{term}' needs a built-in task, and the run has none")
    task = get_task(task_name)
    return TaskReward(task, name=term) if term == "task" else ProcessReward(task, name=term)


def _model_source(term: str, *, timeout_s, first_call_timeout_s=None, task_name=None, **model):
    return load_reward_model_source(term[len("model:") :], name=term, **model)


def _function_source(term: str, *, timeout_s, first_call_timeout_s=None, **_) -> RewardSource:
    fn = python_function(term) if is_python_term(term) else load_reward_function(term)
    return FunctionReward(
        fn, name=term, timeout_s=timeout_s, first_call_timeout_s=first_call_timeout_s
    )


def _check_function_file(term: str) -> None:
    path = Path(term.rpartition(":")[0])
    if not path.is_file():
        raise RlhfkitError(f"reward function '{term}': no file {path}")


def _nothing_to_check(term: str) -> None:
    pass


# in order: the first kind that matches a term takes it (`model:dir/r.py:f` is a model path)
KINDS = (
    SourceKind("task", lambda t: t == "task", _nothing_to_check, _task_source),
    SourceKind("process", lambda t: t == "process", _nothing_to_check, _task_source),
    SourceKind("model:PATH", lambda t: t.startswith("model:"), _nothing_to_check, _model_source),
    SourceKind("python:NAME", is_python_term, python_function, _function_source),
    SourceKind(
        "path/to/file.py:function",
        lambda t: FUNCTION_TERM.fullmatch(t) is not None,
        _check_function_file,
        _function_source,
    ),
)
ACCEPTED = (
    ", ".join(k.form for k in KINDS if k.form != "python:NAME")
    + ", or a weighted sum like '0.7*model:PATH + 0.3*task' (from Python also a function object)"
)


def source_kind(term: str) -> SourceKind:
    """The kind of source a term names, or a one-line error listing the kinds."""
    for kind in KINDS:
        if kind.matches(term):
            return kind
    raise RlhfkitError(f"unknown reward source '{term}': expected {ACCEPTED}")


def load_reward_model_source(
    path: str,
    *,
    tokenizer,
    device,
    batch_size: int,
    max_length: int,
    uncertainty_coef: float,
    name: str,
    precision: Precision = Precision.FP32,
    place_model: Callable[[nn.Module], nn.Module] | None = None,
    length_setting: str = "reward_max_length",
    warn_cut: bool = True,
) -> RewardModelSource:
    """A saved reward model, with every head it was trained with, on `device` (then given to
    `place_model`, when one is given)."""
    if not (Path(path) / "config.json").is_file():
        raise RlhfkitError(
            f"reward source '{name}': {path} is not a saved model directory (no config.json)"
        )
    config = read_model_config(path)
    if not is_reward_model(config):
        # Loading a causal LM here would bolt on a new, untrained head: random rewards.
        found = ", ".join(config.architectures or []) or "none"
        raise RlhfkitError(
            f"reward source '{name}': {path} is not a trained reward model (architectures: {found})"
        )
    check_outcome_reward_model(path, config, f"reward source '{name}'")
    model = RewardModel.from_pretrained(path, num_heads=config.num_labels).to(torch.device(device))
    use_fastest_kernels(model.model, torch.device(device), precision)
    if place_model is not None:
        model = place_model(model)
    # The tokenizer saved with the reward model is the one its training data went through.
    if any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(path)
    elif tokenizer is None:
        raise RlhfkitError(f"reward source '{name}': {path} has no tokenizer and none was given")
    return RewardModelSource(
        model,
        tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        uncertainty_coef=uncertainty_coef,
        name=name,
        precision=precision,
        length_setting=length_setting,
        warn_cut=warn_cut,
    )
