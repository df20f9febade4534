"""Fixtures shared by every test area: one tiny causal LM built once per session."""

import random
from pathlib import Path

import pytest
import torch

from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.arith import ArithTask

# Tiny sizes: a forward pass over a batch of ~100-token rows takes milliseconds.
TINY_SIZES = dict(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


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
    examples = ArithTask().sft_examples(300, random.Random(0)) + AdviceTask().sft_examples(300, random.Random(0))
    return [example.prompt + example.completion for example in examples]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_corpus) -> Path:
    """A Hugging Face causal-LM directory (Llama, tied embeddings, byte-level BPE, ChatML).

    Shared by many tests: treat it as read-only (copy it before changing anything inside).
    """
    out = tmp_path_factory.mktemp("tiny_model")
    return build_tiny_model(out, tiny_corpus, seed=0, **TINY_SIZES)
