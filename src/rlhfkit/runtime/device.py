"""Where the work runs and in which precision."""

import contextlib
import functools
import logging
from enum import Enum
from pathlib import Path

import torch

from rlhfkit.errors import RlhfkitError

log = logging.getLogger(__name__)


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
    if device.type != "cpu":
        # torch would fail at the first `.to(device)`, deep inside a model, with a traceback
        present = (
            torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        )
        label = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}.get(device.type, device.type)
        if present is None or present.type != device.type:
            raise RlhfkitError(f"device '{name}' was asked for, but no {label} device is available")
        count = torch.accelerator.device_count()
        if device.index is not None and device.index >= count:
            raise RlhfkitError(
                f"device '{name}' was asked for, but this machine has {count} {label} device(s)"
            )
    return device


def sampling_dtype(precision: Precision) -> torch.dtype | None:
    """The dtype `rollout.engine.generate` samples in for a run's precision: bf16 computes as
    the bf16 training pass does; None = the model's own (fp32)."""
    return torch.bfloat16 if precision == Precision.BF16 else None


def autocast(device: torch.device, precision: Precision):
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    if precision == Precision.FP32:
        return contextlib.nullcontext()
    warn_if_bf16_emulated(device, torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def warn_if_bf16_emulated(device: torch.device, dtype: torch.dtype | None) -> None:
    """Warn (once per process) when bf16 work lands on a CPU without bf16 units: a training
    pass's autocast, or sampling in bf16 (`rlhfkit sample`, eval), which enters no autocast of
    this module's."""
    if dtype == torch.bfloat16 and device.type == "cpu" and cpu_has_bf16_units() is False:
        _warn_bf16_emulated()


@functools.cache
def _warn_bf16_emulated() -> None:
    """Once per process, through rlhfkit's logger (the console and the run's log.txt), though
    `autocast` is entered at every forward pass."""
    log.warning(
        "precision=bf16 on a CPU without bf16 units (no amx_bf16, avx512_bf16 or Arm's bf16 "
        "in /proc/cpuinfo): bf16 is emulated there and far slower than fp32"
    )


@functools.cache
def cpu_has_bf16_units() -> bool | None:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX-512 BF16; on Arm, its BF16
    extension), from /proc/cpuinfo's flags (x86) or Features (Arm); None where that file does not
    exist (not Linux). Without them a bf16 matrix multiply is emulated: about 100x slower than
    fp32 on an AVX2-only CPU, where it is ~9x faster with AMX."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def move_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
