"""Dataset formats and the up-front validation of their rows.

Column names follow TRL's documented dataset formats, so a dataset prepared for TRL loads here
unchanged. Every row is checked before any training starts; a bad row raises `DataError` naming
the file, the 1-based row number, the field and what was expected, e.g.

    prefs.jsonl: row 7: field 'chosen': expected a non-empty string or a list of messages, got int

A "text" is either a non-empty string or a conversational list of messages
`[{"role": "user", "content": "..."}, ...]`. Message fields are named with 0-based indices,
e.g. `messages[2].content`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rlhfkit.errors import DataError, RlhfkitError

Message = dict[str, Any]
Text = str | list[Message]
"""A non-empty string, or a non-empty list of messages with a `role` and a non-empty `content`."""

ROLES = ("system", "user", "assistant", "tool")


class Format(str, Enum):
    """The dataset formats rlhfkit reads; the value is the name used in configs."""

    SFT = "sft"
    PREFERENCE = "preference"
    RANKING = "ranking"
    PROMPT = "prompt"
    STEPS = "steps"


@dataclass(frozen=True)
class SFTExample:
    """A demonstration: the loss is taken on `completion` given `prompt`. A language-modelling
    row (TRL's `text` column) has the empty prompt: the loss is taken on the whole text."""

    prompt: Text
    completion: Text


@dataclass(frozen=True)
class PreferenceExample:
    """A pairwise preference: `chosen` is preferred to `rejected` as an answer to `prompt`."""

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float = 0.0
    """How strongly `chosen` is preferred (0 = no margin); used by margin-aware reward losses."""


@dataclass(frozen=True)
class RankingExample:
    """K >= 2 responses to one prompt, ordered best to worst."""

    prompt: Text
    responses: tuple[Text, ...]
    ranks: tuple[int, ...]
    """One rank per response, non-decreasing; equal ranks are ties (e.g. `(0, 1, 1, 2)`)."""


@dataclass(frozen=True)
class PromptExample:
    """A prompt for online RL (PPO, GRPO, ...): the policy writes the response."""

    prompt: Text
    answer: str | None = None
    """A reference answer for verifiers and evaluation, when the dataset has one."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Every other column of the row, passed through to reward functions untouched."""


@dataclass(frozen=True)
class StepsExample:
    """TRL's stepwise supervision: a solution split into steps, each labelled correct or not."""

    prompt: Text
    completions: tuple[str, ...]
    labels: tuple[bool, ...]


Example = SFTExample | PreferenceExample | RankingExample | PromptExample | StepsExample


# ---------------------------------------------------------------------------------------------
# Checks shared by the formats. Each takes `where = (path, row_number)` so a failure names the
# row without every caller repeating it.
# ---------------------------------------------------------------------------------------------

_Where = tuple[str, int]


def type_name(value: Any) -> str:
    """The type of a value as a user reading their JSON would name it (None is `null`)."""
    return "null" if value is None else type(value).__name__


def _fail(where: _Where, field_name: str | None, message: str) -> DataError:
    return DataError(where[0], where[1], field_name, message)


def _require(row: dict, name: str, where: _Where, hint: str = "") -> Any:
    """The value of a required column; a missing column or a null value is an error."""
    if name not in row:
        present = ", ".join(f"'{key}'" for key in row) or "none"
        raise _fail(where, name, f"missing{hint} (the row has columns: {present})")
    if row[name] is None:
        # Parquet and Arrow fill a column absent from some rows with nulls.
        raise _fail(where, name, f"missing{hint} (null)")
    return row[name]


def _check_string(value: Any, name: str, where: _Where) -> str:
    if not isinstance(value, str):
        raise _fail(where, name, f"expected a non-empty string, got {type_name(value)}")
    if not value.strip():
        raise _fail(where, name, f"expected a non-empty string, got {_blank(value)}")
    return _check_unicode(value, name, where)


def _blank(value: str) -> str:
    """What a blank string holds, in words: a file that shows '   ' is not 'empty' to its reader."""
    return "an empty string" if not value else f"only whitespace ({value!r})"


def not_unicode(text: str) -> str | None:
    """Why `text` is not valid Unicode, or None when it is. JSON's escapes can spell half of a
    surrogate pair (`"\\ud800"`), which Python decodes to a string that no tokenizer and no
    UTF-8 file takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        surrogate = ascii(text[error.start])
        return (
            f"not valid Unicode: a lone surrogate {surrogate} at character {error.start + 1} "
            "(half of an escaped surrogate pair?)"
        )
    return None


def _check_unicode(value: str, name: str, where: _Where) -> str:
    if (problem := not_unicode(value)) is not None:
        raise _fail(where, name, problem)
    return value


def _check_messages(value: list, name: str, where: _Where) -> list[Message]:
    """A non-empty list of `{"role", "content"}` dicts; returns shallow copies of the dicts."""
    if not value:
        raise _fail(where, name, "expected at least one message, got an empty list")
    messages = []
    for index, message in enumerate(value):
        item = f"{name}[{index}]"
        if not isinstance(message, dict):
            got = type_name(message)
            raise _fail(where, item, f"expected a message with 'role' and 'content', got {got}")
        role = message.get("role")
        if role is None:
            raise _fail(where, f"{item}.role", "missing")
        if role not in ROLES:
            allowed = ", ".join(f"'{r}'" for r in ROLES)
            raise _fail(where, f"{item}.role", f"expected one of {allowed}, got {role!r}")
        if _calls_tools(message, item, where) and message.get("content") in (None, ""):
            # TRL's form of an assistant turn that only calls a tool: no text beside the calls
            messages.append({**message, "content": ""})
            continue
        if message.get("content") is None:
            raise _fail(where, f"{item}.content", "missing")
        _check_string(message["content"], f"{item}.content", where)
        # A copy, so that the example does not share dicts with the caller's rows.
        messages.append(dict(message))
    return messages


def _calls_tools(message: dict, item: str, where: _Where) -> bool:
    """Whether an assistant message carries `tool_calls` (a non-empty list, as TRL writes it)."""
    calls = message.get("tool_calls")
    if calls is None or calls == []:  # Parquet and `datasets` fill a field a row lacks so
        return False
    if message["role"] != "assistant" or not isinstance(calls, list):
        raise _fail(where, f"{item}.tool_calls", "expected a list in an assistant message")
    return True


def _check_text(value: Any, name: str, where: _Where) -> Text:
    """A non-empty string or a list of messages."""
    if isinstance(value, list):
        return _check_messages(value, name, where)
    expected = "expected a non-empty string or a list of messages"
    if not isinstance(value, str):
        raise _fail(where, name, f"{expected}, got {type_name(value)}")
    if not value.strip():
        raise _fail(where, name, f"{expected}, got {_blank(value)}")
    return _check_unicode(value, name, where)


def _check_same_kind(prompt: Text, value: Text, name: str, where: _Where) -> None:
    """A string prompt needs string answers and a conversational prompt needs messages:
    the two are tokenised differently, so a mix cannot be joined into one sequence."""
    if isinstance(prompt, str) != isinstance(value, str):
        want = "a string" if isinstance(prompt, str) else "a list of messages"
        raise _fail(where, name, f"expected {want} like 'prompt', got {type_name(value)}")


def _check_int(value: Any, name: str, where: _Where) -> int:
    # bool is a subclass of int in Python, but True is not a rank.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, name, f"expected an integer, got {type_name(value)}")
    return value


def _check_list(value: Any, name: str, where: _Where, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise _fail(where, name, f"expected a list of {what}, got {type_name(value)}")
    return list(value)


# ---------------------------------------------------------------------------------------------
# One validator per format, picked from `_VALIDATORS` by the format.
# ---------------------------------------------------------------------------------------------


def _validate_sft(row: dict, where: _Where) -> SFTExample:
    """`prompt` + `completion`, TRL's `messages` column ending in an assistant turn, or TRL's
    language-modelling `text` (the empty prompt: every token counts)."""
    if isinstance(row.get("label"), bool):  # TRL's unpaired preferences: fine-tuning on them
        raise _fail(  # would imitate the completions labelled bad as well
            where,
            "label",
            "a completion labelled good or bad is TRL's unpaired preference (KTO) data, which "
            "rlhfkit does not train on; SFT needs demonstrations",
        )
    if row.get("messages") is not None and row.get("prompt") is None:
        return _sft_from_messages(row["messages"], where)
    if "text" in row and row.get("prompt") is None and row.get("completion") is None:
        return SFTExample(prompt="", completion=_check_string(row["text"], "text", where))
    hint = ": an SFT row needs 'prompt' and 'completion', 'messages', or 'text'"
    prompt = _check_text(_require(row, "prompt", where, hint), "prompt", where)
    completion = _check_text(_require(row, "completion", where), "completion", where)
    _check_same_kind(prompt, completion, "completion", where)
    return SFTExample(prompt=prompt, completion=completion)


def _sft_from_messages(value: Any, where: _Where) -> SFTExample:
    """Split a whole conversation into its last assistant turn (the completion) and the rest."""
    if not isinstance(value, list):
        raise _fail(where, "messages", f"expected a list of messages, got {type_name(value)}")
    messages = _check_messages(value, "messages", where)
    if len(messages) < 2:
        raise _fail(
            where,
            "messages",
            f"expected at least two messages (a prompt and a reply), got {len(messages)}",
        )
    last = len(messages) - 1
    role = messages[last]["role"]
    if role != "assistant":
        raise _fail(
            where, f"messages[{last}].role", f"the last message must be 'assistant', got {role!r}"
        )
    return SFTExample(prompt=messages[:-1], completion=[messages[-1]])


def _validate_preference(row: dict, where: _Where) -> PreferenceExample:
    """`prompt`, `chosen`, `rejected`; or TRL's implicit prompt: no `prompt`, and `chosen` and
    `rejected` hold the whole text or conversation (see `_implicit_prompt`)."""
    if row.get("prompt") is None and ("chosen" in row or "rejected" in row):
        # read as an implicit-prompt pair, so the answer it lacks is what the error names
        chosen = _check_text(_require(row, "chosen", where), "chosen", where)
        rejected = _check_text(_require(row, "rejected", where), "rejected", where)
        _check_same_kind(chosen, rejected, "rejected", where)
        prompt, chosen, rejected = _implicit_prompt(chosen, rejected, where)
    else:
        prompt = _check_text(_require(row, "prompt", where), "prompt", where)
        chosen = _check_text(_require(row, "chosen", where), "chosen", where)
        _check_same_kind(prompt, chosen, "chosen", where)
        rejected = _check_text(_require(row, "rejected", where), "rejected", where)
        _check_same_kind(prompt, rejected, "rejected", where)
    margin = row.get("margin")
    if margin is None:
        return PreferenceExample(prompt, chosen, rejected)
    # bool is a subclass of int in Python, but `True` is not a margin.
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise _fail(where, "margin", f"expected a number, got {type_name(margin)}")
    if not math.isfinite(margin):
        raise _fail(where, "margin", f"expected a finite number, got {margin}")
    return PreferenceExample(prompt, chosen, rejected, float(margin))


def _implicit_prompt(chosen: Text, rejected: Text, where: _Where) -> tuple[Text, Text, Text]:
    """The prompt two whole answers share, and what each adds: for conversations the leading
    messages they have in common (at least one, and at least one message left on each side);
    for strings see `_text_cut`. Answers that are the same leave the last message or word on
    each side (such a pair is then dropped as chosen equals rejected)."""
    shared = common_prefix_length(chosen, rejected)
    if isinstance(chosen, list):
        shared = min(shared, len(chosen) - 1, len(rejected) - 1)
        if shared < 1:
            raise _fail(
                where, "prompt", "missing, and 'chosen' and 'rejected' share no leading message"
            )
        return chosen[:shared], chosen[shared:], rejected[shared:]
    cut = _text_cut(chosen, min(shared, len(chosen) - 1, len(rejected) - 1))
    if cut < 1 or not chosen[:cut].strip():
        raise _fail(where, "prompt", "missing, and 'chosen' and 'rejected' share no leading text")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _text_cut(text: str, shared: int) -> int:
    """Where a string's implicit prompt ends, given the length of the common start (at most
    one character short of either answer). Where the answers part at a word boundary this is
    TRL's cut: a space before the parting point goes to the answers (`"Q: 2 + 3? A: 5"` and
    `"... A: 6"` give `"Q: 2 + 3? A:"`, `" 5"`, `" 6"`), other whitespace stays with the prompt
    (`"Q?\nyes"` and `"Q?\nno"` give `"Q?\n"`, `"yes"`, `"no"`). Inside a word, where TRL cuts the
    word, the cut moves back to the word's start by the same rule, so words stay whole; with no
    whitespace before it, it stays where the answers part, as TRL's."""
    end = shared
    while end > 0 and not text[end - 1].isspace():
        end -= 1
    if end == 0:  # no whitespace in the common start
        return shared
    return end - 1 if text[end - 1] == " " else end


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items (characters, messages, token ids) `a` and `b` share."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _validate_ranking(row: dict, where: _Where) -> RankingExample:
    if row.get("margin") is not None:  # it would be read nowhere
        raise _fail(
            where,
            "margin",
            "a ranking has no margin (a chosen/rejected pair's column): give pairs with "
            "margins, or leave it out",
        )
    prompt = _check_text(_require(row, "prompt", where), "prompt", where)
    raw = _check_list(_require(row, "responses", where), "responses", where, "responses")
    if len(raw) < 2:
        raise _fail(where, "responses", f"a ranking needs at least two responses, got {len(raw)}")
    responses = []
    for index, value in enumerate(raw):
        name = f"responses[{index}]"
        response = _check_text(value, name, where)
        _check_same_kind(prompt, response, name, where)
        responses.append(response)
    if row.get("ranks") is None:
        return RankingExample(prompt, tuple(responses), tuple(range(len(responses))))
    ranks_raw = _check_list(row["ranks"], "ranks", where, "integers")
    if len(ranks_raw) != len(responses):
        raise _fail(
            where,
            "ranks",
            f"expected one rank per response ({len(responses)}), got {len(ranks_raw)}",
        )
    ranks = [_check_int(value, f"ranks[{index}]", where) for index, value in enumerate(ranks_raw)]
    for index in range(1, len(ranks)):
        if ranks[index] < ranks[index - 1]:
            raise _fail(
                where,
                "ranks",
                f"expected non-decreasing ranks (responses are ordered best to worst), "
                f"got {ranks[index - 1]} then {ranks[index]} at position {index}",
            )
    return RankingExample(prompt, tuple(responses), tuple(ranks))


def _validate_prompt(row: dict, where: _Where) -> PromptExample:
    prompt = _check_text(_require(row, "prompt", where), "prompt", where)
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        # not turned into text silently: a reward function comparing it with a number would
        # then score every answer 0
        raise _fail(where, "answer", f'expected text, got a number: write it as "{answer}"')
    if answer is not None:
        _check_string(answer, "answer", where)
    metadata = {key: value for key, value in row.items() if key not in ("prompt", "answer")}
    return PromptExample(prompt=prompt, answer=answer, metadata=metadata)


def _validate_steps(row: dict, where: _Where) -> StepsExample:
    prompt = _check_text(_require(row, "prompt", where), "prompt", where)
    steps = _check_list(_require(row, "completions", where), "completions", where, "strings")
    if not steps:
        raise _fail(where, "completions", "expected at least one step, got an empty list")
    completions = [_check_string(step, f"completions[{i}]", where) for i, step in enumerate(steps)]
    labels_raw = _check_list(_require(row, "labels", where), "labels", where, "booleans")
    if len(labels_raw) != len(completions):
        raise _fail(
            where,
            "labels",
            f"expected one label per step ({len(completions)}), got {len(labels_raw)}",
        )
    labels = []
    for index, label in enumerate(labels_raw):
        # 0/1 numbers are accepted because many exports store labels that way (Parquet and
        # pandas as floats 0.0/1.0)
        if not (isinstance(label, bool) or (isinstance(label, (int, float)) and label in (0, 1))):
            raise _fail(where, f"labels[{index}]", f"expected a boolean or 0/1, got {label!r}")
        labels.append(bool(label))
    return StepsExample(prompt, tuple(completions), tuple(labels))


_VALIDATORS: dict[Format, Callable[[dict, _Where], Example]] = {
    Format.SFT: _validate_sft,
    Format.PREFERENCE: _validate_preference,
    Format.RANKING: _validate_ranking,
    Format.PROMPT: _validate_prompt,
    Format.STEPS: _validate_steps,
}


def as_format(fmt: Format | str) -> Format:
    """`fmt` as a `Format`; an unknown name is an `RlhfkitError` listing the known ones."""
    try:
        return Format(fmt)
    except ValueError:
        known = ", ".join(f.value for f in Format)
        raise RlhfkitError(f"unknown dataset format {fmt!r}; expected one of: {known}") from None


def validate_row(row: dict, fmt: Format | str, path: str, row_number: int) -> Example:
    """Check one row against a format and build its example.

    Args:
        row: the row's columns, as read from the file.
        fmt: the format the row must follow.
        path: the file the row came from, for the error message.
        row_number: the row's 1-based number in that file.

    Raises:
        DataError: naming the file, row, field and what was expected.
    """
    where = (str(path), row_number)
    if not isinstance(row, dict):
        raise _fail(where, None, f"expected an object with named columns, got {type_name(row)}")
    return _VALIDATORS[as_format(fmt)](row, where)


def validate_rows(rows: Iterable[tuple[int, dict]], fmt: Format | str, path: str) -> list[Example]:
    """Validate `(row_number, row)` pairs, as `read_rows` returns them.

    Raises:
        DataError: for the first bad row.
    """
    fmt = as_format(fmt)
    return [validate_row(row, fmt, path, row_number) for row_number, row in rows]
