"""One decoding step of a Llama-architecture model with the fewest kernel launches: the same
arithmetic as transformers' `LlamaForCausalLM` forward, without its per-module overhead.

On a small model a decoding step is dominated by overhead, not by multiplies: through the
module tree, a 4-layer step of 64 rows launches about 300 small ops, and the multiplies are
a third of its time. Here each layer is one fused QKV multiply, the rotary embedding, an
in-place cache write, attention as two batched multiplies, the output multiply, and one fused
gate/up multiply. The fused weights are concatenated once per `generate` call (the policy
changes between calls). The prefill still runs through the model itself; only the one-token
steps take this path, and only for models it reproduces exactly (`supports_fast_decode`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def supports_fast_decode(model) -> bool:
    """A plain `LlamaForCausalLM` (no adapters, no biases, SiLU MLP, one tensor-parallel slice):
    the architecture `decode_step` reproduces. Everything else decodes through the model."""
    config = getattr(model, "config", None)
    return (
        type(model).__name__ == "LlamaForCausalLM"
        and getattr(config, "model_type", "") == "llama"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "hidden_act", "") == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and not hasattr(model, "peft_config")
    )


def plain_lm_head(model) -> torch.Tensor | None:
    """The LM head's weight when the logits are exactly `hidden @ weight.T` of the base model's
    last hidden state (a plain Llama: no bias, scaling or soft-capping), else None."""
    return (
        model.lm_head.weight if supports_fast_decode(model) and model.lm_head.bias is None else None
    )


@dataclass
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # (q + k + v out, hidden) rows of q_proj, k_proj, v_proj stacked
    out: torch.Tensor
    gate_up: torch.Tensor  # (2 * intermediate, hidden) rows of gate_proj then up_proj
    down: torch.Tensor


class FastDecoder:
    """The weights of `model` laid out for `decode_step`, taken at construction (call again
    after the weights change)."""

    def __init__(self, model):
        config = model.config
        self.model = model
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        with torch.no_grad():
            self.layers = [
                _Layer(
                    layer.input_layernorm.weight,
                    layer.post_attention_layernorm.weight,
                    torch.cat(
                        [
                            layer.self_attn.q_proj.weight,
                            layer.self_attn.k_proj.weight,
                            layer.self_attn.v_proj.weight,
                        ]
                    ),
                    layer.self_attn.o_proj.weight,
                    torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
                    layer.mlp.down_proj.weight,
                )
                for layer in model.model.layers
            ]
        self.embed = model.model.embed_tokens.weight
        self.final_norm = model.model.norm.weight
        self.lm_head = model.lm_head.weight
        self.rotary = model.model.rotary_emb

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # as LlamaRMSNorm: normalise in float32, cast back, then scale
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(
            x.dtype
        )

    @torch.no_grad()
    def decode_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, attention: torch.Tensor, cache
    ) -> torch.Tensor:
        """Logits for one new token per row, appending its keys and values to `cache`.

        Args:
            tokens: (batch,) the tokens just sampled; positions: (batch,) their position ids.
            attention: (batch, cached + 1) bool or 0/1, which cached positions (and the new one)
                each row may attend to.
            cache: the `preallocated_cache` the prefill filled (one layer per model layer).
        Returns:
            (batch, vocab) logits.
        """
        batch = tokens.shape[0]
        x = F.embedding(tokens, self.embed)  # (batch, hidden)
        cos, sin = self.rotary(x, positions.unsqueeze(1))  # (batch, 1, head_dim)
        cos, sin = cos[:, None, 0], sin[:, None, 0]  # (batch, 1, head_dim): broadcast over heads
        groups = self.heads // self.kv_heads
        blocked = ~attention.bool()[:, None, None, :]  # (batch, 1, 1, positions)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for layer, cached in zip(self.layers, cache.layers):
            h = self._rms(x, layer.input_norm)
            q, k, v = F.linear(h, layer.qkv).split([q_size, kv_size, kv_size], dim=-1)
            q = _rotate(q.view(batch, self.heads, self.head_dim), cos, sin)
            k = _rotate(k.view(batch, self.kv_heads, self.head_dim), cos, sin)
            keys, values = cached.update(
                k.unsqueeze(2), v.view(batch, self.kv_heads, 1, self.head_dim)
            )
            # (batch, kv_heads, groups, head_dim) @ (batch, kv_heads, head_dim, positions)
            scores = torch.matmul(
                q.view(batch, self.kv_heads, groups, self.head_dim), keys.transpose(-1, -2)
            )
            scores = (scores * self.scale).masked_fill(blocked, float("-inf"))
            mixed = torch.matmul(
                scores.softmax(dim=-1, dtype=torch.float32).to(values.dtype), values
            )
            x = x + F.linear(mixed.reshape(batch, q_size), layer.out)
            gate, up = F.linear(self._rms(x, layer.post_norm), layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        return F.linear(self._rms(x, self.final_norm), self.lm_head)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding as transformers applies it: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
