"""Masked reductions. The denominator is an argument so a sum split across processes stays exact."""

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is True (True = the element counts)."""
    masked = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the True elements of `mask`; 0 where nothing counts (no NaN)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(
    values: torch.Tensor, mask: torch.Tensor, unbiased: bool, dim: int | None = None
) -> torch.Tensor:
    """Variance of `values` over the True elements of `mask` (True = the element counts).

    Args:
        values: any shape; mask: bool, same shape.
        unbiased: True divides by n - 1 (Bessel, as `torch.var`), False by n (population).
        dim: None reduces over everything, else over that dimension.
    Returns:
        sum_mask (x - mean)^2 / (n - 1 if unbiased else n); 0 where nothing (or, unbiased,
        only one element) counts, instead of NaN.
    """
    mean = masked_mean(values, mask, dim)
    mean = mean if dim is None else mean.unsqueeze(dim)
    squared = masked_sum((values - mean).pow(2), mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return squared / (count - int(unbiased)).clamp(min=1)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    unbiased: bool,
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Scale `values` to unit variance (and zero mean) using the statistics of the True elements.

    Args:
        values: any shape; mask: bool, same shape, True = the element counts.
        unbiased: variance convention, see `masked_var`.
        shift_mean: False adds the mean back, so only the scale changes.
        eps: added to the variance before the square root.
    Returns:
        (x - mean) / sqrt(var + eps) (+ mean if not shift_mean) where mask is True, 0 elsewhere.
        Statistics are over the whole tensor: whiten the global batch, not a micro-batch.
    """
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask, unbiased) + eps)
    whitened = whitened if shift_mean else whitened + mean
    return torch.where(
        mask, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device)
    )
