"""The update every trainer ends its step with, and the guard that keeps non-finite numbers out
of the weights."""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from rlhfkit.errors import NumericalFault
from rlhfkit.runtime.checkpoint import latest_checkpoint

log = logging.getLogger(__name__)

FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # device types with torch's fused AdamW kernel (torch >= 2.4)


@dataclass
class NonFiniteGuard:
    """Counts updates whose loss or gradient is not finite. Each is skipped with a warning (one
    overflow in a long run should not end it); past `max_skips` the run stops with a
    `NumericalFault` naming the step and the last checkpoint, so a diverged run is never saved
    as if it had trained."""

    max_skips: int
    checkpoints_dir: Path
    skipped: int = 0

    def allows(self, step: int, grad_norm: float, loss: float = 0.0, weights=()) -> bool:
        """True when the update of optimizer step `step` (0-based) may be applied. `weights`:
        the trained tensors, looked at only when the update is not finite: if they are not
        either, an earlier update overflowed them and skipping more cannot help. Shards are
        not looked at: one tells only of its own rank's part, and under torchrun the
        checkpoints' own check (`checkpointing.refuse_non_finite`, on the gathered weights) is
        the one that holds."""
        if math.isfinite(grad_norm) and math.isfinite(loss):
            return True
        self.skipped += 1
        what = f"loss {loss}, gradient norm {grad_norm}"
        sharded = any(isinstance(w, DTensor) for w in weights)
        overflowed = not sharded and not all_finite_tensors(weights)
        if self.skipped > self.max_skips or overflowed:
            last = latest_checkpoint(self.checkpoints_dir)
            why = (
                "the weights themselves are not finite (an earlier update overflowed them)"
                if overflowed
                else f"{self.skipped} non-finite updates, more than "
                f"max_nonfinite_skips={self.max_skips}"
            )
            raise NumericalFault(
                f"step {step + 1}: {what}: {why}; stopped without saving final/. Last "
                f"checkpoint: {last or 'none'}"
            )
        log.warning(
            f"step {step + 1}: {what}: update skipped ({self.skipped} of at most {self.max_skips})"
        )
        return False


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch's AdamW over the trainable ones of `params` (`requires_grad`: a LoRA model's
    adapters), with its fused kernel where every parameter's device has one (CPU, CUDA):
    one pass over each tensor instead of a dozen elementwise ops, 1.35 ms against 4.4 ms a step
    for 3.7M parameters on 2 CPU cores. Hugging Face's Trainer picks the same kernel by default
    (torch >= 2.8). It computes AdamW's update in another order, so its floats differ from the
    loop's in the last bits; one run replays bitwise, as before."""
    params = [p for p in params if p.requires_grad]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def clipped_step(
    optimizer: torch.optim.Optimizer,
    lr: float,
    max_grad_norm: float,
    *,
    guard: NonFiniteGuard,
    step: int,
    loss: float = 0.0,
) -> float:
    """Clip the global gradient norm of the optimizer's parameters (max_grad_norm <= 0: no
    clipping), set `lr`, step, clear the gradients; returns the norm before clipping. The
    caller's schedule decides `lr`. An update with a non-finite `loss` or gradient is not
    applied (`guard`): the gradients are cleared and the weights and optimizer state stay."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    limit = max_grad_norm if max_grad_norm > 0 else float("inf")  # inf: measure, scale nothing
    grad_norm = clip_grad_norm(params, limit)
    if guard.allows(step, grad_norm, loss, params):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def clip_grad_norm(params: list[torch.Tensor], limit: float) -> float:
    """`torch.nn.utils.clip_grad_norm_(params, limit).item()`, the same gradients to the bit,
    without its multiply when the norm is within the limit: torch scales every gradient by
    min(1, limit / (norm + 1e-6)) even when that is 1 (3.3 ms of a 90 ms step for 3.7M
    parameters on 2 CPU cores). The coefficient is computed as torch computes it, in the norm's
    dtype, so the two agree on which updates are scaled."""
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    grad_norm = total.item()
    coefficient = limit / (torch.tensor(grad_norm, dtype=total.dtype) + 1e-6)
    if bool(coefficient < 1.0):
        torch.nn.utils.clip_grads_with_norm_(params, limit, total)
    return grad_norm


def all_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter and buffer of `model` is finite."""
    return all_finite_tensors([*model.parameters(), *model.buffers()])


def all_finite_tensors(tensors) -> bool:
    """Whether every floating-point tensor of `tensors` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
