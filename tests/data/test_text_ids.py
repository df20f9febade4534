"""From a text to token ids: chat rendering, the tokenizer's BOS, and many texts per call."""

import copy

import pytest
from transformers import AutoTokenizer

from rlhfkit.data import text_ids, tokenize
from rlhfkit.data.formats import PreferenceExample, RankingExample, SFTExample
from rlhfkit.data.text_ids import (
    encode_rendered,
    encode_rendered_batch,
    encode_text,
    encode_texts,
    encode_window,
    encode_windows,
    render_text,
    special_prefix,
)
from rlhfkit.data.tokenize import tokenize_preferences, tokenize_rankings, tokenize_sft
from rlhfkit.errors import RlhfkitError

USER = {"role": "user", "content": "what is two plus three"}
TEXTS = ["what is two plus", "", " three", "what is two plus", "the cat sat on the mat"]


class CountingTokenizer:
    """A tokenizer that counts its calls and the texts it was given."""

    def __init__(self, inner):
        self.inner, self.calls, self.texts = inner, 0, 0

    def __call__(self, text, **kwargs):
        self.calls += 1
        self.texts += 1 if isinstance(text, str) else len(text)
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_render_text_passes_strings_and_templates_messages(tokenizer):
    assert render_text(tokenizer, "plain", as_prompt=True) == "plain"
    rendered = render_text(tokenizer, [USER], as_prompt=True)
    assert rendered == "<|im_start|>user\nwhat is two plus three<|im_end|>\n<|im_start|>assistant\n"
    assert not render_text(tokenizer, [USER], as_prompt=False).endswith("assistant\n")


def test_tool_calls_need_a_template_that_writes_them(tokenizer):
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    chat = [USER, {"role": "assistant", "content": "", "tool_calls": [call]}]
    # ChatML as the tiny model writes it: each message's content only, the call lost
    with pytest.raises(RlhfkitError, match="does not write tool_calls"):
        render_text(tokenizer, chat, as_prompt=True)
    with_tools = copy.copy(tokenizer)
    with_tools.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}<|im_end|>\n{% endfor %}"
    )
    rendered = render_text(with_tools, chat, as_prompt=False)
    assert '"name": "add"' in rendered and rendered.endswith('"b": 3}}}]<|im_end|>\n')


def test_special_prefix_is_what_the_tokenizer_puts_before_a_text(
    bos_tokenizer, tokenizer, tiny_model_dir
):
    assert special_prefix(bos_tokenizer) == [bos_tokenizer.bos_token_id]
    assert special_prefix(tokenizer) == []
    assert special_prefix(AutoTokenizer.from_pretrained(tiny_model_dir)) == []  # the demo's


@pytest.mark.parametrize("templated", [False, True])
@pytest.mark.parametrize("which", ["tokenizer", "bos_tokenizer"])
def test_a_batch_gives_each_texts_own_ids(request, which, templated):
    chosen = request.getfixturevalue(which)
    batch = encode_rendered_batch(chosen, TEXTS, templated=templated)
    naive = [chosen(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    if not templated:  # plain text opens with the prefix, once
        prefix = special_prefix(chosen)
        naive = [ids if ids[: len(prefix)] == prefix else prefix + ids for ids in naive]
    assert batch == naive
    assert batch == [encode_rendered(chosen, t, templated=templated) for t in TEXTS]
    if which == "bos_tokenizer" and not templated:
        assert all(ids[0] == chosen.bos_token_id for ids in batch)
    # a repeated text gets a list of its own: appending to one leaves the other as it was
    batch[0].append(-1)
    assert batch[3] == naive[3] and batch[0] is not batch[3]


def test_a_batch_calls_the_tokenizer_once_per_chunk_of_distinct_texts(monkeypatch, tokenizer):
    monkeypatch.setattr(text_ids, "TEXTS_PER_CALL", 2)
    counting = CountingTokenizer(tokenizer)
    ids = encode_rendered_batch(counting, TEXTS + TEXTS, templated=True)
    assert ids == encode_rendered_batch(tokenizer, TEXTS + TEXTS, templated=True)
    assert (counting.calls, counting.texts) == (2, 4)  # 4 distinct texts, 2 per call


def test_encode_texts_mixes_plain_and_chat_texts_in_order(bos_tokenizer):
    texts = ["what is two plus", [USER], " three", [USER, {"role": "assistant", "content": "x"}]]
    assert encode_texts(bos_tokenizer, texts, as_prompt=True) == [
        encode_text(bos_tokenizer, t, as_prompt=True) for t in texts
    ]


def test_windows_of_many_rows_equal_each_rows_window(monkeypatch, tokenizer):
    monkeypatch.setattr(text_ids, "CHARS_PER_TOKEN", 1)  # a budget of 72 characters
    long = " the cat sat on the mat" * 30  # 690 characters: cut to a window
    rows = [
        ["what is", "what is" + long],
        ["a", "a b"],
        ["<|im_start|>user", "<|im_start|>user\n" + long + "<|im_end|>"],
        ["", "the cat"],
    ]
    templated = [False, False, True, False]
    settings = dict(max_length=8, keep_end=False)
    together = encode_windows(tokenizer, rows, templated=templated, **settings)
    alone = [encode_window(tokenizer, r, templated=t, **settings) for r, t in zip(rows, templated)]
    assert together == alone
    assert [cut for _, cut in together] == [True, False, True, False]


def test_a_dataset_is_tokenised_in_a_few_calls(tokenizer):
    counting = CountingTokenizer(tokenizer)
    examples = [SFTExample(f"what is {n} plus", f" {n + 1}") for n in range(300)]
    encoded, report = tokenize_sft(counting, examples, max_length=64, truncation="drop")
    assert report.kept == 300
    # 600 texts in one call, and the two calls that read the tokenizer's BOS
    assert counting.calls == 3
    assert encoded == tokenize_sft(tokenizer, examples, max_length=64, truncation="drop")[0]


@pytest.mark.parametrize("pairs_per_batch", [1, 3, 512])  # batches that split a ranking too
def test_pairs_and_rankings_tokenised_together_equal_one_by_one(
    monkeypatch, bos_tokenizer, pairs_per_batch
):
    monkeypatch.setattr(tokenize, "PAIRS_PER_BATCH", pairs_per_batch)
    five, six = [{"role": "assistant", "content": "five"}], [{"role": "assistant", "content": "6"}]
    pairs = [PreferenceExample("what is", " two", " three"), PreferenceExample([USER], five, six)]
    rankings = [
        RankingExample("what is", (" two", " three", " two"), (0, 1, 2)),
        RankingExample("the cat", (" sat", " mat"), (1, 0)),
    ]
    settings = dict(max_length=16, truncation="keep_start")
    together = tokenize_preferences(bos_tokenizer, pairs, **settings)
    alone = [tokenize_preferences(bos_tokenizer, [p], **settings)[0] for p in pairs]
    assert together[0] == [pair for one in alone for pair in one]
    ranked = tokenize_rankings(bos_tokenizer, rankings, **settings)
    ranked_alone = [tokenize_rankings(bos_tokenizer, [r], **settings)[0] for r in rankings]
    assert ranked[0] == [ranking for one in ranked_alone for ranking in one]
    assert ranked[1].responses_dropped == {"identical responses ranked apart": 2}
