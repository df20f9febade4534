"""Seed every random number generator, and derive each random stream's seed from the run's."""

import hashlib
import random
from enum import Enum

import numpy as np
import torch

from rlhfkit.errors import RlhfkitError

_MAX_SEED = 2**32 - 1  # numpy's global generator takes 32-bit seeds


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global generator and torch (CPU and every CUDA device)."""
    if not 0 <= seed <= _MAX_SEED:
        raise RlhfkitError(f"seed must be between 0 and {_MAX_SEED}, got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class SeedStream(str, Enum):
    """The independent random streams of a run, each derived from the run's one `seed`."""

    TRAIN_PROMPTS = "train_prompts"
    """Prompts a trainer draws from a task's generator."""
    EVAL_PROMPTS = "eval_prompts"
    """Held-out prompts a trainer or `rlhfkit eval` draws for evaluation."""
    COLLECT = "collect"
    """The main job's collect stage: its prompts and its simulated annotators."""
    REVISIONS = "revisions"
    """Critique-and-revise: the sampled critiques and revisions."""
    ROUND_PROMPTS = "round_prompts"
    """Prompts of one round of an iterative trainer (with the round's index)."""
    ROUND_TRAINERS = "round_trainers"
    """The `seed` of the trainers one round of an iterative trainer runs (with its index)."""
    ROUND_SAMPLING = "round_sampling"
    """The answers one round of an iterative trainer samples for labelling (with its index)."""
    ROUND_REPLAY = "round_replay"
    """Which earlier labels one round replays, and their order (with its index)."""
    CANDIDATES = "candidates"
    """`rlhfkit sample`: the responses sampled for people to rank (with the batch's index)."""


def derive_seed(seed: int, stream: SeedStream, index: int = 0) -> int:
    """A 32-bit seed for one stream of a run: the same for the same (seed, stream, index), and
    unrelated across streams, so no two streams replay each other's draws (an offset added to
    the seed can collide with another stream's offset or with another run's seed)."""
    digest = hashlib.sha256(f"{seed}:{stream.value}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
