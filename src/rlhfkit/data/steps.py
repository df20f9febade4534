"""Step-labelled solutions for process reward models: one label per step, read at the
step's last token."""

from dataclasses import dataclass

import torch

from rlhfkit.data.formats import StepsExample
from rlhfkit.data.text_ids import encode_window, render_text
from rlhfkit.data.tokenize import DropReason, TokenizeReport
from rlhfkit.errors import RlhfkitError


@dataclass(frozen=True)
class EncodedSteps:
    input_ids: list[int]
    step_ends: list[int]  # index of each step's last token
    labels: list[bool]  # True = the step is correct


def encode_steps(
    tokenizer, example: StepsExample, *, max_length: int, separator: str
) -> EncodedSteps | None:
    """prompt + separator + step_1 + separator + step_2 ...; steps that do not fit in
    `max_length` are cut off (with their labels); None when no step fits. A plain prompt starts
    with the tokenizer's BOS when it adds one; a chat prompt is tokenised as the template
    writes it. Each step's end is the last token of the text up to it, which must be a prefix
    of the whole's tokens: a step merged into one token with the next (an empty separator
    lets "ans" + "wer" become one token) is an error, not a label read at the wrong token."""
    prompt = render_text(tokenizer, example.prompt, as_prompt=True)
    templated = not isinstance(example.prompt, str)
    text, ends, ids = prompt, [], []
    for step in example.completions:
        text += separator + step
        before = ids
        # a huge step is cut to a window first: only whether it fits in max_length matters
        (ids,), _ = encode_window(
            tokenizer, [text], templated=templated, max_length=max_length, keep_end=False
        )
        if len(ids) > max_length:
            break
        if ends and ids[: len(before)] != before:
            raise _merged_steps(example, len(ends), separator)
        ends.append(len(ids) - 1)
    if not ends:
        return None
    ids = ids[: ends[-1] + 1]
    return EncodedSteps(ids, ends, list(example.labels[: len(ends)]))


def _merged_steps(example: StepsExample, step: int, separator: str) -> RlhfkitError:
    """Step `step` (1-based) ends inside a token it shares with what follows: the tokens of the
    text up to it are not a prefix of the whole's, so no token ends exactly that step and a
    label read at "its last token" would land on another step's token."""
    pair = f"{example.completions[step - 1]!r} and {example.completions[step]!r}"
    return RlhfkitError(
        f"steps {step} and {step + 1} of a solution ({pair}) merge into one token with "
        f"step_separator={separator!r}, so step {step} has no last token "
        "of its own to read its label at; use a separator that keeps steps apart, such as "
        "step_separator='\\n'"
    )


def tokenize_steps(
    tokenizer, examples: list[StepsExample], *, max_length: int, separator: str, path: str
):
    """`encode_steps` of each example, counted in a report; errors name the file `path`."""
    report, encoded = TokenizeReport(), []
    for example in examples:
        try:
            item = encode_steps(tokenizer, example, max_length=max_length, separator=separator)
        except RlhfkitError as error:
            raise RlhfkitError(f"{path}: {error}") from None
        if item is None:
            report.add_dropped(DropReason.TOO_LONG)
        else:
            report.add_kept(len(item.step_ends) < len(example.completions))
            encoded.append(item)
    return encoded, report


def collate_steps(items: list[EncodedSteps], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask`; `step_ends`, `step_labels` (float) and
    `step_mask` (True = a real step) padded to the most steps in the batch."""
    length = max(len(x.input_ids) for x in items)
    steps = max(len(x.step_ends) for x in items)
    input_ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    step_ends = torch.zeros((len(items), steps), dtype=torch.long)
    step_labels = torch.zeros((len(items), steps))
    step_mask = torch.zeros((len(items), steps), dtype=torch.bool)
    for row, item in enumerate(items):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        attention_mask[row, : len(item.input_ids)] = 1
        n = len(item.step_ends)
        step_ends[row, :n] = torch.tensor(item.step_ends)
        step_labels[row, :n] = torch.tensor(item.labels, dtype=torch.float)
        step_mask[row, :n] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "step_ends": step_ends,
        "step_labels": step_labels,
        "step_mask": step_mask,
    }
