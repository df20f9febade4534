import copy

import torch
from transformers import AutoTokenizer

from rlhfkit.rollout.text import encode_prompts
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
