import pytest
import torch
from transformers import (
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
from rlhfkit.models.lora import add_lora
from rlhfkit.rollout.architecture import supports_fast_decode
from rlhfkit.rollout.engine import positions_from_mask
from rlhfkit.rollout.kv_cache import preallocated_cache
from rlhfkit.rollout.llama_step import PACK_MIN_HIDDEN, FastDecoder, packs_weights
from tests.rollout.conftest import (
    assert_paths_agree,
    generate_samples,
    lora_with_weights,
    prompt_batch,
    seeded_uniforms,
    tiny_family_model,
)


def _decode_both_ways(model, ids, mask, tokens_per_row, pack_rows=0):
    """Logits of each one-token step through the model and through the fast decoder (its
    weights packed for oneDNN with `pack_rows`), on twin caches."""
    positions = positions_from_mask(mask)
    caches = [preallocated_cache(ids.shape[1] + len(tokens_per_row)) for _ in range(2)]
    for cache in caches:
        model(
            input_ids=ids,
            attention_mask=mask.long(),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
    decoder = FastDecoder(model, pack_rows=pack_rows)
    attention, next_position = mask.long(), mask.sum(dim=1)
    pairs = []
    for step, tokens in enumerate(tokens_per_row):
        # the second row stops after the first step: it feeds padding that it may not attend to
        live = torch.tensor([1, int(step == 0)] + [1] * (ids.shape[0] - 2))
        attention = torch.cat([attention, live.unsqueeze(1)], dim=1)
        want = model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=attention,
            position_ids=next_position.unsqueeze(1),
            past_key_values=caches[0],
            use_cache=True,
        ).logits[:, -1]
        got = decoder.decode_step(tokens, next_position, attention, caches[1])
        pairs.append((want, got))
        next_position = next_position + 1
    return pairs


def _random_biases(model):
    """`model` with random biases (a fresh model's are zero, which a step could leave out)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator))
    return model


def test_decode_step_equals_the_models_own_step(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids, mask = prompt_batch(tokenizer)  # left-padded: rows of different lengths
    tokens = [torch.tensor([5, 17, 42]), torch.tensor([8, 1, 99]), torch.tensor([250, 1, 3])]
    with torch.no_grad():
        for want, got in _decode_both_ways(model, ids, mask, tokens):
            assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()


@pytest.mark.parametrize("packed", [False, True])
def test_generate_samples_the_same_tokens_with_and_without_the_fast_path(
    model_and_tokenizer, packed
):
    """packed: the fast path's weights packed for oneDNN (forced: the tiny model is below the
    size `packs_weights` chooses it from)."""
    model, tokenizer = model_and_tokenizer
    assert supports_fast_decode(model, 64)
    if packed:
        if not torch.backends.mkldnn.is_available():
            pytest.skip("no oneDNN in this torch")
    fast = generate_samples(
        model, tokenizer, seed=2, temperature=1.0, max_new_tokens=20, pack_weights=packed
    )
    slow = generate_samples(
        model, tokenizer, seed=2, temperature=1.0, max_new_tokens=20, fast_decode=False
    )
    assert fast.response_mask.sum() > 20
    assert_paths_agree(
        model,
        fast.prompt_ids,
        fast.prompt_mask,
        {
            name: (rollout.response_ids, rollout.response_lengths, rollout.logprobs)
            for name, rollout in (("fast", fast), ("slow", slow))
        },
        uniforms=seeded_uniforms(2, fast.prompt_ids.shape[0], 20),
    )


@pytest.mark.parametrize("family", ["llama_gqa", "qwen2", "mistral", "llama_lora"])
def test_decode_step_reproduces_other_llama_layer_families(family, tiny_model_dir):
    """Grouped-query attention (4 query heads on 2 key/value heads), Qwen2 (q/k/v biases),
    Mistral (a window wider than the cache), and a LoRA model whose adapters are merged into the
    decoder's weights."""
    if family == "llama_gqa":
        model = tiny_family_model(LlamaConfig, LlamaForCausalLM)
    elif family == "qwen2":
        model = _random_biases(tiny_family_model(Qwen2Config, Qwen2ForCausalLM))
        assert model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0
    elif family == "mistral":
        model = tiny_family_model(MistralConfig, MistralForCausalLM, sliding_window=64)
    else:
        model = lora_with_weights(load_causal_lm(tiny_model_dir))
    assert supports_fast_decode(model, 16)
    ids = torch.tensor([[1, 7, 9, 11], [0, 0, 4, 5], [3, 3, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    tokens = [torch.tensor([5, 6, 7]), torch.tensor([8, 0, 10]), torch.tensor([11, 0, 13])]
    with torch.no_grad():
        for want, got in _decode_both_ways(model, ids, mask, tokens):
            assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()


def test_only_models_the_step_reproduces_take_the_fast_path(tiny_model_dir):
    # an output bias, another activation, a window narrower than the cache, another family
    assert not supports_fast_decode(
        tiny_family_model(LlamaConfig, LlamaForCausalLM, attention_bias=True), 8
    )
    assert not supports_fast_decode(
        tiny_family_model(LlamaConfig, LlamaForCausalLM, hidden_act="gelu"), 8
    )
    mistral = tiny_family_model(MistralConfig, MistralForCausalLM, sliding_window=16)
    assert supports_fast_decode(mistral, 16) and not supports_fast_decode(mistral, 17)
    assert not supports_fast_decode(
        tiny_family_model(GemmaConfig, GemmaForCausalLM, head_dim=16), 8
    )
    assert supports_fast_decode(add_lora(load_causal_lm(tiny_model_dir), r=4, alpha=8), 8)


needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch"
)


@needs_onednn
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_decode_step_with_packed_weights_equals_the_models_own_step(family):
    """oneDNN's multiply on packed weights (biases included, Qwen2's) computes the model's step
    up to float rounding, at a batch other than the one the weights were packed for."""
    config, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[family]
    model = tiny_family_model(config, model_class)
    _random_biases(model)
    assert FastDecoder(model, pack_rows=64).layers[0].qkv.is_mkldnn
    ids = torch.tensor([[1, 7, 9, 11], [0, 0, 4, 5], [3, 3, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    tokens = [torch.tensor([5, 6, 7]), torch.tensor([8, 0, 10]), torch.tensor([11, 0, 13])]
    with torch.no_grad():
        pairs = _decode_both_ways(model, ids, mask, tokens, pack_rows=64)
    for want, got in pairs:
        assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()


def test_weights_are_packed_on_a_cpu_in_bf16_and_from_the_size_where_float32_gains():
    cpu, onednn = torch.device("cpu"), torch.backends.mkldnn.is_available()
    small = tiny_family_model(LlamaConfig, LlamaForCausalLM)
    wide = tiny_family_model(LlamaConfig, LlamaForCausalLM, hidden_size=PACK_MIN_HIDDEN)
    assert not packs_weights(small, cpu, None)
    assert packs_weights(wide, cpu, None) == onednn
    assert packs_weights(wide, cpu, torch.float32) == onednn
    bf16_kernels = onednn and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert packs_weights(small, cpu, torch.bfloat16) == bf16_kernels
    assert not packs_weights(wide, torch.device("cuda"), None)
