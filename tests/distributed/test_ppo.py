"""PPO under torchrun: 2 gloo processes sample the same tokens and train actor and critic exactly
as 1 process on the same global batch."""

from functools import partial

import pytest

from rlhfkit.models.reward import RewardModel
from rlhfkit.train.ppo import PPOConfig, train_ppo
from tests.distributed.ranks import (
    history_losses,
    one_process_and_two_ranks,
    sharding_frozen,
)
from tests.train.conftest import length_reward_spec


def ppo_config(model_dir, prompts: int, mini_batch: int, **settings) -> PPOConfig:
    """Two epochs over micro-batches of 2 rows; the adaptive KL coefficient follows the global
    KL."""
    return PPOConfig(
        model=str(model_dir),
        task="arith",
        train_prompts=32,
        eval_prompts=4,
        prompts_per_step=prompts,
        mini_batch_size=mini_batch,
        micro_batch_size=2,
        ppo_epochs=2,
        max_new_tokens=10,
        eval_max_new_tokens=6,
        max_steps=3,
        lr=1e-3,
        critic_lr=1e-3,
        warmup_steps=1,
        kl_coef=0.05,
        kl_target=0.01,
        kl_horizon=100,
        eval_every=3,
        save_every=0,
        progress=False,
        tensorboard=False,
        **settings,
    )


PPO_KEYS = ("proxy_reward", "kl_per_sequence", "kl_coef", "value_loss", "explained_variance")


@pytest.mark.parametrize(
    "prompts, mini_batch",
    [
        (6, 3),  # 3 prompts a rank: each mini-batch lies on one rank, the other runs none
        (5, 5),  # 3 and 2 prompts: one mini-batch across both ranks
    ],
)
def test_two_ranks_equal_one_process(tiny_model_dir, tmp_path, prompts, mini_batch):
    # the advantages are whitened over both ranks' tokens
    cfg = ppo_config(
        tiny_model_dir,
        prompts,
        mini_batch,
        reward=length_reward_spec(tmp_path),
        critic_init="policy",
    )
    one_process_and_two_ranks(
        partial(history_losses, train_ppo), cfg, tmp_path, policy_keys=PPO_KEYS
    )


def test_sharded_reference_and_reward_model_equal_one_process(tiny_model_dir, tmp_path):
    # frozen_models=sharded: the reference and the reward model (scoring 3 and 2 prompts on the
    # two ranks) sharded like the actor and the critic, which starts from the reward model
    reward_dir = tmp_path / "rm"
    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(reward_dir)
    cfg = ppo_config(
        tiny_model_dir,
        5,
        5,
        reward_model=str(reward_dir),
        critic_init="reward_model",
        frozen_models="sharded",
    )
    sharded = ["LlamaForCausalLM", "RewardModel"]  # the reference, the reward model
    train = partial(sharding_frozen, partial(history_losses, train_ppo), sharded)
    one_process_and_two_ranks(train, cfg, tmp_path, policy_keys=PPO_KEYS)
