"""The bucketed decoding steps: batch sizes, the capacity they are built for, and sampling
through them equal to the default engine (eagerly on any device; captured in CUDA graphs on a
GPU, where the last test runs)."""

import pytest
import torch

from rlhfkit.rollout import decode_graphs
from rlhfkit.rollout.decode_graphs import bucket_sizes, round_capacity, steps_for
from rlhfkit.rollout.engine import generate
from tests.rollout.conftest import (
    assert_paths_agree,
    generate_samples,
    prompt_batch,
    seeded_uniforms,
)

HAS_CUDA = torch.cuda.is_available()


def test_bucket_sizes_halve_from_the_batch_down_to_the_floor():
    assert bucket_sizes(256) == [256, 128, 64, 32, 16, 8]
    assert bucket_sizes(96) == [96, 64, 32, 16, 8]
    assert bucket_sizes(9) == [9, 8]
    assert bucket_sizes(8) == [8]
    assert bucket_sizes(5) == [5]
    assert bucket_sizes(40, floor=16) == [40, 32, 16]


def test_capacity_rounds_up_to_the_multiple():
    assert [round_capacity(n) for n in (1, 64, 65, 130)] == [64, 64, 128, 192]


def _agree(model, tokenizer, bucketed, plain, seed, steps):
    assert_paths_agree(
        model,
        plain.prompt_ids,
        plain.prompt_mask,
        {
            name: (rollout.response_ids, rollout.response_lengths, rollout.logprobs)
            for name, rollout in (("buckets", bucketed), ("plain", plain))
        },
        uniforms=seeded_uniforms(seed, plain.prompt_ids.shape[0], steps),
        temperature=0.8,
    )


def test_sampling_in_buckets_equals_the_plain_engine(model_and_tokenizer):
    """3 prompts x 8 samples = 24 rows in buckets of 24, 16 and 8: rows stop at one token in ten
    and the live ones move to smaller buckets; the tokens, lengths and log-probs are the plain
    engine's (up to near-ties)."""
    model, tokenizer = model_and_tokenizer
    stops = list(range(0, model.config.vocab_size, 10))
    options = dict(seed=3, num_samples=8, max_new_tokens=24, stop_ids=stops)
    plain = generate_samples(model, tokenizer, cuda_graphs=False, **options)
    bucketed = generate_samples(model, tokenizer, cuda_graphs=True, **options)
    finished = int(plain.finished.sum())
    assert finished >= 16, "too few stops to move the rows to a smaller bucket"
    steps = steps_for(model, None, 1, capture=False)
    assert set(steps.buckets) == {24, 16, 8}, "the live rows did not move down the buckets"
    _agree(model, tokenizer, bucketed, plain, seed=3, steps=24)


def test_buckets_are_kept_across_calls_and_take_the_new_weights(model_and_tokenizer):
    """A second call reuses the first one's buckets and graphs (no new `BucketedSteps`) and
    samples with the weights as they are now, not as they were captured."""
    model, tokenizer = model_and_tokenizer
    first = generate_samples(model, tokenizer, seed=4, cuda_graphs=True, max_new_tokens=10)
    steps = steps_for(model, None, 1, capture=False)
    original = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        options = dict(seed=4, max_new_tokens=10)
        bucketed = generate_samples(model, tokenizer, cuda_graphs=True, **options)
        plain = generate_samples(model, tokenizer, cuda_graphs=False, **options)
        assert steps_for(model, None, 1, capture=False) is steps
        assert not torch.equal(bucketed.logprobs, first.logprobs), "the old weights sampled"
        _agree(model, tokenizer, bucketed, plain, seed=4, steps=10)
    finally:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.copy_(original)


def test_a_longer_generation_builds_a_larger_cache(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    generate_samples(model, tokenizer, seed=5, cuda_graphs=True, max_new_tokens=8)
    ids, _ = prompt_batch(tokenizer)
    long = ids.shape[1] + 100
    generate_samples(model, tokenizer, seed=5, cuda_graphs=True, max_new_tokens=100)
    assert steps_for(model, None, 1, capture=False).capacity == round_capacity(long)


def test_the_decoder_owns_its_weights(model_and_tokenizer):
    """The step's weight buffers are copies: writing them (as `refresh` does) leaves the model
    alone, and the model's optimizer may replace its own without leaving the step dangling."""
    model, _ = model_and_tokenizer
    steps = steps_for(model, None, 1, capture=False)
    model_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for tensor in decode_graphs._weights(steps.decoder):
        assert tensor.untyped_storage().data_ptr() not in model_storages


class _RecordedStep:
    """A stand-in for a captured CUDA graph on a CPU: the step's arguments are bound once, at
    "capture", and every replay recomputes into the output buffer of that first run, as a
    graph replays its kernels on the addresses it recorded. A bucket whose inputs, caches or
    weights were rebound rather than written in place would replay on stale tensors."""

    def __init__(self, decoder, bucket):
        self.args = decode_graphs._step_args(decoder, bucket)
        bucket.logits = decode_graphs.static_step(*self.args)
        self.output = bucket.logits

    def replay(self):
        self.output.copy_(decode_graphs.static_step(*self.args))


def test_replayed_steps_read_only_the_recorded_buffers(model_and_tokenizer, monkeypatch):
    """With every bucket's step "captured" (`_RecordedStep`), two calls, the weights changed
    between them, sample the plain engine's tokens: inputs, caches and weights are all written
    in place, where a replay reads them."""
    model, tokenizer = model_and_tokenizer
    model = type(model)(model.config).eval()  # its own steps, not the other tests'
    model.load_state_dict(model_and_tokenizer[0].state_dict())
    recorded = []

    def capture(decoder, bucket):
        bucket.graph = _RecordedStep(decoder, bucket)
        recorded.append(bucket.graph)

    real_steps_for = decode_graphs.steps_for
    monkeypatch.setattr(decode_graphs, "_capture", capture)
    monkeypatch.setattr(
        "rlhfkit.rollout.engine.steps_for",
        lambda model, dtype, positions, capture: real_steps_for(model, dtype, positions, True),
    )
    stops = list(range(0, model.config.vocab_size, 10))
    options = dict(num_samples=8, max_new_tokens=16, stop_ids=stops)
    for seed in (7, 8):
        bucketed = generate_samples(model, tokenizer, seed=seed, cuda_graphs=True, **options)
        plain = generate_samples(model, tokenizer, seed=seed, cuda_graphs=False, **options)
        _agree(model, tokenizer, bucketed, plain, seed=seed, steps=16)
        with torch.no_grad():
            model.model.layers[1].self_attn.o_proj.weight.mul_(-2.0)
    assert len(recorded) == 3, "each bucket (24, 16, 8) recorded once, over both calls"


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_captured_steps_sample_as_the_eager_engine_on_cuda(tiny_model_dir, dtype):
    """On a GPU the bucketed steps replay CUDA graphs; their tokens and log-probs are the
    eager engine's (fp32 up to near-ties; bf16: the same log-probs to bf16 tolerance)."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model_dir).cuda().eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.padding_side = "left"
    ids, mask = prompt_batch(tokenizer)
    runs = {}
    for graphs in (True, False):
        runs[graphs] = generate(
            model,
            ids.cuda(),
            mask.cuda(),
            num_samples=8,
            max_new_tokens=24,
            stop_ids=[tokenizer.eos_token_id, 5],
            pad_token_id=tokenizer.pad_token_id,
            temperature=0.8,
            generator=torch.Generator("cuda").manual_seed(6),
            dtype=dtype,
            cuda_graphs=graphs,
        )
    steps = steps_for(model, dtype, 1, capture=True)
    assert all(bucket.graph is not None for bucket in steps.buckets.values())
    graphed, eager = runs[True], runs[False]
    agree = (graphed.response_ids == eager.response_ids).all(dim=1)
    assert agree.float().mean() >= 0.75, "most rows should not meet a near-tie"
    both = graphed.response_mask & eager.response_mask & agree.unsqueeze(1)
    tolerance = 1e-4 if dtype is None else 5e-2
    assert (graphed.logprobs - eager.logprobs)[both].abs().max() < tolerance
