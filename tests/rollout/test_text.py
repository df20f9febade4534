import copy

import pytest
import torch
from transformers import AutoTokenizer

from rlhfkit.rollout.text import char_to_token_index, encode_prompts, token_char_ends
from tests.rollout.conftest import PROMPTS

CPU = torch.device("cpu")
CHAT = [{"role": "user", "content": "How do I sleep better?"}]


def test_plain_prompts_start_with_the_bos_and_are_left_padded(bos_tokenizer):
    ids, mask = encode_prompts(bos_tokenizer, PROMPTS, CPU)
    for row, real, prompt in zip(ids, mask, PROMPTS):
        assert row[real].tolist() == bos_tokenizer(prompt)["input_ids"]  # one BOS, first
    assert mask[:, -1].all() and (ids[~mask] == bos_tokenizer.pad_token_id).all()


def test_chat_prompts_are_encoded_as_the_template_writes_them(bos_tokenizer):
    rendered = bos_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids, mask = encode_prompts(bos_tokenizer, [CHAT, PROMPTS[0]], CPU)
    assert ids[0][mask[0]].tolist() == bos_tokenizer(rendered, add_special_tokens=False).input_ids
    assert ids[1][mask[1]].tolist()[0] == bos_tokenizer.bos_token_id
    # a template that writes the BOS itself: once
    writes_bos = copy.deepcopy(bos_tokenizer)
    writes_bos.chat_template = "{{ bos_token }}" + bos_tokenizer.chat_template
    ids, mask = encode_prompts(writes_bos, [CHAT], CPU)
    want = writes_bos("<s>" + rendered, add_special_tokens=False).input_ids
    assert ids[0][mask[0]].tolist() == want
    assert ids[0].tolist().count(writes_bos.bos_token_id) == 1


def test_without_a_bos_the_prompt_ids_are_the_texts_alone(tiny_model_dir):
    # the tiny model's tokenizer adds no BOS: the same batch as plain left-padded tokenising
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask = encode_prompts(tokenizer, PROMPTS, CPU)
    want = tokenizer(
        PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"].bool())


# An arith answer as the tiny model's tokenizer splits it, then the sampled EOS.
ANSWER = " 3 + 4 = 7. The answer is 7."
ANSWER_PIECES = [" ", "3", " ", "+", " ", "4", " =", " ", "7", ".", " T", "he", " an", "s", "w"]
ANSWER_PIECES += ["er", " is", " ", "7", ".", "<|endoftext|>"]
ANSWER_ENDS = [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 13, 15, 18, 19, 20, 22, 25, 26, 27, 28, 28]
# "é" is two bytes, each its own token: one piece alone decodes to U+FFFD
SPLIT = " 3+4=7 \u00e9 5"
SPLIT_PIECES = [" ", "3", "+", "4", "=", "7", " ", "\ufffd", "\ufffd", " ", "5"]


def answer_ids(tokenizer, text: str, pieces: list[str], eos: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids += [tokenizer.eos_token_id] if eos else []
    assert [tokenizer.decode([i]) for i in ids] == pieces  # the hand example's own tokens
    return ids


def test_token_char_ends_are_the_decoded_lengths_through_each_token(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = answer_ids(tokenizer, ANSWER, ANSWER_PIECES, eos=True)
    # the EOS adds no text: it ends where the last character does
    assert token_char_ends(tokenizer, ids, ANSWER) == ANSWER_ENDS


def test_token_char_ends_decode_prefixes_when_a_character_spans_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = answer_ids(tokenizer, SPLIT, SPLIT_PIECES, eos=False)
    ends = token_char_ends(tokenizer, ids, SPLIT)
    # adding up the pieces would put every later token one character too far (9, 10, 11)
    assert ends[:7] == [1, 2, 3, 4, 5, 6, 7]
    assert ends[8:] == [8, 9, 10]


@pytest.mark.parametrize(
    ("char_end", "token"),
    [
        (10, 8),  # the step "3 + 4 = 7" ends after "7": token 8
        (7, 6),  # a character inside the token " =": that token
        (27, 18),  # "The answer is 7" ends at the final "7"
        (28, 19),  # the end of the text: its last character, not the EOS after it
        (99, 20),  # beyond the text: the last token
        (0, 0),
    ],
)
def test_char_to_token_index_is_the_first_token_reaching_the_character(char_end, token):
    assert char_to_token_index(ANSWER_ENDS, char_end) == token


def test_a_step_ending_on_a_split_character_lands_on_the_token_that_completes_it(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = answer_ids(tokenizer, SPLIT, SPLIT_PIECES, eos=False)
    # " 3+4=7 \u00e9" is 8 characters: its last byte is token 8
    assert char_to_token_index(token_char_ends(tokenizer, ids, SPLIT), 8) == 8
