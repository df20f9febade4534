"""Helpers shared by the policy-optimisation trainer tests."""

from pathlib import Path

# Rewards the number of characters the response decodes to: a random tiny model's tokens
# vary in length, so responses have spread and the trainers have something to climb.
LENGTH_REWARD = (
    "def chars(prompts, responses, **columns):\n    return [len(r) / 10 for r in responses]\n"
)
# The same with a tie-break below one character (0.1): responses of equal length still get
# distinct ranks unless they are the same text.
DISTINCT_LENGTH_REWARD = (
    "def chars(prompts, responses, **columns):\n"
    "    return [len(r) / 10 + (sum(map(ord, r)) % 1000) / 1e5 for r in responses]\n"
)


def length_reward_spec(directory: Path, distinct: bool = False) -> str:
    """Write the length reward to `directory/reward.py` (`distinct`: with the tie-break, to
    `distinct_reward.py`) and return its `file.py:function` spec."""
    path = directory / ("distinct_reward.py" if distinct else "reward.py")
    path.write_text(DISTINCT_LENGTH_REWARD if distinct else LENGTH_REWARD)
    return f"{path}:chars"
