"""What each trainer refuses in its config before it loads anything (settings that cannot go
together: a mini-batch that does not divide the rollout, a loss with a setting it does not
define), by config class.

Each trainer runs its own checks when it starts. A job runs those of every stage up front
(`check_trainer_config`): the pipeline, iterative GRPO and the frontier when they build their
stages' configs, and every command's `--print-config`, so a bad combination is refused before
the first stage rather than minutes into the run.
"""

from collections.abc import Callable

from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.dpo import check_config as check_dpo_config
from rlhfkit.train.grpo import (
    GRPOConfig,
    check_batch_sizes,
    check_kl_settings,
    check_norm_settings,
    check_supervision,
)
from rlhfkit.train.iterative_config import IterativeGRPOConfig
from rlhfkit.train.lora_settings import check_lora_settings
from rlhfkit.train.online_dpo_config import OnlineDPOConfig, check_online_config
from rlhfkit.train.policy_prompts import check_given_reward
from rlhfkit.train.ppo import PPOConfig, check_ppo_config
from rlhfkit.train.raft import RAFTConfig, check_raft_config
from rlhfkit.train.reward import RewardConfig, check_reward_config, check_trains_on_rankings
from rlhfkit.train.rloo import RLOOConfig
from rlhfkit.train.sft import SFTConfig


def check_round_sections(cfg: IterativeGRPOConfig) -> None:
    """Iterative GRPO's rounds run GRPO with its `grpo` section, and retrain the reward model
    with its `rm` section (their paths filled) on each round's rankings."""
    check_trainer_config(cfg.grpo)
    if cfg.retrain_reward_model:
        check_trainer_config(cfg.rm)
        check_trains_on_rankings(cfg.rm, "iterative GRPO")


CHECKS: dict[type, tuple[Callable, ...]] = {
    IterativeGRPOConfig: (check_round_sections,),
    SFTConfig: (check_lora_settings,),
    GRPOConfig: (
        check_batch_sizes,
        check_kl_settings,
        check_norm_settings,
        check_supervision,
        check_lora_settings,
        check_given_reward,
    ),
    RLOOConfig: (check_batch_sizes, check_kl_settings, check_lora_settings, check_given_reward),
    PPOConfig: (check_ppo_config, check_lora_settings),
    RAFTConfig: (check_raft_config, check_lora_settings, check_given_reward),
    DPOConfig: (check_dpo_config,),
    RewardConfig: (check_reward_config,),
    OnlineDPOConfig: (check_online_config, check_lora_settings),
}


def check_trainer_config(cfg) -> None:
    """Run the checks `cfg`'s trainer runs at its start (none for a config without any)."""
    for check in CHECKS.get(type(cfg), ()):
        check(cfg)


def check_stage_configs(configs) -> None:
    """`check_trainer_config` on each of a job's stage configs, as the job will run them (the
    keys it fills, filled): each config in `configs`."""
    for config in configs:
        check_trainer_config(config)
