"""Fixtures shared by every test area: one tiny causal LM built once per session."""

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from rlhfkit.models.tiny import CHAT_TEMPLATE, build_tiny_model
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.arith import ArithTask

# Tiny sizes: a forward pass over a batch of ~100-token rows takes milliseconds.
TINY_SIZES = dict(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
# SmolLM2-135M's shape: 135M parameters, 28M of them the (tied) embedding
SMOLLM2_SIZES = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # The models under test are far too small to gain from intra-op threads, and on a busy
    # machine oversubscribed threads make each step many times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_sizes() -> dict:
    return dict(TINY_SIZES)


@pytest.fixture(scope="session")
def tiny_corpus() -> list[str]:
    """Texts of both built-in tasks: what the tiny tokenizer is trained on."""
    examples = ArithTask().sft_examples(300, random.Random(0)) + AdviceTask().sft_examples(
        300, random.Random(0)
    )
    return [example.prompt + example.completion for example in examples]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_corpus) -> Path:
    """A Hugging Face causal-LM directory (Llama, tied embeddings, byte-level BPE, ChatML).

    Shared by many tests: treat it as read-only (copy it before changing anything inside).
    """
    out = tmp_path_factory.mktemp("tiny_model")
    return build_tiny_model(out, tiny_corpus, seed=0, **TINY_SIZES)


@pytest.fixture(scope="session")
def smollm2_config_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M's config without weights: the learning-rate guard reads the config alone."""
    out = tmp_path_factory.mktemp("smollm2_shape")
    LlamaConfig(**SMOLLM2_SIZES).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bos_tokenizer(tiny_corpus) -> PreTrainedTokenizerFast:
    """A byte-level BPE whose post-processor puts <s> before every text, as the tokenizers of
    Llama, Mistral and Gemma do (the tiny model's adds nothing); ChatML template without BOS."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<s>", "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(tiny_corpus, trainer=trainer)
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
