"""What labelling reads and writes: an item (one prompt with its K candidate responses, a row of
`candidates.jsonl`) and a labeller's submission for it. The label store keeps submissions; the
exporters and statistics read them; nothing else needs to know how they are stored."""

import math
from dataclasses import dataclass, field
from typing import Any

FLAGS = ("unsafe", "broken")
"""What a labeller can flag a response as."""

MAX_INDEX_DIGITS = 9
"""A response index longer than this is no index of any item (and int() refuses past 4300)."""


@dataclass(frozen=True)
class Item:
    """One prompt and the responses to rank, as `rlhfkit sample` writes them."""

    item_id: str
    """Stable id of the item (unique within a candidates file)."""
    prompt: Any
    """The prompt: a string, or a list of chat messages."""
    responses: tuple[str, ...]
    """The K candidate responses, in the order the sampler produced them."""
    source: dict = field(default_factory=dict)
    """Where they come from: model path, sha256 of its weights, sampler settings, seed."""


@dataclass(frozen=True)
class Submission:
    """One labeller's judgement of one item. Indices are positions in `Item.responses`."""

    item_id: str
    labeller: str
    ranks: tuple[int, ...] | None
    """Per response (in `Item.responses` order): 0 = best, larger = worse, equal = a tie.
    None when the item was skipped."""
    shown_order: tuple[int, ...]
    """The response indices in the order they were shown to this labeller (top first)."""
    flags: dict[int, str] = field(default_factory=dict)
    """Response index -> one of FLAGS."""
    comment: str = ""
    seconds: float | None = 0.0
    """Time the labeller spent on the item; None where the tool recorded none (Argilla)."""
    submitted_at: str = ""
    """UTC time of the submission, ISO 8601 (2026-12-04T20:51:03Z)."""

    @property
    def skipped(self) -> bool:
        return self.ranks is None


def flag_index(key: Any) -> int | None:
    """A flags key as a response index (JSON object keys are strings: "2" -> 2), or None when it
    is not ASCII digits: "²" passes str.isdigit(), yet int() refuses it."""
    if not isinstance(key, str) or not key.isascii() or not key.isdigit():
        return None
    return int(key) if len(key) <= MAX_INDEX_DIGITS else None


def seconds_value(value: Any) -> float | None:
    """Time spent as a float, or None unless a finite number >= 0. An integer too large for a
    float is refused here: math.isfinite would raise OverflowError on it."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def show_value(value: Any) -> str:
    """A value as an error shows it: its JSON type for containers, else its repr, cut short
    (a 400-digit number stays one short line)."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
