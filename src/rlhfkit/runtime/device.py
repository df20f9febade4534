"""Where the work runs and in which precision."""

import contextlib
from enum import Enum

import torch

from rlhfkit.errors import RlhfkitError


class Precision(str, Enum):
    FP32 = "fp32"
    """Everything in float32."""
    BF16 = "bf16"
    """bf16 autocast for the forward passes, float32 master weights and optimizer state."""


def resolve_device(name: str) -> torch.device:
    """`auto` = the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RlhfkitError(
            f"device {name!r} is not a device (auto, cpu, cuda, cuda:1, ...)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RlhfkitError(f"device '{name}' was asked for, but no CUDA device is available")
    return device


def autocast(device: torch.device, precision: Precision):
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    if precision == Precision.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def move_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
