"""Padding to the longest row of the batch, with hand-checked masks."""

import pytest
import torch

from rlhfkit.data.collate import pad_batch
from rlhfkit.data.tokenize import EncodedExample, encode_prompt_completion
from rlhfkit.errors import RlhfkitError

PAD = 1


def test_pad_batch_hand_checked_values():
    examples = [
        EncodedExample([10, 11, 12, 13], [False, False, True, True], truncated=False),
        EncodedExample([20, 21], [False, True], truncated=False),
        EncodedExample([30, 31, 32], [False, True, True], truncated=True),
    ]
    batch = pad_batch(examples, pad_token_id=PAD)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [20, 21, 1, 1], [30, 31, 32, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert batch["response_mask"].tolist() == [
        [False, False, True, True],
        [False, True, False, False],
        [False, True, True, False],
    ]
    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long
    assert batch["response_mask"].dtype == torch.bool
    assert batch["attention_mask"].sum() == 9


def test_pads_to_the_longest_row_not_to_max_length(tokenizer):
    prompts = [("what is", " two"), ("the cat sat", " on the mat")]
    examples = [
        encode_prompt_completion(tokenizer, p, c, max_length=512, truncation="drop")
        for p, c in prompts
    ]
    batch = pad_batch(examples, pad_token_id=tokenizer.pad_token_id)
    longest = max(len(e.input_ids) for e in examples)
    assert longest < 512
    assert batch["input_ids"].shape == (2, longest)
    assert batch["attention_mask"].sum() == sum(len(e.input_ids) for e in examples)
    # Padding never counts in the loss.
    assert not batch["response_mask"][batch["attention_mask"] == 0].any()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_single_row_batch_has_no_padding():
    batch = pad_batch([EncodedExample([5, 6], [False, True], truncated=False)], pad_token_id=PAD)
    assert batch["attention_mask"].tolist() == [[1, 1]]
    assert batch["response_mask"].tolist() == [[False, True]]


def test_empty_batch_and_missing_pad_id_are_errors():
    with pytest.raises(ValueError, match="at least one example"):
        pad_batch([], pad_token_id=PAD)
    example = EncodedExample([5], [True], truncated=False)
    with pytest.raises(RlhfkitError, match="pad token"):
        pad_batch([example], pad_token_id=None)
