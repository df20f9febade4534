"""From a text to the token ids the model is fed: a chat template's rendering, the tokenizer's
BOS before plain text, windows that keep a huge text from being tokenised whole, and the
tokenizer called on many texts at once.

Plain text starts with the special tokens the tokenizer puts before a text (the BOS of Llama,
Mistral or Gemma; nothing for GPT-2-style tokenizers), once: models trained with a BOS degrade
badly without it. A chat template's output is tokenised as written: the template writes its own.
"""

from typing import Any

from rlhfkit.data.formats import Text
from rlhfkit.errors import RlhfkitError


def render_text(tokenizer: Any, text: Text, *, as_prompt: bool) -> str:
    """A text as the string the tokenizer will see.

    A string is returned as it is; a list of messages goes through the tokenizer's chat
    template, with the assistant turn opened when `as_prompt` (the generation prompt).
    """
    if isinstance(text, str):
        return text
    _require_chat_template(tokenizer)
    rendered = tokenizer.apply_chat_template(
        list(text), tokenize=False, add_generation_prompt=as_prompt
    )
    if any(message.get("tool_calls") for message in text):
        _require_tool_calls_written(tokenizer, text, rendered, as_prompt)
    return rendered


def _require_tool_calls_written(tokenizer: Any, text: list, rendered: str, as_prompt: bool) -> None:
    """A template without tool support drops `tool_calls` silently (SmolLM2's writes only each
    message's content): the model would learn replies to calls it never saw made."""
    without = [{k: v for k, v in m.items() if k != "tool_calls"} for m in text]
    if tokenizer.apply_chat_template(without, tokenize=False, add_generation_prompt=as_prompt) == (
        rendered
    ):
        name = getattr(tokenizer, "name_or_path", "") or "(built in memory)"
        raise RlhfkitError(
            f"the chat template of the tokenizer at {name} does not write tool_calls: "
            "conversations that call tools need a template with tool support"
        )


_PROBE = "a"  # any short text: what the tokenizer adds around it is what we read


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before any text when it adds its special tokens: `[bos]` for
    Llama, Mistral or Gemma, `[]` for GPT-2-style byte-level BPEs (the tiny model's included).
    Read from the tokenizer itself (a probe text with and without special tokens), so a
    tokenizer that defines a BOS but does not add it gets none. Trailing special tokens (an EOS
    some tokenizers append) are not part of it: an EOS ends a completion, never a prompt."""
    plain = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(_PROBE)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def encode_rendered(tokenizer: Any, text: str, *, templated: bool) -> list[int]:
    """Token ids of a string that will be fed to the model from its first token.

    Args:
        text: plain text, or the output of the chat template (possibly continued).
        templated: True = `text` came from the chat template, tokenised exactly as written;
            False = plain text, which starts with the tokenizer's `special_prefix` (its BOS),
            never twice: text already starting with it is left as it is.
    Naive equivalent for plain text: `tokenizer(text)["input_ids"]` minus any special tokens
    appended at the end, and without a second BOS.
    """
    return encode_rendered_batch(tokenizer, [text], templated=templated)[0]


TEXTS_PER_CALL = 1024
"""Texts given to the tokenizer in one call by `encode_rendered_batch`."""


def encode_rendered_batch(tokenizer: Any, texts: list[str], *, templated: bool) -> list[list[int]]:
    """`encode_rendered` of each text, `TEXTS_PER_CALL` distinct texts per call of the tokenizer
    and its `special_prefix` read once: each call costs tens of microseconds beyond its text,
    which text by text, with the prefix read for each, was most of a dataset's tokenising time."""
    unique = list(dict.fromkeys(texts))  # a prompt shared by several rows is tokenised once
    ids_of = {}
    for start in range(0, len(unique), TEXTS_PER_CALL):
        chunk = unique[start : start + TEXTS_PER_CALL]
        ids_of.update(zip(chunk, tokenizer(chunk, add_special_tokens=False)["input_ids"]))
    prefix = [] if templated or not texts else special_prefix(tokenizer)
    rows = (list(ids_of[text]) for text in texts)  # a new list for each text: callers append
    return [row if row[: len(prefix)] == prefix else prefix + row for row in rows]


CHARS_PER_TOKEN = 8
"""First guess of the characters one token covers, for the character budget of `encode_window`
(English text averages about 4). Text with longer tokens gets a budget doubled until it fits."""
CUT_MARGIN_TOKENS = 64
"""Tokens a cut window must hold beyond `max_length`. Cutting a text can change the tokens next
to the cut (a word split in two); the margin keeps those tokens out of the ones kept."""


def encode_window(
    tokenizer: Any, texts: list[str], *, templated: bool, max_length: int, keep_end: bool
) -> tuple[list[list[int]], bool]:
    """Token ids of texts that each extend the one before (a prompt, then the prompt with its
    completion), tokenising no more of them than `max_length` tokens need.

    Texts within the character budget are tokenised whole, exactly as `encode_rendered` does.
    Longer ones are all cut at the same character offsets, to the first `budget` characters of
    the last text, or its last `budget` when `keep_end`. The budget starts at
    `CHARS_PER_TOKEN * (max_length + CUT_MARGIN_TOKENS)` and doubles until the last text's
    window holds `max_length + CUT_MARGIN_TOKENS` tokens, which checks, rather than assumes,
    that the window covers every token kept; at worst the window grows to the whole text.

    Returns:
        The ids of each text (or of its window), and whether the texts were cut. When they
        were, the last text has more than `max_length` tokens.
    """
    budget = _first_budget(max_length)
    longest = len(texts[-1])
    while longest > budget:
        if keep_end:
            windows = [text[longest - budget :] for text in texts]
        else:
            windows = [text[:budget] for text in texts]
        ids = encode_rendered_batch(tokenizer, windows, templated=templated)
        if len(ids[-1]) >= max_length + CUT_MARGIN_TOKENS:
            return ids, True
        budget *= 2  # the window's tokens are longer than the guess: widen it
    return encode_rendered_batch(tokenizer, texts, templated=templated), False


def encode_windows(
    tokenizer: Any,
    rows: list[list[str]],
    *,
    templated: list[bool],
    max_length: int,
    keep_end: bool,
) -> list[tuple[list[list[int]], bool]]:
    """`encode_window` of each row of texts (`templated[i]` for row i), the same ids: the rows
    within the first character budget are tokenised together (`encode_rendered_each`), the
    longer ones one by one through their windows."""
    budget = _first_budget(max_length)
    whole = [i for i, texts in enumerate(rows) if len(texts[-1]) <= budget]
    flat = [(text, templated[i]) for i in whole for text in rows[i]]
    ids = iter(encode_rendered_each(tokenizer, [t for t, _ in flat], [f for _, f in flat]))
    results = {i: ([next(ids) for _ in rows[i]], False) for i in whole}
    return [
        results[i]
        if i in results
        else encode_window(
            tokenizer, texts, templated=templated[i], max_length=max_length, keep_end=keep_end
        )
        for i, texts in enumerate(rows)
    ]


def encode_rendered_each(
    tokenizer: Any, texts: list[str], templated: list[bool]
) -> list[list[int]]:
    """`encode_rendered` of each text with its own `templated` flag: the plain texts tokenised
    together, then the templated ones (`encode_rendered_batch`)."""
    ids: list = [None] * len(texts)
    for flag in (False, True):
        indices = [i for i, f in enumerate(templated) if f == flag]
        chosen = [texts[i] for i in indices]
        for i, row in zip(indices, encode_rendered_batch(tokenizer, chosen, templated=flag)):
            ids[i] = row
    return ids


def _first_budget(max_length: int) -> int:
    """The characters `encode_window` first cuts a text to (see `CHARS_PER_TOKEN`)."""
    return CHARS_PER_TOKEN * (max_length + CUT_MARGIN_TOKENS)


def encode_text(tokenizer: Any, text: Text, *, as_prompt: bool) -> list[int]:
    """Token ids of a string (plain, with the tokenizer's BOS if it adds one) or of a list of
    messages (through the chat template, as written; `as_prompt` opens the assistant turn)."""
    return encode_texts(tokenizer, [text], as_prompt=as_prompt)[0]


def encode_texts(tokenizer: Any, texts: list[Text], *, as_prompt: bool) -> list[list[int]]:
    """`encode_text` of each text, in as few tokenizer calls as it takes
    (`encode_rendered_each`)."""
    rendered = [render_text(tokenizer, text, as_prompt=as_prompt) for text in texts]
    return encode_rendered_each(tokenizer, rendered, [not isinstance(t, str) for t in texts])


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "(built in memory)"
        raise RlhfkitError(
            f"conversational data needs a chat template, and the tokenizer at {name} has none: "
            "add one or use prompt/completion strings"
        )
