"""What the fast paths may assume about a model: which families compute their logits as
`last_hidden @ lm_head.weight.T` (the chunked LM head), which ones the one-token decoding step
reproduces, and the weights a LoRA model samples with.

Both fast paths read the transformers model under a peft wrapper: LoRA injects its layers into
that model's modules, so its decoder stack runs with the adapters (or without them, inside
peft's `disable_adapter`) like the wrapper does.
"""

import logging

import torch
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)
_WARNED_POSITIONS: set[tuple[str, int]] = set()  # (what, limit) already warned about

# Families whose causal-LM head is a bias-free linear map of the decoder's last hidden state,
# with no scaling or soft-capping after it (checked again on the config's own settings below).
LINEAR_HEAD_FAMILIES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "gemma"}
)
# Families whose decoder layer is Llama's: RMSNorm (weight * x), rotary attention with optional
# q/k/v biases, SiLU-gated MLP, no per-head norms; what `llama_step` computes.
LLAMA_LAYER_FAMILIES = frozenset({"llama", "mistral", "qwen2"})
# config settings that change the logits after the head, by their "no change" value
_LOGIT_SCALINGS = {"final_logit_softcapping": None, "logit_scale": None, "logits_scaling": 1.0}


def causal_lm(model):
    """The transformers model: under a peft wrapper, the wrapped model (with its LoRA layers)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def linear_head(model) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """(decoder stack, head weight) when the logits are exactly `decoder(...).last_hidden_state
    @ weight.T`, else None (the caller then asks the model for its logits)."""
    base = causal_lm(model)
    config = getattr(base, "config", None)
    head = getattr(base, "lm_head", None)
    if (
        getattr(config, "model_type", "") not in LINEAR_HEAD_FAMILIES
        or type(head) is not torch.nn.Linear  # a LoRA-adapted head is another type
        or isinstance(head.weight, DTensor)  # an FSDP2 shard, not the whole head
        or head.bias is not None
        or any(getattr(config, k, none) != none for k, none in _LOGIT_SCALINGS.items())
    ):
        return None
    return base.model, head.weight


def supports_fast_decode(model, positions: int) -> bool:
    """Whether `llama_step.FastDecoder` reproduces this model over `positions` cache positions:
    a Llama-layer family (Llama, Mistral, Qwen2) whose sliding window, if any, covers them,
    biases only on q/k/v, one tensor-parallel slice, plain LoRA or no adapters. Everything else
    decodes through the model."""
    base = causal_lm(model)
    config = getattr(base, "config", None)
    window = getattr(config, "sliding_window", None)
    if not getattr(config, "use_sliding_window", True):
        window = None  # Qwen2 keeps a window size it does not use
    if (
        getattr(config, "model_type", "") not in LLAMA_LAYER_FAMILIES
        or linear_head(model) is None
        or getattr(config, "hidden_act", "") != "silu"
        or getattr(config, "pretraining_tp", 1) != 1
        or getattr(config, "mlp_bias", False)
        or (window is not None and positions > window)
    ):
        return False
    peft_types = [
        (str(getattr(c, "peft_type", "")), getattr(c, "use_dora", False))
        for c in getattr(model, "peft_config", {}).values()
    ]
    if any(kind not in ("LORA", "PeftType.LORA") or dora for kind, dora in peft_types):
        return False
    layer = base.model.layers[0]
    if any(isinstance(p, DTensor) for p in layer.parameters()):
        return False  # FSDP2 shards between passes: the step needs whole weights
    return layer_weight_bias(layer.self_attn.o_proj)[1] is None


def layer_weight_bias(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias a linear layer applies now: a LoRA layer's base weight plus the
    scaled B @ A of each active adapter (none while adapters are disabled or merged). Without
    dropout (sampling runs in eval mode) this is the same map, to float rounding."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module.weight, module.bias
    weight = base.weight
    if not module.disable_adapters and not module.merged:
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


def position_limit(model) -> int | None:
    """The model's `max_position_embeddings`, or None where its config has none."""
    limit = getattr(getattr(causal_lm(model), "config", None), "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def warn_past_positions(model, positions: int, what: str) -> None:
    """Warn once per process and `what` when `positions` run past the model's
    `max_position_embeddings`: it still computes, with positions it was never trained on (a
    rotary model's answers degrade, silently)."""
    limit = position_limit(model)
    if isinstance(limit, int) and positions > limit and (what, limit) not in _WARNED_POSITIONS:
        _WARNED_POSITIONS.add((what, limit))
        log.warning(
            f"{what}: sequences of up to {positions} positions, past the model's "
            f"max_position_embeddings={limit}; its outputs there are unreliable"
        )
