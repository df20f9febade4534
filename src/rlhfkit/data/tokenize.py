"""Turning examples into token ids with a completion mask, truncated by an explicit policy.

A prompt/completion pair becomes one sequence `prompt_ids + completion_ids`; `completion_mask`
is True on the completion tokens (they count in the loss) and False on the prompt. The boundary
is the longest common token prefix of the tokenised prompt and the tokenised whole, as in TRL:
byte-level BPE can merge the last prompt characters with the first completion characters, and
the merged token then counts as completion.

Plain text starts with the tokenizer's BOS when it adds one; a chat template's output is
tokenised as written (`text_ids`).

Rows that do not fit in `max_length` are truncated or dropped according to `Truncation`, and
every drop and every truncation is counted in a `TokenizeReport`; nothing is lost silently.
A long text is cut to a character budget before it is tokenised (`text_ids.encode_window`), so one
huge row costs the memory of `max_length` tokens, not of the whole row.

Preference pairs and rankings that contradict themselves (the same response on both sides, a
ranking that is all ties) carry no signal and are dropped and counted like the rest. Different
responses that only truncation made identical are counted apart, as the truncation's doing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rlhfkit.data.formats import (
    PreferenceExample,
    RankingExample,
    SFTExample,
    Text,
    common_prefix_length,
)
from rlhfkit.data.text_ids import encode_windows, render_text
from rlhfkit.errors import RlhfkitError


class Truncation(str, Enum):
    """What to do with a sequence longer than `max_length`."""

    KEEP_START = "keep_start"
    """Cut the end of the completion (the EOS goes with it)."""
    KEEP_END = "keep_end"
    """Cut the start of the prompt and keep the completion whole."""
    DROP = "drop"
    """Drop the row."""


class DropReason(str, Enum):
    """Why a row (or one response of a ranking) was dropped; the value is the report's key."""

    TOO_LONG = "too long"
    NO_COMPLETION_TOKENS = "no completion tokens left"
    COMPLETION_TOO_LONG = "completion does not fit in max_length"
    TOO_FEW_RESPONSES = "fewer than two responses left"
    CHOSEN_EQUALS_REJECTED = "chosen equals rejected"
    SAME_RESPONSE_RANKED_APART = "identical responses ranked apart"
    IDENTICAL_ONCE_TRUNCATED = "identical once truncated"
    """Different texts whose differences `max_length` cut off: the truncation's doing."""
    ALL_TIED = "all responses tied"


@dataclass(frozen=True)
class EncodedExample:
    """One tokenised prompt/completion sequence."""

    input_ids: list[int]
    completion_mask: list[bool]
    """One flag per token: True = a completion token (counts in the loss, the appended EOS
    included), False = a prompt token."""
    truncated: bool
    """Whether tokens were cut to fit `max_length`."""


@dataclass
class TokenizeReport:
    """What tokenising a dataset kept, truncated and dropped."""

    rows: int = 0
    kept: int = 0
    """Rows kept, truncated ones included."""
    dropped: int = 0
    truncated: int = 0
    """Kept rows that lost tokens to `max_length`."""
    reasons: dict[str, int] = field(default_factory=dict)
    """Dropped rows by reason, e.g. `{"too long": 3}`."""
    responses_dropped: dict[str, int] = field(default_factory=dict)
    """Rankings only: single responses removed from a ranking, by reason."""

    def add_kept(self, truncated: bool) -> None:
        self.rows += 1
        self.kept += 1
        self.truncated += int(truncated)

    def add_dropped(self, reason: DropReason) -> None:
        self.rows += 1
        self.dropped += 1
        self.reasons[reason.value] = self.reasons.get(reason.value, 0) + 1

    def summary(self) -> str:
        """One line, e.g. `512 rows: 509 kept (4 truncated), 3 dropped (too long: 3)`."""
        line = f"{self.rows} rows: {self.kept} kept ({self.truncated} truncated), "
        line += f"{self.dropped} dropped{_counts(self.reasons)}"
        if self.responses_dropped:
            removed = sum(self.responses_dropped.values())
            line += f"; {removed} responses dropped{_counts(self.responses_dropped)}"
        return line


def require_rows(rows: list, path: str, report: TokenizeReport, purpose: str) -> None:
    """A one-line error naming the file when tokenising left no row (every row too long to
    keep, say), before a run trains or evaluates on nothing."""
    if not rows:
        raise RlhfkitError(f"{path}: no row left ({report.summary()}): nothing to {purpose}")


def _counts(by_reason: dict[str, int]) -> str:
    if not by_reason:
        return ""
    return " (" + ", ".join(f"{reason}: {n}" for reason, n in by_reason.items()) + ")"


def encode_prompt_completion(
    tokenizer: Any,
    prompt: Text,
    completion: Text,
    *,
    max_length: int,
    truncation: Truncation | str,
    add_eos: bool = True,
) -> EncodedExample | None:
    """Tokenise one prompt/completion pair.

    Plain strings are tokenised as `prompt` and `prompt + completion`, both starting with the
    tokenizer's BOS when it adds one (so one BOS opens the sequence, none comes before the
    completion), and the EOS token is appended when `add_eos` (the model must learn to stop).
    Message lists go through the chat template instead (the prompt with the generation prompt,
    the whole conversation without it), tokenised as the template writes them, and no EOS is
    appended: the template already ends the turn.

    Returns:
        The encoded sequence, or None when it is dropped: no completion token is left, or it is
        too long and `truncation` cannot make it fit.
    """
    return encode_prompt_completions(
        tokenizer,
        [(prompt, completion)],
        max_length=max_length,
        truncation=truncation,
        add_eos=add_eos,
    )[0]


def encode_prompt_completions(
    tokenizer: Any,
    pairs: list[tuple[Text, Text]],
    *,
    max_length: int,
    truncation: Truncation | str,
    add_eos: bool = True,
) -> list[EncodedExample | None]:
    """`encode_prompt_completion` of each (prompt, completion) pair, tokenised together."""
    encoded = _encode_many(tokenizer, pairs, max_length, Truncation(truncation), add_eos)
    return [None if isinstance(e, DropReason) else e for e in encoded]


PAIRS_PER_BATCH = 512
"""Pairs whose texts `_encode_many` tokenises together: few tokenizer calls, and the ids of a
large dataset held only once (a batch's are held twice while they are assembled)."""


def _encode_many(
    tokenizer: Any,
    pairs: list[tuple[Text, Text]],
    max_length: int,
    truncation: Truncation,
    add_eos: bool,
) -> list[EncodedExample | DropReason]:
    """`encode_prompt_completion` of each pair, returning why a row was dropped instead of
    None; the texts of `PAIRS_PER_BATCH` pairs are tokenised together (`encode_windows`)."""
    if max_length < 1:
        raise RlhfkitError(f"max_length must be at least 1, got {max_length}")
    encoded = []
    for start in range(0, len(pairs), PAIRS_PER_BATCH):
        batch = pairs[start : start + PAIRS_PER_BATCH]
        plain = [_is_plain(prompt, completion) for prompt, completion in batch]
        texts = [
            [prompt, prompt + completion]
            if is_plain
            else [
                render_text(tokenizer, prompt, as_prompt=True),
                render_text(tokenizer, list(prompt) + list(completion), as_prompt=False),
            ]
            for (prompt, completion), is_plain in zip(batch, plain)
        ]
        # A chat template writes its own special tokens; plain text gets the tokenizer's BOS
        windows = encode_windows(
            tokenizer,
            texts,
            templated=[not p for p in plain],
            max_length=max_length,
            keep_end=truncation is Truncation.KEEP_END,
        )
        encoded += [
            _assembled(tokenizer, prompt_ids, ids, cut, p and add_eos, max_length, truncation)
            for ((prompt_ids, ids), cut), p in zip(windows, plain)
        ]
    return encoded


def _is_plain(prompt: Text, completion: Text) -> bool:
    """Whether a pair is plain text (else messages); a mixed pair is an error."""
    if isinstance(prompt, str) != isinstance(completion, str):
        raise RlhfkitError("prompt and completion must both be strings or both lists of messages")
    return isinstance(prompt, str)


def _assembled(
    tokenizer: Any,
    prompt_ids: list[int],
    input_ids: list[int],
    cut: bool,
    add_eos: bool,
    max_length: int,
    truncation: Truncation,
) -> EncodedExample | DropReason:
    """One pair's sequence from its tokenised prompt and whole: the EOS appended when
    `add_eos`, the completion marked, the truncation applied."""
    if cut and truncation is Truncation.DROP:
        return DropReason.TOO_LONG  # its window alone holds more than max_length tokens
    if add_eos:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise RlhfkitError("the tokenizer has no EOS token; set one or turn add_eos off")
        if not input_ids or input_ids[-1] != eos:
            input_ids.append(eos)
    boundary = common_prefix_length(prompt_ids, input_ids)
    completion_mask = [False] * boundary + [True] * (len(input_ids) - boundary)
    if boundary == len(input_ids):
        return DropReason.NO_COMPLETION_TOKENS
    if len(input_ids) <= max_length:
        return EncodedExample(input_ids, completion_mask, truncated=False)
    return _TRUNCATIONS[truncation](input_ids, completion_mask, max_length)


def _keep_start(ids: list[int], mask: list[bool], max_length: int) -> EncodedExample | DropReason:
    if not any(mask[:max_length]):
        return DropReason.NO_COMPLETION_TOKENS
    return EncodedExample(ids[:max_length], mask[:max_length], truncated=True)


def _keep_end(ids: list[int], mask: list[bool], max_length: int) -> EncodedExample | DropReason:
    # At least one prompt token must stay: a completion cut from its prompt teaches nothing.
    if sum(mask) >= max_length:
        return DropReason.COMPLETION_TOO_LONG
    return EncodedExample(ids[-max_length:], mask[-max_length:], truncated=True)


def _drop(ids: list[int], mask: list[bool], max_length: int) -> DropReason:
    return DropReason.TOO_LONG


_Truncate = Callable[[list[int], list[bool], int], "EncodedExample | DropReason"]
_TRUNCATIONS: dict[Truncation, _Truncate] = {
    Truncation.KEEP_START: _keep_start,
    Truncation.KEEP_END: _keep_end,
    Truncation.DROP: _drop,
}


def tokenize_sft(
    tokenizer: Any,
    examples: list[SFTExample],
    *,
    max_length: int,
    truncation: Truncation | str,
) -> tuple[list[EncodedExample], TokenizeReport]:
    """Tokenise demonstrations; dropped rows are left out and counted in the report."""
    truncation = Truncation(truncation)
    report = TokenizeReport()
    encoded = []
    pairs = [(example.prompt, example.completion) for example in examples]
    for result in _encode_many(tokenizer, pairs, max_length, truncation, add_eos=True):
        if isinstance(result, DropReason):
            report.add_dropped(result)
        else:
            report.add_kept(result.truncated)
            encoded.append(result)
    return encoded, report


def _encode_grouped(
    tokenizer: Any,
    groups: list[tuple[Text, list[Text]]],
    max_length: int,
    truncation: Truncation,
) -> list[list[EncodedExample | DropReason]]:
    """Each group's (prompt, response) pairs encoded, all groups' texts tokenised together."""
    pairs = [(prompt, response) for prompt, responses in groups for response in responses]
    flat = iter(_encode_many(tokenizer, pairs, max_length, truncation, add_eos=True))
    return [[next(flat) for _ in responses] for _, responses in groups]


def tokenize_preferences(
    tokenizer: Any,
    examples: list[PreferenceExample],
    *,
    max_length: int,
    truncation: Truncation | str,
) -> tuple[list[tuple[EncodedExample, EncodedExample, float]], TokenizeReport]:
    """Tokenise preference pairs as `(chosen, rejected, margin)`.

    A pair is dropped when either side drops (the reason counted is the chosen side's first,
    then the rejected side's), and when chosen and rejected are the same tokens: such a pair
    has a loss of constant value, so it teaches nothing and only dilutes the batch. Different
    texts that are the same tokens only once truncated are counted as "identical once
    truncated", not as "chosen equals rejected". A pair is counted as truncated when either
    side was.
    """
    truncation = Truncation(truncation)
    report = TokenizeReport()
    pairs = []
    groups = [(example.prompt, [example.chosen, example.rejected]) for example in examples]
    encoded = _encode_grouped(tokenizer, groups, max_length, truncation)
    for example, (chosen, rejected) in zip(examples, encoded):
        if isinstance(chosen, DropReason) or isinstance(rejected, DropReason):
            report.add_dropped(chosen if isinstance(chosen, DropReason) else rejected)
            continue
        if chosen.input_ids == rejected.input_ids:
            same = _same_before_truncation(chosen, example.chosen, rejected, example.rejected)
            report.add_dropped(
                DropReason.CHOSEN_EQUALS_REJECTED if same else DropReason.IDENTICAL_ONCE_TRUNCATED
            )
            continue
        report.add_kept(chosen.truncated or rejected.truncated)
        pairs.append((chosen, rejected, example.margin))
    return pairs, report


def tokenize_rankings(
    tokenizer: Any,
    examples: list[RankingExample],
    *,
    max_length: int,
    truncation: Truncation | str,
) -> tuple[list[tuple[list[EncodedExample], tuple[int, ...]]], TokenizeReport]:
    """Tokenise rankings as `(responses, ranks)`, best response first.

    A response that drops is removed together with its rank, so ranks stay aligned; it is
    counted in `report.responses_dropped`. A ranking is dropped when it is left with fewer than
    two responses, or when all its responses are tied (no pair to learn from). A response whose
    tokens appear at two different ranks is removed, every copy of it (`_contradicted`); when
    only truncation made the texts identical, the removal and any drop it causes are counted as
    "identical once truncated". A ranking is counted as truncated when any kept response was,
    or when truncation cost it a response that way.
    """
    truncation = Truncation(truncation)
    report = TokenizeReport()
    rankings = []
    groups = [(example.prompt, list(example.responses)) for example in examples]
    encoded = _encode_grouped(tokenizer, groups, max_length, truncation)
    for example, results in zip(examples, encoded):
        kept = []
        for result, text, rank in zip(results, example.responses, example.ranks):
            if isinstance(result, DropReason):
                _count(report.responses_dropped, result)
            else:
                kept.append((result, text, rank))
        if len(kept) < 2:
            report.add_dropped(DropReason.TOO_FEW_RESPONSES)
            continue
        responses, texts, ranks = (list(column) for column in zip(*kept))
        removed = _contradicted(responses, texts, ranks)
        for reason in removed:
            if reason is not None:
                _count(report.responses_dropped, reason)
        drop = _unusable_after(ranks, removed)
        if drop is not None:
            report.add_dropped(drop)
            continue
        truncated = DropReason.IDENTICAL_ONCE_TRUNCATED in removed
        responses = [r for r, reason in zip(responses, removed) if reason is None]
        ranks = [rank for rank, reason in zip(ranks, removed) if reason is None]
        report.add_kept(truncated or any(response.truncated for response in responses))
        rankings.append((responses, tuple(ranks)))
    return rankings, report


def _count(by_reason: dict[str, int], reason: DropReason) -> None:
    by_reason[reason.value] = by_reason.get(reason.value, 0) + 1


def _same_before_truncation(
    a: EncodedExample, a_text: Text, b: EncodedExample, b_text: Text
) -> bool:
    """Whether two responses with the same tokens were already the same before `max_length`
    cut them: the same text, or neither of them cut."""
    return a_text == b_text or not (a.truncated or b.truncated)


def _contradicted(
    responses: list[EncodedExample], texts: list[Text], ranks: list[int]
) -> list[DropReason | None]:
    """Per response of a ranking: None when it stays, else why it is removed, because its tokens
    also appear at another rank: `SAME_RESPONSE_RANKED_APART` when one of those copies was the
    same before truncation, else `IDENTICAL_ONCE_TRUNCATED`.

    Such a ranking says a response is better (or worse) than itself, so the copies' comparisons
    with the responses ranked between them contradict each other. Removing every copy drops
    exactly that judgement and keeps the ranking's other comparisons (samples of a small policy
    repeat often, and a K-way ranking holds C(K,2) pairs); merging the copies would have to
    invent a rank for them. Copies at the same rank are a consistent tie and stay.
    (A pair whose chosen equals its rejected is the two-response case: nothing is left.)
    """
    copies: dict[tuple[int, ...], list[int]] = {}
    for i, response in enumerate(responses):
        copies.setdefault(tuple(response.input_ids), []).append(i)
    reasons: list[DropReason | None] = []
    for i, response in enumerate(responses):
        apart = [j for j in copies[tuple(response.input_ids)] if ranks[j] != ranks[i]]
        if not apart:
            reasons.append(None)
        elif any(
            _same_before_truncation(response, texts[i], responses[j], texts[j]) for j in apart
        ):
            reasons.append(DropReason.SAME_RESPONSE_RANKED_APART)
        else:
            reasons.append(DropReason.IDENTICAL_ONCE_TRUNCATED)
    return reasons


def _unusable_after(ranks: list[int], removed: list[DropReason | None]) -> DropReason | None:
    """Why a ranking with the `removed` responses taken out is dropped, None when it is not.
    The truncation is blamed when the ranking uncut, losing only its same-text copies, would
    have been usable (`_contradicted`)."""
    drop = _unusable([rank for rank, reason in zip(ranks, removed) if reason is None])
    if drop is None:
        return None
    uncut = [
        r for r, why in zip(ranks, removed) if why is not DropReason.SAME_RESPONSE_RANKED_APART
    ]
    return drop if _unusable(uncut) else DropReason.IDENTICAL_ONCE_TRUNCATED


def _unusable(ranks: list[int]) -> DropReason | None:
    if len(ranks) < 2:
        return DropReason.SAME_RESPONSE_RANKED_APART
    if len(set(ranks)) == 1:  # no response preferred to another: nothing to learn
        return DropReason.ALL_TIED
    return None
