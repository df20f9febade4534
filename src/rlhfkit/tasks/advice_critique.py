"""Critique-and-revise demonstrations for `advice`: principles the gold annotator really
values, each with writer replies that break it at most once.

A demonstration takes a writer's reply, clears it of the principle's flaws, and then (half
the time) puts exactly one back: a rude remark, a tip from another topic, or a repeat of one of
its sentences placed after it. The critique names that sentence (or says nothing is wrong)
and the revision is the reply without it, so every revision that changes a reply raises its
gold score. A tiny model trained on these learns the format and the edit; what it makes of
its own replies is then measured by the gold annotator.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass

from rlhfkit.data.conversation import Principle, critique_prompt, revision_prompt
from rlhfkit.tasks.advice_bank import FILLER, RUDE, TOPICS
from rlhfkit.tasks.advice_writer import TOPIC_OF_TIP, split_sentences, write_reply

POLITE = Principle(
    "polite",
    "Is any sentence of the reply rude? Name it.",
    "Rewrite the reply without the rude sentence.",
)
ON_TOPIC = Principle(
    "on_topic",
    "Is any sentence of the reply about another topic? Name it.",
    "Rewrite the reply without the off-topic sentence.",
)
NO_REPEATS = Principle(
    "no_repeats",
    "Does the reply say a sentence twice? Name it.",
    "Rewrite the reply without the repeated sentence.",
)
PRINCIPLES = (POLITE, ON_TOPIC, NO_REPEATS)
NOTHING_WRONG = "Nothing to fix."
VERDICTS = {"polite": "is rude.", "on_topic": "is off topic.", "no_repeats": "is said twice."}


BREAKS: dict[str, Callable[[str, list[str], int], bool]] = {
    "polite": lambda topic, sentences, i: sentences[i] in RUDE,
    "on_topic": lambda topic, sentences, i: TOPIC_OF_TIP.get(sentences[i], topic) != topic,
    "no_repeats": lambda topic, sentences, i: sentences[i] in sentences[:i],
}
"""Whether sentence i of a reply on `topic` breaks the principle (a repeat: every occurrence after
the first)."""


def offending(principle: str, topic: str, sentences: list[str]) -> list[int]:
    """Indices of the sentences that break `principle` in a reply on `topic`."""
    return [i for i in range(len(sentences)) if BREAKS[principle](topic, sentences, i)]


def _flaw(principle: str, topic: str, sentences: list[str], rng: random.Random) -> tuple[int, str]:
    """(position, sentence): where to insert one sentence that breaks `principle`."""
    if principle == "no_repeats":
        source = rng.randrange(len(sentences))
        return rng.randint(source + 1, len(sentences)), sentences[source]
    if principle == "polite":
        bad = rng.choice(RUDE)
    else:
        bad = rng.choice(TOPICS[rng.choice([t for t in TOPICS if t != topic])]["tips"])
    return rng.randint(0, len(sentences)), bad


@dataclass(frozen=True)
class CritiqueDemo:
    prompt: str
    topic: str
    principle: Principle
    reply: str
    offender: int | None
    """Index of the sentence (in `split_sentences(reply)`) that breaks the principle;
    None = none."""
    critique: str
    revision: str


def critique_demo(
    topic: str, prompt: str, principle: Principle, rng: random.Random, flaw_rate: float = 0.5
) -> CritiqueDemo | None:
    """One demonstration, or None when clearing the writer's reply left nothing."""
    sentences = split_sentences(write_reply(rng, topic))
    bad = set(offending(principle.name, topic, sentences))
    sentences = [s for i, s in enumerate(sentences) if i not in bad]
    if not sentences:
        return None
    offender = None
    if rng.random() < flaw_rate:
        offender, sentence = _flaw(principle.name, topic, sentences, rng)
        sentences.insert(offender, sentence)
    critique = (
        NOTHING_WRONG if offender is None else f'"{sentences[offender]}" {VERDICTS[principle.name]}'
    )
    kept = [s for i, s in enumerate(sentences) if i != offender]
    return CritiqueDemo(
        prompt,
        topic,
        principle,
        " " + " ".join(sentences),
        offender,
        " " + critique,
        " " + " ".join(kept),
    )


def critique_demos(
    n: int,
    rng: random.Random,
    question: Callable[[random.Random], tuple[str, str]],
    principles: tuple[Principle, ...] = PRINCIPLES,
    flaw_rate: float = 0.5,
) -> list[CritiqueDemo]:
    """`n` demonstrations; `question(rng)` gives (topic, prompt), the principle is drawn evenly."""
    demos = []
    while len(demos) < n:
        topic, prompt = question(rng)
        demo = critique_demo(topic, prompt, rng.choice(principles), rng, flaw_rate)
        if demo is not None:
            demos.append(demo)
    return demos


def one_flaw_pairs(demos: list[CritiqueDemo], rng: random.Random) -> list[dict]:
    """Preference rows from flawed demonstrations: the flawed reply rejected, the same reply with
    a filler sentence in place of the flaw chosen. Both have as many sentences, so a judge that
    only counts sentences gets half of them; gold prefers the chosen one (a filler costs less
    than any flaw) but for a rare tie."""
    rows = []
    for demo in (d for d in demos if d.offender is not None):
        sentences = split_sentences(demo.reply)
        sentences[demo.offender] = rng.choice([s for s in FILLER if s not in sentences])
        rows.append(
            {"prompt": demo.prompt, "chosen": " " + " ".join(sentences), "rejected": demo.reply}
        )
    return rows


def demo_rows(demo: CritiqueDemo) -> list[tuple[str, str]]:
    """The demonstration's two (prompt, completion) rows: the critique, then the revision."""
    return [
        (critique_prompt(demo.prompt, demo.reply, demo.principle), demo.critique),
        (revision_prompt(demo.prompt, demo.reply, demo.principle, demo.critique), demo.revision),
    ]
