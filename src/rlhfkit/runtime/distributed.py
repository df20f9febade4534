"""Data-parallel training under torchrun with FSDP2: one process per device, each holding a shard
of the weights, gradients and optimizer state.

`torchrun --nproc_per_node N -m rlhfkit COMMAND ...` sets WORLD_SIZE, RANK and LOCAL_RANK; the
entry point reads them (`launch_from_env`) and starts the process group (`init_distributed`);
trainers ask `current_ranks()`. A single process (no torchrun) has no process group, and every
helper here leaves it on today's path: no wrapping, no communication.

Why a 2-process step gives the 1-process gradient of the same global batch:
- Each rank takes a contiguous share of every global micro-batch after the seeded selection
  (`rank_shares`), so the global order does not depend on N.
- Every loss divides by its count over the global batch (tokens, groups), so the ranks' losses
  add up to the one-process loss, and so do their gradients.
- FSDP2 averages gradients over the ranks by default (its reduce-scatter uses ReduceOp.AVG, a
  division by N). `shard_model` sets the divide factor to 1 with sum-only reductions, so the
  reduced gradient is the plain sum of the ranks' gradients, which is the one-process gradient.

Frozen models (a reference, a reward model) are whole on every rank, or with
`FrozenModels.SHARDED` sharded like the policy and gathered only around their own passes
(`gathered`).
"""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from rlhfkit.errors import RlhfkitError
from rlhfkit.runtime.device import Precision

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """What torchrun tells a process about the job it belongs to."""

    rank: int
    world_size: int
    local_rank: int


def launch_from_env(env: Mapping[str, str]) -> Launch | None:
    """The torchrun launch described by `env` (WORLD_SIZE, RANK, LOCAL_RANK), or None for a
    plain single process."""
    if "WORLD_SIZE" not in env:
        return None
    try:
        launch = Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise RlhfkitError(
            "WORLD_SIZE is set but RANK / LOCAL_RANK are missing or not integers: start "
            "multi-process runs with torchrun"
        ) from None
    if not 0 <= launch.rank < launch.world_size:
        raise RlhfkitError(f"RANK={launch.rank} is outside WORLD_SIZE={launch.world_size}")
    return launch


def init_distributed(launch: Launch) -> None:
    """Start the process group: NCCL with one CUDA device per local rank where CUDA exists,
    gloo on CPUs."""
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank)  # `device=cuda` now means this rank's device
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def wait_for_every_rank() -> None:
    """After a successful run, before `close_distributed`: the ranks leave together, none
    tearing down its connections while another still works (rank 0 writing the final model).
    It does not stop every abort at exit: with it, a 2-rank test's rank still ended with
    SIGABRT in interpreter teardown about once in 5-30 runs, after its files were written (the
    test ranks therefore exit directly). Not on failure: a rank that raised must not wait for
    ranks that may never arrive."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job; the defaults are a single process."""

    rank: int = 0
    world_size: int = 1
    sharded: bool = False
    """True under torchrun (even with N = 1): the models are wrapped with FSDP2."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes files."""
        return self.rank == 0


def current_ranks() -> Ranks:
    """This process's place in the started process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), sharded=True)
    return Ranks()


@dataclass(frozen=True)
class Share:
    """This rank's rows of one global micro-batch."""

    rows: list[int]
    stand_in: bool = False
    """True: the rank has no row in the whole step; `rows` holds one row of the batch, whose
    loss the trainer multiplies by zero, so the rank still runs a forward and backward and
    takes part in the step's collectives."""


def rank_slice(count: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous part of `count` items: the first count % N ranks take one more."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def rank_shares(micro_rows: list[list[int]], ranks: Ranks) -> list[Share]:
    """This rank's non-empty shares of a step's global micro-batches (one process: all of
    them, whole); a stand-in share when the rank has none (`Share.stand_in`)."""
    shares = [
        Share(rows[rank_slice(len(rows), ranks.rank, ranks.world_size)]) for rows in micro_rows
    ]
    shares = [share for share in shares if share.rows]
    return shares or [Share(micro_rows[0][:1], stand_in=True)]


def device_mesh(device: torch.device, ranks: Ranks):
    """The 1-D data-parallel mesh over all ranks, on `device`'s type. Always passed to
    `fully_shard` explicitly: without it FSDP2 builds a mesh on the default accelerator and
    moves CPU weights to CUDA on a machine that has one (pytorch#132471)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (ranks.world_size,))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face model (or of one held inside a wrapper such as
    the reward model): the module classes its `_no_split_modules` names."""
    names = {
        name
        for module in model.modules()
        for name in (getattr(module, "_no_split_modules", None) or [])
    }
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise RlhfkitError(
            f"{type(model).__name__}: no decoder layers found to shard (the model names none in "
            "_no_split_modules)"
        )
    return layers


def shard_model(model: nn.Module, mesh, precision: Precision) -> nn.Module:
    """Wrap `model` with FSDP2: `fully_shard` on each decoder layer, then on the root.

    With bf16, parameters are gathered in bf16 and gradients reduced in fp32; the sharded master
    weights and the optimizer state stay fp32. Gradients are summed over the ranks, not averaged
    (module docstring). Parameters stay gathered from a step's first forward to its last
    backward (`reshard_after_forward=False`, and `gradient_passes`): the collectives of a step
    then do not depend on how many passes each rank's data takes, at the cost of holding the
    whole model's parameters and gradients during the step (the optimizer state stays sharded).
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == Precision.BF16
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):  # per module: the setter is not recursive
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


class FrozenModels(str, Enum):
    """How a run holds its frozen models (the reference, a reward model) under torchrun. In a
    single process every model is whole and the setting changes nothing (`sharded` is accepted
    and ignored), so one config runs alike on one process and under torchrun."""

    REPLICATED = "replicated"
    """A whole copy on every rank: no communication, the model's full size on each."""
    SHARDED = "sharded"
    """Sharded like the policy (`shard_model`, the same mesh): 1/N of the weights on each rank
    between its passes, gathered whole around them (`gathered`), at the cost of one all-gather
    per use."""


def place_frozen(
    model: nn.Module, frozen_models: FrozenModels, mesh, precision: Precision
) -> nn.Module:
    """A frozen model as the run holds it: sharded over `mesh` with `frozen_models=sharded`,
    else whole (`mesh` None: a single process, where the setting changes nothing)."""
    if mesh is None or FrozenModels(frozen_models) is FrozenModels.REPLICATED:
        return model
    return shard_model(model, mesh, precision)


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Around passes without gradient through a sharded model (a frozen reference or reward
    model, or the policy read as a reference): its parameters gathered once on entering, by the
    same collectives on every rank, so that each rank then runs as many passes as its rows need
    (maybe none) without communication; on leaving, the whole copies are freed again (a local
    operation), unless they were gathered already on entering (the policy, gathered for its
    sampling and its step, stays so). Any other model is left alone."""
    modules = _fsdp_modules(model)
    if not modules or not _holds_shards(model):
        yield
        return
    gather_parameters(model)
    try:
        yield
    finally:
        _reshard(modules)


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def _holds_shards(model: nn.Module) -> bool:
    """Whether a sharded model's parameters are shards now (not gathered)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def _reshard(modules: list[nn.Module]) -> None:
    """Free the gathered parameters of every FSDP module (per module: not recursive)."""
    for module in modules:
        module.reshard()


def gradient_passes(model: nn.Module, passes: Iterable[T]) -> Iterator[T]:
    """Yield the forward/backward passes of one optimizer step, then reduce the gradients once
    (`one_reduction`)."""
    with one_reduction(model):
        yield from passes


@contextmanager
def one_reduction(model: nn.Module) -> Iterator[None]:
    """Around the forward/backward passes of one optimizer step: reduce their gradients once.

    A sharded model accumulates each pass's gradients locally, with its parameters kept
    gathered; on leaving, every rank runs one zero-weight pass on a single token, whose
    backward reduce-scatters the accumulated gradients. The reduction so happens in the same
    backward on every rank, whatever number of passes (length chunks, shared-prompt forwards,
    none at all) each rank's data took: FSDP2 reduces in each module's post-backward hook,
    which fires once per forward of the module, so reducing in a data-dependent backward would
    give the ranks different sequences of collectives. Any other model is left alone."""
    modules = _fsdp_modules(model)
    if not modules:
        yield
        return
    _set_sync(modules, False)
    gather_parameters(model)
    yield
    _set_sync(modules, True)
    (_first_tensor(_probe(model)).sum() * 0.0).backward()


def gather_parameters(model: nn.Module) -> None:
    """Gather every shard of a sharded model now, in the same order on every rank (a no-op for
    any other model). They stay gathered until a step's reduction: callers that run parts of the
    model without its root `forward` (the reward model's shared-prompt path runs the backbone
    and the head itself) then find whole parameters, and the step's collectives do not depend
    on the path the data takes."""
    if _fsdp_modules(model):
        with torch.no_grad():  # a root forward: FSDP2 sets itself up on the first one
            _probe(model)


def _probe(model: nn.Module):
    """The model's output for one token: a forward every rank runs alike."""
    token = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
    return model(input_ids=token, attention_mask=torch.ones_like(token))


def _first_tensor(output) -> torch.Tensor:
    """The first tensor of a model's output (a Hugging Face `ModelOutput` or a dataclass)."""
    values = output.values() if hasattr(output, "values") else vars(output).values()
    return next(value for value in values if isinstance(value, torch.Tensor))


def _set_sync(modules: list[nn.Module], sync: bool) -> None:
    for module in modules:
        module.set_requires_gradient_sync(sync, recurse=False)
        module.set_reshard_after_backward(sync, recurse=False)


def reduce_sums(values: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """`values` summed over the ranks (one all-reduce); unchanged in a single process. For
    loss denominators, and for metrics each rank holds as its share of the global value."""
    if not ranks.sharded or not values:
        return dict(values)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(values, tensor.tolist()))


def full_state_dict(model: nn.Module, ranks: Ranks) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0's CPU (every rank must call it: it gathers the
    shards); None on the other ranks. One process: None, the model itself holds them."""
    if not ranks.sharded:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    _reshard(_fsdp_modules(model))  # an evaluation may have left parameters gathered
    state = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    # a tied weight (the LM head sharing the embedding) comes back under both names, as two
    # copies; written once, as one process writes it
    tied = (
        dict(model.named_parameters(remove_duplicate=False)).keys()
        - dict(model.named_parameters()).keys()
    )
    return {k: v for k, v in state.items() if k not in tied} if ranks.is_main else None


def refuse_unsupported(ranks: Ranks, settings: dict[str, bool]) -> None:
    """Under torchrun, one error naming every setting in `settings` that is on (True): what the
    sharded path does not do yet. A single process accepts them all."""
    named = [name for name, on in settings.items() if on]
    if ranks.sharded and named:
        raise RlhfkitError(
            f"not supported under torchrun yet: {', '.join(named)} (see docs/scaling.md)"
        )


def gather_objects(value: T, ranks: Ranks) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order, on every rank; `[value]` in
    a single process. For the small per-row results (rewards, lengths) and statistics a step
    reports over all ranks."""
    if not ranks.sharded:
        return [value]
    out = [None] * ranks.world_size
    dist.all_gather_object(out, value)
    return out


def broadcast_from_main(value, ranks: Ranks):
    """Rank 0's `value` on every rank (any picklable object); unchanged in a single process."""
    if not ranks.sharded:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
