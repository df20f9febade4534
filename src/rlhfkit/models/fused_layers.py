"""RMSNorm and the rotary embedding as one autograd function each, for the Llama family in
fp32 (`fuse_layers`; used on a CPU, where the training step's elementwise work is a large share).

transformers writes each as several elementwise operations, and autograd keeps their
intermediates and runs a backward for each (the rotary embedding's slices and concatenation
write zeros and copies in backward). Here the forwards run the same operations in the same
order, the same floats bit for bit, and the backwards are the closed forms: the rotary
embedding's gives the same floats too, RMSNorm's differs from autograd's in the last bits.

Only code identical to Llama's is replaced (compared as compiled code): Qwen2, Qwen3, Mistral,
Mixtral, Granite and SmolLM3 share both; Gemma's `1 + weight`, Olmo2's order of operations and
Phi-3's partial rotary embedding keep their own.
"""

import functools
import sys
import types

import torch
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from rlhfkit.models.short_attention import use_short_eager_attention
from rlhfkit.runtime.device import Precision


class RMSNormFunction(torch.autograd.Function):
    """y = w * x * r with r = 1 / sqrt(mean(x^2) + eps) over the last dimension.

    Backward, with x_hat = x * r and means over the last dimension:
        dx = r * (g * w - x_hat * mean(g * w * x_hat)),   dw = sum over rows of g * x_hat.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        x_hat = x * scale
        ctx.save_for_backward(x_hat, weight, scale)
        return weight * x_hat

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_hat, weight, scale = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_w = grad * weight
            grad_x = scale * (grad_w - x_hat * (grad_w * x_hat).mean(-1, keepdim=True))
        if ctx.needs_input_grad[1]:  # not for a frozen model's or LoRA's base norms
            grad_weight = (grad * x_hat).reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return RMSNormFunction.apply(x, weight, eps)


def same_code(function, reference) -> bool:
    """Whether `function` is compiled from the same code as `reference` (names of the globals
    it calls included; their meaning is the caller's to check)."""
    code = getattr(function, "__code__", None)
    fields = ("co_code", "co_consts", "co_names", "co_varnames")
    return code is not None and all(
        getattr(code, f) == getattr(reference.__code__, f) for f in fields
    )


@functools.cache
def has_llama_norm_forward(cls: type) -> bool:
    return same_code(getattr(cls, "forward", None), LlamaRMSNorm.forward)


def _fused_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if hidden_states.dtype != torch.float32 or self.weight.dtype != torch.float32:
        return type(self).forward(self, hidden_states)  # transformers' own, for bf16 and fp16
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Runs every Llama-style RMSNorm of `model` as `RMSNormFunction` (the instance's forward
    only: the class, other models and saved checkpoints are untouched); returns how many."""
    count = 0
    for module in model.modules():
        if has_llama_norm_forward(type(module)) and "forward" not in vars(module):
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count


LLAMA_APPLY_ROTARY = modeling_llama.apply_rotary_pos_emb
LLAMA_ROTATE_HALF = modeling_llama.rotate_half
REPLACED: dict[str, object] = {}
"""transformers' own `apply_rotary_pos_emb` of each module changed, by module name."""


def _rotate_half_transposed(y: torch.Tensor) -> torch.Tensor:
    # the adjoint of rotate_half: (y1, y2) -> (y2, -y1)
    half = y.shape[-1] // 2
    return torch.cat((y[..., half:], -y[..., :half]), dim=-1)


class RotaryFunction(torch.autograd.Function):
    """x * cos + rotate_half(x) * sin; backward g * cos + rotate_half^T(g * sin)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return (x * cos) + (LLAMA_ROTATE_HALF(x) * sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return grad * cos + _rotate_half_transposed(grad * sin), None, None


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """transformers' `apply_rotary_pos_emb` (same arguments, same floats), fused where all four
    tensors are fp32 and the angles need no gradient; transformers' own otherwise."""
    tensors = (q, k, cos, sin)
    if any(t.dtype != torch.float32 for t in tensors) or cos.requires_grad or sin.requires_grad:
        return LLAMA_APPLY_ROTARY(q, k, cos, sin, unsqueeze_dim)
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return RotaryFunction.apply(q, cos, sin), RotaryFunction.apply(k, cos, sin)


def fuse_rotary_embeddings(model: torch.nn.Module) -> int:
    """Points `apply_rotary_pos_emb` of the transformers modules that `model`'s layers come from
    at the fused one, where theirs is Llama's; returns how many modules changed. This is a
    module global, shared by every model of that family in the process: the fused function
    computes the same floats in forward and backward, so only the time changes."""
    count = 0
    for name in {type(m).__module__ for m in model.modules()}:
        module = sys.modules.get(name)
        current = getattr(module, "apply_rotary_pos_emb", None)
        if current is None or current is apply_rotary_pos_emb:
            continue
        if same_code(current, LLAMA_APPLY_ROTARY) and same_code(
            getattr(module, "rotate_half", None), LLAMA_ROTATE_HALF
        ):
            REPLACED[name] = current
            module.apply_rotary_pos_emb = apply_rotary_pos_emb
            count += 1
    return count


def fuse_layers(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its Llama-style norms and rotary embeddings fused (see the module's
    docstring); a model of another family is returned as it is."""
    fuse_rms_norms(model)
    fuse_rotary_embeddings(model)
    return model


def use_fastest_kernels(model, device: torch.device, precision: Precision):
    """`model` (a transformers model, or a module holding one) with the kernels that are
    fastest where it runs. On a CPU:
    - in fp32, its Llama-style norms and rotary embeddings fused (`fuse_layers`: an SFT step
      of the benchmark's model 4% shorter; docs/benchmarks.md), and its attention eager up to
      64 keys and SDPA above (`short_attention`);
    - in bf16, transformers' eager attention, since PyTorch's CPU flash-attention backward in
      bf16 took 27% of the benchmark's reward-model step (eager: 0.156 -> 0.113 s a step on an
      Intel Xeon with AMX).
    Elsewhere the model runs as loaded (SDPA unless the user chose). Neither choice is saved
    by `save_pretrained`."""
    if device.type != "cpu":
        return model
    if Precision(precision) is Precision.BF16:
        model.set_attn_implementation("eager")
    else:
        fuse_layers(model)
        use_short_eager_attention(model)
    return model
