"""`sentiment`: continue the opening of a movie review; the gold score is the VADER sentiment of
the continuation, positive = better.

The DPO paper's controlled sentiment generation (Rafailov et al. 2023, section 6.1: prefixes of
IMDb reviews, a sentiment classifier as the gold reward), made offline: the openings are written
from templates and invented film facts (`sentiment_bank.py`), and VADER (Hutto and Gilbert 2014,
a rule-based scorer; compound score in [-1, 1]) plays the classifier. The demonstrations continue
each opening with a positive, negative, neutral or mixed verdict, so a fine-tuned model writes
every polarity and RL has somewhere to go.

VADER can be gamed: it scores "great great great great" at 0.95, as high as the best
demonstration, and longer runs higher still. So `evaluate()` reports, beside the gold score, how
much of each response repeats strongly positive words, the distinct-word ratio and the length.

VADER is an optional dependency (`pip install -e '.[sentiment]'` in the rlhfkit checkout); the
task loads it when it is built, at the start of a run, and stops the run with one line naming
the extra if it is missing. Importing rlhfkit never needs it.
"""

import dataclasses
import random
import re
from dataclasses import dataclass

from rlhfkit.data.formats import PromptExample, SFTExample
from rlhfkit.data.text_stats import distinct_n, mean_words
from rlhfkit.errors import RlhfkitError
from rlhfkit.tasks.sentiment_bank import (
    ACTORS,
    DIRECTORS,
    GENRES,
    NEGATIVE,
    NEUTRAL,
    OPENINGS,
    POSITIVE,
    ROLES,
    SETTINGS,
    TITLES,
)

# VADER's own cut-off: a compound score of at least 0.05 reads as positive.
POSITIVE_CUTOFF = 0.05
# A word VADER rates at least this positive (its lexicon runs from -4 to 4): good, nice, great,
# love and stronger; not fine (0.8) or like (1.5), which honest text repeats.
STRONG_POSITIVE = 1.8
WORD = re.compile(r"[a-z']+")

# Demonstration moods and how often the writers pick each: the SFT model starts near a mean
# gold score of about 0.1, with every polarity in reach.
MOODS = {"positive": 0.3, "negative": 0.3, "neutral": 0.2, "mixed": 0.2}


@dataclass(frozen=True)
class Film:
    title: str
    genre: str
    director: str
    actor: str
    costar: str
    role: str
    setting: str
    year: int
    minutes: int

    def fill(self, template: str) -> str:
        return template.format(**dataclasses.asdict(self))


def film_of(title: str) -> Film:
    """The facts of the film called `title`, drawn from the banks by a generator seeded with the
    title (a string seed is hashed with SHA-512, the same in every process), so a title always
    has the same director, cast, year and setting."""
    rng = random.Random(f"sentiment film: {title}")
    actor, costar = rng.sample(ACTORS, 2)
    return Film(
        title=title,
        genre=rng.choice(GENRES),
        director=rng.choice(DIRECTORS),
        actor=actor,
        costar=costar,
        role=rng.choice(ROLES),
        setting=rng.choice(SETTINGS),
        year=rng.randint(1952, 2023),
        # VADER's lexicon holds a few numbers as slang (86 is negative, 143 "I love you"): the
        # running times stay between them so that every fact is neutral
        minutes=rng.randint(88, 142),
    )


def prompt_text(film: Film, opening: str) -> str:
    return f"Review: {film.fill(opening)}"


def write_continuation(rng: random.Random, film: Film) -> str:
    """One demonstration: a positive, negative, neutral or mixed verdict on `film` in one to
    five sentences, never the same sentence twice (repeating itself is what RL on VADER may
    learn, not what the writers do)."""
    mood = rng.choices(list(MOODS), weights=list(MOODS.values()))[0]
    if mood == "positive":
        body = rng.sample(POSITIVE, rng.randint(1, 3))
    elif mood == "negative":
        body = rng.sample(NEGATIVE, rng.randint(1, 3))
    elif mood == "neutral":
        body = rng.sample(NEUTRAL, rng.randint(2, 3))
    else:
        body = rng.sample(POSITIVE, rng.randint(1, 2)) + rng.sample(NEGATIVE, rng.randint(1, 2))
        rng.shuffle(body)
    if mood != "neutral" and rng.random() < 0.5:
        body.insert(rng.randint(0, len(body)), rng.choice(NEUTRAL))
    return " " + " ".join(film.fill(sentence) for sentence in body)


def positive_repeats(response: str, lexicon: dict[str, float]) -> float:
    """Share of a response's words that repeat a strongly positive word it already used:

        |{i : w_i strongly positive, w_i = w_j for some j < i}| / |{i}|

    "great great great great" gives 3/4, an honest review 0. VADER adds up the valence of every
    word, repeated or not, so repeating strong words is the cheapest way to raise it.
    """
    words = WORD.findall(response.lower())
    seen, repeats = set(), 0
    for word in words:
        if lexicon.get(word, 0.0) >= STRONG_POSITIVE:
            repeats += word in seen
            seen.add(word)
    return repeats / len(words) if words else 0.0


def load_analyzer():
    """VADER's analyzer (it reads its lexicon, ~20 ms); a one-line error naming the extra to
    install when VADER is missing."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise RlhfkitError(
            "task 'sentiment' needs VADER (vaderSentiment): pip install -e '.[sentiment]' in the "
            "rlhfkit checkout"
        ) from None
    return SentimentIntensityAnalyzer()


class SentimentTask:
    name = "sentiment"
    description = "movie-review openings to continue; gold: VADER sentiment of the continuation"

    def __init__(self):
        self.analyzer = load_analyzer()
        self.films = [film_of(title) for title in TITLES]

    def _opening(self, rng: random.Random) -> tuple[Film, str]:
        film = rng.choice(self.films)
        return film, prompt_text(film, rng.choice(OPENINGS))

    def sft_examples(self, n: int, rng: random.Random) -> list[SFTExample]:
        examples = []
        for _ in range(n):
            film, prompt = self._opening(rng)
            examples.append(SFTExample(prompt=prompt, completion=write_continuation(rng, film)))
        return examples

    def prompts(self, n: int, rng: random.Random) -> list[PromptExample]:
        out = []
        for _ in range(n):
            film, prompt = self._opening(rng)
            metadata = {"task": self.name, "film": film.title}
            out.append(PromptExample(prompt=prompt, answer=None, metadata=metadata))
        return out

    def prompt_example(self, prompt: str) -> PromptExample:
        """A prompt given as text (e.g. read from a pairs file): the gold score reads only the
        response, so any text will do."""
        return PromptExample(prompt=prompt, answer=None, metadata={"task": self.name})

    def prompt_problem(self, prompt: PromptExample) -> tuple[str, str] | None:
        return None  # the lexicon scores any continuation of any prompt

    def reward(self, prompt: PromptExample, response: str) -> float:
        """VADER's compound score of the continuation alone, in [-1, 1]; the prompt is neutral
        by construction and is not scored."""
        return self.analyzer.polarity_scores(response)["compound"]

    def evaluate(self, prompts: list[PromptExample], responses: list[str]) -> dict[str, float]:
        scores = [self.reward(p, r) for p, r in zip(prompts, responses)]
        lexicon, count = self.analyzer.lexicon, max(1, len(scores))
        return {
            "gold_score": sum(scores) / count,
            "positive_share": sum(score >= POSITIVE_CUTOFF for score in scores) / count,
            "positive_repeats": sum(positive_repeats(r, lexicon) for r in responses) / count,
            "distinct_1": distinct_n(responses, 1),
            "words": mean_words(responses) if responses else 0.0,
        }
