"""Between text and a rollout's tokens: left-padded prompt batches, decoded responses, and
where each response token ends in the decoded text (to put step rewards on tokens)."""

import torch

from rlhfkit.data.collate import left_pad
from rlhfkit.data.formats import Text
from rlhfkit.data.text_ids import encode_texts
from rlhfkit.rollout.engine import Rollout


def encode_prompts(
    tokenizer, prompts: list[Text], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of prompts, left-padded so every row continues at the end: a string is plain
    text and starts with the tokenizer's BOS when it adds one; a list of messages goes through
    the chat template with the assistant turn opened, tokenised as the template writes it."""
    rows = encode_texts(tokenizer, prompts, as_prompt=True)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    return ids.to(device), mask.to(device)


def response_token_ids(rollout: Rollout) -> list[list[int]]:
    """Each row's sampled tokens (stop token included), padding removed."""
    return [
        row[:length]
        for row, length in zip(rollout.response_ids.tolist(), rollout.response_lengths.tolist())
    ]


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """Response texts with special tokens (EOS, end of turn) removed."""
    return tokenizer.batch_decode(response_token_ids(rollout), skip_special_tokens=True)


def token_char_ends(tokenizer, ids: list[int], text: str) -> list[int]:
    """For each token, the length of the decoded text up to and including it.

    Decoding token by token and adding up the lengths is exact when decoding concatenates
    (byte-level BPE on whole characters); otherwise each prefix is decoded, which is slower.
    `text` is the decoded response (special tokens skipped), the reference for the check.
    """
    pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)
    ends, total = [], 0
    for piece in pieces:
        total += len(piece)
        ends.append(total)
    if total == len(text):
        return ends
    return [
        completed_chars(tokenizer.decode(ids[: k + 1], skip_special_tokens=True), text)
        for k in range(len(ids))
    ]


def completed_chars(prefix: str, text: str) -> int:
    """How many characters of `text` a decoded prefix of its tokens completes: a character
    split over byte tokens decodes as U+FFFD (one per byte) until its last byte arrives, and
    does not count until then."""
    end = len(prefix)
    while end and prefix[end - 1] == "\ufffd" and text[end - 1 : end] != "\ufffd":
        end -= 1
    return end


def char_to_token_index(char_ends: list[int], char_end: int) -> int:
    """Index of the token whose decoded text reaches `char_end` (the last token if none does)."""
    for index, end in enumerate(char_ends):
        if end >= char_end:
            return index
    return len(char_ends) - 1
