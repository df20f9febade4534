"""PPO under torchrun: 2 gloo processes sample the same tokens and train actor and critic exactly
as 1 process on the same global batch."""

import dataclasses
from functools import partial
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlhfkit.models.reward import RewardModel
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train.ppo import PPOConfig, train_ppo
from tests.distributed.ranks import (
    TOLERANCE,
    close,
    history_losses,
    one_process_and_two_ranks,
    recorded_run,
    run_on_ranks,
    sharding_frozen,
    train_in_run,
)
from tests.rollout.recorded_draws import step_being_run
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


def moved_apart(a: Path, b: Path, tolerance: float) -> float:
    """The share of the weights of two saved models that differ by more than `tolerance`."""
    one, two = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    apart = sum(int(((one[k] - two[k]).abs() > tolerance).sum()) for k in one)
    return apart / sum(value.numel() for value in one.values())


def test_reinforce_pp_step_on_two_ranks_equals_one_process(tiny_model_dir, tmp_path):
    # no critic: the returns are whitened over both ranks' tokens (3 and 2 prompts); a rank
    # that whitened its own would change the step's loss. One step only: every row's advantage
    # is one number for all its tokens, so token embeddings shared by answers of opposite
    # advantage get gradients that nearly cancel, and AdamW, which divides each gradient entry
    # by its own size (+ 1e-8), moves such an entry by up to the learning rate on rounding
    # noise alone (4.5e-5 in one process, 5.0e-4 on two ranks, at lr 1e-3); the next steps'
    # losses then differ past 1e-5
    cfg = ppo_config(
        tiny_model_dir,
        5,
        5,
        reward=length_reward_spec(tmp_path),
        advantage_estimator="reinforce_pp",
    )
    cfg = dataclasses.replace(cfg, max_steps=1, ppo_epochs=1, eval_every=-1)
    train = partial(history_losses, train_ppo)
    one = prepare_run_dir(tmp_path / "one", resume=False, overwrite=False)
    loss_one = train(cfg, one).train_losses
    two = prepare_run_dir(tmp_path / "two", resume=False, overwrite=False)
    loss_two, _ = run_on_ranks(
        2, recorded_run, train_in_run, step_being_run(two), train, cfg, str(two.root)
    )
    assert len(loss_one) == len(loss_two) == 1 and close(loss_one[0], loss_two[0])
    (row_one,), (row_two,) = read_metrics(one.metrics_path), read_metrics(two.metrics_path)
    assert row_one["response_tokens"] == row_two["response_tokens"]
    for key in ("proxy_reward", "kl_per_sequence", "clip_fraction"):
        assert close(row_one[key], row_two[key]), key
    assert "value_loss" not in row_two
    # the update: AdamW's first step moves every entry by about lr along its gradient's sign,
    # so advantages whitened otherwise move many entries 2e-3 apart; the near-cancelling ones
    # (above) are a handful of the 30,240
    apart = moved_apart(one.final, two.final, TOLERANCE)
    assert apart < 1e-3, apart


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
