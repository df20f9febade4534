"""One-token decoding steps at a fixed set of batch sizes, replayed from CUDA graphs on a GPU.

On a GPU a decoding step of a small model is bound by kernel launches, not by arithmetic: a
24-layer step launches several hundred kernels, each costing microseconds of CPU time, for well
under a millisecond of GPU work. A CUDA graph records a step's kernels once and replays them
with one launch. A graph fixes every shape and address, so here a step runs on static buffers:
- the rows sit in a *bucket*, a batch of fixed size padded with idle rows; when the live rows
  fit the next smaller bucket they are copied into it (dropping finished rows, as the engine
  does on any device);
- the cache spans a fixed capacity, the positions not yet written masked out
  (`llama_step.static_step`'s whole-buffer form);
- the inputs (tokens, rotary factors, attention mask, cache position) are copied into the
  bucket's buffers before each replay, and the logits are read from its output buffer.

Buckets, their caches and graphs live as long as the model (`steps_for`): before each
`generate` call the current weights are copied into the step's weight buffers in place, so the
capture is paid once per run, not once per call. Without CUDA (`capture=False`) the same
buckets run eagerly; the tests check the bookkeeping that way.
"""

import weakref
from dataclasses import dataclass

import torch

from rlhfkit.rollout.architecture import causal_lm
from rlhfkit.rollout.llama_step import FastDecoder, static_step

# The smallest bucket: below it, the rows saved no longer pay for the copy into a new bucket.
BUCKET_FLOOR = 8
# Cache capacities are rounded up to this many positions, so that prompts of varying padded
# length reuse one set of graphs.
CAPACITY_MULTIPLE = 64


def bucket_sizes(batch: int, floor: int = BUCKET_FLOOR) -> list[int]:
    """Batch sizes a step runs at, largest first: `batch`, then the powers of two below it down
    to `floor` (e.g. 256 -> [256, 128, 64, 32, 16, 8]; 96 -> [96, 64, 32, 16, 8])."""
    sizes, size = [batch], 1
    while size * 2 < batch:
        size *= 2
    while size >= floor and size < batch:
        sizes.append(size)
        size //= 2
    return sizes


def round_capacity(positions: int, multiple: int = CAPACITY_MULTIPLE) -> int:
    """`positions` rounded up to a multiple of `multiple`."""
    return -(-positions // multiple) * multiple


@dataclass
class _Bucket:
    """A step's static inputs, cache and output at one batch size, and its graph (or None)."""

    tokens: torch.Tensor  # (size,) long
    cos: torch.Tensor  # (size, 1, head_dim)
    sin: torch.Tensor
    valid: torch.Tensor  # (size, capacity) bool
    index: torch.Tensor  # (1,) long: the cache position this step writes
    keys: list[torch.Tensor]  # per layer (size, kv_heads, capacity, head_dim)
    values: list[torch.Tensor]
    logits: torch.Tensor | None = None  # (size, vocab): the captured step's output
    graph: "torch.cuda.CUDAGraph | None" = None


class BucketedSteps:
    """The one-token steps of one model at one dtype and cache capacity, in buckets.

    Use per `generate` call: `refresh(model)`, `start(cache, num_samples)` after the prefill,
    then `step` per token and `select` when `should_compact` says the live rows fit a smaller
    bucket.

    Args:
        decoder: the model's `FastDecoder`; its weight tensors become the graphs' weights.
        capacity: cache positions of every bucket (a multiple of `CAPACITY_MULTIPLE`).
        capture: record each bucket's step in a CUDA graph (CUDA only); False runs it eagerly.
    """

    def __init__(self, decoder: FastDecoder, capacity: int, capture: bool):
        self.decoder, self.capacity, self.capture = decoder, capacity, capture
        self.buckets: dict[int, _Bucket] = {}
        self.sizes: list[int] = []
        self.current: _Bucket | None = None
        self.rows = 0  # live rows at the front of the current bucket
        self.length = 0  # cache positions written

    # --- per generate call
    def refresh(self, model) -> None:
        """Copy `model`'s current weights into the step's weight buffers, in place: the graphs
        read these addresses."""
        fresh = FastDecoder(model, self.decoder.dtype)
        for mine, new in zip(_weights(self.decoder), _weights(fresh), strict=True):
            mine.copy_(new)

    def start(self, cache, num_samples: int) -> None:
        """Take over the prefill's `cache` (one row per prompt): each prompt's keys and values
        go to its `num_samples` rows of the smallest bucket that holds them."""
        prompts, length = cache.layers[0].key_buffer.shape[0], cache.layers[0].length
        batch = prompts * num_samples
        self.sizes = sorted(set(bucket_sizes(batch)) | set(self.sizes), reverse=True)
        bucket = self._bucket(self._fitting(batch))
        for layer, keys, values in zip(cache.layers, bucket.keys, bucket.values, strict=True):
            for source, target in ((layer.key_buffer, keys), (layer.value_buffer, values)):
                # (prompts, samples, kv_heads, length, head_dim) <- each prompt broadcast
                shape = (prompts, num_samples, *target.shape[1:2], length, target.shape[-1])
                target[:batch, :, :length].view(shape).copy_(
                    source[:, :, :length].unsqueeze(1).expand(shape)
                )
        self.current, self.rows, self.length = bucket, batch, length

    def should_compact(self, active: torch.Tensor) -> bool:
        """Whether the `active` rows (bool, one per live row) fit a smaller bucket."""
        return self._fitting(int(active.sum())) < self.current.tokens.shape[0]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (indices of the live rows), moved to the front of the smallest
        bucket that holds them."""
        source, target = self.current, self._bucket(self._fitting(keep.numel()))
        for old, new in zip(source.keys + source.values, target.keys + target.values, strict=True):
            new[: keep.numel(), :, : self.length] = old[keep, :, : self.length]
        self.current, self.rows = target, keep.numel()

    @torch.no_grad()
    def step(
        self, tokens: torch.Tensor, positions: torch.Tensor, attention: torch.Tensor
    ) -> torch.Tensor:
        """Logits (rows, vocab) for one new token per live row (as `FastDecoder.decode_step`:
        `attention` (rows, written + 1) says which positions each row attends to)."""
        bucket, rows, decoder = self.current, self.rows, self.decoder
        cos, sin = decoder.rotary(decoder.final_norm, positions.unsqueeze(1))
        bucket.tokens[:rows] = tokens
        bucket.cos[:rows] = cos[:, None, 0]
        bucket.sin[:rows] = sin[:, None, 0]
        bucket.valid[:rows] = False
        bucket.valid[:rows, : attention.shape[1]] = attention.bool()
        bucket.valid[rows:] = False
        bucket.valid[rows:, 0] = True  # idle rows attend somewhere: no NaN anywhere
        bucket.index.fill_(self.length)
        if bucket.graph is not None:
            bucket.graph.replay()
            logits = bucket.logits
        else:
            logits = static_step(*_step_args(decoder, bucket))
        self.length += 1
        return logits[:rows]

    # --- buckets
    def _fitting(self, rows: int) -> int:
        return min(size for size in self.sizes if size >= rows)

    def _bucket(self, size: int) -> _Bucket:
        if size not in self.buckets:
            self.buckets[size] = self._make(size)
        return self.buckets[size]

    def _make(self, size: int) -> _Bucket:
        decoder, shape = self.decoder, self.decoder.shape
        like = decoder.final_norm
        cache_shape = (size, shape.kv_heads, self.capacity, shape.head_dim)
        bucket = _Bucket(
            tokens=torch.zeros(size, dtype=torch.long, device=like.device),
            cos=like.new_zeros((size, 1, shape.head_dim)),
            sin=like.new_zeros((size, 1, shape.head_dim)),
            valid=torch.zeros((size, self.capacity), dtype=torch.bool, device=like.device),
            index=torch.zeros(1, dtype=torch.long, device=like.device),
            keys=[like.new_zeros(cache_shape, dtype=decoder.dtype) for _ in decoder.layers],
            values=[like.new_zeros(cache_shape, dtype=decoder.dtype) for _ in decoder.layers],
        )
        bucket.valid[:, 0] = True
        if self.capture:
            _capture(decoder, bucket)
        return bucket


def _step_args(decoder: FastDecoder, bucket: _Bucket) -> tuple:
    return (
        decoder.shape,
        decoder.embed,
        decoder.layers,
        decoder.final_norm,
        decoder.lm_head,
        bucket.tokens,
        bucket.cos,
        bucket.sin,
        bucket.valid,
        bucket.index,
        bucket.keys,
        bucket.values,
    )


def _capture(decoder: FastDecoder, bucket: _Bucket) -> None:
    """Record the bucket's step in a CUDA graph: warm-up runs on a side stream first (as CUDA
    graph capture requires; they also let cuBLAS set up its workspaces), then one captured run
    whose output buffer every replay rewrites. The warm-up writes position 0 of the still
    unused cache, which `start` or `select` overwrites."""
    args = _step_args(decoder, bucket)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):
            static_step(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # each graph its own memory pool: buckets replay in any order
    with torch.cuda.graph(graph), torch.no_grad():
        bucket.logits = static_step(*args)
    bucket.graph = graph


_DECODER_WEIGHTS = ("embed", "final_norm", "lm_head")
_LAYER_WEIGHTS = ("input_norm", "post_norm", "qkv", "qkv_bias", "out", "gate_up", "down")


def _weight_slots(decoder: FastDecoder) -> list[tuple[object, str]]:
    """(holder, attribute) of every weight tensor of the decoder, in a fixed order; a layer's
    `qkv_bias` only where it has one."""
    slots = [(decoder, name) for name in _DECODER_WEIGHTS]
    for layer in decoder.layers:
        slots += [(layer, name) for name in _LAYER_WEIGHTS if getattr(layer, name) is not None]
    return slots


def _weights(decoder: FastDecoder) -> list[torch.Tensor]:
    """Every weight tensor of the decoder, in a fixed order."""
    return [getattr(holder, name) for holder, name in _weight_slots(decoder)]


# The steps of each model, kept as long as the model lives: {model: {(dtype, capture): steps}}
_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def steps_for(model, dtype: torch.dtype | None, positions: int, capture: bool) -> BucketedSteps:
    """The model's `BucketedSteps` holding at least `positions` cache positions, made on first
    use (or when a longer generation needs more), with the model's current weights."""
    base = causal_lm(model)
    per_model = _STEPS.setdefault(base, {})
    key = (dtype or base.lm_head.weight.dtype, capture)
    steps = per_model.get(key)
    if steps is not None and steps.capacity >= positions:
        steps.refresh(model)  # a larger capacity serves a shorter generation too
        return steps
    decoder = FastDecoder(model, dtype)
    _own_weights(decoder)
    per_model[key] = BucketedSteps(decoder, round_capacity(positions), capture)
    return per_model[key]


def _own_weights(decoder: FastDecoder) -> None:
    """Give the decoder copies of the weights it shares with the model (`FastDecoder` casts
    without copying where the dtype already matches): `refresh` writes into them, and a
    sharded model may free or move its own between calls."""
    for holder, name in _weight_slots(decoder):
        setattr(holder, name, getattr(holder, name).clone())
