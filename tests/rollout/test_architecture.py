import logging

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
from rlhfkit.rollout import architecture
from rlhfkit.rollout.architecture import causal_lm, layer_weight_bias, linear_head
from tests.rollout.conftest import (
    generate_samples,
    lora_with_weights,
    prompt_batch,
    tiny_family_model,
)

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
    from peft import LoraConfig, get_peft_model  # add_lora refuses a tied head; peft does not

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["lm_head"], task_type="CAUSAL_LM")
    adapted = get_peft_model(load_causal_lm(tiny_model_dir), config)
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


def test_sampling_past_the_models_positions_warns_once(model_and_tokenizer, monkeypatch, caplog):
    # it computes there anyway, with positions the model never saw: the user must be told
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(architecture, "_WARNED_POSITIONS", set())
    longest = int(prompt_batch(tokenizer)[1].sum(dim=1).max())
    monkeypatch.setattr(model.config, "max_position_embeddings", longest + 4)
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        generate_samples(model, tokenizer, max_new_tokens=4)  # exactly up to the limit
        assert "max_position_embeddings" not in caplog.text
        generate_samples(model, tokenizer, max_new_tokens=6)
        generate_samples(model, tokenizer, max_new_tokens=6)
    warnings = [r.getMessage() for r in caplog.records if "max_position_embeddings" in r.message]
    assert warnings == [
        f"sampling (prompt + max_new_tokens): sequences of up to {longest + 6} positions, past "
        f"the model's max_position_embeddings={longest + 4}; its outputs there are unreliable"
    ]
