"""Padding tokenised examples into a batch of tensors."""

from __future__ import annotations

import torch

from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.errors import RlhfkitError


def pad_batch(examples: list[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest one in the batch (never to `max_length`).

    Args:
        examples: at least one tokenised example.
        pad_token_id: the id written into padding positions.

    Returns:
        `input_ids`: (batch, seq) long, padded with `pad_token_id`.
        `attention_mask`: (batch, seq) long, 1 = a real token, 0 = padding.
        `response_mask`: (batch, seq) bool, True = a completion token that counts in the loss;
            False on prompt tokens and padding.
    """
    if not examples:
        raise ValueError("pad_batch needs at least one example")
    if pad_token_id is None:
        raise RlhfkitError("padding needs a pad token id and the tokenizer has none: set one")
    seq_len = max(len(example.input_ids) for example in examples)
    batch = len(examples)
    input_ids = torch.full((batch, seq_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, seq_len), dtype=torch.long)
    response_mask = torch.zeros((batch, seq_len), dtype=torch.bool)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
        response_mask[row, :length] = torch.tensor(example.completion_mask, dtype=torch.bool)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
    }


def left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): token rows left-padded, so every row's last token sits in the last column
    (where generation continues). ids (batch, seq) long; mask (batch, seq) bool, True = a token."""
    if pad_token_id is None:
        raise RlhfkitError("padding needs a pad token id and the tokenizer has none: set one")
    width = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = True
    return ids, mask
