"""Run a function on N gloo processes on this machine, as torchrun would start them; and the
comparison every trainer's 2-rank test makes with one process: the two compute the same numbers
along two float paths (each rank samples its share of a step's rows, in other batch shapes;
gradients are summed in another order), compared up to a step whose samples part at a near-tie
(`tests.rollout.recorded_draws`)."""

import faulthandler
import os
import pickle
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Hashable
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from rlhfkit.runtime import distributed
from rlhfkit.runtime.distributed import (
    close_distributed,
    current_ranks,
    init_distributed,
    launch_from_env,
    wait_for_every_rank,
)
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from tests.rollout.recorded_draws import (
    Sampled,
    first_apart,
    recording_draws,
    step_being_run,
    steps_before,
)

TOLERANCE = 1e-5
RESUME_WARNING = "not bitwise"  # what a run resumed on another number of processes says


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a test's `torchrun` job: one thread per rank, and torchrun's own
    temporary directories (torchelastic_*) kept in the test's directory, not left in /tmp."""
    scratch = tmp_path / "torchrun-tmp"
    scratch.mkdir(exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}


def _rank_main(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    faulthandler.enable(all_threads=True)  # a rank that aborts shows where, not only its signal
    torch.set_num_threads(1)  # one thread per process, as the single-process reference
    init_distributed(launch_from_env(os.environ))
    try:
        result = fn(*args)
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(result))
        wait_for_every_rank()
    finally:
        close_distributed()
    # Done, the result handed over: leave without the interpreter's teardown. A rank was seen to
    # abort there now and then ('terminate called without an active exception', no Python frame
    # left: a C++ thread still joinable at exit), after every file was written; that is torch's
    # shutdown, not the trainer's result, and it failed runs that had finished.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_on_ranks(world_size: int, fn: Callable, *args):
    """`fn(*args)` in `world_size` spawned processes joined in a gloo process group; returns
    rank 0's result. `fn` must be importable (a module-level function)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pkl")
        mp.start_processes(
            _rank_main,
            args=(world_size, free_port(), fn, args, out),
            nprocs=world_size,
            start_method="spawn",
        )
        return pickle.loads(Path(out).read_bytes())


def close(a: float, b: float) -> bool:
    """Equal to 1e-5, relative to values past 1: the ranks sum a gradient's squares (the clipping
    norm) in another order, and after two AdamW updates a loss of 5.6 was measured 1.2e-5 apart."""
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a))


def max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def on_every_rank(calls: list[Sampled]) -> list[Sampled]:
    """On rank 0, its calls with every rank's share of the batches drawn in shares joined in
    (each rank drew its shares in the same order), tagged where rank 0 was."""
    shares = [None] * dist.get_world_size()
    dist.all_gather_object(shares, calls)
    main, others = shares[0], [list(reversed(share)) for share in shares[1:]]
    joined = []
    for call in main:
        parts = [call]
        while sum(len(part.rows) for part in parts) < call.total:
            parts.append(others[len(parts) - 1].pop())
        # the shares are consecutive runs of the batch's rows, in rank order
        assert [part.first for part in parts] == [
            sum(len(part.rows) for part in parts[:k]) for k in range(len(parts))
        ]
        rows = [row for part in parts for row in part.rows]
        joined.append(Sampled(call.where, 0, call.total, rows))
    assert not any(others), "every rank's shares belong to batches rank 0 drew from"
    return joined


def recorded_run(fn: Callable, where: Callable[[], Hashable], *args):
    """For `run_on_ranks`: `fn(*args)` on every rank, and what the ranks sampled meanwhile
    (`recording_draws` tagged `where()`, joined on rank 0 by `on_every_rank`)."""
    with recording_draws(where) as sampled:
        result = fn(*args)
    return result, on_every_rank(sampled)


def train_in_run(train: Callable, cfg, root: str) -> list[float]:
    return train(cfg, RunDir(Path(root))).train_losses


def one_process_and_two_ranks(
    train: Callable, cfg, tmp_path: Path, policy_keys: tuple[str, ...] | None = None
) -> tuple[RunDir, RunDir]:
    """`train(cfg, run)` in this process and on 2 ranks (3 steps each); asserts that the losses
    of every step and the final weights agree, and returns both runs for further checks. A
    policy trainer's runs are compared up to the first step whose samples differ, at a near-tie
    (`first_apart`), and the final weights only where none did; with `policy_keys`, their
    metrics too (`_assert_same_policy_steps`)."""
    one = prepare_run_dir(tmp_path / "one", resume=False, overwrite=False)
    with recording_draws(step_being_run(one), near_ties=True) as sampled_one:
        losses_one = train(cfg, one).train_losses
    two = prepare_run_dir(tmp_path / "two", resume=False, overwrite=False)
    losses_two, sampled_two = run_on_ranks(
        2, recorded_run, train_in_run, step_being_run(two), train, cfg, str(two.root)
    )
    assert len(losses_two) == len(losses_one) == 3
    # (the final evaluation samples after the last step's update: it counts in that step)
    agree = steps_before(first_apart(sampled_one, sampled_two), 1, 3)
    assert all(close(a, b) for a, b in zip(losses_one[:agree], losses_two[:agree]))
    if agree == len(losses_one):
        weights_one = load_file(one.final / "model.safetensors")
        weights_two = load_file(two.final / "model.safetensors")
        assert max_weight_difference(weights_one, weights_two) < TOLERANCE
    if policy_keys is not None:
        _assert_same_policy_steps(one, two, policy_keys, agree)
    return one, two


def history_losses(train: Callable, cfg, run: RunDir, resume: bool = False) -> SimpleNamespace:
    """A policy trainer's `train(cfg, run)` with each step's logged loss as `train_losses`, as
    `one_process_and_two_ranks` reads it (pass `functools.partial(history_losses, train)`)."""
    result = train(cfg, run, resume=resume)
    return SimpleNamespace(train_losses=[row["loss"] for row in result.history])


def sharding_frozen(train: Callable, expected: list[str], cfg, run: RunDir, resume: bool = False):
    """`train(cfg, run)`, asserting that under torchrun it shards exactly the frozen models of
    the classes `expected` (in order), and none in one process: a run with
    `frozen_models=sharded` that left them whole would pass the comparison with one process.
    The models `place_frozen` shards go through `runtime.distributed.shard_model`, which is
    watched here (the trainers shard their trained models through their own imported name)."""
    sharded, shard_model = [], distributed.shard_model

    def watched(model, mesh, precision):
        sharded.append(type(model).__name__)
        return shard_model(model, mesh, precision)

    distributed.shard_model = watched
    try:
        result = train(cfg, run, resume=resume)
    finally:
        distributed.shard_model = shard_model
    assert sharded == (expected if current_ranks().sharded else []), sharded
    return result


def small_policy_run(model_dir: Path, reward: str) -> dict:
    """The shared settings of a policy trainer's 2-rank test: the tiny model on the arith task's
    prompts, scored by `reward`, 3 steps of short responses, evaluated after the last."""
    return dict(
        model=str(model_dir),
        task="arith",
        reward=reward,
        train_prompts=32,
        eval_prompts=4,
        max_new_tokens=10,
        eval_max_new_tokens=6,
        max_steps=3,
        lr=1e-3,
        warmup_steps=1,
        eval_every=3,
        save_every=0,
        progress=False,
        tensorboard=False,
    )


def _assert_same_policy_steps(one: RunDir, two: RunDir, keys: tuple[str, ...], agree: int):
    """The metrics of a policy trainer's run on one process and on 2 ranks: rank 0 alone wrote
    them; the same sampled tokens (as many, and the same `keys`: rewards, KL, ...) and gradient
    norms at each of the first `agree` steps (those before a step whose samples differ at a
    near-tie), and, when that is every step, the same final evaluation."""
    (start_one, *rows_one), (start_two, *rows_two) = (
        read_metrics(one.metrics_path),
        read_metrics(two.metrics_path),
    )
    assert [row["step"] for row in rows_two] == [1, 2, 3]
    # step 0: the starting policy's evaluation, before any sample of the run
    assert start_one["step"] == start_two["step"] == 0
    assert close(start_one["eval_accuracy"], start_two["eval_accuracy"])
    for a, b in zip(rows_one[:agree], rows_two[:agree]):
        assert a["response_tokens"] == b["response_tokens"]
        for key in keys:
            assert close(a[key], b[key]), key
        # the ranks sum a gradient's squares in another order
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"]
    if agree == len(rows_one):
        assert close(rows_one[-1]["eval_accuracy"], rows_two[-1]["eval_accuracy"])


def _whole_then_resumed(train, cfg, whole: str, stopped: str, single: str):
    """On every rank: the whole run; a copy of it stopped after its checkpoint (rank 0 copies),
    resumed; and a single process's run stopped likewise, resumed here. Losses of each, and
    what the whole run and the resumed single process's run sampled."""
    with recording_draws(step_being_run(RunDir(Path(whole)))) as sampled_whole:
        losses = [train(cfg, RunDir(Path(whole))).train_losses]
    if dist.get_rank() == 0:
        shutil.copytree(whole, stopped, ignore=shutil.ignore_patterns("final"))
    dist.barrier()
    losses.append(train(cfg, RunDir(Path(stopped)), resume=True).train_losses)
    with recording_draws(step_being_run(RunDir(Path(single)))) as sampled_single:
        losses.append(train(cfg, RunDir(Path(single)), resume=True).train_losses)
    return losses, on_every_rank(sampled_whole), on_every_rank(sampled_single)


_SAMPLED_ON_TWO: dict[Path, list[Sampled]] = {}
"""The 2-process run of `resumes_on_two_processes` (its root) -> what it sampled."""


def resumes_on_two_processes(train, cfg, tmp_path: Path) -> tuple[RunDir, list[float]]:
    """A 2-process run resumed from its checkpoint equals the whole run bitwise; a single
    process's run resumed on 2 processes ends within 1e-5 of its uninterrupted end (up to a step
    whose samples differ at a near-tie, `first_apart`). Returns the whole 2-process run and its
    losses."""
    single = prepare_run_dir(tmp_path / "single", resume=False, overwrite=False)
    with recording_draws(step_being_run(single), near_ties=True) as sampled_single:
        single_losses = train(cfg, single).train_losses
    single_on_two = stopped_copy(single, tmp_path / "single_on_two")
    whole = prepare_run_dir(tmp_path / "whole", resume=False, overwrite=False)
    (whole_losses, resumed_losses, from_single), sampled_whole, sampled_on_two = run_on_ranks(
        2,
        _whole_then_resumed,
        train,
        cfg,
        str(whole.root),
        str(tmp_path / "resumed"),
        str(single_on_two.root),
    )
    assert resumed_losses == whole_losses[2:]
    _bitwise_equal_runs(whole.root, tmp_path / "resumed")
    _SAMPLED_ON_TWO[whole.root] = sampled_whole
    # resumed after step 2: steps 3 on sample from one process's weights, in each rank's share
    assert len(from_single) == len(single_losses) - 2
    apart = first_apart(sampled_single, sampled_on_two, after=2)
    agree = steps_before(apart, 3, len(from_single))
    assert all(close(a, b) for a, b in zip(from_single[:agree], single_losses[2 : 2 + agree]))
    if agree == len(from_single):
        ends = [load_file(run.final / "model.safetensors") for run in (single, single_on_two)]
        assert max_weight_difference(*ends) < TOLERANCE
    return whole, whole_losses


def resumed_by_one_process(train: Callable, cfg, whole: RunDir, to: Path) -> tuple[list, int]:
    """`whole` (a 2-process run of `resumes_on_two_processes`, checkpointed after step 2)
    resumed by this process from a copy at `to`: its losses of steps 3 on, and how many of them
    come before a step whose samples differ from the 2-process run's at a near-tie."""
    run = stopped_copy(whole, to)
    with recording_draws(step_being_run(run), near_ties=True) as sampled:
        losses = train(cfg, run, resume=True).train_losses
    apart = first_apart(sampled, _SAMPLED_ON_TWO[whole.root], after=2)
    return losses, steps_before(apart, 3, len(losses))


def stopped_copy(run: RunDir, to: Path) -> RunDir:
    """`run` as it stood after its checkpoint: a copy without the final model."""
    shutil.copytree(run.root, to, ignore=shutil.ignore_patterns("final"))
    return RunDir(to)


def _bitwise_equal_runs(a: Path, b: Path) -> None:
    # (a policy run's step 0 is its starting evaluation, without a loss)
    assert [(r["step"], r.get("loss")) for r in read_metrics(a / "metrics.jsonl")] == [
        (r["step"], r.get("loss")) for r in read_metrics(b / "metrics.jsonl")
    ]
    weights_a, weights_b = (
        load_file(a / "final" / "model.safetensors"),
        load_file(b / "final" / "model.safetensors"),
    )
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
