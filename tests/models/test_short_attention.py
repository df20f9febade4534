import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2 import modeling_qwen2

from rlhfkit.models.short_attention import (
    SHORT_EAGER,
    SHORT_KEYS,
    family_eager_attention,
    use_short_eager_attention,
)
from tests.rollout.conftest import tiny_family_model

FAMILIES = [(LlamaConfig, LlamaForCausalLM), (Qwen2Config, Qwen2ForCausalLM)]


def padded_batch(length: int):
    """Three rows of `length` columns: one left-padded, one right-padded, one full."""
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(3, 300, (3, length), generator=generator)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[0, :5] = 0
    mask[1, -7:] = 0
    return ids, mask


def logits_and_grad(model, ids, mask):
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits
    logits[mask.bool()].square().mean().backward()
    return logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()


@pytest.mark.parametrize("config_class, model_class", FAMILIES)
@pytest.mark.parametrize("length", [SHORT_KEYS - 20, SHORT_KEYS, SHORT_KEYS + 1, 100])
def test_runs_eager_up_to_short_keys_and_sdpa_above(config_class, model_class, length):
    # each call is transformers' own eager or SDPA path, so the floats are that path's exactly
    model = tiny_family_model(config_class, model_class)
    assert use_short_eager_attention(model)
    assert model.config._attn_implementation == SHORT_EAGER
    ids, mask = padded_batch(length)
    got = logits_and_grad(model, ids, mask)
    expected_kernel = "eager" if length <= SHORT_KEYS else "sdpa"
    results = {}
    for kernel in ("eager", "sdpa"):
        model.set_attn_implementation(kernel)
        results[kernel] = logits_and_grad(model, ids, mask)
    assert all(torch.equal(a, b) for a, b in zip(got, results[expected_kernel]))
    # and the two kernels are not the same floats here, so the check above can fail
    assert not torch.equal(results["eager"][0], results["sdpa"][0])


def test_a_cached_forward_across_the_threshold_matches_the_whole_pass():
    # prefill below SHORT_KEYS, then one token at a time past it: the masks' offsets hold on
    # both sides of the switch
    model = tiny_family_model(LlamaConfig, LlamaForCausalLM)
    use_short_eager_attention(model)
    ids, mask = padded_batch(SHORT_KEYS + 8)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    prefix = SHORT_KEYS - 4
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        cache = DynamicCache()
        steps = [
            model(
                input_ids=ids[:, :prefix],
                attention_mask=mask[:, :prefix],
                position_ids=positions[:, :prefix],
                past_key_values=cache,
                use_cache=True,
            ).logits
        ]
        for t in range(prefix, ids.shape[1]):
            steps.append(
                model(
                    input_ids=ids[:, t : t + 1],
                    attention_mask=mask[:, : t + 1],
                    position_ids=positions[:, t : t + 1],
                    past_key_values=cache,
                    use_cache=True,
                ).logits
            )
    cached = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(cached[real], whole[real], atol=1e-5, rtol=1e-5)


def test_a_model_not_on_sdpa_keeps_its_attention():
    model = tiny_family_model(LlamaConfig, LlamaForCausalLM)
    model.set_attn_implementation("eager")  # the user's choice
    assert not use_short_eager_attention(model)
    assert model.config._attn_implementation == "eager"


def test_each_family_uses_its_own_eager_attention():
    model = tiny_family_model(Qwen2Config, Qwen2ForCausalLM)
    attention = model.model.layers[0].self_attn
    assert family_eager_attention(attention) is modeling_qwen2.eager_attention_forward
    assert family_eager_attention(torch.nn.Linear(2, 2)) is None
