import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rlhfkit.models.loading import load_causal_lm
from rlhfkit.rollout.architecture import causal_lm, layer_weight_bias, linear_head
from tests.rollout.conftest import lora_with_weights, tiny_family_model

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 16}),
}


@pytest.mark.parametrize("family", [*FAMILIES, "llama_lora"])
def test_a_linear_head_gives_the_models_own_logits(family, tiny_model_dir):
    if family == "llama_lora":
        model = lora_with_weights(load_causal_lm(tiny_model_dir))
    else:
        config_class, model_class, settings = FAMILIES[family]
        model = tiny_family_model(config_class, model_class, **settings)
    decoder, weight = linear_head(model)
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = decoder(input_ids=ids).last_hidden_state @ weight.T
    assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()


def test_soft_capped_or_adapted_heads_are_not_linear(tiny_model_dir):
    # Gemma 2 soft-caps its logits; a LoRA adapter on the head changes the head itself
    assert linear_head(tiny_family_model(Gemma2Config, Gemma2ForCausalLM, head_dim=16)) is None
    from rlhfkit.models.lora import add_lora

    adapted = add_lora(load_causal_lm(tiny_model_dir), r=2, alpha=4, target_modules=["lm_head"])
    assert linear_head(adapted) is None


def test_a_lora_layers_weight_is_its_base_plus_the_scaled_adapter(tiny_model_dir):
    model = lora_with_weights(load_causal_lm(tiny_model_dir))
    layer = causal_lm(model).model.layers[0].self_attn.q_proj
    weight, bias = layer_weight_bias(layer)
    x = torch.randn(3, weight.shape[1])
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ weight.T, atol=1e-6)
        assert not torch.allclose(weight, layer.base_layer.weight)  # the adapter counts
        with model.disable_adapter():
            assert torch.equal(layer_weight_bias(layer)[0], layer.base_layer.weight)
    assert bias is None
