"""Deterministic data order: the rows of micro-batch k are a pure function of (seed, k).

Resuming at any step therefore needs only the step number to continue with the very same
batches, and the order is reproducible across runs and machines.
"""

import torch


def micro_batch_rows(
    num_rows: int, batch_size: int, seed: int, micro_index: int, *, shuffle: bool = True
) -> list[int]:
    """Row indices of micro-batch `micro_index`: each epoch is a fresh seeded permutation,
    cut into ceil(num_rows / batch_size) batches (the last one may be smaller). Without
    `shuffle`, file order: batch k holds rows k*B ... (k+1)*B - 1, wrapping past the end, the
    order fixed benchmark workloads prescribe."""
    if not shuffle:
        return [(micro_index * batch_size + i) % num_rows for i in range(min(batch_size, num_rows))]
    per_epoch = -(-num_rows // batch_size)
    epoch, offset = divmod(micro_index, per_epoch)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_rows, generator=generator)
    return order[offset * batch_size : (offset + 1) * batch_size].tolist()


def batches_per_epoch(num_rows: int, batch_size: int) -> int:
    return -(-num_rows // batch_size)


def stream_rows(num_rows: int, count: int, seed: int, index: int) -> list[int]:
    """Rows index*count ... (index+1)*count - 1 of an endless stream of seeded epoch
    permutations: always exactly `count` rows (an epoch boundary continues into the next
    permutation), and a pure function of (seed, index) like `micro_batch_rows`."""
    start, stop = index * count, (index + 1) * count
    rows = []
    for epoch in range(start // num_rows, (stop - 1) // num_rows + 1):
        order = torch.randperm(
            num_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
        ).tolist()
        first, last = max(start, epoch * num_rows), min(stop, (epoch + 1) * num_rows)
        rows += order[first - epoch * num_rows : last - epoch * num_rows]
    return rows
