"""The learning-rate guard: a rate that suits the tiny model ruins a pretrained one.

The trainers' defaults (SFT and reward models 1e-3, the policy trainers 1e-4) are tuned for
the 0.8M-parameter model rlhfkit trains from scratch. On a pretrained model they erase in a
few steps what pretraining taught. The rule, documented in docs/pretrained-models.md:

- A model is *pretrained* when its backbone has more than `PRETRAINED_PARAMETERS` (50M)
  parameters. The tiny models rlhfkit builds are far below it (0.8M for the demo, about 1M
  for `rlhfkit models tiny` with its defaults), the published instruction models above it
  (SmolLM2-135M is the smallest common one). A model trained from scratch above 50M is the
  exception that `--force-lr` is for.
- Its learning rate must not exceed the row of `LR_LIMITS` for its size: full fine-tuning
  5e-5 up to 1B parameters and 2e-5 above; LoRA, which trains a low-rank update from zero
  and needs about 10-20x more, 1e-3 and 5e-4. These are the top of the published ranges
  (SFT 1e-5 to 5e-5, DPO 5e-7 to 5e-6, PPO and GRPO 1e-6 to 1e-5), not recommendations.
- A larger rate is refused before the run starts, unless the config sets `force_lr: true`
  (what `--force-lr` does). Each trainer checks its own rates before it loads anything, and a
  job made of trainers checks every stage's against its base model before the first stage
  (`train/lr_guard.py`), so a trainer called from Python is checked as the CLI's is.
"""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.gguf_import import (
    converted_if_cached,
    default_cache_dir,
    gguf_config,
    is_gguf_path,
)
from rlhfkit.models.loading import read_model_config

PRETRAINED_PARAMETERS = 50_000_000


@dataclass(frozen=True)
class LrLimit:
    """The largest learning rate a pretrained model of up to `max_parameters` tolerates."""

    max_parameters: float
    full: float
    """Full fine-tuning: every weight moves."""
    lora: float
    """LoRA (`lora_r` > 0): only the adapters move, from zero."""


# larger models are more fragile: their published fine-tuning rates are lower
LR_LIMITS = (LrLimit(1e9, full=5e-5, lora=1e-3), LrLimit(math.inf, full=2e-5, lora=5e-4))

SUGGESTED = {
    False: "1e-5 to 5e-5 for SFT and reward models, 5e-7 to 5e-6 for DPO, 1e-6 to 1e-5 for "
    "PPO and GRPO",
    True: "1e-4 to 5e-4 with LoRA",
}


def backbone_parameters(path: str | Path) -> int:
    """Parameters of the model at `path` without its output head, counted from its config
    alone (built on the meta device: no weights read, no memory taken); a `.gguf` file's from
    its metadata, so a refused rate is refused before the file is converted (from the converted
    directory once a run has converted it: reading the metadata takes seconds)."""
    if is_gguf_path(path):
        converted = converted_if_cached(path, default_cache_dir(os.environ))
        config = read_model_config(converted) if converted else gguf_config(path)
    else:
        config = read_model_config(path)
    with torch.device("meta"):
        backbone = AutoModel.from_config(config)
    return sum(p.numel() for p in backbone.parameters())


def lr_limit(parameters: int, lora: bool) -> float | None:
    """The largest sensible learning rate for a model of `parameters`; None for a model small
    enough to be trained from scratch (any rate is the user's business)."""
    if parameters <= PRETRAINED_PARAMETERS:
        return None
    row = next(row for row in LR_LIMITS if parameters <= row.max_parameters)
    return row.lora if lora else row.full


def check_learning_rates(
    model: str | Path, rates: Mapping[str, tuple[float, int]], *, force: bool = False
) -> None:
    """Refuse each rate of `rates` that is far too large for the pretrained model at `model`.

    Args:
        model: what the rates train (a model directory or a `.gguf` file; empty = none, nothing
            to check); its size is read once.
        rates: config key -> (learning rate, LoRA rank of what it trains; 0 = full fine-tuning),
            e.g. {"lr": (1e-3, 0), "critic_lr": (1e-4, 0)}; the error names the key.
        force: skip the check (the config key `force_lr`, set by `--force-lr`).

    Raises:
        RlhfkitError: one line naming the key, the model, its size, the limit, the suggested
            range and both ways to override.
    """
    if force or not model or not rates:
        return  # forced, or no model given (a job's tiny default, built later)
    try:
        parameters = backbone_parameters(model)
    except RlhfkitError:
        return  # an unreadable model is the trainer's to report, after its own config checks
    for key, (lr, lora_r) in rates.items():
        limit = lr_limit(parameters, lora=lora_r > 0)
        if limit is None or lr <= limit:
            continue
        how = f"LoRA r={lora_r}" if lora_r > 0 else "full fine-tuning"
        raise RlhfkitError(
            f"{key}={lr:g} is far too large for {model}, a pretrained model of "
            f"{parameters / 1e6:.0f}M parameters ({how}: at most {limit:g}); it would unlearn "
            f"what the model knows within a few steps. Use {SUGGESTED[lora_r > 0]} "
            "(docs/pretrained-models.md), or pass --force-lr (the config key force_lr=true) to "
            "train with it anyway"
        )
