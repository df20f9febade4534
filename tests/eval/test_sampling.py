import torch

from rlhfkit.eval.sampling import sample_for_eval
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.rollout.engine import generate
from rlhfkit.rollout.forward import response_logprobs
from rlhfkit.rollout.sample import stop_token_ids
from rlhfkit.rollout.text import encode_prompts
from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.progress import work_bar

PROMPTS = ["Q: 3 + 4?\nA:", "User: How do I sleep better?\nAssistant:", "Q: 9 - 2?\nA:"]


def _models(tiny_model_dir):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    other = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model, other, tokenizer


@torch.no_grad()
def same_draws(model, tokenizer, dtype=None):
    """The engine's rollout of two samples per prompt with seed 3, as `sample_for_eval` draws."""
    ids, mask = encode_prompts(tokenizer, PROMPTS, torch.device("cpu"))
    return generate(
        model.eval(),
        ids,
        mask,
        num_samples=2,
        max_new_tokens=12,
        stop_ids=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(3),
        dtype=dtype,
    )


def test_kl_to_itself_is_zero_and_greedy_answers_carry_no_kl(tiny_model_dir):
    model, _, tokenizer = _models(tiny_model_dir)
    sampled = sample_for_eval(
        model, tokenizer, PROMPTS, num_samples=3, reference=model, max_new_tokens=12
    )
    assert [len(row) for row in sampled.texts] == [3, 3, 3] and [
        len(row) for row in sampled.lengths
    ] == [3, 3, 3]
    for name in ("k1", "k3"):
        assert max(abs(v) for v in sampled.flat(sampled.kl[name])) < 1e-4
    greedy = sample_for_eval(
        model, tokenizer, PROMPTS, greedy=True, reference=model, max_new_tokens=12
    )
    assert greedy.kl == {} and [len(row) for row in greedy.texts] == [1, 1, 1]


def test_sequence_kl_equals_the_naive_sum_over_a_fresh_pass_of_both_models(tiny_model_dir):
    model, reference, tokenizer = _models(tiny_model_dir)
    got = sample_for_eval(
        model, tokenizer, PROMPTS, num_samples=2, reference=reference, max_new_tokens=12, seed=3
    )
    # the same draws by hand: the engine with the same seed, then both models' log-probs
    rollout = same_draws(model, tokenizer)
    with torch.no_grad():
        width = rollout.response_ids.shape[1]
        logp = response_logprobs(model, rollout.input_ids, rollout.attention_mask, width).logprobs
        ref = response_logprobs(
            reference.eval(), rollout.input_ids, rollout.attention_mask, width
        ).logprobs
    naive = [
        sum((logp[i, t] - ref[i, t]).item() for t in range(width) if rollout.response_mask[i, t])
        for i in range(logp.shape[0])
    ]
    assert torch.allclose(torch.tensor(got.flat(got.kl["k1"])), torch.tensor(naive), atol=1e-4)
    assert got.flat(got.lengths) == rollout.response_lengths.tolist()
    assert all(v >= 0 for v in got.flat(got.kl["k3"]))  # k3 is never negative


def test_bf16_samples_as_a_bf16_run_and_measures_the_kl_under_autocast(tiny_model_dir):
    model, _, tokenizer = _models(tiny_model_dir)
    got = sample_for_eval(
        model,
        tokenizer,
        PROMPTS,
        num_samples=2,
        reference=model,
        max_new_tokens=12,
        seed=3,
        precision=Precision.BF16,
    )
    rollout = same_draws(model, tokenizer, dtype=torch.bfloat16)
    assert got.flat(got.lengths) == rollout.response_lengths.tolist()  # the bf16 draws
    # the sampler's bf16 log-probs against the model's own pass under bf16 autocast: its KL to
    # itself is zero up to bf16 rounding (fp32's sampler against a bf16 pass is not)
    for name in ("k1", "k3"):
        assert max(abs(v) for v in got.flat(got.kl[name])) < 0.02


def test_the_models_modes_are_restored(tiny_model_dir):
    model, reference, tokenizer = _models(tiny_model_dir)
    model.train(), reference.train()
    sample_for_eval(
        model, tokenizer, PROMPTS[:1], num_samples=2, reference=reference, max_new_tokens=4
    )
    assert model.training and reference.training


def test_a_progress_name_draws_a_bar_of_the_batches_and_changes_no_answer(
    tiny_model_dir, monkeypatch
):
    from rlhfkit.rollout import sample

    bars = []

    def recorded(total, description):
        bars.append(work_bar(total, description))
        return bars[-1]

    monkeypatch.setattr(sample, "work_bar", recorded)  # the batches' bar, drawn there
    model, _, tokenizer = _models(tiny_model_dir)
    common = dict(num_samples=2, max_new_tokens=6, batch_size=4, seed=1)
    shown = sample_for_eval(model, tokenizer, PROMPTS, progress="eval tiny", **common)
    silent = sample_for_eval(model, tokenizer, PROMPTS, **common)
    assert shown.texts == silent.texts
    # 3 prompts, 2 prompts (4 answers) a batch: 2 batches; the silent call's bar draws nothing
    assert [(b.description, b.total, b.completed, b.enabled) for b in bars] == [
        ("eval tiny", 2, 2, True),
        ("", 2, 2, False),
    ]
    assert bars[0].tokens == sum(shown.flat(shown.lengths))
