"""A weighted sum of reward sources, e.g. 0.7 * a reward model + 0.3 * a verifier."""

import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.rewards.base import RewardScores, RewardSource, check_same_length


class WeightedSum:
    """reward = sum_i w_i * reward_i.

    uncertainty = sum_i |w_i| * uncertainty_i over the sources that have one (None when none
    does): the std of the sum if the parts' errors move together, an upper bound otherwise;
    exact in the usual case of a single uncertain source.
    Step rewards pass through from the one source that gives them, times its weight.
    `components` keeps each source's own unweighted rewards, by name, for metrics; `cut` gathers
    the parts' truncated samples (reward models'), by name.
    """

    def __init__(self, parts: list[tuple[RewardSource, float]], name: str = "weighted_sum"):
        if not parts:
            raise RlhfkitError(f"reward source '{name}': a weighted sum needs at least one source")
        names = [source.name for source, _ in parts]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            # Components are keyed by name: a repeat would hide one source from the metrics.
            raise RlhfkitError(
                f"reward source '{name}': sources named more than once: {', '.join(repeated)}"
            )
        self.parts, self.name = [(source, float(weight)) for source, weight in parts], name

    def score(
        self, prompts: list[PromptExample], responses: list[str], *, first: int = 0
    ) -> RewardScores:
        check_same_length(self.name, prompts, responses)
        n = len(prompts)
        rewards, uncertainty = torch.zeros(n), None
        step_rewards, stepped, components, cut = None, [], {}, {}
        for source, weight in self.parts:
            scores = source.score(prompts, responses, first=first)
            rewards = rewards + weight * scores.rewards
            if scores.uncertainty is not None:
                uncertainty = (0 if uncertainty is None else uncertainty) + abs(
                    weight
                ) * scores.uncertainty
            if scores.step_rewards is not None:
                stepped.append(source.name)
                step_rewards = [
                    [(end, weight * x) for end, x in row] for row in scores.step_rewards
                ]
            components[source.name] = scores.rewards
            cut |= scores.cut
        if len(stepped) > 1:
            # Steps of different sources need not line up; adding them would mix unrelated steps.
            raise RlhfkitError(
                f"reward source '{self.name}': more than one source gives step rewards: "
                f"{', '.join(stepped)}"
            )
        return RewardScores(
            rewards=rewards,
            uncertainty=uncertainty,
            step_rewards=step_rewards,
            components=components,
            cut=cut,
        )


def single_sources(reward: RewardSource) -> list[RewardSource]:
    """The sources `reward` is made of: a weighted sum's parts, else `reward` itself."""
    return [source for source, _ in reward.parts] if isinstance(reward, WeightedSum) else [reward]
