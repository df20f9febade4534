from rlhfkit.data.formats import StepsExample
from rlhfkit.data.steps import encode_steps

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
