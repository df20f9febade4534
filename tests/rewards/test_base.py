import pytest
import torch

from rlhfkit.rewards.base import RewardScores, describe_sample, excerpt


def test_reward_scores_accepts_consistent_fields():
    scores = RewardScores(
        torch.tensor([1.0, 2.0]), torch.tensor([0.1, 0.2]), [[1.0], []], {"a": torch.zeros(2)}
    )
    assert scores.rewards.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rewards=torch.tensor([1.0, 2.0], dtype=torch.float64)), "float32"),
        (dict(rewards=torch.zeros(2, 1)), "float32"),
        (dict(rewards=torch.zeros(2), uncertainty=torch.zeros(3)), "uncertainty"),
        (dict(rewards=torch.zeros(2), step_rewards=[[(1, 1.0)]]), "step_rewards"),
        (dict(rewards=torch.zeros(2), components={"m": torch.zeros(1)}), "component 'm'"),
    ],
)
def test_reward_scores_rejects_inconsistent_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardScores(**kwargs)


def test_excerpt_is_one_short_line():
    assert excerpt("Q: Ann has\n3 pens") == "'Q: Ann has 3 pens'"
    long = excerpt("word " * 50)
    assert long.endswith("...'") and len(long) == 40 + 2
    assert (
        excerpt([{"role": "system", "content": "Be nice"}, {"role": "user", "content": "Hi there"}])
        == "'Hi there'"
    )
    assert describe_sample(3, "Q: hi") == "sample 3 ('Q: hi')"
