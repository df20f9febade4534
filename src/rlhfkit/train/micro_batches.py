"""One optimizer update from a mini-batch too big for one pass: its rows are cut into
micro-batches, each one's loss is backpropagated at once (freeing its graph), and the gradients
add up in the parameters. Every micro-batch's loss divides by the whole mini-batch's
denominator (`objectives.aggregate.loss_denominator`), so the summed gradient is the unsplit
one; only float rounding differs.

A micro-batch's statistics come back as (mean, weight) pairs, so the mini-batch's are the
weighted means: token means weigh by tokens, sequence means by rows.
"""

from collections.abc import Callable

import torch

Stats = dict[str, tuple[float, float]]
"""Name -> (mean over the micro-batch, weight: the tokens or rows the mean is over)."""


def micro_slices(rows: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` rows covering `rows` rows (size 0: one slice)."""
    size = size or rows
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def backward_micro_batches(
    part: dict[str, torch.Tensor],
    size: int,
    loss_of: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, Stats]],
) -> tuple[float, dict[str, float]]:
    """Backpropagate `loss_of` over the micro-batches of `part` (every tensor sliced along rows);
    returns the summed loss and the weighted means of the statistics."""
    rows = next(iter(part.values())).shape[0]
    loss_total, sums, weights = 0.0, {}, {}
    for rows_slice in micro_slices(rows, size):
        loss, stats = loss_of({key: value[rows_slice] for key, value in part.items()})
        loss.backward()
        loss_total += loss.item()
        for name, (mean, weight) in stats.items():
            sums[name] = sums.get(name, 0.0) + mean * weight
            weights[name] = weights.get(name, 0.0) + weight
    return loss_total, {name: sums[name] / max(weights[name], 1e-12) for name in sums}


def token_stat(mean: torch.Tensor | float, mask: torch.Tensor) -> tuple[float, float]:
    """A token mean's (value, weight) for `backward_micro_batches`."""
    return float(mean), float(mask.sum())


def row_stat(mean: torch.Tensor | float, mask: torch.Tensor) -> tuple[float, float]:
    """A mean over rows (sequences): its (value, weight)."""
    return float(mean), float(mask.shape[0])
