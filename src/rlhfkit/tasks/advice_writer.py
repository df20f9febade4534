"""The `advice` task's text: replies split into sentences, the topic each tip belongs to, and
the uneven writers whose replies are the task's demonstrations. Shared by the task
(`advice.py`: its gold score and demonstrations) and its critique demonstrations
(`advice_critique.py`)."""

import random
import re

from rlhfkit.tasks.advice_bank import CLOSERS, FILLER, OPENERS, RUDE, TOPICS

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
TOPIC_OF_TIP = {tip: topic for topic, bank in TOPICS.items() for tip in bank["tips"]}
# How often a writer opens and closes politely. Not a half for the opener: with three openers
# sharing it, the SFT model's likeliest first sentence would be a near tie between an opener
# and the first tip (12 of 30 questions within 0.05 of probability), so a greedy answer's
# first sentence, worth the opener's 0.5, was decided by rounding (docs/demo.md). After the
# last tip, ending the reply keeps the majority over each closer.
OPENER_RATE, CLOSER_RATE = 0.75, 0.5


def split_sentences(response: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(response.strip()) if s.strip()]


def write_reply(rng: random.Random, topic: str) -> str:
    """One demonstration from an uneven writer: tips, sometimes off topic, filler, rude or
    repeated sentences, sometimes a polite opener or closer.

    Tips keep the bank's order, the way a how-to lists its steps: a model then avoids saying a
    tip twice by looking at the sentence before, which a tiny model can learn; in a random
    order it would have to remember every sentence so far. Inserted sentences break the order.
    """
    tips = TOPICS[topic]["tips"]
    body = [tips[i] for i in sorted(rng.sample(range(len(tips)), rng.randint(1, 5)))]
    other_topics = [t for t in TOPICS if t != topic]
    body = [
        rng.choice(TOPICS[rng.choice(other_topics)]["tips"]) if rng.random() < 0.15 else s
        for s in body
    ]
    extras = [rng.choice(FILLER) for _ in range(2) if rng.random() < 0.25]
    if rng.random() < 0.1:
        extras.append(rng.choice(RUDE))
    if rng.random() < 0.05:  # rare: a policy that repeats itself is what RL should not learn
        extras.append(rng.choice(body))
    for sentence in extras:
        body.insert(rng.randint(0, len(body)), sentence)
    opener = [rng.choice(OPENERS)] if rng.random() < OPENER_RATE else []
    closer = [rng.choice(CLOSERS)] if rng.random() < CLOSER_RATE else []
    return " " + " ".join(opener + body + closer)
