import math
import random

import pytest

from rlhfkit.data.formats import PromptExample
from rlhfkit.tasks.collect import label_responses

K = 4


class NumberTask:
    """A task whose gold score of a response is the number it holds."""

    name = "numbers"

    def reward(self, prompt: PromptExample, response: str) -> float:
        return float(response)


def groups(n: int, rng: random.Random) -> list[tuple[PromptExample, list[str]]]:
    return [
        (PromptExample(f"prompt {i}"), [f"{rng.gauss(0, 1.5):.3f}" for _ in range(K)])
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def collection():
    rng = random.Random(0)
    return label_responses(
        NumberTask(),
        groups(300, rng),
        groups(600, rng),
        target_agreement=0.725,
        rng=random.Random(1),
    )


def test_every_ranking_gives_its_c_k_2_pairs(collection):
    assert len(collection.rankings) == 300
    assert len(collection.pairs) == 300 * math.comb(K, 2)
    for row in collection.rankings:
        assert len(row["responses"]) == K
    # each pair: same prompt, chosen ranked above rejected by the annotator
    for row in collection.rankings[:20]:
        position = {r: i for i, r in enumerate(row["responses"])}
        pairs = [p for p in collection.pairs if p["prompt"] == row["prompt"]]
        assert len(pairs) == math.comb(K, 2)
        assert all(position[p["chosen"]] < position[p["rejected"]] for p in pairs)


def test_rankings_are_noisy_but_follow_the_gold_score(collection):
    flips = sum(float(p["chosen"]) < float(p["rejected"]) for p in collection.pairs)
    # a noisy annotator sometimes prefers the worse response, but mostly not
    assert 0.05 * len(collection.pairs) < flips < 0.35 * len(collection.pairs)


def test_measured_agreement_is_near_the_target(collection):
    assert len(collection.heldout_rankings) == 600
    assert collection.agreement == pytest.approx(0.725, abs=0.05)


def test_bayes_limit_is_at_least_the_agreement(collection):
    assert collection.bayes_limit >= collection.agreement
    assert collection.bayes_limit < 1.0


def test_lower_target_means_more_noise():
    rng = random.Random(2)
    train, heldout = groups(200, rng), groups(200, rng)
    noisy = label_responses(
        NumberTask(), train, heldout, target_agreement=0.6, rng=random.Random(3)
    )
    clean = label_responses(
        NumberTask(), train, heldout, target_agreement=0.9, rng=random.Random(3)
    )
    assert noisy.temperature > clean.temperature
    assert noisy.agreement < clean.agreement


class FlatTask:
    """Every response has the same gold score: only a bias can order them."""

    name = "flat"

    def reward(self, prompt: PromptExample, response: str) -> float:
        return 0.0


def test_a_length_biased_annotator_prefers_longer_answers():
    answers = ["tip", "tip tip", "tip tip tip", "tip tip tip tip"]
    train = [(PromptExample(f"prompt {i}"), list(answers)) for i in range(200)]
    heldout = [(PromptExample(f"held {i}"), list(answers)) for i in range(20)]

    def longer_chosen(length_bias: float) -> float:
        got = label_responses(
            FlatTask(),
            train,
            heldout,
            target_agreement=0.725,
            rng=random.Random(0),
            length_bias=length_bias,
        )
        return sum(len(p["chosen"].split()) > len(p["rejected"].split()) for p in got.pairs) / len(
            got.pairs
        )

    # with no bias the flat scores tie and the order is a coin flip; with it, length wins as
    # often as the 72.5% agreement's noise allows (sigmoid of the bias over the temperature)
    assert abs(longer_chosen(0.0) - 0.5) < 0.05
    assert longer_chosen(1.0) > 0.75
