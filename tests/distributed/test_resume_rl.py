"""Checkpoints and --resume of the policy trainers under torchrun: a 2-process GRPO, PPO, RLOO,
RAFT or online DPO run resumed from its checkpoint ends bitwise equal to the run that was never
stopped (losses of every step, final weights); a single process's run resumed on 2 processes,
and (PPO) a 2-process run resumed by one, continue within 1e-5 and the latter says so."""

from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from rlhfkit.objectives.selection import Selection
from rlhfkit.runtime.checkpoint import load_torch_state
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.online_dpo import OnlineDPOConfig, Regime, train_online_dpo
from rlhfkit.train.ppo import PPOConfig, train_ppo
from rlhfkit.train.raft import RAFTConfig, train_raft
from rlhfkit.train.rloo import RLOOConfig, train_rloo
from tests.distributed.ranks import (
    RESUME_WARNING,
    close,
    history_losses,
    resumed_by_one_process,
    resumes_on_two_processes,
    small_policy_run,
)
from tests.train.conftest import length_reward_spec

# 3 prompts a step (a round), so the ranks hold 2 and 1
THREE_PROMPTS = 3


def four_steps(model_dir: Path, tmp_path: Path) -> dict:
    """The small run of every policy trainer's test over 4 steps, a checkpoint after step 2."""
    run = small_policy_run(model_dir, length_reward_spec(tmp_path))
    return {**run, "max_steps": 4, "save_every": 2, "eval_every": 4}


@pytest.mark.parametrize("lora_r", [0, 4])  # LoRA: the checkpoint holds the adapters
def test_grpo_resumes_on_two_processes(tiny_model_dir, tmp_path, lora_r):
    cfg = GRPOConfig(
        **four_steps(tiny_model_dir, tmp_path),
        prompts_per_step=THREE_PROMPTS,
        group_size=4,
        mini_batch_size=6,
        micro_batch_size=4,
        lora_r=lora_r,
    )
    whole, _ = resumes_on_two_processes(partial(history_losses, train_grpo), cfg, tmp_path)
    checkpoint = whole.checkpoints / "step_00000002"
    assert (checkpoint / "model" / "adapter_model.safetensors").is_file() == (lora_r > 0)
    # the sampling generator's state is saved once, beside each rank's RNG state
    saved = FileSystemReader(checkpoint / "trainer").read_metadata().state_dict_metadata
    assert {"step", "rng.rank0", "rng.rank1", "extra.generator"} <= saved.keys()
    assert load_torch_state(checkpoint / "trainer_state.pt") == {}


def test_ppo_resumes_on_two_processes_and_on_one(tiny_model_dir, tmp_path, caplog):
    # the critic, its optimizer and the adaptive KL coefficient are resumed with the policy
    cfg = PPOConfig(
        **four_steps(tiny_model_dir, tmp_path),
        prompts_per_step=THREE_PROMPTS,
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
    # (compared up to a step that sampled other tokens at a near-tie, if one did)
    losses, agree = resumed_by_one_process(train, cfg, whole, tmp_path / "one")
    assert RESUME_WARNING in caplog.text
    assert len(losses) == 2
    assert all(close(a, b) for a, b in zip(losses[:agree], whole_losses[2 : 2 + agree]))


@pytest.mark.parametrize(
    "train, config",
    [
        # the KL penalty in the reward: the reference is rebuilt from the start on resume
        pytest.param(
            train_rloo,
            partial(
                RLOOConfig,
                prompts_per_step=THREE_PROMPTS,
                group_size=4,
                mini_batch_size=4,
                beta=0.05,
            ),
            id="rloo",
        ),
        # the top half of each round over both ranks' rewards, two epochs of mini-batches
        pytest.param(
            train_raft,
            partial(
                RAFTConfig,
                prompts_per_round=THREE_PROMPTS,
                samples_per_prompt=4,
                selection=Selection.TOP_FRACTION,
                keep_fraction=0.5,
                require_correct=False,
                epochs_per_round=2,
                mini_batch_size=4,
                micro_batch_size=2,
            ),
            id="raft",
        ),
    ],
)
def test_rloo_and_raft_resume_on_two_processes(tiny_model_dir, tmp_path, train, config):
    cfg = config(**four_steps(tiny_model_dir, tmp_path))
    resumes_on_two_processes(partial(history_losses, train), cfg, tmp_path)


def test_online_dpo_resumes_on_two_processes(tiny_model_dir, tmp_path):
    # a refresh before steps 1 and 4: the checkpoint after step 2 holds the pool that step 3
    # trains on, and the simulated annotator's state, which labels step 4's fresh samples
    cfg = OnlineDPOConfig(
        **four_steps(tiny_model_dir, tmp_path),
        prompts_per_step=THREE_PROMPTS,
        regime=Regime.ITERATIVE,
        refresh_every=3,
        labeller="annotator",
    )
    whole, _ = resumes_on_two_processes(partial(history_losses, train_online_dpo), cfg, tmp_path)
    state = load_torch_state(whole.checkpoints / "step_00000002" / "trainer_state.pt")
    assert state["pool"]["start"] == 0 and len(state["pool"]["steps"]) == 3
    assert state["labeller"]["labels_used"] == 9  # rank 0's labeller: 3 steps of 3 pairs
