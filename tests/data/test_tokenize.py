"""Tokenising with a completion mask, the truncation policies and their report.

Token lists below are hand-checked against the seeded tiny tokenizer of `conftest.py`.
"""

import copy
import random

import pytest
from transformers import AutoTokenizer

from rlhfkit.data import text_ids
from rlhfkit.data.formats import PreferenceExample, RankingExample, SFTExample
from rlhfkit.data.text_ids import render_text
from rlhfkit.data.tokenize import (
    EncodedExample,
    TokenizeReport,
    Truncation,
    encode_prompt_completion,
    encode_prompt_completions,
    tokenize_preferences,
    tokenize_rankings,
    tokenize_sft,
)
from rlhfkit.errors import RlhfkitError

EOS = "<|endoftext|>"
USER = {"role": "user", "content": "what is two plus three"}
ASSISTANT = {"role": "assistant", "content": "five"}
# "what is two plus" + " three" = what Ġis Ġtwo Ġplus | Ġthree <eos>: 4 prompt, 2 completion.
PROMPT, COMPLETION = "what is two plus", " three"


def tokens(tokenizer, encoded: EncodedExample) -> list[str]:
    return tokenizer.convert_ids_to_tokens(encoded.input_ids)


def encode(tokenizer, prompt=PROMPT, completion=COMPLETION, max_length=64, truncation="drop"):
    return encode_prompt_completion(
        tokenizer, prompt, completion, max_length=max_length, truncation=truncation
    )


# ----- encoding one pair -----------------------------------------------------------------------


def test_prompt_masked_and_eos_appended_and_counted(tokenizer):
    encoded = encode(tokenizer)
    assert tokens(tokenizer, encoded) == ["what", "Ġis", "Ġtwo", "Ġplus", "Ġthree", EOS]
    assert encoded.completion_mask == [False, False, False, False, True, True]
    assert encoded.truncated is False


def test_a_text_row_counts_every_token(tokenizer):
    # TRL's language-modelling row: the empty prompt, the whole text is the completion
    encoded = encode(tokenizer, prompt="", completion=PROMPT + COMPLETION)
    assert tokens(tokenizer, encoded) == ["what", "Ġis", "Ġtwo", "Ġplus", "Ġthree", EOS]
    assert all(encoded.completion_mask)


def test_token_merged_across_the_boundary_counts_as_completion(tokenizer):
    # "what is tw" alone ends in Ġt w, but with "o plus" it becomes Ġtwo: the common prefix
    # is two tokens, so Ġtwo is a completion token.
    encoded = encode(tokenizer, prompt="what is tw", completion="o plus")
    assert tokens(tokenizer, encoded) == ["what", "Ġis", "Ġtwo", "Ġplus", EOS]
    assert encoded.completion_mask == [False, False, True, True, True]


def test_eos_not_doubled_when_completion_already_ends_with_it(tokenizer):
    encoded = encode(tokenizer, completion=COMPLETION + EOS)
    assert tokens(tokenizer, encoded) == ["what", "Ġis", "Ġtwo", "Ġplus", "Ġthree", EOS]


def test_add_eos_false_appends_nothing(tokenizer):
    encoded = encode_prompt_completion(
        tokenizer, PROMPT, COMPLETION, max_length=64, truncation="drop", add_eos=False
    )
    assert tokens(tokenizer, encoded) == ["what", "Ġis", "Ġtwo", "Ġplus", "Ġthree"]
    assert encoded.completion_mask == [False, False, False, False, True]


def test_missing_eos_token_is_an_error(tokenizer):
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(RlhfkitError, match="no EOS token"):
        encode(no_eos)


# ----- truncation policies ---------------------------------------------------------------------


def test_keep_start_cuts_the_end_of_the_completion(tokenizer):
    encoded = encode(tokenizer, max_length=5, truncation=Truncation.KEEP_START)
    assert tokens(tokenizer, encoded) == ["what", "Ġis", "Ġtwo", "Ġplus", "Ġthree"]
    assert encoded.completion_mask == [False, False, False, False, True]
    assert encoded.truncated is True


def test_keep_start_drops_when_the_prompt_fills_max_length(tokenizer):
    assert encode(tokenizer, max_length=4, truncation=Truncation.KEEP_START) is None


def test_keep_end_cuts_the_start_of_the_prompt(tokenizer):
    encoded = encode(tokenizer, max_length=4, truncation=Truncation.KEEP_END)
    assert tokens(tokenizer, encoded) == ["Ġtwo", "Ġplus", "Ġthree", EOS]
    assert encoded.completion_mask == [False, False, True, True]
    assert encoded.truncated is True


def test_keep_end_drops_a_completion_that_cannot_fit_with_its_prompt(tokenizer):
    # Two completion tokens and max_length 2 would leave no prompt token at all.
    assert encode(tokenizer, max_length=2, truncation=Truncation.KEEP_END) is None


def test_drop_policy_drops_long_rows_and_keeps_short_ones(tokenizer):
    assert encode(tokenizer, max_length=5, truncation=Truncation.DROP) is None
    assert encode(tokenizer, max_length=6, truncation=Truncation.DROP).truncated is False


def test_unknown_truncation_policy(tokenizer):
    with pytest.raises(ValueError):
        encode(tokenizer, truncation="middle")


# ----- conversational rows ---------------------------------------------------------------------


def test_conversational_row_uses_the_chat_template(tokenizer):
    encoded = encode(tokenizer, prompt=[USER], completion=[ASSISTANT])
    assert tokenizer.decode(encoded.input_ids) == (
        "<|im_start|>user\nwhat is two plus three<|im_end|>\n"
        "<|im_start|>assistant\nfive<|im_end|>\n"
    )
    completion_ids = [i for i, m in zip(encoded.input_ids, encoded.completion_mask) if m]
    # The assistant header is prompt; the turn's own end is the stop signal, so no EOS is added.
    assert tokenizer.decode(completion_ids) == "five<|im_end|>\n"
    assert encoded.completion_mask[-6:] == [True] * 6
    assert not any(encoded.completion_mask[:-6])


def test_conversational_data_without_chat_template(tokenizer_without_template):
    with pytest.raises(RlhfkitError) as caught:
        encode(tokenizer_without_template, prompt=[USER], completion=[ASSISTANT])
    message = str(caught.value)
    assert message.startswith("conversational data needs a chat template, and the tokenizer at ")
    assert message.endswith("has none: add one or use prompt/completion strings")


def test_plain_strings_need_no_chat_template(tokenizer_without_template):
    assert encode(tokenizer_without_template) is not None


# ----- datasets and reports --------------------------------------------------------------------


def test_tokenize_sft_counts_kept_truncated_and_dropped(tokenizer):
    examples = [
        SFTExample(PROMPT, COMPLETION),  # 6 tokens: fits
        SFTExample("what is", " two plus three"),  # 6 tokens: fits
        SFTExample("the cat sat on the mat", " what"),  # 8 tokens: prompt start cut
        SFTExample("the", " cat sat on the mat and"),  # completion alone is 9 tokens: dropped
    ]
    encoded, report = tokenize_sft(tokenizer, examples, max_length=6, truncation="keep_end")
    assert len(encoded) == 3
    assert [e.truncated for e in encoded] == [False, False, True]
    assert tokenizer.convert_ids_to_tokens(encoded[2].input_ids) == [
        "Ġsat",
        "Ġon",
        "Ġthe",
        "Ġmat",
        "Ġwhat",
        EOS,
    ]
    assert (report.rows, report.kept, report.truncated, report.dropped) == (4, 3, 1, 1)
    assert report.reasons == {"completion does not fit in max_length": 1}
    assert report.summary() == (
        "4 rows: 3 kept (1 truncated), 1 dropped (completion does not fit in max_length: 1)"
    )


def test_tokenize_sft_drop_policy_report(tokenizer):
    examples = [SFTExample(PROMPT, COMPLETION)] * 3 + [SFTExample("the cat sat on the mat", " a")]
    encoded, report = tokenize_sft(tokenizer, examples, max_length=6, truncation=Truncation.DROP)
    assert len(encoded) == 3
    assert report.summary() == "4 rows: 3 kept (0 truncated), 1 dropped (too long: 1)"


def test_tokenize_sft_keep_start_report_counts_no_completion_left(tokenizer):
    examples = [SFTExample(PROMPT, COMPLETION), SFTExample("the cat sat on the mat", " a")]
    encoded, report = tokenize_sft(tokenizer, examples, max_length=5, truncation="keep_start")
    assert [e.truncated for e in encoded] == [True]
    assert report.reasons == {"no completion tokens left": 1}
    assert (report.kept, report.truncated, report.dropped) == (1, 1, 1)


def test_report_summary_without_drops():
    assert TokenizeReport(rows=2, kept=2).summary() == "2 rows: 2 kept (0 truncated), 0 dropped"


def test_responses_to_one_prompt_each_start_with_it(tokenizer):
    pairs = [(PROMPT, COMPLETION), (PROMPT, " three the cat sat")]
    results = encode_prompt_completions(tokenizer, pairs, max_length=6, truncation="drop")
    assert tokens(tokenizer, results[0])[:4] == ["what", "Ġis", "Ġtwo", "Ġplus"]
    assert results[1] is None


def test_tokenize_preferences_drops_a_pair_if_either_side_drops(tokenizer):
    examples = [
        PreferenceExample(PROMPT, COMPLETION, " two", margin=2.0),
        PreferenceExample(PROMPT, COMPLETION, " three the cat sat on the mat"),
    ]
    pairs, report = tokenize_preferences(tokenizer, examples, max_length=6, truncation="drop")
    assert len(pairs) == 1
    chosen, rejected, margin = pairs[0]
    assert tokens(tokenizer, chosen)[-2:] == ["Ġthree", EOS]
    assert tokens(tokenizer, rejected)[-2:] == ["Ġtwo", EOS]
    assert margin == 2.0
    assert report.summary() == "2 rows: 1 kept (0 truncated), 1 dropped (too long: 1)"


def test_tokenize_rankings_keeps_ranks_aligned_with_surviving_responses(tokenizer):
    long = " three the cat sat on the mat"
    examples = [
        RankingExample(PROMPT, (COMPLETION, long, " two"), (0, 1, 2)),
        RankingExample(PROMPT, (long, COMPLETION), (0, 1)),
    ]
    rankings, report = tokenize_rankings(tokenizer, examples, max_length=6, truncation="drop")
    assert len(rankings) == 1
    responses, ranks = rankings[0]
    assert [tokens(tokenizer, r)[-2] for r in responses] == ["Ġthree", "Ġtwo"]
    assert ranks == (0, 2)
    assert report.responses_dropped == {"too long": 2}
    assert report.summary() == (
        "2 rows: 1 kept (0 truncated), 1 dropped (fewer than two responses left: 1); "
        "2 responses dropped (too long: 2)"
    )


# ----- the tokenizer's own special tokens: BOS ------------------------------------------------


def template_writing_bos(bos_tokenizer):
    writes_bos = copy.deepcopy(bos_tokenizer)
    writes_bos.chat_template = "{{ bos_token }}" + bos_tokenizer.chat_template
    return writes_bos


def test_a_plain_pair_gets_one_bos_at_the_start_and_none_before_the_completion(bos_tokenizer):
    bos, eos = bos_tokenizer.bos_token_id, bos_tokenizer.eos_token_id
    encoded = encode(bos_tokenizer)
    # the tokenizer's own encoding of the whole text, then the EOS
    assert encoded.input_ids == bos_tokenizer(PROMPT + COMPLETION)["input_ids"] + [eos]
    assert encoded.input_ids[0] == bos and encoded.input_ids.count(bos) == 1
    # the mask covers exactly the completion's tokens and the EOS; the BOS is prompt
    completion = bos_tokenizer(COMPLETION, add_special_tokens=False)["input_ids"] + [eos]
    assert [t for t, m in zip(encoded.input_ids, encoded.completion_mask) if m] == completion
    assert encoded.completion_mask.index(True) == len(encoded.input_ids) - len(completion)


def test_text_that_already_starts_with_the_bos_gets_no_second_one(bos_tokenizer):
    assert encode(bos_tokenizer, prompt="<s>" + PROMPT) == encode(bos_tokenizer)


def test_chat_prompts_keep_exactly_what_the_template_writes(bos_tokenizer):
    bos = bos_tokenizer.bos_token_id
    # a template that writes no BOS gets none, though the tokenizer adds one to plain text
    encoded = encode(bos_tokenizer, [USER], [ASSISTANT])
    rendered = render_text(bos_tokenizer, [USER, ASSISTANT], as_prompt=False)
    assert encoded.input_ids == bos_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert bos not in encoded.input_ids
    # a template that writes the BOS has it once
    writes_bos = template_writing_bos(bos_tokenizer)
    encoded = encode(writes_bos, [USER], [ASSISTANT])
    assert encoded.input_ids[0] == bos and encoded.input_ids.count(bos) == 1
    prompt = writes_bos(render_text(writes_bos, [USER], as_prompt=True), add_special_tokens=False)
    assert encoded.completion_mask.index(True) == len(prompt["input_ids"])


def test_sft_tokenisation_with_a_bos_and_without(bos_tokenizer, tiny_model_dir):
    examples = [SFTExample("Q: 2 + 3?\nA:", " 5"), SFTExample(PROMPT, COMPLETION)]
    encoded, report = tokenize_sft(bos_tokenizer, examples, max_length=64, truncation="drop")
    assert report.kept == 2
    for example, row in zip(examples, encoded):
        whole = bos_tokenizer(example.prompt + example.completion)["input_ids"]
        assert row.input_ids == whole + [bos_tokenizer.eos_token_id]
        assert row.input_ids.count(bos_tokenizer.bos_token_id) == 1 and not row.completion_mask[0]
    # the tiny model's tokenizer adds nothing: the ids are those of the text alone, as before
    tiny = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded, _ = tokenize_sft(tiny, examples, max_length=64, truncation="drop")
    for example, row in zip(examples, encoded):
        plain = tiny(example.prompt + example.completion, add_special_tokens=False)["input_ids"]
        assert row.input_ids == plain + [tiny.eos_token_id]


# ----- long rows: cut to a character window before they are tokenised ------------------------


class RecordingTokenizer:
    """A tokenizer that remembers the longest text it was asked to tokenise."""

    def __init__(self, inner):
        self.inner, self.longest = inner, 0

    def __call__(self, text, **kwargs):
        texts = [text] if isinstance(text, str) else text  # rlhfkit passes a list
        self.longest = max(self.longest, *(len(t) for t in texts))
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def tokenize_sft_whole(monkeypatch, tokenizer, examples, **settings):
    """`tokenize_sft` with every text tokenised whole however long, as before windows existed."""
    with monkeypatch.context() as patched:
        patched.setattr(text_ids, "CHARS_PER_TOKEN", 10**9)
        return tokenize_sft(tokenizer, examples, **settings)


HUGE = " the cat sat on the mat" * 200_000  # 4.6 MB of text


@pytest.mark.parametrize(
    "truncation, prompt, completion, reasons",
    [
        ("keep_start", PROMPT, HUGE, {}),
        ("keep_end", "what is" + HUGE, COMPLETION, {}),
        ("keep_end", PROMPT, HUGE, {"completion does not fit in max_length": 1}),
        ("drop", PROMPT, HUGE, {"too long": 1}),
        ("drop", HUGE, COMPLETION, {"too long": 1}),
    ],
)
def test_a_huge_row_is_never_tokenised_whole(
    tokenizer, monkeypatch, truncation, prompt, completion, reasons
):
    recording = RecordingTokenizer(tokenizer)
    example = SFTExample(prompt, completion)
    encoded, report = tokenize_sft(recording, [example], max_length=64, truncation=truncation)
    assert recording.longest < 10_000
    assert report.reasons == reasons
    # the same result as tokenising a 40,000-character window whole, on the kept side
    cut = 40_000
    if truncation == "keep_end":
        kept_prompt = max(0, cut - len(completion))
        shorter = SFTExample(prompt[len(prompt) - kept_prompt :], completion[-cut:])
    else:
        shorter = SFTExample(prompt[:cut], completion[: cut - min(len(prompt), cut)])
    want = tokenize_sft_whole(
        monkeypatch, tokenizer, [shorter], max_length=64, truncation=truncation
    )
    assert (encoded, report) == want
    assert all(len(row.input_ids) == 64 and row.truncated for row in encoded)


def long_text(seed: int, words: int = 800) -> str:
    rng = random.Random(seed)
    return " " + " ".join(
        rng.choice(["the", "cat", "sat", "on", "a", "mat", "two"]) for _ in range(words)
    )


LONG_CASES = {
    "long prompt": (PROMPT + long_text(1), COMPLETION),
    "long completion": (PROMPT, long_text(2)),
    "both long": (PROMPT + long_text(3), long_text(4)),
    "one long word": (PROMPT, " " + "thecatsat" * 600),
    "chat, long question": ([{"role": "user", "content": long_text(5)}], [ASSISTANT]),
    "chat, long answer": ([USER], [{"role": "assistant", "content": long_text(6)}]),
}


@pytest.mark.parametrize("chars_per_token", [1, 8])  # 1: a first guess too small, widened
@pytest.mark.parametrize("truncation", list(Truncation))
@pytest.mark.parametrize("case", list(LONG_CASES))
@pytest.mark.parametrize("which", ["tokenizer", "bos_tokenizer"])
def test_a_cut_window_gives_what_the_whole_text_gives(
    request, monkeypatch, which, case, truncation, chars_per_token
):
    chosen_tokenizer = request.getfixturevalue(which)
    monkeypatch.setattr(text_ids, "CHARS_PER_TOKEN", chars_per_token)
    prompt, completion = LONG_CASES[case]
    examples = [SFTExample(prompt, completion)]
    recording = RecordingTokenizer(chosen_tokenizer)
    windowed = tokenize_sft(recording, examples, max_length=16, truncation=truncation)
    whole = tokenize_sft_whole(
        monkeypatch, chosen_tokenizer, examples, max_length=16, truncation=truncation
    )
    assert windowed == whole
    longest_text = len(render_text(chosen_tokenizer, prompt, as_prompt=False)) + len(
        render_text(chosen_tokenizer, completion, as_prompt=False)
    )
    assert recording.longest < longest_text


def test_rows_within_the_budget_are_tokenised_whole(tokenizer):
    recording = RecordingTokenizer(tokenizer)
    example = SFTExample(PROMPT, long_text(7, words=100))
    encoded, _ = tokenize_sft(recording, [example], max_length=8, truncation="keep_start")
    assert recording.longest == len(PROMPT + example.completion)
    whole = tokenizer(PROMPT + example.completion)["input_ids"]
    assert encoded[0].input_ids == whole[:8]


# ----- contradictory preferences ---------------------------------------------------------------


def test_a_pair_whose_chosen_equals_rejected_is_dropped_and_counted(tokenizer):
    examples = [
        PreferenceExample(PROMPT, COMPLETION, " two"),
        PreferenceExample(PROMPT, COMPLETION, COMPLETION),
        PreferenceExample([USER], [ASSISTANT], [ASSISTANT]),
        # different texts, but the same tokens once cut to max_length: the truncation's doing
        PreferenceExample(PROMPT, " the cat" * 40 + " two", " the cat" * 40 + " a"),
    ]
    pairs, report = tokenize_preferences(
        tokenizer, examples, max_length=64, truncation="keep_start"
    )
    assert len(pairs) == 1
    assert tokens(tokenizer, pairs[0][1])[-2:] == ["Ġtwo", EOS]
    assert report.summary() == (
        "4 rows: 1 kept (0 truncated), 3 dropped (chosen equals rejected: 2, "
        "identical once truncated: 1)"
    )


# "what is two plus" + " three the cat" = 7 tokens + EOS; max_length=6 keeps
# what Ġis Ġtwo Ġplus Ġthree Ġthe: " three the cat" and " three the mat" become the same.
CAT, MAT, SAT = " three the cat", " three the mat", " three the sat"


def test_a_pair_made_identical_by_truncation_is_blamed_on_the_truncation(tokenizer):
    examples = [
        PreferenceExample(PROMPT, CAT, MAT),  # differ only in the cut word
        PreferenceExample(PROMPT, CAT, CAT),  # the same text, cut or not
        PreferenceExample(PROMPT, COMPLETION, " two"),
    ]
    pairs, report = tokenize_preferences(tokenizer, examples, max_length=6, truncation="keep_start")
    assert [tokens(tokenizer, side)[-2] for side in pairs[0][:2]] == ["Ġthree", "Ġtwo"]
    assert report.summary() == (
        "3 rows: 1 kept (0 truncated), 2 dropped (identical once truncated: 1, "
        "chosen equals rejected: 1)"
    )


def test_responses_of_a_ranking_made_identical_by_truncation_are_blamed_on_it(tokenizer):
    examples = [
        RankingExample(PROMPT, (CAT, MAT, SAT), (0, 1, 2)),  # all three the same once cut
        # cat and mat go; " two" and " a" keep their ranks, the row counts as truncated
        RankingExample(PROMPT, (CAT, " two", MAT, " a"), (0, 1, 2, 3)),
        RankingExample(PROMPT, (CAT, " two", CAT), (0, 1, 2)),  # the same text ranked apart
        # left with two tied responses, which would have been a usable ranking uncut
        RankingExample(PROMPT, (CAT, MAT, " two", " a"), (0, 1, 1, 1)),
    ]
    rankings, report = tokenize_rankings(tokenizer, examples, max_length=6, truncation="keep_start")
    assert len(rankings) == 1
    responses, ranks = rankings[0]
    assert [tokens(tokenizer, r)[-2] for r in responses] == ["Ġtwo", "Ġa"]
    assert ranks == (1, 3)
    assert report.summary() == (
        "4 rows: 1 kept (1 truncated), 3 dropped (identical once truncated: 2, "
        "identical responses ranked apart: 1); 9 responses dropped (identical once truncated: 7, "
        "identical responses ranked apart: 2)"
    )


def test_rankings_without_a_usable_preference_are_dropped_and_counted(tokenizer):
    long = " three the cat sat on the mat"
    examples = [
        RankingExample(PROMPT, (COMPLETION, " two", " a"), (0, 1, 2)),
        RankingExample(PROMPT, (COMPLETION, " two"), (0, 0)),  # all tied
        RankingExample(PROMPT, (COMPLETION, " two", COMPLETION), (0, 1, 2)),  # above and below
        RankingExample(PROMPT, (COMPLETION, COMPLETION, " two"), (0, 0, 1)),  # copies tied: fine
        RankingExample(PROMPT, (long, COMPLETION, " two"), (0, 1, 1)),  # all tied once cut
        # the copies go, the rest of the ranking stays
        RankingExample(PROMPT, (COMPLETION, " two", " a", COMPLETION), (0, 1, 2, 3)),
    ]
    rankings, report = tokenize_rankings(tokenizer, examples, max_length=6, truncation="drop")
    assert [ranks for _, ranks in rankings] == [(0, 1, 2), (0, 0, 1), (1, 2)]
    assert [tokens(tokenizer, r)[-2] for r in rankings[2][0]] == ["Ġtwo", "Ġa"]
    assert report.summary() == (
        "6 rows: 3 kept (0 truncated), 3 dropped (all responses tied: 2, "
        "identical responses ranked apart: 1); 5 responses dropped (identical responses ranked "
        "apart: 4, too long: 1)"
    )
