"""The update every trainer ends its step with."""

import torch


def clipped_step(optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float) -> float:
    """Clip the global gradient norm of the optimizer's parameters (max_grad_norm <= 0: no
    clipping), set `lr`, step, clear the gradients; returns the norm before clipping. The
    caller's schedule decides `lr`."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    limit = (
        max_grad_norm if max_grad_norm > 0 else float("inf")
    )  # inf: measure the norm, scale nothing
    grad_norm = torch.nn.utils.clip_grad_norm_(params, limit).item()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
