import pytest
import torch
import torch.nn.functional as F

from rlhfkit.objectives.logprobs import token_logprobs
from rlhfkit.rollout import engine
from rlhfkit.rollout.engine import filter_logits, generate, positions_from_mask
from tests.rollout.conftest import acceptable_tokens, assert_paths_agree, seeded_uniforms
from tests.rollout.conftest import generate_samples as _generate
from tests.rollout.conftest import prompt_batch as _prompts


def test_sampling_logprobs_equal_a_fresh_forward_pass(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rollout = _generate(model, tokenizer, temperature=0.7, top_k=50, top_p=0.9)
    mask = rollout.attention_mask
    with torch.no_grad():
        logits = model(
            input_ids=rollout.input_ids,
            attention_mask=mask.long(),
            position_ids=positions_from_mask(mask),
        ).logits
    prompt_len = rollout.prompt_ids.shape[1]
    # position t predicts token t+1: the response's logits start at the prompt's last token
    response_logits = logits[:, prompt_len - 1 : -1] / 0.7
    fresh = token_logprobs(response_logits, rollout.response_ids)
    assert rollout.response_mask.sum() > 20
    diff = (fresh - rollout.logprobs)[rollout.response_mask].abs().max()
    assert diff < 1e-5
    assert torch.all(rollout.logprobs[~rollout.response_mask] == 0)


def test_same_seed_same_samples_other_seed_other_samples(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    a, b = _generate(model, tokenizer, seed=3), _generate(model, tokenizer, seed=3)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    c = _generate(model, tokenizer, seed=4)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_sampling_in_bf16_on_a_cpu_without_bf16_units_warns(
    model_and_tokenizer, monkeypatch, caplog
):
    # `rlhfkit sample` and eval sample in bf16 without entering a training pass's autocast
    from rlhfkit.runtime import device as device_module

    model, tokenizer = model_and_tokenizer
    device_module._warn_bf16_emulated.cache_clear()
    monkeypatch.setattr(device_module, "cpu_has_bf16_units", lambda: False)
    with caplog.at_level("WARNING", logger="rlhfkit"):
        _generate(model, tokenizer, max_new_tokens=2)  # fp32: nothing to say
        assert not caplog.records
        _generate(model, tokenizer, max_new_tokens=2, dtype=torch.bfloat16)
    assert ["emulated" in r.getMessage() for r in caplog.records] == [True]
    device_module._warn_bf16_emulated.cache_clear()


def test_rows_stop_at_their_first_stop_token_and_are_padded_after(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    stop_ids = list(range(2, 300, 7))  # many stop tokens: rows stop at different steps
    rollout = _generate(model, tokenizer, stop_ids=stop_ids, max_new_tokens=40)
    lengths = rollout.response_lengths.tolist()
    assert len(set(lengths)) > 1
    for row, length, finished in zip(
        rollout.response_ids.tolist(), lengths, rollout.finished.tolist()
    ):
        body = row[:length]
        assert not any(t in stop_ids for t in body[:-1])
        assert finished == (body[-1] in stop_ids)
        assert finished or length == 40
        assert all(t == tokenizer.pad_token_id for t in row[length:])


def test_dropping_finished_rows_does_not_change_the_samples(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    stop_ids = list(range(2, 300, 5))
    monkeypatch.setattr(engine, "COMPACT_WHEN_FINISHED", 2.0)  # never compact
    kept = _generate(model, tokenizer, stop_ids=stop_ids)
    monkeypatch.setattr(engine, "COMPACT_WHEN_FINISHED", 0.0)  # compact at every stop
    compacted = _generate(model, tokenizer, stop_ids=stop_ids)
    assert len(set(kept.response_lengths.tolist())) > 1  # rows stopped at different steps
    assert_paths_agree(
        model,
        kept.prompt_ids,
        kept.prompt_mask,
        {
            name: (rollout.response_ids, rollout.response_lengths, rollout.logprobs)
            for name, rollout in (("kept", kept), ("compacted", compacted))
        },
        uniforms=seeded_uniforms(0, kept.prompt_ids.shape[0], 24),
        temperature=0.8,
    )


def test_samples_of_one_prompt_are_consecutive_rows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rollout = _generate(model, tokenizer, num_samples=4)
    ids, _ = _prompts(tokenizer)
    assert rollout.response_ids.shape[0] == 12
    assert torch.equal(rollout.prompt_ids, ids.repeat_interleave(4, dim=0))


def test_greedy_matches_model_generate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids, mask = _prompts(tokenizer)
    rollout = generate(
        model,
        ids,
        mask,
        num_samples=1,
        max_new_tokens=16,
        stop_ids=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        greedy=True,
    )
    reference = model.generate(
        input_ids=ids,
        attention_mask=mask.long(),
        do_sample=False,
        max_new_tokens=16,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    expected = reference[:, ids.shape[1] :]
    ends = expected == tokenizer.eos_token_id
    expected_lengths = torch.where(ends.any(dim=1), ends.int().argmax(dim=1) + 1, expected.shape[1])
    assert_paths_agree(
        model,
        ids,
        mask,
        {
            "engine": (rollout.response_ids, rollout.response_lengths, rollout.logprobs),
            "generate": (expected, expected_lengths, None),
        },
    )


def test_near_ties_are_the_only_tokens_two_paths_may_choose_differently():
    # greedy: within 1e-4 of the logit scale (here 1) of the maximum
    assert acceptable_tokens(torch.tensor([1.0, 1.0 - 5e-5, 0.9])).tolist() == [True, True, False]
    # sampled from probabilities (1/4, 1/4, 1/2): CDF edges at 0.25 and 0.5
    logits = torch.tensor([0.25, 0.25, 0.5]).log()
    assert acceptable_tokens(logits, torch.tensor(0.2)).tolist() == [True, False, False]
    assert acceptable_tokens(logits, torch.tensor(0.5 - 5e-5)).tolist() == [False, True, True]
    # T = 0.5 sharpens them to (1/6, 1/6, 2/3): the same draw falls in the second interval
    assert acceptable_tokens(logits, torch.tensor(0.2), temperature=0.5).tolist() == [
        False,
        True,
        False,
    ]


def test_the_path_comparison_fails_on_a_wrong_token(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rollout = _generate(model, tokenizer)
    assert rollout.response_lengths[0] > 3
    wrong = rollout.response_ids.clone()
    # half the vocabulary away from the drawn token in the CDF: never a near-tie
    wrong[0, 3] = (wrong[0, 3] + model.config.vocab_size // 2) % model.config.vocab_size
    paths = {
        "sampled": (rollout.response_ids, rollout.response_lengths, rollout.logprobs),
        "wrong": (wrong, rollout.response_lengths, rollout.logprobs),
    }
    uniforms = seeded_uniforms(0, rollout.prompt_ids.shape[0], 24)
    with pytest.raises(AssertionError, match="wrong: row 0 step 3: not the reference's choice"):
        assert_paths_agree(
            model, rollout.prompt_ids, rollout.prompt_mask, paths, uniforms, temperature=0.8
        )


def test_filter_logits_hand_values():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=1.0)[0, 2:]).all()
    assert torch.equal(filter_logits(logits, top_k=2, top_p=1.0)[0, :2], logits[0, :2])
    # probabilities ~ 0.644, 0.237, 0.087, 0.032: top_p 0.7 keeps the first two, 0.5 only the first
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.7)).tolist() == [
        [True, True, False, False]
    ]
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.5)).tolist() == [
        [True, False, False, False]
    ]
    assert torch.equal(filter_logits(logits, top_k=0, top_p=1.0), logits)


def test_positions_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_inverse_cdf_draws_follow_the_filtered_distribution():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0, -9.0]]).expand(40000, 5)
    uniforms = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    tokens = engine._choose(logits, greedy=False, top_k=3, top_p=1.0, uniforms=uniforms)
    frequencies = torch.bincount(tokens, minlength=5).float() / 40000
    expected = filter_logits(logits[:1], top_k=3, top_p=1.0).softmax(dim=-1)[0]
    assert frequencies[2] == 0 and frequencies[4] == 0  # outside the top 3: never drawn
    assert torch.allclose(frequencies, expected, atol=0.01)


def test_a_batch_sampled_in_shares_draws_as_the_whole_batch(model_and_tokenizer):
    # two ranks' shares of one batch (whole prompts each), each drawing the whole batch's noise
    # and keeping its rows', then advancing the generator as far as the longest share decoded
    model, tokenizer = model_and_tokenizer
    ids, mask = _prompts(tokenizer)
    options = dict(
        num_samples=3,
        max_new_tokens=24,
        stop_ids=list(range(2, 300, 5)),  # rows stop at different steps
        pad_token_id=tokenizer.pad_token_id,
        temperature=0.8,
    )
    whole_generator = torch.Generator().manual_seed(0)
    whole = generate(model, ids, mask, generator=whole_generator, **options)
    total, split = whole.response_ids.shape[0], 1
    shares, generators = [], []
    for prompts, first in ((slice(0, split), 0), (slice(split, None), split * 3)):
        generator = torch.Generator().manual_seed(0)
        rows = engine.DrawRows(first, total)
        shares.append(
            generate(
                model, ids[prompts], mask[prompts], generator=generator, draw_rows=rows, **options
            )
        )
        generators.append(generator)
    steps = [share.response_ids.shape[1] for share in shares]
    assert steps[0] != steps[1]  # one share stopped earlier

    def after(count):  # the generator's state after `count` decoding steps of the whole batch
        generator = torch.Generator().manual_seed(0)
        for _ in range(count):
            torch.rand(total, generator=generator)
        return generator.get_state()

    # each share's generator ends as the whole batch's would after the longest share's steps;
    # that is where the whole batch's ended, unless a near-tie made the paths' longest rows
    # end apart (`assert_paths_agree` below)
    assert torch.equal(whole_generator.get_state(), after(whole.response_ids.shape[1]))
    for share, generator in zip(shares, generators):
        engine.skip_draws(
            generator, torch.device("cpu"), total, max(steps) - share.response_ids.shape[1]
        )
        assert torch.equal(generator.get_state(), after(max(steps)))

    def joined(name, pad):
        parts = [getattr(share, name) for share in shares]
        return torch.cat([F.pad(p, (0, max(steps) - p.shape[1]), value=pad) for p in parts])

    assert_paths_agree(
        model,
        whole.prompt_ids,
        whole.prompt_mask,
        {
            "whole": (whole.response_ids, whole.response_lengths, whole.logprobs),
            "shares": (
                joined("response_ids", tokenizer.pad_token_id),
                torch.cat([share.response_lengths for share in shares]),
                joined("logprobs", 0.0),
            ),
        },
        uniforms=seeded_uniforms(0, total, 24),
        temperature=0.8,
    )
