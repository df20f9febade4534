"""What labelling reads and writes: an item (one prompt with its K candidate responses, a row of
`candidates.jsonl`) and a labeller's submission for it. The label store keeps submissions; the
exporters and statistics read them; nothing else needs to know how they are stored."""

from dataclasses import dataclass, field
from typing import Any

FLAGS = ("unsafe", "broken")
"""What a labeller can flag a response as."""


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
    seconds: float = 0.0
    """Time the labeller spent on the item."""
    submitted_at: str = ""
    """UTC time of the submission, ISO 8601 (2026-12-04T20:51:03Z)."""

    @property
    def skipped(self) -> bool:
        return self.ranks is None
