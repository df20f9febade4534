import math
import random

import pytest
import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback import labellers
from rlhfkit.feedback.judge import PairJudgements
from rlhfkit.feedback.labellers import (
    LabellerKind,
    RewardLabeller,
    SimulatedAnnotator,
    build_labeller,
    labels_for,
)
from rlhfkit.rewards.base import RewardScores
from rlhfkit.tasks.annotator import expected_agreement


def prompts(n: int) -> list[PromptExample]:
    return [PromptExample(prompt=f"Q{i}", answer=None, metadata={}) for i in range(n)]


def length_gold(prompt: PromptExample, response: str) -> float:
    return float(len(response))


class LengthTask:
    reward = staticmethod(length_gold)


class LengthSource:
    name = "length"

    def score(self, prompts, responses) -> RewardScores:
        return RewardScores(rewards=torch.tensor([float(len(r)) for r in responses]))


def test_a_ranking_of_k_costs_c_k_2_comparisons():
    responses = [["a", "bb"], ["a", "bb", "ccc"], ["a", "bb", "ccc", "dddd", "eeeee"]]
    assert labels_for(responses) == 1 + 3 + 10
    for labeller in (
        SimulatedAnnotator(length_gold, temperature=1.0, target_agreement=0.725, seed=0),
        RewardLabeller(LengthSource()),
    ):
        labeller.rank(prompts(3), responses)
        assert labeller.labels_used == 14
        labeller.rank(prompts(1), [["x", "y", "z", "w"]])  # C(4,2) = 6 more
        assert labeller.labels_used == 20


def test_orders_put_the_best_first():
    responses = [["bb", "dddd", "a", "ccc"], ["zz", "z"]]
    assert RewardLabeller(LengthSource()).rank(prompts(2), responses) == [[1, 3, 0, 2], [0, 1]]
    # an annotator with (almost) no noise agrees with the gold order
    quiet = SimulatedAnnotator(length_gold, temperature=1e-4, target_agreement=0.725, seed=0)
    assert quiet.rank(prompts(2), responses) == [[1, 3, 0, 2], [0, 1]]


def test_annotator_prefers_with_bradley_terry_probability():
    # gold 1 vs 0 at T = 1: the longer reply wins with probability sigmoid(1) = 0.731
    annotator = SimulatedAnnotator(length_gold, temperature=1.0, target_agreement=0.725, seed=0)
    orders = annotator.rank(prompts(4000), [["x", ""]] * 4000)
    wins = sum(order[0] == 0 for order in orders) / 4000
    assert wins == pytest.approx(1 / (1 + math.exp(-1)), abs=0.025)


def test_temperature_calibrated_on_the_first_batch_then_kept():
    rng = random.Random(0)
    responses = [["x" * rng.randint(1, 6) for _ in range(4)] for _ in range(50)]
    annotator = build_labeller(
        LabellerKind.ANNOTATOR,
        task=LengthTask(),
        reward=LengthSource(),
        annotator_temperature=0.0,
        target_agreement=0.725,
        seed=0,
    )
    annotator.rank(prompts(50), responses)
    diffs = [len(g[i]) - len(g[j]) for g in responses for i in range(4) for j in range(i)]
    assert expected_agreement(diffs, annotator.temperature) == pytest.approx(0.725, abs=1e-6)
    first = annotator.temperature
    annotator.rank(prompts(1), [["x", "xxxxxxxxxxxxxx"]])
    assert annotator.temperature == first


def test_a_restored_annotator_draws_the_same_labels():
    responses = [["a", "bb", "ccc", "dd"]] * 30
    original = SimulatedAnnotator(length_gold, temperature=None, target_agreement=0.725, seed=3)
    original.rank(prompts(30), responses)
    restored = SimulatedAnnotator(length_gold, temperature=None, target_agreement=0.725, seed=99)
    restored.load_state_dict(original.state_dict())
    assert restored.rank(prompts(30), responses) == original.rank(prompts(30), responses)
    assert restored.labels_used == original.labels_used == 2 * 30 * 6


def test_judge_ranks_by_summed_win_probability(monkeypatch):
    # a judge that prefers the longer reply, with probability 0.9: every pair asked once
    asked = []

    def judge_pairs(model, tokenizer, prompts, first, second, *, batch_size):
        asked.extend(zip(prompts, first, second))
        p = torch.tensor([0.9 if len(a) > len(b) else 0.1 for a, b in zip(first, second)])
        return PairJudgements(p, p, 1 - p)

    monkeypatch.setattr(labellers, "judge_pairs", judge_pairs)
    judge = labellers.JudgeLabeller(model=None, tokenizer=None)
    orders = judge.rank(prompts(2), [["bb", "dddd", "a", "ccc"], ["z", "zz"]])
    assert orders == [[1, 3, 0, 2], [1, 0]]
    assert len(asked) == judge.labels_used == 6 + 1 and asked[-1] == ("Q1", "z", "zz")


def test_an_untrained_judge_model_still_labels_every_pair(tiny_model_dir):
    judge = build_labeller(
        LabellerKind.JUDGE,
        task=LengthTask(),
        reward=LengthSource(),
        annotator_temperature=0.0,
        target_agreement=0.725,
        seed=0,
        judge_model=str(tiny_model_dir),
        device="cpu",
    )
    orders = judge.rank(prompts(2), [[" Hi.", " Hello there.", " Good luck!"], [" A.", " B."]])
    assert (
        sorted(orders[0]) == [0, 1, 2]
        and sorted(orders[1]) == [0, 1]
        and judge.labels_used == 3 + 1
    )
    with pytest.raises(RlhfkitError, match="needs judge_model"):
        build_labeller(
            LabellerKind.JUDGE,
            task=LengthTask(),
            reward=LengthSource(),
            annotator_temperature=0.0,
            target_agreement=0.725,
            seed=0,
        )


def test_ranks_of_turns_an_order_into_each_responses_rank():
    assert labellers.ranks_of([2, 0, 1]) == (1, 2, 0)
    assert labellers.ranks_of([0]) == (0,)


def test_labellers_that_order_strictly_give_strict_ranks_through_rank_with_ties():
    labeller = SimulatedAnnotator(length_gold, temperature=1e-4, target_agreement=0.725, seed=0)
    responses = [["a", "ccc", "bb"], ["dd", "e"]]
    ranks = labellers.rank_with_ties(labeller, prompts(2), responses)
    assert ranks == [(2, 0, 1), (0, 1)]  # longest first
    assert labeller.labels_used == 3 + 1


def test_a_reward_labeller_ties_equal_scores_and_has_no_preference_when_all_tie():
    labeller = RewardLabeller(LengthSource())
    responses = [["a", "ccc", "bb"], ["dd", "ee", "f", "gg"], ["x", "y"]]
    ranks = labellers.rank_with_ties(labeller, prompts(3), responses)
    # equal lengths, equal ranks (a tie is no pair); one length for all, no preference at all
    assert ranks == [(2, 0, 1), (0, 0, 1, 0), None]
    assert labeller.labels_used == 3 + 6 + 1
