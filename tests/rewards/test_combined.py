from dataclasses import dataclass

import pytest
import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.rewards.base import RewardScores
from rlhfkit.rewards.combined import WeightedSum

PROMPTS = [PromptExample("p0"), PromptExample("p1")]
RESPONSES = ["r0", "r1"]


@dataclass
class Fixed:
    """A source returning set scores, so sums can be checked against hand values."""

    name: str
    rewards: list[float]
    uncertainty: list[float] | None = None
    step_rewards: list[list[tuple[int, float]]] | None = None

    def score(self, prompts, responses, *, first=0):
        uncertainty = None if self.uncertainty is None else torch.tensor(self.uncertainty)
        return RewardScores(torch.tensor(self.rewards), uncertainty, self.step_rewards)


def test_weighted_sum_of_rewards_and_uncertainties_matches_hand_values():
    a = Fixed("a", [1.0, 2.0], uncertainty=[0.2, 0.4])
    b = Fixed("b", [10.0, -4.0], uncertainty=[1.0, 2.0])
    c = Fixed("c", [3.0, 5.0])
    scores = WeightedSum([(a, 0.5), (b, -0.25), (c, 2.0)]).score(PROMPTS, RESPONSES)
    # 0.5*1 - 0.25*10 + 2*3 = 4.0 ; 0.5*2 - 0.25*(-4) + 2*5 = 12.0
    assert scores.rewards.tolist() == pytest.approx([4.0, 12.0])
    # |0.5|*0.2 + |-0.25|*1 = 0.35 ; |0.5|*0.4 + |-0.25|*2 = 0.7 (c has none)
    assert scores.uncertainty.tolist() == pytest.approx([0.35, 0.7])
    assert {name: v.tolist() for name, v in scores.components.items()} == {
        "a": [1.0, 2.0],
        "b": [10.0, -4.0],
        "c": [3.0, 5.0],
    }
    assert scores.step_rewards is None


def test_weighted_sum_gathers_the_cut_samples_of_its_reward_models():
    class Cut(Fixed):
        def score(self, prompts, responses, *, first=0):
            return RewardScores(
                torch.tensor(self.rewards), cut={self.name: torch.tensor([1, 0]) > 0}
            )

    scores = WeightedSum([(Cut("rm", [1.0, 2.0]), 1.0), (Fixed("a", [0.0, 0.0]), 1.0)]).score(
        PROMPTS, RESPONSES
    )
    assert {name: v.tolist() for name, v in scores.cut.items()} == {"rm": [True, False]}


def test_weighted_sum_without_uncertain_sources_has_no_uncertainty():
    scores = WeightedSum([(Fixed("a", [1.0, 2.0]), 1.0)]).score(PROMPTS, RESPONSES)
    assert scores.uncertainty is None


def test_step_rewards_pass_through_scaled_by_their_weight():
    steps = Fixed("steps", [1.0, 0.0], step_rewards=[[(3, 1.0), (7, 1.0)], [(3, 1.0), (7, 0.0)]])
    scores = WeightedSum([(steps, 0.5), (Fixed("a", [2.0, 2.0]), 1.0)]).score(PROMPTS, RESPONSES)
    assert scores.step_rewards == [[(3, 0.5), (7, 0.5)], [(3, 0.5), (7, 0.0)]]
    assert scores.rewards.tolist() == [2.5, 2.0]


def test_two_sources_with_step_rewards_are_refused():
    one = Fixed("one", [0.0, 0.0], step_rewards=[[(2, 1.0)], [(2, 1.0)]])
    two = Fixed("two", [0.0, 0.0], step_rewards=[[(2, 0.0)], [(2, 0.0)]])
    with pytest.raises(RlhfkitError, match="more than one source gives step rewards: one, two"):
        WeightedSum([(one, 1.0), (two, 1.0)]).score(PROMPTS, RESPONSES)


def test_duplicate_names_and_empty_sums_are_refused():
    with pytest.raises(RlhfkitError, match="named more than once: a"):
        WeightedSum([(Fixed("a", [0.0, 0.0]), 1.0), (Fixed("a", [1.0, 1.0]), 1.0)])
    with pytest.raises(RlhfkitError, match="at least one source"):
        WeightedSum([])
