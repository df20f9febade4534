"""Labelled-data collection as the seeds describe it: sample K responses per prompt from a
model, have the simulated annotator rank them, and keep the ranking and its C(K,2) pairs.

Held-out prompts are ranked by annotator A and by `second_annotators` more (10) independent
ones, which gives the two yardsticks a reward model is judged against on the same noisy labels
(annotator A's):
- inter-annotator agreement: how often another annotator B orders a pair like A (InstructGPT:
  72.6%), averaged over several independent B so that only A's own noise remains in the estimate;
- the Bayes limit: how often the noise-free gold preference orders it like A.
"""

import logging
import random
from dataclasses import dataclass

from rlhfkit.data.formats import PromptExample
from rlhfkit.objectives.ranking import ranking_to_pairs
from rlhfkit.tasks.annotator import (
    agreement_out_of_reach,
    calibrate_temperature,
    noisy_ranking,
    order_to_ranks,
)

log = logging.getLogger(__name__)


@dataclass
class Collection:
    rankings: list[dict]  # training rows: prompt, responses (best to worst)
    pairs: list[dict]  # the C(K,2) pairs of every training ranking: prompt, chosen, rejected
    heldout_rankings: list[dict]  # held-out rows ranked by annotator A
    temperature: float  # the annotators' Bradley-Terry temperature
    agreement: float  # annotator B vs A on the held-out pairs
    bayes_limit: float  # gold vs A on the held-out pairs


def _ranking_row(prompt: PromptExample, responses: list[str], order: list[int]) -> dict:
    return {"prompt": prompt.prompt, "responses": [responses[i] for i in order]}


def ranking_pairs(row: dict) -> list[dict]:
    """The C(K,2) preference rows of a ranking row (responses best to worst)."""
    winners, losers, _ = ranking_to_pairs(list(range(len(row["responses"]))))
    return [
        {"prompt": row["prompt"], "chosen": row["responses"][w], "rejected": row["responses"][lo]}
        for w, lo in zip(winners, losers)
    ]


def _agreement_with(order_a: list[int], score_of) -> tuple[float, int]:
    """Sum over A's pairs (winner, loser) of 1 if score_of orders them alike, 1/2 on a tie."""
    ranks = order_to_ranks(order_a)
    total, count = 0.0, 0
    for i in range(len(ranks)):
        for j in range(len(ranks)):
            if ranks[i] < ranks[j]:
                diff = score_of(i) - score_of(j)
                total += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
                count += 1
    return total, count


def _non_empty(
    groups: list[tuple[PromptExample, list[str]]],
) -> list[tuple[PromptExample, list[str]]]:
    kept = [(prompt, [r for r in responses if r.strip()]) for prompt, responses in groups]
    return [(prompt, responses) for prompt, responses in kept if len(responses) >= 2]


def label_responses(
    task,
    train: list[tuple[PromptExample, list[str]]],
    heldout: list[tuple[PromptExample, list[str]]],
    *,
    target_agreement: float,
    rng: random.Random,
    second_annotators: int = 10,
    length_bias: float = 0.0,
) -> Collection:
    """Rank sampled responses with simulated annotators calibrated to `target_agreement`.

    Empty responses are left out (an empty text is not a valid response row), and a prompt
    left with fewer than two responses is skipped, before anything is measured.
    `length_bias` > 0 makes the annotators favour long answers: they judge by the gold score
    plus `length_bias` per word, a known human bias (seed 003) a reward model then learns.
    Agreement and Bayes limit are then those of the biased annotators.
    """
    train, heldout = _non_empty(train), _non_empty(heldout)
    gold = {
        id(r): [task.reward(p, x) + length_bias * len(x.split()) for x in r]
        for p, r in train + heldout
    }
    diffs = [
        g[i] - g[j]
        for g in (gold[id(r)] for _, r in train)
        for i in range(len(g))
        for j in range(i)
    ]
    temperature = calibrate_temperature(diffs, target_agreement)
    if (warning := agreement_out_of_reach(diffs, target_agreement)) is not None:
        log.warning(warning)
    rankings = [_ranking_row(p, r, noisy_ranking(gold[id(r)], temperature, rng)) for p, r in train]
    heldout_rows, agree, bayes, count = [], 0.0, 0.0, 0
    for prompt, responses in heldout:
        g = gold[id(responses)]
        order_a = noisy_ranking(g, temperature, rng)
        heldout_rows.append(_ranking_row(prompt, responses, order_a))
        for _ in range(second_annotators):
            ranks_b = order_to_ranks(noisy_ranking(g, temperature, rng))
            agree += _agreement_with(order_a, lambda i, r=ranks_b: -r[i])[0] / second_annotators
        g_total, n = _agreement_with(order_a, lambda i, g=g: g[i])
        bayes, count = bayes + g_total, count + n
    pairs = [pair for row in rankings for pair in ranking_pairs(row)]
    return Collection(
        rankings, pairs, heldout_rows, temperature, agree / max(1, count), bayes / max(1, count)
    )
