"""A tiny byte-level BPE tokenizer with a ChatML chat template, trained once per test session."""

import copy
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ["the", "cat", "sat", "on", "a", "mat", "what", "is", "two", "plus", "three", "answer"]


def _training_lines(count: int = 300) -> list[str]:
    # Seeded so the vocabulary, and therefore every hand-checked length, is the same each run.
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(count)]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_training_lines(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


@pytest.fixture(scope="session")
def tokenizer_without_template(tokenizer) -> PreTrainedTokenizerFast:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain
