"""The prompts of a policy-optimisation run: the training and held-out pools, each step's share
of them on this rank, and the reward source a run scores with by default."""

import logging
import random
from dataclasses import dataclass

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import ConfigError
from rlhfkit.rewards.builder import check_spec
from rlhfkit.runtime.distributed import Ranks, rank_slice
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.prompt_files import load_task_prompts
from rlhfkit.train.policy_config import PolicyRunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptPools:
    train: list[PromptExample]
    eval: list[PromptExample]
    """Held-out prompts; empty when there is nothing to evaluate on (no task and no eval_data)."""


def prompt_pools(cfg: PolicyRunConfig, task) -> PromptPools:
    """The training prompts (`train_data`, else drawn from the task's generator) and the held-out
    ones (`eval_data`, else drawn from the task's generator on their own seed stream and removed
    from the drawn training prompts, so evaluation is on prompts never trained on)."""
    if not cfg.train_data and task is None:
        raise ConfigError(
            "no prompts to train on: set train_data=PATH (a prompt file) or task=NAME "
            "(rlhfkit tasks list)"
        )
    if cfg.eval_data:
        eval_prompts = load_task_prompts(cfg.eval_data, task)
        log.info(f"eval data {cfg.eval_data}: {len(eval_prompts)} prompts")
    elif task is not None:
        rng = random.Random(derive_seed(cfg.seed, SeedStream.EVAL_PROMPTS))
        eval_prompts = task.prompts(cfg.eval_prompts, rng)
    else:
        eval_prompts = []
    if cfg.train_data:
        train = load_task_prompts(cfg.train_data, task)
        log.info(f"train data {cfg.train_data}: {len(train)} prompts")  # as the offline trainers
        return PromptPools(train, eval_prompts)
    held_out = {str(p.prompt) for p in eval_prompts}
    rng = random.Random(derive_seed(cfg.seed, SeedStream.TRAIN_PROMPTS))
    drawn = task.prompts(cfg.train_prompts, rng)
    train = [p for p in drawn if str(p.prompt) not in held_out]
    if len(train) < len(drawn) // 2:
        # a task with few distinct prompts (advice: a fixed bank of questions) cannot hold
        # questions out; its evaluation then uses the training questions with fresh samples
        log.info(
            f"{task.name}: the held-out prompts repeat training prompts (few distinct "
            "prompts); evaluating on them with fresh samples"
        )
        train = drawn
    return PromptPools(train, eval_prompts)


def reward_spec(cfg: PolicyRunConfig) -> str:
    """The run's reward source: `reward`, else the named task's verifier."""
    if cfg.reward:
        return cfg.reward
    if not cfg.task:
        raise ConfigError(
            "no reward: set reward=path/to/file.py:function (or model:PATH, ...), "
            "or task=NAME (rlhfkit tasks list) to score with its verifier"
        )
    return "task"


def run_reward(
    cfg: PolicyRunConfig, reward: str | None = None, *, needs_reward: bool = True
) -> str | None:
    """The run's reward spec, checked before anything loads (`check_spec`: a mistyped reward
    file fails here, not after the models load): `reward` where the trainer names one (PPO: its
    reward model), else `reward_spec(cfg)`. None where the run needs no reward and is given none
    (online DPO ranked by a judge or by people), which then has nothing to score `eval_data`
    with."""
    if not (reward or cfg.reward or cfg.task or needs_reward):
        if cfg.eval_data:  # it would be read, then never scored
            raise ConfigError(
                f"eval_data={cfg.eval_data}: with neither reward= nor task= nothing scores the "
                "held-out answers; give a reward to evaluate with, or remove eval_data"
            )
        return None
    spec = reward or reward_spec(cfg)
    check_spec(spec, uncertainty_coef=cfg.reward_uncertainty_coef)
    return spec


def check_given_reward(cfg: PolicyRunConfig) -> None:
    """`run_reward`'s checks of a reward the config names (`reward`, or `task`'s verifier), for
    GRPO, RLOO and RAFT: a job runs them before its first stage, `--print-config` after its
    printout. A config that names no reward yet is told so when its run starts."""
    if cfg.reward or cfg.task:
        run_reward(cfg)


@dataclass(frozen=True)
class PromptShare:
    """This rank's prompts of one step: a contiguous run of the step's prompts, so that all the
    samples of a prompt (a GRPO or RLOO group) live on one rank. One process: all of them."""

    prompts: list[PromptExample]
    first: int
    """Index of `prompts[0]` among the step's prompts."""
    total: int
    """The step's prompts over all ranks."""

    def first_sample(self, per_prompt: int) -> int:
        """The index of this rank's first sample among the step's (`per_prompt` samples per
        prompt, in prompt order)."""
        return self.first * per_prompt

    def rows(self, start: int, size: int, per_prompt: int) -> slice:
        """The rows of this rank's rollout (`per_prompt` samples per prompt, in prompt order)
        that fall in the step's global rows `start` .. `start + size - 1`; may be empty."""
        held = len(self.prompts) * per_prompt
        offset = self.first_sample(per_prompt)
        return slice(min(max(start - offset, 0), held), min(max(start + size - offset, 0), held))


def prompt_share(prompts: list[PromptExample], ranks: Ranks) -> PromptShare:
    """This rank's share of a step's `prompts` (`rank_slice`: the first ranks take one more)."""
    part = rank_slice(len(prompts), ranks.rank, ranks.world_size)
    return PromptShare(prompts[part], part.start, len(prompts))


def prompts_setting(cfg: PolicyRunConfig) -> str:
    """The setting that counts a step's prompts: `prompts_per_round` for RAFT, else
    `prompts_per_step`."""
    return "prompts_per_round" if hasattr(cfg, "prompts_per_round") else "prompts_per_step"


def require_a_prompt_per_rank(count: int, subject: str, setting: str, world_size: int) -> None:
    """Refuse fewer prompts than ranks (`subject` says which count): each rank samples for at
    least one prompt."""
    if count < world_size:
        raise ConfigError(
            f"{subject} fewer than the {world_size} ranks: each rank samples for at least one "
            f"prompt (raise {setting})"
        )
