import copy

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.phi3 import modeling_phi3
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from rlhfkit.models import fused_layers
from rlhfkit.models.fused_layers import (
    fuse_layers,
    fuse_rms_norms,
    fuse_rotary_embeddings,
    has_llama_norm_forward,
    rms_norm,
)
from tests.rollout.conftest import tiny_family_model


@pytest.fixture
def restore_rotary(monkeypatch):
    """transformers' own rotary embeddings during the test (another test's fusing may have
    replaced them), and after it whatever was there before."""
    for module in (modeling_llama, modeling_qwen2, modeling_phi3):
        own = fused_layers.REPLACED.get(module.__name__, module.apply_rotary_pos_emb)
        monkeypatch.setattr(module, "apply_rotary_pos_emb", own)
    monkeypatch.setattr(fused_layers, "REPLACED", {})


def naive_rms_norm(x, weight, eps):
    return weight * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def test_hand_computed_values():
    # x = [3, 4]: mean(x^2) = 12.5, so y = w * x / sqrt(12.5)
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    y = rms_norm(x, w, 0.0)
    r = 12.5**-0.5
    assert y[0].tolist() == pytest.approx([3 * r, 8 * r], rel=1e-6)
    y.sum().backward()
    # dy/dx by hand: r * (w - x_hat * mean(w * x_hat)), x_hat = x r
    x_hat = [3 * r, 4 * r]
    m = (1 * x_hat[0] + 2 * x_hat[1]) / 2
    assert x.grad[0].tolist() == pytest.approx([r * (1 - x_hat[0] * m), r * (2 - x_hat[1] * m)])
    assert w.grad.tolist() == pytest.approx(x_hat)


def test_forward_is_transformers_bit_for_bit_and_gradients_agree():
    torch.manual_seed(0)
    norm = LlamaRMSNorm(64, eps=1e-6)
    norm.weight.data.normal_()
    x = torch.randn(3, 5, 64, requires_grad=True)
    grad = torch.randn(3, 5, 64)

    expected = norm(x)
    expected_grads = torch.autograd.grad(expected, (x, norm.weight), grad)
    fused = rms_norm(x, norm.weight, 1e-6)
    fused_grads = torch.autograd.grad(fused, (x, norm.weight), grad)

    assert torch.equal(fused, expected)  # the same operations in the same order
    for ours, theirs in zip(fused_grads, expected_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, naive_rms_norm(x, norm.weight, 1e-6))


def test_gradcheck_in_float64():
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))


def test_only_llamas_forward_is_recognised():
    assert has_llama_norm_forward(LlamaRMSNorm)
    assert has_llama_norm_forward(Qwen2RMSNorm)
    assert not has_llama_norm_forward(GemmaRMSNorm)  # scales by 1 + weight
    assert not has_llama_norm_forward(torch.nn.LayerNorm)


def test_a_fused_model_trains_as_the_original(tiny_model_dir, restore_rotary):
    torch.manual_seed(0)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fused = copy.deepcopy(original)
    ids = torch.randint(5, original.config.vocab_size, (2, 12))
    out = original(input_ids=ids, labels=ids)
    out.loss.backward()
    losses = [out.loss]

    layers = original.config.num_hidden_layers
    assert fuse_rms_norms(fused) == 2 * layers + 1  # two per decoder layer and the final one
    assert fuse_rms_norms(fused) == 0  # never twice
    assert fuse_rotary_embeddings(fused) == 1  # modeling_llama's
    assert modeling_llama.apply_rotary_pos_emb is fused_layers.apply_rotary_pos_emb
    out = fused(input_ids=ids, labels=ids)
    out.loss.backward()
    losses.append(out.loss)
    assert torch.equal(losses[0], losses[1])
    for (name, a), b in zip(original.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7, msg=name)
    assert type(fused.model.norm) is LlamaRMSNorm  # the class itself is untouched
    assert "forward" not in vars(original.model.norm)


def test_a_fused_copy_stays_bound_to_itself(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fuse_rms_norms(model)
    twin = copy.deepcopy(model)
    assert twin.model.norm.forward.__self__ is twin.model.norm


def test_bf16_inputs_keep_transformers_path():
    norm = LlamaRMSNorm(16).to(torch.bfloat16)
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    expected = norm(x)
    fuse_rms_norms(norm)
    assert torch.equal(norm(x), expected)


def test_rotary_is_transformers_bit_for_bit_forward_and_backward():
    torch.manual_seed(0)
    q, k = (
        torch.randn(2, 4, 7, 16, requires_grad=True),
        torch.randn(2, 2, 7, 16, requires_grad=True),
    )
    angles = torch.randn(2, 7, 16)
    cos, sin = angles.cos(), angles.sin()
    grads = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 7, 16)

    expected = fused_layers.LLAMA_APPLY_ROTARY(q, k, cos, sin)
    fused = fused_layers.apply_rotary_pos_emb(q, k, cos, sin)
    for ours, theirs in zip(fused, expected):
        assert torch.equal(ours, theirs)
    ours = torch.autograd.grad(fused, (q, k), grads)
    theirs = torch.autograd.grad(expected, (q, k), grads)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_rotary_by_hand():
    # head dim 2: rotate_half([a, b]) = [-b, a], a rotation by the angle
    q = torch.tensor([[[[1.0, 0.0]]]], requires_grad=True)
    angle = torch.tensor([[[0.5, 0.5]]])
    rotated, _ = fused_layers.apply_rotary_pos_emb(q, q, angle.cos(), angle.sin())
    c, s = torch.cos(torch.tensor(0.5)).item(), torch.sin(torch.tensor(0.5)).item()
    assert rotated.flatten().tolist() == pytest.approx([c, s])
    rotated[..., 1].sum().backward()  # d(q1 * sin + q2 * cos)/dq... with q2 = 0 term: [s, c]
    assert q.grad.flatten().tolist() == pytest.approx([s, c])


def test_rotary_keeps_transformers_path_for_bf16_and_learnt_angles():
    q = torch.randn(1, 1, 3, 4, dtype=torch.bfloat16)
    angles = torch.randn(1, 3, 4)
    expected = fused_layers.LLAMA_APPLY_ROTARY(q, q, angles.cos(), angles.sin())
    got = fused_layers.apply_rotary_pos_emb(q, q, angles.cos(), angles.sin())
    assert torch.equal(got[0], expected[0])
    learnt = angles.clone().requires_grad_()
    q32 = q.float()
    fused_layers.apply_rotary_pos_emb(q32, q32, learnt.cos(), learnt.sin())[0].sum().backward()
    assert learnt.grad is not None  # the fused function would give the angles no gradient


def test_only_llamas_rotary_is_replaced(restore_rotary):
    phi3 = tiny_family_model(
        modeling_phi3.Phi3Config,
        modeling_phi3.Phi3ForCausalLM,
        partial_rotary_factor=0.5,
        pad_token_id=0,  # Phi-3's default, 32000, is past the tiny vocabulary
    )
    assert fuse_rotary_embeddings(phi3) == 0  # Phi-3's own code
    qwen = tiny_family_model(modeling_qwen2.Qwen2Config, modeling_qwen2.Qwen2ForCausalLM)
    assert fuse_layers(qwen) is qwen
    assert modeling_qwen2.apply_rotary_pos_emb is fused_layers.apply_rotary_pos_emb


def test_a_frozen_weight_gets_no_gradient_and_the_input_still_does():
    x = torch.randn(2, 3, 8, requires_grad=True)
    frozen = torch.randn(8)
    rms_norm(x, frozen, 1e-6).sum().backward()
    expected = torch.autograd.grad(naive_rms_norm(x, frozen, 1e-6).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)
    assert frozen.grad is None
