"""One decoding step of a Llama-layer model (Llama, Mistral, Qwen2; LoRA merged in) with the
fewest kernel launches: the same arithmetic as the transformers forward, without its per-module
overhead.

On a small model a decoding step is dominated by overhead, not by multiplies: through the
module tree, a 4-layer step of 64 rows launches about 300 small ops, and the multiplies are
a third of its time. Here each layer is one fused QKV multiply, the rotary embedding of the
queries and keys together, an in-place cache write, attention as two batched multiplies (the
first one scaling and masking the scores too), the output multiply, and one fused gate/up
multiply. The fused weights are concatenated once per `generate` call (the policy
changes between calls), and on a CPU packed once for oneDNN's multiply where that pays
(`packs_weights`). The prefill still runs through the model itself; only the one-token
steps take this path, and only for models it reproduces (`architecture.supports_fast_decode`).

In bf16 on a float32 model it computes what the model computes under bf16 autocast with eager
attention (a bf16 run's training pass on a CPU): so the sampling log-probs are the training
pass's, up to a rare bf16 rounding, and an on-policy ratio starts at 1 (merged LoRA adapters
and a compiled step round otherwise: about 1e-3 apart per token). Under SDPA (CUDA) the
training pass's scores are not rounded to bf16 before the softmax: a bf16 rounding apart.
"""

from dataclasses import dataclass

import torch
import torch.fx.experimental._config  # noqa: F401  (the compile option below)
import torch.nn.functional as F

from rlhfkit.rollout.architecture import causal_lm, layer_weight_bias


@dataclass
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # (q + k + v out, hidden) rows of q_proj, k_proj, v_proj stacked
    qkv_bias: torch.Tensor | None  # their biases stacked (Qwen2), or None
    out: torch.Tensor
    gate_up: torch.Tensor  # (2 * intermediate, hidden) rows of gate_proj then up_proj
    down: torch.Tensor


@dataclass(frozen=True)
class _Shape:
    heads: int
    kv_heads: int
    head_dim: int
    eps: float


class FastDecoder:
    """The weights of `model` laid out for `decode_step`, taken at construction (call again
    after the weights change).

    Args:
        model: a model `supports_fast_decode` accepts.
        dtype: the dtype of the step's multiplies and cache (None = the model's). bf16 on a
            float32 model computes as bf16 autocast does, as a bf16 run trains: the multiplies
            on bf16 copies of the weights, everything else (the residual stream, the norms,
            the rotary embedding, the softmax) in the model's float32.
        compiled: run the step through `torch.compile` (see `compiled_step`).
        pack_rows: pack the multiplies' weights for oneDNN (`packs_weights`), laid out for
            steps of about this many rows; 0 keeps them plain tensors, as a compiled step and
            `decode_graphs` (which copies new weights into them) need.
    """

    def __init__(
        self,
        model,
        dtype: torch.dtype | None = None,
        compiled: bool = False,
        pack_rows: int = 0,
    ):
        base = causal_lm(model)  # LoRA layers are merged into the weights below
        config = base.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.shape = _Shape(
            heads,
            kv_heads,
            getattr(config, "head_dim", None) or config.hidden_size // heads,
            config.rms_norm_eps,
        )
        self.dtype = dtype or base.lm_head.weight.dtype
        with torch.no_grad():
            self.layers = [_fused_layer(layer, self.dtype) for layer in base.model.layers]
            # the residual stream's weights keep the model's dtype (autocast leaves them)
            self.embed = base.model.embed_tokens.weight.detach()
            self.final_norm = base.model.norm.weight.detach()
            self.lm_head = _cast(base.lm_head.weight, self.dtype)
            if pack_rows:
                for layer in self.layers:
                    layer.qkv, layer.out = _pack(layer.qkv, pack_rows), _pack(layer.out, pack_rows)
                    layer.gate_up = _pack(layer.gate_up, pack_rows)
                    layer.down = _pack(layer.down, pack_rows)
                self.lm_head = _pack(self.lm_head, pack_rows)
        self.rotary = base.model.rotary_emb
        self.compiled = compiled
        self.step = compiled_step() if compiled else static_step

    @torch.no_grad()
    def decode_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, attention: torch.Tensor, cache
    ) -> torch.Tensor:
        """Logits for one new token per row, appending its keys and values to `cache`.

        Args:
            tokens: (batch,) the tokens just sampled; positions: (batch,) their position ids.
            attention: (batch, cached + 1) bool or 0/1, which cached positions (and the new one)
                each row may attend to.
            cache: the `preallocated_cache` the prefill filled (one layer per model layer), its
                buffers in this decoder's dtype.
        Returns:
            (batch, vocab) logits in the decoder's dtype.
        """
        layers = cache.layers
        index = layers[0].length
        # attention over the cache's whole capacity (positions not yet written blocked): every
        # step has the same shapes, what a compiled or captured step needs; and the batched
        # multiplies read whole buffers, which a CPU's bf16 kernels would otherwise copy first
        # (2-4x the time of the multiply at 64 rows)
        if self.compiled or self.dtype != torch.float32:
            keys = [layer.key_buffer for layer in layers]
            values = [layer.value_buffer for layer in layers]
            valid = F.pad(attention.bool(), (0, layers[0].capacity - attention.shape[1]))
        else:
            # eagerly, only over the positions written so far and the new one (fewer scores)
            keys = [layer.key_buffer[:, :, : index + 1] for layer in layers]
            values = [layer.value_buffer[:, :, : index + 1] for layer in layers]
            valid = attention.bool()
        # the rotary module reads only the dtype and device of its first argument
        cos, sin = self.rotary(self.final_norm, positions.unsqueeze(1))  # (batch, 1, head_dim)
        logits = self.step(
            self.shape,
            self.embed,
            self.layers,
            self.final_norm,
            self.lm_head,
            tokens,
            cos[:, None, 0],  # (batch, 1, head_dim): broadcast over heads
            sin[:, None, 0],
            valid,
            torch.tensor([index], device=tokens.device) if self.compiled else index,
            keys,
            values,
        )
        for layer in layers:
            layer.advance(1)
        return logits


def static_step(
    shape: _Shape,
    embed: torch.Tensor,
    layers: list[_Layer],
    final_norm: torch.Tensor,
    lm_head: torch.Tensor,
    tokens: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    valid: torch.Tensor,
    index: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
) -> torch.Tensor:
    """One decoding step on cache buffers, the new keys and values written at `index` in place: a
    pure function of tensors, whose shapes do not change from step to step when the buffers are
    whole (compiled) rather than the filled part (eager). The multiplies run in the weights'
    dtype (`lm_head`'s), the rest in the embedding's, as autocast runs the model.

    Args:
        tokens: (batch,); cos, sin: (batch, 1, head_dim) rotary factors of each row's position.
        valid: (batch, positions) bool, the positions each row attends to (the new one included).
        index: the cache position the new token's keys and values go to: an int, or a (1,)
            long tensor for a compiled step.
        keys, values: per layer (batch, kv_heads, positions, head_dim) buffers or views of them
            (positions > index), written in place.
    Returns:
        (batch, vocab) logits.
    """
    batch = tokens.shape[0]
    heads, kv_heads, head_dim = shape.heads, shape.kv_heads, shape.head_dim
    groups, positions = heads // kv_heads, valid.shape[1]
    qk_size, kv_size = (heads + kv_heads) * head_dim, kv_heads * head_dim
    low = lm_head.dtype  # the multiplies' dtype; a cast to it is a no-op in float32
    # -inf where a row may not attend, added to each head's scores: (batch * kv_heads, 1, positions)
    blocked = torch.zeros(valid.shape, dtype=embed.dtype, device=valid.device)
    blocked = blocked.masked_fill(~valid, float("-inf"))
    blocked = blocked[:, None, None].expand(batch, kv_heads, 1, positions).reshape(-1, 1, positions)
    sin = torch.cat((-sin[..., : head_dim // 2], sin[..., head_dim // 2 :]), dim=-1)  # see _rotate
    x = F.embedding(tokens, embed)  # (batch, hidden)
    for layer, key_buffer, value_buffer in zip(layers, keys, values):
        h = _rms(x, layer.input_norm, shape.eps)
        qk, v = _linear(h.to(low), layer.qkv, layer.qkv_bias).split([qk_size, kv_size], dim=-1)
        # queries and keys rotated in the angles' dtype (a bf16 product times float32 angles
        # is float32, as in transformers under autocast)
        qk = _rotate(qk.view(batch, heads + kv_heads, head_dim), cos, sin)
        _write(key_buffer, index, qk[:, heads:].unsqueeze(2))
        _write(value_buffer, index, v.view(batch, kv_heads, 1, head_dim))
        # (batch * kv_heads, groups, head_dim) @ (batch * kv_heads, head_dim, positions)
        queries = qk[:, :heads].reshape(batch * kv_heads, groups, head_dim).to(low)
        keys_t = key_buffer.reshape(batch * kv_heads, positions, head_dim).transpose(-1, -2)
        if low == blocked.dtype:  # scaled and blocked in the same call (the floats of three)
            scores = torch.baddbmm(blocked, queries, keys_t, alpha=head_dim**-0.5)
        else:  # as eager attention under autocast: scaled in bf16, blocked in float32
            scores = torch.bmm(queries, keys_t).mul(head_dim**-0.5) + blocked
        scores = scores.view(batch, kv_heads, groups, positions)
        mixed = torch.matmul(
            scores.softmax(dim=-1, dtype=torch.float32).to(value_buffer.dtype), value_buffer
        )
        x = x + _linear(mixed.reshape(batch, heads * head_dim), layer.out)
        h = _rms(x, layer.post_norm, shape.eps).to(low)
        gate, up = _linear(h, layer.gate_up).chunk(2, dim=-1)
        x = x + _linear(F.silu(gate) * up, layer.down)
    return _linear(_rms(x, final_norm, shape.eps).to(low), lm_head)


# Below this hidden size a float32 step is bound by its other work: packing gained nothing at
# hidden 128 (the demo's model: a `generate` call 0.98-1.06x), and oneDNN's float32 multiply
# rounds in other last bits than the BLAS one, so those models keep the BLAS multiply.
PACK_MIN_HIDDEN = 256


def packs_weights(model, device: torch.device, dtype: torch.dtype | None) -> bool:
    """Whether an eager decoding step on `device` in `dtype` (None = the model's) packs its
    weights for oneDNN (`FastDecoder(pack_rows=...)`): on a CPU, in bf16 always, in float32 from
    `PACK_MIN_HIDDEN` on (bf16 only where oneDNN has bf16 kernels for the CPU: AVX-512 or
    AVX-NE-CONVERT; elsewhere it refuses to pack).

    The BLAS multiply lays the weight matrix out anew at every call (what MKL's packed-GEMM
    interface exists to avoid), a cost that a decoding step's few rows do not amortise; packed
    once per `generate` call, the weights serve every step. On an AMD EPYC (Zen 4, 2 threads)
    the multiplies of the benchmark's model (hidden 256, 4 layers) ran at 138 against 87
    GFLOP/s at 64 rows in float32, and a `generate` call of 64 rows ran 1.10-1.20x faster; of
    SmolLM2-135M (hidden 576, 30 layers) 1.37-1.67x faster in float32 and 1.22-1.33x in bf16
    (the same floats as unpacked there; docs/benchmarks.md)."""
    base = causal_lm(model)
    dtype = dtype or base.lm_head.weight.dtype
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float32 and base.config.hidden_size >= PACK_MIN_HIDDEN


_COMPILED = None


def compiled_step():
    """`static_step` through `torch.compile`, made once per process and shared by every decoder:
    the elementwise work of a step (norms, rotary, softmax, SiLU) fuses into a few kernels. It
    compiles on the first step (tens of seconds on a CPU, once; later calls reuse it), with the
    batch and cache sizes symbolic, so dropping finished rows does not compile it again."""
    global _COMPILED
    if _COMPILED is None:
        compiled = torch.compile(static_step, dynamic=True)

        def step(*args):
            # no "duck sizing": sizes that happen to be equal on the first call (3 prompts, 3
            # heads) would otherwise be assumed equal, and compiled again when they are not
            with torch.fx.experimental._config.patch(use_duck_shape=False):
                return compiled(*args)

        _COMPILED = step
    return _COMPILED


def _write(buffer: torch.Tensor, index: int | torch.Tensor, new: torch.Tensor) -> None:
    """`new` (batch, heads, 1, head_dim) into cache position `index` of `buffer`: a plain slice
    copy for an int (eager: index_copy_ costs 6x more there), index_copy_ for a (1,) tensor
    (compiled: a position that changes every step must not be a constant of the graph)."""
    new = new.to(buffer.dtype)  # rotated keys are float32 under a bf16 step, as autocast's
    if isinstance(index, int):
        buffer[:, :, index : index + 1] = new
    else:
        buffer.index_copy_(2, index, new)


def _pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` (out, in) in oneDNN's layout for multiplies of about `rows` rows (the layout
    inductor's CPU freezing gives linear weights)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """F.linear, through oneDNN for a weight `_pack` packed."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [None], "")
    return F.linear(x, weight, bias)


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.detach().to(dtype)


def _fused_layer(layer, dtype: torch.dtype) -> _Layer:
    """One decoder layer's weights as `static_step` takes them: q, k, v stacked, gate and up
    stacked, LoRA deltas merged, cast to `dtype`."""
    attn, mlp = layer.self_attn, layer.mlp
    (q, q_bias), (k, k_bias), (v, v_bias) = (
        layer_weight_bias(attn.q_proj),
        layer_weight_bias(attn.k_proj),
        layer_weight_bias(attn.v_proj),
    )
    biases = None if q_bias is None else torch.cat([q_bias, k_bias, v_bias])
    return _Layer(
        layer.input_layernorm.weight.detach(),  # the norms keep the model's dtype (autocast's)
        layer.post_attention_layernorm.weight.detach(),
        _cast(torch.cat([q, k, v]), dtype),
        _cast(biases, dtype),
        _cast(layer_weight_bias(attn.o_proj)[0], dtype),
        _cast(
            torch.cat([layer_weight_bias(mlp.gate_proj)[0], layer_weight_bias(mlp.up_proj)[0]]),
            dtype,
        ),
        _cast(layer_weight_bias(mlp.down_proj)[0], dtype),
    )


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # as LlamaRMSNorm: normalise in float32, cast back, then scale
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding as transformers applies it, x * cos + rotate_half(x) * sin with
    rotate_half(x) = cat(-x2, x1), in fewer kernels: the sign moves to the first half of
    `signed_sin` = cat(-sin1, sin2) (the same floats). (`torch.roll` would do the swap too, but
    a compiled step with it ran 17% slower.)"""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin
