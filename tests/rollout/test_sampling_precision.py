"""The decoding step compiled, and sampling in bf16: the same policy as the plain fp32 engine, up
to float rounding."""

import time

import torch

from rlhfkit.objectives.logprobs import token_logprobs
from rlhfkit.rollout.engine import positions_from_mask
from rlhfkit.rollout.kv_cache import preallocated_cache
from rlhfkit.rollout.llama_step import FastDecoder, compiled_step
from tests.rollout.conftest import (
    assert_paths_agree,
    generate_samples,
    rollout_logits,
    seeded_uniforms,
)


def _paths(**rollouts):
    return {
        name: (rollout.response_ids, rollout.response_lengths, rollout.logprobs)
        for name, rollout in rollouts.items()
    }


def test_the_compiled_step_samples_the_same_tokens_as_the_eager_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    eager = generate_samples(model, tokenizer, seed=4, temperature=1.0, max_new_tokens=16)
    started = time.perf_counter()
    compiled = generate_samples(
        model, tokenizer, seed=4, temperature=1.0, max_new_tokens=16, compiled=True
    )
    first_call = time.perf_counter() - started
    assert eager.response_mask.sum() > 16
    assert_paths_agree(
        model,
        eager.prompt_ids,
        eager.prompt_mask,
        _paths(eager=eager, compiled=compiled),
        uniforms=seeded_uniforms(4, eager.prompt_ids.shape[0], 16),
    )
    # the compiled step is made once per process: a second run (other batch sizes: rows are
    # dropped as they stop) reuses it instead of compiling again
    started = time.perf_counter()
    generate_samples(model, tokenizer, seed=5, num_samples=2, max_new_tokens=16, compiled=True)
    assert time.perf_counter() - started < first_call / 3
    assert compiled_step() is compiled_step()


def test_a_bf16_step_matches_the_fp32_step_to_bf16_rounding(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = ids != 0
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        cache = preallocated_cache(ids.shape[1] + 1)
        with torch.no_grad():
            model(
                input_ids=ids,
                attention_mask=mask.long(),
                position_ids=positions_from_mask(mask),
                past_key_values=cache,
                use_cache=True,
            )
        for layer in cache.layers:
            layer.to_dtype(dtype)
        decoder = FastDecoder(model, dtype)
        attention = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], dim=1)
        step = decoder.decode_step(torch.tensor([7, 9]), mask.sum(dim=1), attention, cache)
        assert step.dtype == dtype and cache.layers[0].key_buffer.dtype == dtype
        logits[dtype] = step.float()
    scale = logits[torch.float32].abs().max()
    assert (logits[torch.bfloat16] - logits[torch.float32]).abs().max() < 0.05 * scale


def test_bf16_sampling_logprobs_match_the_training_forward_in_bf16(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    for fast_decode in (True, False):
        rollout = generate_samples(
            model, tokenizer, seed=1, max_new_tokens=12, dtype=torch.bfloat16,
            fast_decode=fast_decode, temperature=1.0,
        )  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = rollout_logits(model, rollout)
        training = token_logprobs(logits, rollout.response_ids)
        gap = (training - rollout.logprobs)[rollout.response_mask].abs()
        # bf16 keeps 8 bits of mantissa: log-probs of a few nats agree to a few hundredths
        assert gap.mean() < 0.02 and gap.max() < 0.1, (fast_decode, gap.mean(), gap.max())
        # and it did sample in bf16: the first token (same draw, same prompt) has another
        # log-prob than in float32
        fp32 = generate_samples(model, tokenizer, seed=1, max_new_tokens=1, temperature=1.0)
        same = fp32.response_ids[:, 0] == rollout.response_ids[:, 0]
        assert same.sum() > 3
        assert (fp32.logprobs[same, 0] - rollout.logprobs[same, 0]).abs().max() > 1e-4
