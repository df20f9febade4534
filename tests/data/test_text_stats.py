import random

import pytest

from rlhfkit.data.text_stats import distinct_n, mean_words, repeated_ngram_fraction, repetition_rate


def naive_distinct_n(texts, n):
    grams = []
    for text in texts:
        words = text.lower().split()
        for i in range(len(words) - n + 1):
            grams.append(" ".join(words[i : i + n]))
    return len(set(grams)) / len(grams) if grams else 0.0


def naive_repeated_fraction(text, n):
    words = text.lower().split()
    starts = range(len(words) - n + 1)
    repeated = sum(any(words[j : j + n] == words[i : i + n] for j in range(i)) for i in starts)
    return repeated / len(starts) if starts else 0.0


def random_texts(rng, count):
    vocabulary = ["a", "b", "c", "A", "d"]
    return [
        " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 12))) for _ in range(count)
    ]


def test_distinct_n_hand_values():
    texts = ["a b a", "b c"]
    # unigrams a, b, a | b, c: 5 in all, {a, b, c} unique -> 3/5
    assert distinct_n(texts, 1) == pytest.approx(3 / 5)
    # bigrams (a b), (b a) | (b c): none crosses into the next text, all 3 unique -> 3/3
    assert distinct_n(texts, 2) == 1.0
    # trigrams: only (a b a) -> 1/1; no 4-grams at all -> 0.0
    assert distinct_n(texts, 3) == 1.0 and distinct_n(texts, 4) == 0.0
    # lower-casing merges "A" and "a": unigrams a, a, b -> 2/3
    assert distinct_n(["A a", "B"], 1) == pytest.approx(2 / 3)
    assert distinct_n([], 1) == 0.0


def test_repeated_ngram_fraction_hand_values():
    # five words, 4-grams at 0, 1: both "a a a a" -> the second is a repeat: 1/2
    assert repeated_ngram_fraction("a a a a a") == pytest.approx(1 / 2)
    # a 10-word sentence said twice: 17 4-grams, the 7 inside the second copy repeat the first
    # copy's, the 3 straddling the seam are new -> 7/17
    sentence = "answer is seven because three plus four is seven ."
    assert len(sentence.split()) == 10
    assert repeated_ngram_fraction(f"{sentence} {sentence}") == pytest.approx(7 / 17)
    assert repeated_ngram_fraction(sentence) == 0.0  # "is seven" twice, but no 4-gram twice
    assert repeated_ngram_fraction(sentence, n=2) == pytest.approx(1 / 9)  # (is seven) again
    assert repeated_ngram_fraction("too short") == 0.0


def test_repetition_rate_and_mean_words():
    texts = ["a a a a a", "x y z w", "one"]
    assert repetition_rate(texts) == pytest.approx((1 / 2 + 0.0 + 0.0) / 3)
    assert mean_words(texts) == pytest.approx((5 + 4 + 1) / 3)
    assert mean_words(["  spaced   out\nwords "]) == 3.0


def test_the_set_based_forms_agree_with_naive_ones_on_random_texts():
    rng = random.Random(0)
    for _ in range(200):
        texts, n = random_texts(rng, rng.randint(0, 4)), rng.randint(1, 4)
        assert distinct_n(texts, n) == pytest.approx(naive_distinct_n(texts, n))
        for text in texts:
            assert repeated_ngram_fraction(text, n) == pytest.approx(
                naive_repeated_fraction(text, n)
            )


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="n >= 1"):
        distinct_n(["a b"], 0)
    with pytest.raises(ValueError, match="no texts"):
        repetition_rate([])
    with pytest.raises(ValueError, match="no texts"):
        mean_words([])
