"""Labellers: who orders the responses sampled for a prompt, behind one interface, and how many
labels that costs.

An online preference trainer hands a labeller each prompt's K responses and gets back their
order, best first. A ranking of K counts as its C(K,2) pairwise comparisons (a pair is a
ranking of two): the unit in which labels are counted and a labelling budget is spent, the
same unit `train.dpo` counts offline rankings in (`max_labels`). Labellers:
    annotator: the simulated human of a built-in task: its gold score plus Bradley-Terry noise
               at a temperature (`tasks.annotator`), the one given or, if none, calibrated on
               the first batch so that two annotators agree on `target_agreement` of its pairs
               (InstructGPT's labellers: ~72.5%).
    reward:    a reward source (a reward model directory, a reward function, a task's verifier;
               `rewards.builder`): noise-free, responses in order of their score.
    judge:     an AI judge (`feedback.judge`, RLAIF): every pair asked in both orders, responses
               in order of their summed probability of beating the others (a Borda count; for
               K = 2 the judge's verdict).
    human:     people on the labelling page (`labelling.human`): the run waits for their
               rankings, which may tie responses or skip a prompt (no preference).
Each labeller keeps its own count and RNG and hands them over as a state dict, so a resumed run
draws the same labels and spends the same budget.
"""

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Protocol

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.judge import judge_pairs
from rlhfkit.labelling.human import HumanLabeller, HumanSettings, Ranks, open_human_labeller
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.objectives.ranking import ranking_comparisons
from rlhfkit.rewards.base import RewardSource
from rlhfkit.tasks.annotator import agreement_out_of_reach, calibrate_temperature, noisy_ranking

log = logging.getLogger(__name__)


class LabellerKind(str, Enum):
    ANNOTATOR = "annotator"
    """The task's simulated human: gold score + Bradley-Terry noise."""
    REWARD = "reward"
    """A reward source (e.g. model:PATH): responses ordered by their score, without noise."""
    JUDGE = "judge"
    """An AI judge (a causal LM asked which of two replies is better), every pair in both orders."""
    HUMAN = "human"
    """People ranking on the labelling page; online DPO waits for their answers."""


class Labeller(Protocol):
    name: str
    labels_used: int
    """Pairwise comparisons labelled so far: C(K,2) for each ranking of K responses."""

    def rank(self, prompts: list[PromptExample], responses: list[list[str]]) -> list[list[int]]:
        """For each prompt, the indices of its responses best first."""

    def state_dict(self) -> dict:
        """What a resumed run needs to label exactly as this one would: count, RNG, settings."""

    def load_state_dict(self, state: dict) -> None:
        """Put back a `state_dict`."""


def labels_for(responses: list[list[str]]) -> int:
    """Comparisons that ranking each list of responses costs."""
    return sum(ranking_comparisons(len(group)) for group in responses)


def ranks_of(order: list[int]) -> Ranks:
    """[2, 0, 1] (indices best first) -> (1, 2, 0): each response's rank, 0 = best."""
    ranks = [0] * len(order)
    for rank, index in enumerate(order):
        ranks[index] = rank
    return tuple(ranks)


def rank_with_ties(
    labeller: Labeller, prompts: list[PromptExample], responses: list[list[str]]
) -> list[Ranks | None]:
    """Each prompt's ranks per response (0 = best, equal = a tie), or None for no preference.
    People tie responses or skip a prompt, and a reward source ties equal scores; the simulated
    annotator and the judge order strictly."""
    if isinstance(labeller, (HumanLabeller, RewardLabeller)):
        return labeller.rank_with_ties(prompts, responses)
    return [ranks_of(order) for order in labeller.rank(prompts, responses)]


@contextmanager
def in_use(labeller: Labeller) -> Iterator[Labeller]:
    """The labeller, let go of on leaving: the human labeller stops the page it serves."""
    try:
        yield labeller
    finally:
        if isinstance(labeller, HumanLabeller):
            labeller.close()


class SimulatedAnnotator:
    """The task's gold score plus Bradley-Terry noise: P(i above j) = sigmoid((g_i - g_j) / T).

    Args:
        gold: `gold(prompt, response) -> float`, the task's noise-free score (`task.reward`).
        temperature: T; None = calibrate on the first batch to `target_agreement`.
        target_agreement: share of pairs two independent annotators order alike, in (0.5, 1).
        seed: seeds the annotator's own noise, apart from every other RNG of the run.
    """

    name = "annotator"

    def __init__(
        self,
        gold: Callable[[PromptExample, str], float],
        *,
        temperature: float | None,
        target_agreement: float,
        seed: int,
    ):
        self.gold, self.temperature, self.target_agreement = gold, temperature, target_agreement
        self.rng = random.Random(seed)
        self.labels_used = 0

    def rank(self, prompts: list[PromptExample], responses: list[list[str]]) -> list[list[int]]:
        gold = [
            [self.gold(prompt, response) for response in group]
            for prompt, group in zip(prompts, responses)
        ]
        if self.temperature is None:
            diffs = [g[i] - g[j] for g in gold for i in range(len(g)) for j in range(i)]
            self.temperature = calibrate_temperature(diffs, self.target_agreement)
            if (warning := agreement_out_of_reach(diffs, self.target_agreement)) is not None:
                log.warning(warning)
        self.labels_used += labels_for(responses)
        return [noisy_ranking(g, self.temperature, self.rng) for g in gold]

    def state_dict(self) -> dict:
        return {
            "labels_used": self.labels_used,
            "temperature": self.temperature,
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.labels_used, self.temperature = state["labels_used"], state["temperature"]
        self.rng.setstate(state["rng"])


class RewardLabeller:
    """Ranks each prompt's responses by a reward source's score. Equal scores are a tie, not an
    order: a 0/1 checker's two right answers are no preference, and a prompt whose responses all
    score alike has none at all (`rank_with_ties` gives None, as for a prompt people skip)."""

    def __init__(self, source: RewardSource):
        self.source, self.name = source, source.name
        self.labels_used = 0

    def rank(self, prompts: list[PromptExample], responses: list[list[str]]) -> list[list[int]]:
        """Indices best first, tied responses in sampling order."""
        return [
            sorted(range(len(group)), key=lambda i: -group_scores[i])
            for group, group_scores in zip(responses, self._scores(prompts, responses))
        ]

    def rank_with_ties(
        self, prompts: list[PromptExample], responses: list[list[str]]
    ) -> list[Ranks | None]:
        """Per prompt, each response's rank (0 = best; equal scores, equal ranks), or None when
        every response scored alike."""
        ranked = []
        for group_scores in self._scores(prompts, responses):
            levels = sorted(set(group_scores), reverse=True)
            ranks = tuple(levels.index(score) for score in group_scores)
            ranked.append(ranks if len(levels) > 1 else None)
        return ranked

    def _scores(self, prompts: list[PromptExample], responses: list[list[str]]):
        """Each prompt's list of its responses' scores; counts the labels they cost."""
        flat_prompts = [prompt for prompt, group in zip(prompts, responses) for _ in group]
        scores = self.source.score(
            flat_prompts, [r for group in responses for r in group]
        ).rewards.tolist()
        self.labels_used += labels_for(responses)
        groups, offset = [], 0
        for group in responses:
            groups.append(scores[offset : offset + len(group)])
            offset += len(group)
        return groups

    def state_dict(self) -> dict:
        return {"labels_used": self.labels_used}

    def load_state_dict(self, state: dict) -> None:
        self.labels_used = state["labels_used"]


class JudgeLabeller:
    """Ranks by an AI judge: each of a prompt's C(K,2) pairs is judged (in both orders, which
    cancels the judge's position bias), and response i scores sum_j P(i beats j)."""

    name = "judge"

    def __init__(self, model, tokenizer, *, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.labels_used = 0

    def rank(self, prompts: list[PromptExample], responses: list[list[str]]) -> list[list[int]]:
        pairs = [
            (g, i, j)
            for g, group in enumerate(responses)
            for i in range(len(group))
            for j in range(i + 1, len(group))
        ]
        judged = judge_pairs(
            self.model,
            self.tokenizer,
            [prompts[g].prompt for g, _, _ in pairs],
            [responses[g][i] for g, i, _ in pairs],
            [responses[g][j] for g, _, j in pairs],
            batch_size=self.batch_size,
        ).first_better.tolist()
        wins = [[0.0] * len(group) for group in responses]
        for (g, i, j), p in zip(pairs, judged):
            wins[g][i] += p
            wins[g][j] += 1.0 - p
        self.labels_used += labels_for(responses)
        return [sorted(range(len(w)), key=lambda i: -w[i]) for w in wins]

    def state_dict(self) -> dict:
        return {"labels_used": self.labels_used}

    def load_state_dict(self, state: dict) -> None:
        self.labels_used = state["labels_used"]


def build_labeller(
    kind: LabellerKind,
    *,
    task,
    reward: RewardSource,
    annotator_temperature: float,
    target_agreement: float,
    seed: int,
    judge_model: str = "",
    device=None,
    human: HumanSettings | None = None,
) -> Labeller:
    """The labeller `kind` names.

    Args:
        task: the built-in task whose gold score the annotator perturbs.
        reward: the run's reward source, which the `reward` labeller ranks by.
        annotator_temperature: the annotator's T; 0 = calibrate on the first batch.
        target_agreement: the inter-annotator agreement that calibration aims at.
        seed: the annotator's noise seed.
        judge_model: the judge's causal-LM directory (`judge` only), loaded onto `device`.
        human: the label store and waiting settings (`human` only; online DPO's).
    """
    kind = LabellerKind(kind)
    if kind is LabellerKind.HUMAN:
        if human is None:
            raise RlhfkitError("labeller=human is for rlhfkit online-dpo (its human_* settings)")
        return open_human_labeller(human)
    if kind is LabellerKind.REWARD:
        return RewardLabeller(reward)
    if kind is LabellerKind.JUDGE:
        if not judge_model:
            raise RlhfkitError(
                "labeller=judge needs judge_model=PATH (a causal LM that answers ' A' or ' B')"
            )
        return JudgeLabeller(
            load_causal_lm(judge_model).to(device).eval(), load_tokenizer(judge_model)
        )
    return SimulatedAnnotator(
        task.reward,
        temperature=annotator_temperature or None,
        target_agreement=target_agreement,
        seed=seed,
    )
