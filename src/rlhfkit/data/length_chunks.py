"""Forward passes over rows of similar length.

A right-padded batch of rows of very different lengths spends a large share of its compute on
padding (about 40% on the demo's rankings, whose responses run from 10 to 64 tokens). Sorting
the rows by length, cutting them into chunks and trimming each chunk to its own longest row
costs only what the rows hold; the results are put back in the batch's order, under one
autograd graph, so a loss over them is unchanged (up to float rounding).
"""

from collections.abc import Callable

import torch

ROWS_PER_CHUNK = 32
"""Large enough that a chunk's matrix products stay efficient on a CPU, small enough that
sorting removes most of the padding of a batch of 100+ rows."""


def length_sorted_chunks(lengths: list[int], rows_per_chunk: int) -> list[list[int]]:
    """Row indices ordered by length (stable), cut into chunks of `rows_per_chunk`
    (<= 0: one chunk of every row, in order)."""
    if rows_per_chunk <= 0 or rows_per_chunk >= len(lengths):
        return [list(range(len(lengths)))] if lengths else []
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + rows_per_chunk] for start in range(0, len(order), rows_per_chunk)]


def forward_in_length_chunks(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    tensors: dict[str, torch.Tensor],
    lengths: torch.Tensor,
    rows_per_chunk: int = ROWS_PER_CHUNK,
    group_size: int = 1,
) -> torch.Tensor:
    """`forward` on length-sorted chunks of right-padded rows; its per-row results in row order.

    Args:
        forward: maps a dict of (rows, width) tensors to a (rows, ...) tensor.
        tensors: (rows, seq) right-padded tensors (input ids, masks) cut alike.
        lengths: (rows,) real tokens of each row; a chunk keeps its first max(lengths) columns.
        rows_per_chunk: rows per chunk (<= 0: one chunk).
        group_size: rows [k*G, (k+1)*G) stay together, in order, in one chunk (groups are
            sorted by their longest row), for a `forward` that runs a group's shared prompt once.
    """
    groups = lengths.view(-1, group_size).max(dim=1).values if group_size > 1 else lengths
    per_chunk = max(1, rows_per_chunk // group_size) if rows_per_chunk > 0 else rows_per_chunk
    chunks = [
        [g * group_size + j for g in chunk for j in range(group_size)]
        for chunk in length_sorted_chunks(groups.tolist(), per_chunk)
    ]
    outputs = []
    for rows in chunks:
        index = torch.tensor(rows, device=lengths.device)
        width = int(lengths[index].max())
        outputs.append(
            forward({name: t[index.to(t.device), :width] for name, t in tensors.items()})
        )
    order = torch.tensor([row for rows in chunks for row in rows])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    stacked = torch.cat(outputs)
    return stacked[inverse.to(stacked.device)]
