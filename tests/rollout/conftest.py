"""A tiny causal LM and prompt batches shared by the rollout tests."""

import pytest
import torch

from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.rollout.engine import generate

PROMPTS = [
    "Q: Ann has 3 apples, gets 4 more. How many?\nA:",
    "User: How do I sleep better?\nAssistant:",
    "Q: 7 + 2?\nA:",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir).eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.padding_side = "left"
    return model, tokenizer


def prompt_batch(tokenizer):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"].bool()


def generate_samples(model, tokenizer, seed=0, **kwargs):
    ids, mask = prompt_batch(tokenizer)
    options = dict(
        num_samples=3,
        max_new_tokens=24,
        stop_ids=[tokenizer.eos_token_id, 5],
        pad_token_id=tokenizer.pad_token_id,
        temperature=0.8,
    )
    options.update(kwargs)
    return generate(model, ids, mask, generator=torch.Generator().manual_seed(seed), **options)
