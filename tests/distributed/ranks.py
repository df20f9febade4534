"""Run a function on N gloo processes on this machine, as torchrun would start them."""

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp

from rlhfkit.runtime.distributed import close_distributed, init_distributed, launch_from_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)  # one thread per process, as the single-process reference
    init_distributed(launch_from_env(os.environ))
    try:
        result = fn(*args)
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(result))
    finally:
        close_distributed()


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
