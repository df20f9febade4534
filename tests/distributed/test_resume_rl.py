"""Checkpoints and --resume of the policy trainers under torchrun: a 2-process GRPO or PPO run
resumed from its checkpoint ends bitwise equal to the run that was never stopped (losses of
every step, final weights); a single process's run resumed on 2 processes, and a 2-process run
resumed by one, continue within 1e-5 and the latter says so."""

from functools import partial

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from rlhfkit.runtime.checkpoint import load_torch_state
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.ppo import PPOConfig, train_ppo
from tests.distributed.ranks import (
    RESUME_WARNING,
    close,
    history_losses,
    resumes_on_two_processes,
    small_policy_run,
    stopped_copy,
)
from tests.train.conftest import length_reward_spec

# 4 steps, a checkpoint after step 2; 3 prompts a step, so the ranks hold 2 and 1
FOUR_STEPS = dict(max_steps=4, save_every=2, eval_every=4, prompts_per_step=3)


@pytest.mark.parametrize("lora_r", [0, 4])  # LoRA: the checkpoint holds the adapters
def test_grpo_resumes_on_two_processes(tiny_model_dir, tmp_path, lora_r):
    settings = {**small_policy_run(tiny_model_dir, length_reward_spec(tmp_path)), **FOUR_STEPS}
    cfg = GRPOConfig(**settings, group_size=4, mini_batch_size=6, micro_batch_size=4, lora_r=lora_r)
    whole, _ = resumes_on_two_processes(partial(history_losses, train_grpo), cfg, tmp_path)
    checkpoint = whole.checkpoints / "step_00000002"
    assert (checkpoint / "model" / "adapter_model.safetensors").is_file() == (lora_r > 0)
    # the sampling generator's state is saved once, beside each rank's RNG state
    saved = FileSystemReader(checkpoint / "trainer").read_metadata().state_dict_metadata
    assert {"step", "rng.rank0", "rng.rank1", "extra.generator"} <= saved.keys()
    assert load_torch_state(checkpoint / "trainer_state.pt") == {}


def test_ppo_resumes_on_two_processes_and_on_one(tiny_model_dir, tmp_path, capfd):
    # the critic, its optimizer and the adaptive KL coefficient are resumed with the policy
    settings = {**small_policy_run(tiny_model_dir, length_reward_spec(tmp_path)), **FOUR_STEPS}
    cfg = PPOConfig(
        **settings,
        critic_init="policy",
        critic_lr=1e-3,
        mini_batch_size=3,
        micro_batch_size=2,
        kl_coef=0.05,
        kl_target=0.01,
        kl_horizon=100,
    )
    train = partial(history_losses, train_ppo)
    whole, whole_losses = resumes_on_two_processes(train, cfg, tmp_path)
    checkpoint = whole.checkpoints / "step_00000002"
    saved = FileSystemReader(checkpoint / "trainer").read_metadata().state_dict_metadata
    assert any(key.startswith("critic_optimizer.") for key in saved)
    kl_coef = load_torch_state(checkpoint / "trainer_state.pt")["kl_coef"]
    assert kl_coef != cfg.kl_coef  # the controller moved, and its value was kept
    critic = load_file(checkpoint / "critic" / "model.safetensors")
    assert all(torch.isfinite(weight).all() for weight in critic.values())

    # the 2-process checkpoint, resumed by one process: it continues, and says it is not bitwise
    capfd.readouterr()
    one = train(cfg, stopped_copy(whole, tmp_path / "one"), resume=True)
    assert RESUME_WARNING in capfd.readouterr().err
    assert all(close(a, b) for a, b in zip(one.train_losses, whole_losses[2:]))
