"""The settings every run shares, declared once: each trainer's, the evaluation's and the
pipeline's config inherits `RunConfig`, so `seed=`, `device=` and `force_lr=` mean the same
everywhere."""

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    """Seeds every random choice of the run (data order, prompts, sampling, initialisation)."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ..."""
    max_nonfinite_skips: int = 3
    """Updates with a non-finite loss or gradient skipped, each with a warning, before the run
    stops with exit status 3 (0 = stop at the first)."""
    force_lr: bool = False
    """Train a pretrained model (more than 50M parameters) with a learning rate far above its
    safe range instead of refusing it (docs/pretrained-models.md); `--force-lr` sets it. A job
    made of trainers passes it to every stage."""


RUN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))
"""The keys a job made of trainers passes to each of them from its own."""
