"""The settings every run shares, declared once: each trainer's, the evaluation's and the
pipeline's config inherits `RunConfig`, so `seed=` and `device=` mean the same everywhere."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    """Seeds every random choice of the run (data order, prompts, sampling, initialisation)."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ..."""
