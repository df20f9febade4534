"""One optimizer update from a mini-batch too big for one pass: its rows are cut into
micro-batches, each one's loss is backpropagated at once (freeing its graph), and the gradients
add up in the parameters. Every micro-batch's loss divides by the whole mini-batch's
denominator (`objectives.aggregate.loss_denominator`), so the summed gradient is the unsplit
one; only float rounding differs.

A micro-batch's statistics come back as (mean, weight) pairs, so the mini-batch's are the
weighted means: token means weigh by tokens, sequence means by rows. A statistic whose name ends
in `_max` is a maximum: the mini-batch's is the largest of its micro-batches'. Under torchrun
each rank holds part of the mini-batch (maybe none of it): the loss, the weighted sums and the
weights are added up over the ranks, so the result is the whole mini-batch's.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlhfkit.objectives.kl import sampler_mismatch
from rlhfkit.runtime.distributed import Ranks, gather_objects

Stats = dict[str, tuple[float, float]]
"""Name -> (mean over the micro-batch, weight: the tokens or rows the mean is over)."""


def micro_slices(rows: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` rows covering `rows` rows (size 0: one slice; no
    rows: none)."""
    size = size or rows
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)] if rows else []


@dataclass
class _Totals:
    """The summed loss and the weighted sums and weights of the statistics."""

    loss: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, stats: Stats) -> None:
        self.loss += loss
        for name, (value, weight) in stats.items():
            self._add(name, value if name.endswith("_max") else value * weight, weight)

    def _add(self, name: str, weighted: float, weight: float) -> None:
        """`weighted`: the value times its weight; a maximum's value itself."""
        if name.endswith("_max"):
            self.sums[name] = max(self.sums.get(name, weighted), weighted)
            self.weights[name] = 1.0
        else:
            self.sums[name] = self.sums.get(name, 0.0) + weighted
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def merged(self, others: list["_Totals"]) -> "_Totals":
        """These totals and `others`' (other ranks'), in order."""
        for other in others:
            self.loss += other.loss
            for name, weighted in other.sums.items():
                self._add(name, weighted, other.weights[name])
        return self

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / max(self.weights[name], 1e-12) for name in self.sums}


def backward_micro_batches(
    part: dict[str, torch.Tensor],
    size: int,
    loss_of: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, Stats]],
    *,
    ranks: Ranks | None = None,
) -> tuple[float, dict[str, float]]:
    """Backpropagate `loss_of` over the micro-batches of `part` (every tensor sliced along rows);
    returns the summed loss and the weighted means of the statistics, over every rank's part
    of the mini-batch (`ranks`; one process: this part alone)."""
    rows = next(iter(part.values())).shape[0]
    totals = _Totals()
    for rows_slice in micro_slices(rows, size):
        loss, stats = loss_of({key: value[rows_slice] for key, value in part.items()})
        loss.backward()
        totals.add(loss.item(), stats)
    if ranks is not None and ranks.sharded:
        every = gather_objects(totals, ranks)
        totals = _Totals().merged(every)
    return totals.loss, totals.means()


def token_stat(mean: torch.Tensor | float, mask: torch.Tensor) -> tuple[float, float]:
    """A token mean's (value, weight) for `backward_micro_batches`."""
    return float(mean), float(mask.sum())


def row_stat(mean: torch.Tensor | float, mask: torch.Tensor) -> tuple[float, float]:
    """A mean over rows (sequences): its (value, weight)."""
    return float(mean), float(mask.shape[0])


def mismatch_stats(
    logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor
) -> Stats:
    """The sampler-vs-trainer gap (`objectives.kl.sampler_mismatch`) as micro-batch statistics;
    meaningful on a step's first mini-batch, before any update moves the policy."""
    gap, ratio = sampler_mismatch(logprobs, sampler_logprobs, mask)
    return {"sampler_logprob_gap": token_stat(gap, mask), "sampler_ratio_max": (float(ratio), 1.0)}


MISMATCH_KEYS = ("sampler_logprob_gap", "sampler_ratio_max")


def first_part_only(stats: list[dict], keys=MISMATCH_KEYS) -> list[dict]:
    """Drop `keys` from every mini-batch's statistics but the step's first: after an update the
    gap measures the policy's own change, not the sampler's."""
    return [
        s if i == 0 else {k: v for k, v in s.items() if k not in keys} for i, s in enumerate(stats)
    ]
