import logging
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.data.formats import SFTExample
from rlhfkit.data.tokenize import tokenize_sft
from rlhfkit.feedback.judge import (
    ANSWER_A,
    answer_inputs,
    conversation_text,
    cut_comparisons,
    judge_first_better_prob,
    judge_pairs,
    judge_prompt,
    preference_rows,
)
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import train_tokenizer
from rlhfkit.rollout import architecture

PROMPTS = [
    "User: How can I sleep better at night?\nAssistant:",
    "User: Any tips for a new runner?\nAssistant:",
    "User: How do I start running?\nAssistant:",
]
FIRST = [
    " Keep your bedroom dark and cool. Good luck!",
    " That is a silly question.",
    " Always wear a helmet.",
]
SECOND = [
    " I do not care about this.",
    " Start with short runs and walk breaks. Wear shoes that fit your feet well.",
    " Run at a pace where you can still talk.",
]


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    return load_causal_lm(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


def test_judge_prompt_quotes_the_conversation_and_both_replies():
    assert judge_prompt(PROMPTS[0], FIRST[0], " Go to bed.") == (
        "User: How can I sleep better at night?\n"
        "Reply A: Keep your bedroom dark and cool. Good luck!\n"
        "Reply B: Go to bed.\nWhich reply is better?\nJudge:"
    )
    messages = [{"role": "user", "content": "Hi"}]
    assert conversation_text(messages) == "User: Hi"
    assert judge_prompt(messages, [{"role": "assistant", "content": "Hello."}], "Hey.").startswith(
        "User: Hi\nReply A: Hello.\nReply B: Hey.\n"
    )


@pytest.mark.parametrize(
    "corpus",
    [["Reply A or B? A B A B"] * 20, ["hello world"]],
    ids=["answer-is-one-token", "space-split-from-letter"],
)
def test_answer_inputs_stop_where_the_two_answers_differ(corpus):
    tokenizer = train_tokenizer(corpus, 300)
    text = judge_prompt(PROMPTS[0], FIRST[0], SECOND[0])
    [inputs], [token_a], [token_b] = answer_inputs(tokenizer, [text])
    assert token_a != token_b
    assert tokenizer.decode(inputs + [token_a]) == text + " A"
    assert tokenizer.decode(inputs + [token_b]) == text + " B"
    assert tokenizer.decode(inputs) in (
        text,
        text + " ",
    )  # the prompt, and the space when it stands alone


def test_answer_inputs_start_with_the_bos_a_judge_row_is_trained_with(bos_tokenizer):
    # a judge row is SFT text: the tokenizer's BOS opens it, so the question does too
    text = judge_prompt(PROMPTS[0], FIRST[0], SECOND[0])
    [inputs], [token_a], _ = answer_inputs(bos_tokenizer, [text])
    assert inputs + [token_a] == bos_tokenizer(text + " A")["input_ids"][: len(inputs) + 1]
    assert inputs[0] == bos_tokenizer.bos_token_id and inputs.count(bos_tokenizer.bos_token_id) == 1


def test_batched_left_padded_probs_equal_one_row_at_a_time(judge):
    model, tokenizer = judge
    batched = judge_first_better_prob(model, tokenizer, PROMPTS, FIRST, SECOND, batch_size=3)
    assert batched.shape == (3,) and batched.dtype == torch.float32
    texts = [judge_prompt(p, a, b) for p, a, b in zip(PROMPTS, FIRST, SECOND)]
    inputs, tokens_a, tokens_b = answer_inputs(tokenizer, texts)
    assert len({len(ids) for ids in inputs}) == 3  # the rows do need padding
    with torch.no_grad():
        for i, ids in enumerate(inputs):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            expected = torch.softmax(logits[[tokens_a[i], tokens_b[i]]], dim=0)[0]
            assert batched[i].item() == pytest.approx(expected.item(), abs=1e-5)
    # one row per batch gives the same numbers
    assert torch.allclose(
        judge_first_better_prob(model, tokenizer, PROMPTS, FIRST, SECOND, batch_size=1),
        batched,
        atol=1e-5,
    )


def test_judge_pairs_asks_both_orders_and_averages(judge):
    model, tokenizer = judge
    result = judge_pairs(model, tokenizer, PROMPTS, FIRST, SECOND, batch_size=4)
    swapped = judge_first_better_prob(model, tokenizer, PROMPTS, SECOND, FIRST)
    assert torch.allclose(result.prob_ba, swapped, atol=1e-5)
    assert torch.allclose(result.first_better, (result.prob_ab + 1 - result.prob_ba) / 2)
    # swapping the pairs swaps the verdicts
    mirrored = judge_pairs(model, tokenizer, PROMPTS, SECOND, FIRST)
    assert torch.allclose(mirrored.first_better, 1 - result.first_better, atol=1e-5)


class AlwaysA(torch.nn.Module):
    """A judge that prefers position A by a logit of 2, whatever the replies say."""

    def __init__(self, token_a: int, vocab: int):
        super().__init__()
        self.token_a, self.vocab = token_a, vocab
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, :, self.token_a] = 2.0
        return SimpleNamespace(logits=logits)


def test_a_judge_that_always_says_a_is_all_position_bias(judge):
    _, tokenizer = judge
    token_a = answer_inputs(tokenizer, [judge_prompt(PROMPTS[0], FIRST[0], SECOND[0])])[1][0]
    result = judge_pairs(AlwaysA(token_a, len(tokenizer)), tokenizer, PROMPTS, FIRST, SECOND)
    p_a = torch.sigmoid(torch.tensor(2.0)).item()
    assert result.prob_ab.tolist() == pytest.approx([p_a] * 3)
    assert result.first_better.tolist() == pytest.approx([0.5] * 3)
    assert result.position_bias == pytest.approx(p_a - 0.5)
    assert result.flip_rate == 1.0


def test_preference_rows_follow_the_verdict_and_drop_near_ties():
    first_better = torch.tensor([0.9, 0.2, 0.5, 0.55])
    rows = preference_rows(
        ["p0", "p1", "p2", "p3"], ["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"], first_better
    )
    assert rows == [
        {"prompt": "p0", "chosen": "a0", "rejected": "b0"},
        {"prompt": "p1", "chosen": "b1", "rejected": "a1"},
        {"prompt": "p3", "chosen": "a3", "rejected": "b3"},
    ]  # the exact tie is dropped
    kept = preference_rows(
        ["p0", "p1", "p2", "p3"],
        ["a0", "a1", "a2", "a3"],
        ["b0", "b1", "b2", "b3"],
        first_better,
        min_margin=0.1,
    )
    assert [row["prompt"] for row in kept] == ["p0", "p1"]


def test_no_pairs_no_work(judge):
    model, tokenizer = judge
    assert judge_pairs(model, tokenizer, [], [], []).first_better.shape == (0,)


def test_a_judge_asked_past_its_positions_reads_the_end_of_each_comparison(
    judge, monkeypatch, caplog
):
    # the judge reads prompt and both replies: past its positions its verdict would be noise,
    # so a comparison too long loses the start of its prompt, as its training rows do
    model, tokenizer = judge
    monkeypatch.setattr(architecture, "_WARNED_POSITIONS", set())
    texts = [judge_prompt(p, a, b) for p, a, b in zip(PROMPTS, FIRST, SECOND)]
    longest = max(len(ids) for ids in answer_inputs(tokenizer, texts)[0])
    limit = longest - 4
    monkeypatch.setattr(model.config, "max_position_embeddings", limit)
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        by_limit = judge_first_better_prob(model, tokenizer, PROMPTS, FIRST, SECOND)
    assert "past the model's max_position_embeddings" not in caplog.text
    explicit = judge_first_better_prob(model, tokenizer, PROMPTS, FIRST, SECOND, max_length=limit)
    assert torch.equal(by_limit, explicit)  # the same computation: the limit is the model's
    inputs = answer_inputs(tokenizer, texts, limit)[0]
    assert max(map(len, inputs)) < limit


@pytest.mark.parametrize("max_length", [12, 20, 1000])
def test_a_cut_comparison_is_what_the_judges_sft_row_keeps(judge, max_length):
    # a judge row is the comparison with " A" (or " B") as its completion, tokenised by SFT with
    # keep_end: the tokens before the answer's letter (a space the tokenizer keeps apart
    # included) are exactly what the judge is then asked on
    _, tokenizer = judge
    texts = [judge_prompt(p, a, b) for p, a, b in zip(PROMPTS, FIRST, SECOND)]
    inputs, tokens_a, _ = answer_inputs(tokenizer, texts, max_length)
    rows = [SFTExample(prompt=text, completion=ANSWER_A) for text in texts]
    encoded, _ = tokenize_sft(tokenizer, rows, max_length=max_length, truncation="keep_end")
    for ids, answer, row in zip(inputs, tokens_a, encoded):
        assert row.input_ids[: len(ids)] == ids and row.input_ids[len(ids)] == answer
        assert row.input_ids[len(ids) + 1 :] == [tokenizer.eos_token_id]  # the letter, then EOS


def test_a_progress_bar_changes_no_verdict(judge):
    model, tokenizer = judge
    shown = judge_first_better_prob(
        model, tokenizer, PROMPTS, FIRST, SECOND, batch_size=2, progress="judging"
    )
    silent = judge_first_better_prob(model, tokenizer, PROMPTS, FIRST, SECOND, batch_size=2)
    assert torch.equal(shown, silent)  # the same computation, replayed


def test_a_comparison_cut_into_its_replies_is_counted_and_warned(judge, caplog):
    # keep_end drops the conversation first; past it, reply A's start: that verdict did not
    # read both replies
    model, tokenizer = judge
    long_first = [FIRST[0] + " and more" * 60, FIRST[1], FIRST[2]]
    texts = [judge_prompt(p, a, b) for p, a, b in zip(PROMPTS, long_first, SECOND)]
    whole = [len(ids) for ids in answer_inputs(tokenizer, texts)[0]]
    limit = sorted(whole)[1] - 2  # the two longest are cut, the shortest is not
    inputs = answer_inputs(tokenizer, texts, limit)[0]
    cut = cut_comparisons(tokenizer, PROMPTS, texts, inputs)
    assert cut.cut.tolist() == [n > len(ids) for n, ids in zip(whole, inputs)]
    assert cut.replies_cut.tolist() == [True, False, False]  # the long reply pushed A out
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        judge_first_better_prob(model, tokenizer, PROMPTS, long_first, SECOND, max_length=limit)
    assert "judge: 1 of 3 comparisons are so much longer than the" in caplog.text
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(tokenizer, "model_max_length", limit)
    try:
        judged = judge_pairs(model, tokenizer, PROMPTS, long_first, SECOND)
    finally:
        monkeypatch.undo()
    assert (judged.cut, judged.replies_cut) == (int(sum(cut.cut)), 1)
