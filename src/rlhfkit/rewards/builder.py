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

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.fused_layers import use_fastest_kernels
from rlhfkit.models.loading import load_tokenizer, read_model_config
from rlhfkit.models.reward import RewardModel, is_reward_model
from rlhfkit.rewards.base import RewardSource
from rlhfkit.rewards.combined import WeightedSum
from rlhfkit.rewards.function import FunctionReward, load_reward_function
from rlhfkit.rewards.python_functions import is_python_term, python_function
from rlhfkit.rewards.reward_model import RewardModelSource
from rlhfkit.rewards.task import ProcessReward, TaskReward
from rlhfkit.runtime.device import Precision
from rlhfkit.tasks.registry import get_task

ACCEPTED = (
    "task, process, model:PATH, path/to/file.py:function, "
    "or a weighted sum like '0.7*model:PATH + 0.3*task' (from Python also a function object)"
)
FUNCTION_TERM = re.compile(r".+\.py:[A-Za-z_]\w*")
WEIGHTED_TERM = re.compile(r"(?P<weight>[^*]+)\*(?P<source>.+)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def parse_spec(spec: str) -> list[tuple[str, float | None]]:
    """`"0.7*model:rm + task"` -> `[("model:rm", 0.7), ("task", None)]` (None = no weight)."""
    terms = []
    for raw in spec.split("+"):
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
            raise RlhfkitError(
                f"reward spec '{spec}': weight '{match['weight'].strip()}' is not a number"
            ) from None
        terms.append((match["source"].strip(), weight))
    return terms


def check_spec(spec: str) -> None:
    """A one-line error, before anything loads, when `spec` names no reward source, a reward
    function's file that does not exist, or a Python function not given in this process."""
    for term, _ in parse_spec(spec):
        if is_python_term(term):
            python_function(term)
        elif FUNCTION_TERM.fullmatch(term):
            path = Path(term.rpartition(":")[0])
            if not path.is_file():
                raise RlhfkitError(f"reward function '{term}': no file {path}")
        elif term not in ("task", "process") and not term.startswith("model:"):
            raise RlhfkitError(f"unknown reward source '{term}': expected {ACCEPTED}")


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
    )
    if len(terms) == 1 and terms[0][1] is None:
        return build_term(terms[0][0], **build)
    parts = [
        (build_term(term, **build), 1.0 if weight is None else weight) for term, weight in terms
    ]
    return WeightedSum(
        parts, name=" + ".join(f"{w:g}*{t}" if w is not None else t for t, w in terms)
    )


def build_term(
    term: str,
    *,
    task_name,
    tokenizer,
    device,
    batch_size,
    max_length,
    uncertainty_coef,
    timeout_s,
    first_call_timeout_s=None,
    precision=Precision.FP32,
    place_model=None,
) -> RewardSource:
    """One source of a spec, named by the term itself."""
    if term in ("task", "process"):
        if task_name is None:
            raise RlhfkitError(
                f"reward source '{term}' needs a built-in task, and the run has none"
            )
        task = get_task(task_name)
        return TaskReward(task, name=term) if term == "task" else ProcessReward(task, name=term)
    if term.startswith("model:"):
        return load_reward_model_source(
            term[len("model:") :],
            tokenizer=tokenizer,
            device=device,
            batch_size=batch_size,
            max_length=max_length,
            uncertainty_coef=uncertainty_coef,
            name=term,
            precision=precision,
            place_model=place_model,
        )
    if FUNCTION_TERM.fullmatch(term) or is_python_term(term):
        return FunctionReward(
            python_function(term) if is_python_term(term) else load_reward_function(term),
            name=term,
            timeout_s=timeout_s,
            first_call_timeout_s=first_call_timeout_s,
        )
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
    )
