"""Helpers shared by the policy-optimisation trainer tests."""

from pathlib import Path

# Rewards the number of characters the response decodes to: a random tiny model's tokens
# vary in length, so responses have spread and the trainers have something to climb.
LENGTH_REWARD = (
    "def chars(prompts, responses, **columns):\n    return [len(r) / 10 for r in responses]\n"
)


def length_reward_spec(directory: Path) -> str:
    """Write the length reward to `directory/reward.py` and return its `file.py:function` spec."""
    path = directory / "reward.py"
    path.write_text(LENGTH_REWARD)
    return f"{path}:chars"
