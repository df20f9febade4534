import pytest

from rlhfkit.data.formats import StepsExample
from rlhfkit.data.steps import encode_steps, tokenize_steps
from rlhfkit.errors import RlhfkitError

CHAT = [{"role": "user", "content": "Q: 2 + 3 - 1?"}]


def test_step_ends_are_the_last_token_of_each_step_after_the_bos(bos_tokenizer):
    example = StepsExample("Q: 2 + 3 - 1?\nA:", ("2 + 3 = 5.", "5 - 1 = 4."), (True, False))
    encoded = encode_steps(bos_tokenizer, example, max_length=64, separator=" ")
    whole = bos_tokenizer(example.prompt + " 2 + 3 = 5. 5 - 1 = 4.")["input_ids"]
    first = bos_tokenizer(example.prompt + " 2 + 3 = 5.")["input_ids"]
    assert encoded.input_ids == whole and whole[0] == bos_tokenizer.bos_token_id
    assert encoded.step_ends == [len(first) - 1, len(whole) - 1] and encoded.labels == [True, False]


def test_a_chat_prompt_gets_only_what_the_template_writes(bos_tokenizer):
    example = StepsExample(CHAT, ("2 + 3 = 5.",), (True,))
    encoded = encode_steps(bos_tokenizer, example, max_length=64, separator=" ")
    rendered = bos_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    want = bos_tokenizer(rendered + " 2 + 3 = 5.", add_special_tokens=False)["input_ids"]
    assert encoded.input_ids == want


def test_a_huge_step_is_never_tokenised_whole(bos_tokenizer):
    seen = []

    def recording_tokenizer(text, **kwargs):
        seen.append(len(text))
        return bos_tokenizer(text, **kwargs)

    huge = "2 + 3 = 5. " * 400_000  # 4.4 MB
    example = StepsExample("Q: 2 + 3?\nA:", ("2 + 3 = 5.", huge), (True, False))
    encoded = encode_steps(recording_tokenizer, example, max_length=64, separator=" ")
    assert max(seen) < 10_000
    # the first step fits and keeps its label; the huge one is cut off with its label
    assert encoded.labels == [True] and len(encoded.input_ids) == encoded.step_ends[-1] + 1
    want = bos_tokenizer(example.prompt + " 2 + 3 = 5.")["input_ids"]
    assert encoded.input_ids == want


# With the tiny tokenizer of `conftest.py`: "what isthe ans" = what Ġis the Ġa ns, but
# "what isthe answer is" = what Ġis the Ġanswer Ġis: step 1's last token "ns" is not in the whole.
SPLIT_WORD = StepsExample("what is", ("the ans", "wer is", "n", "ow"), (True, True, False, True))


def test_steps_merged_into_one_token_are_refused_naming_the_file(tokenizer):
    with pytest.raises(RlhfkitError) as caught:
        tokenize_steps(tokenizer, [SPLIT_WORD], max_length=64, separator="", path="steps.jsonl")
    assert str(caught.value) == (
        "steps.jsonl: steps 1 and 2 of a solution ('the ans' and 'wer is') merge into one token "
        "with step_separator='', so step 1 has no last token of its own to read its label at; "
        "use a separator that keeps steps apart, such as step_separator='\\n'"
    )


def test_a_separator_that_keeps_steps_apart_reads_each_label_at_its_steps_last_token(tokenizer):
    encoded = encode_steps(tokenizer, SPLIT_WORD, max_length=64, separator="\n")
    words = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert words == [
        "what",
        "Ġis",
        "Ċ",
        "the",
        "Ġa",
        "ns",
        "Ċ",
        "wer",
        "Ġis",
        "Ċ",
        "n",
        "Ċ",
        "o",
        "w",
    ]
    assert encoded.step_ends == [5, 8, 10, 13]


def test_an_empty_separator_is_fine_where_no_token_spans_two_steps(tokenizer):
    example = StepsExample("what is", ("the cat", "sat"), (True, False))
    encoded = encode_steps(tokenizer, example, max_length=64, separator="")
    assert tokenizer.convert_ids_to_tokens(encoded.input_ids) == [
        "what",
        "Ġis",
        "the",
        "Ġcat",
        "sat",
    ]
    assert encoded.step_ends == [3, 4]
