"""Signs of reward hacking read off the response texts alone: diversity, repetition, length.

A policy that games its reward model often collapses onto a few phrasings (distinct-n falls),
loops on the same phrase inside one response (the repetition rate rises) or pads its answers
(the mean length grows, the length bias of reward models). None of these needs the reward model,
so they cross-check it. Words are whitespace tokens, lower-cased; n-grams never cross from one
response into the next.

They live in data/, below both of their users: the model evaluation (`eval/model_eval.py`) and the
built-in tasks' own `evaluate()`, which eval imports in turn.
"""

import math


def _words(text: str) -> list[str]:
    return text.lower().split()


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    if n < 1:
        raise ValueError(f"n-grams need n >= 1, got {n}")
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Corpus-level distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for
    Neural Conversation Models"):

        distinct-n = |unique n-grams over all texts| / |n-grams over all texts|

    Args:
        texts: the responses.
        n: the n-gram order, at least 1.

    Returns:
        A ratio in (0, 1]; 0.0 when no text has n words.
    """
    grams = [gram for text in texts for gram in _ngrams(_words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of one response's word n-grams g_i that already occurred earlier in it:

        |{i : g_i = g_j for some j < i}| / |{i}|

    Args:
        text: one response.
        n: the n-gram order, at least 1.

    Returns:
        A fraction in [0, 1); 0.0 when the response has fewer than n words.
    """
    grams = _ngrams(_words(text), n)
    seen, repeated = set(), 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams) if grams else 0.0


def repetition_rate(texts: list[str], n: int = 4) -> float:
    """Mean `repeated_ngram_fraction` over the responses."""
    if not texts:
        raise ValueError("repetition_rate: no texts")
    return math.fsum(repeated_ngram_fraction(text, n) for text in texts) / len(texts)


def mean_words(texts: list[str]) -> float:
    """Mean response length in whitespace-separated words."""
    if not texts:
        raise ValueError("mean_words: no texts")
    return sum(len(_words(text)) for text in texts) / len(texts)
