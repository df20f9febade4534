import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from rlhfkit.models.tiny import EOS, IM_END, IM_START, PAD, build_tiny_model


@pytest.fixture(scope="module")
def default_size_dir(tmp_path_factory, tiny_corpus):
    """`build_tiny_model` with its default sizes (the vocabulary stops growing where the corpus
    has no more merges, so it may end below the default 1024)."""
    return build_tiny_model(tmp_path_factory.mktemp("default_tiny"), tiny_corpus[::4], seed=0)


def test_loads_with_plain_auto_classes(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("Q: Ann has 3 pens.", return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert model.config.vocab_size == len(tokenizer)


def test_default_sizes_make_a_small_llama(default_size_dir):
    model = AutoModelForCausalLM.from_pretrained(default_size_dir)
    assert isinstance(model.config, LlamaConfig)
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 4
    assert model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert len(AutoTokenizer.from_pretrained(default_size_dir)) <= 1024


def test_same_seed_same_weights(tmp_path, tiny_corpus, tiny_sizes, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", tiny_corpus, seed=0, **tiny_sizes)
    other = build_tiny_model(tmp_path / "other", tiny_corpus, seed=1, **tiny_sizes)
    weights = {
        d: AutoModelForCausalLM.from_pretrained(d).state_dict()
        for d in (tiny_model_dir, again, other)
    }
    assert all(torch.equal(weights[tiny_model_dir][k], weights[again][k]) for k in weights[again])
    assert not torch.equal(
        weights[tiny_model_dir]["model.embed_tokens.weight"],
        weights[other]["model.embed_tokens.weight"],
    )


def test_tokenizer_special_tokens_and_chat_template(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == PAD
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == f"{IM_START}user\nHi{IM_END}\n{IM_START}assistant\n"
    # the special tokens are single tokens, not spelled out byte by byte
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 2
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_END)) == 1


def test_digits_are_one_token_each(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokens = tokenizer.tokenize("Q: 123 + 4567 = 4690. The answer is 4690.")
    digit_tokens = [t for t in tokens if re.search(r"\d", t)]
    assert digit_tokens == list("123456746904690")
    # no merge anywhere in the vocabulary glues a digit to anything
    assert all(len(t) == 1 for t in tokenizer.get_vocab() if re.search(r"\d", t))


def test_text_round_trips(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "User: How do I start running?\nAssistant: Start with short runs and walk breaks."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
