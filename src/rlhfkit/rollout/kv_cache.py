"""A key/value cache whose buffers are allocated once for the whole generation.

transformers' `DynamicCache` grows by concatenation: every decoding step copies the whole
cache of every layer, so a 64-token generation spends more time copying than multiplying
(about 40% of the sampling time of the tiny default). Here each layer allocates
(batch, heads, prompt + max_new_tokens, head_dim), zeroed, on its first update and writes
each new token in place; attention reads a view of the filled part, or (`llama_step`) the whole
buffer with the unfilled part masked out. Dropping finished rows still
copies the rows kept, as before.
"""

from functools import partial

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in buffers of `capacity` positions, filled left to right."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, _ = key_states.shape
        self.key_buffer = key_states.new_zeros((batch, heads, self.capacity, key_states.shape[-1]))
        self.value_buffer = value_states.new_zeros(
            (batch, heads, self.capacity, value_states.shape[-1])
        )
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions; {end} were asked for")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._filled_views()
        return self.keys, self.values

    def advance(self, positions: int) -> None:
        """Count `positions` more as filled: a decoding step wrote them into the buffers
        directly (`llama_step.static_step`)."""
        self.length += positions
        self._filled_views()

    def to_dtype(self, dtype: torch.dtype) -> None:
        """Keep the buffers in `dtype` (the sampler's, when the prefill ran in another)."""
        if self.is_initialized and self.key_buffer.dtype != dtype:
            self.key_buffer, self.value_buffer = (
                self.key_buffer.to(dtype),
                self.value_buffer.to(dtype),
            )
            self.dtype = dtype
            self._filled_views()

    def _filled_views(self) -> None:
        """`keys` / `values`: views of the filled positions, what attention reads."""
        self.keys, self.values = (
            self.key_buffer[:, :, : self.length],
            self.value_buffer[:, :, : self.length],
        )

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a preallocated cache is only appended to")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._filled_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            # the positions not yet written are zero and stay zero (a decoding step over the
            # whole buffer reads them with zero weight: garbage could be NaN, and 0 * NaN = NaN),
            # so the kept rows are taken whole: one copy
            self.key_buffer = self.key_buffer.index_select(0, indices)
            self.value_buffer = self.value_buffer.index_select(0, indices)
            self._filled_views()


def preallocated_cache(capacity: int) -> DynamicCache:
    """A `DynamicCache` (to the model it is one) whose layers are `PreallocatedLayer`s of
    `capacity` positions, created as the model first updates each layer."""
    cache = DynamicCache()  # no layers yet: each is made by `layer_class_to_replicate` on first use
    cache.layer_class_to_replicate = partial(PreallocatedLayer, capacity)
    return cache
