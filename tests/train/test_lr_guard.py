"""The learning-rate guard covers every caller: each trainer called from Python refuses a rate
far too large for a pretrained model before it loads anything, PPO's `critic_lr` included, and
`force_lr` lets the run go ahead. Jobs made of trainers: tests/test_pipeline.py and
tests/train/test_frontier.py."""

import dataclasses
import random

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.models import pretrained
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.lr_guard import stage_learning_rates
from rlhfkit.train.online_dpo import OnlineDPOConfig, train_online_dpo
from rlhfkit.train.ppo import PPOConfig, train_ppo
from rlhfkit.train.raft import RAFTConfig, train_raft
from rlhfkit.train.reward import RewardConfig, train_reward_model
from rlhfkit.train.rloo import RLOOConfig, train_rloo
from rlhfkit.train.sft import SFTConfig, train_sft
from tests.train.test_ppo import config as ppo_config
from tests.train.test_ppo import run_dir
from tests.train.test_sft import config as sft_config
from tests.train.test_sft import write_jsonl

# each trainer at its own default lr (PPO at 1e-4: its default, 1e-5, suits a pretrained model)
TRAINERS = {
    "sft": (train_sft, lambda model: SFTConfig(model=model), "lr=0.001"),
    "rm": (train_reward_model, lambda model: RewardConfig(model=model), "lr=0.001"),
    "dpo": (train_dpo, lambda model: DPOConfig(model=model), "lr=0.0001"),
    "ppo": (
        train_ppo,
        lambda model: PPOConfig(
            model=model, task="advice", reward="task", critic_init="policy", lr=1e-4
        ),
        "lr=0.0001",
    ),
    "grpo": (train_grpo, lambda model: GRPOConfig(model=model, task="arith"), "lr=0.0001"),
    "rloo": (train_rloo, lambda model: RLOOConfig(model=model, task="arith"), "lr=0.0001"),
    "raft": (train_raft, lambda model: RAFTConfig(model=model, task="arith"), "lr=0.0001"),
    "online-dpo": (
        train_online_dpo,
        lambda model: OnlineDPOConfig(model=model, task="advice"),
        "lr=0.0001",
    ),
}


@pytest.mark.parametrize("name", list(TRAINERS))
def test_every_trainer_called_from_python_refuses_a_rate_too_large(
    name, smollm2_config_dir, tmp_path
):
    train, make_config, refused = TRAINERS[name]
    cfg = make_config(str(smollm2_config_dir))
    run = run_dir(tmp_path, name)
    with pytest.raises(RlhfkitError) as caught:
        train(cfg, run)
    message = str(caught.value)
    assert message.startswith(f"{refused} is far too large") and "\n" not in message
    assert "--force-lr" in message and "force_lr=true" in message
    assert list(run.root.iterdir()) == []  # refused before anything was loaded or written
    # forced, the run goes on to load the model, whose directory holds only its config
    with pytest.raises(RlhfkitError, match=r"model directory .*: no (tokenizer|weights) "):
        train(dataclasses.replace(cfg, force_lr=True), run)


def test_ppo_refuses_a_critic_lr_too_large_for_its_critic(
    smollm2_config_dir, tiny_model_dir, tmp_path
):
    run = run_dir(tmp_path)
    # the critic starts from the policy: PPO's own lr (1e-5) suits it, its critic_lr (1e-4) not
    policy_critic = PPOConfig(
        model=str(smollm2_config_dir), task="advice", reward="task", critic_init="policy"
    )
    with pytest.raises(RlhfkitError, match=r"^critic_lr=0\.0001 is far too large .*full fine"):
        train_ppo(policy_critic, run)
    # a pretrained reward model as the critic's start, under a tiny policy: the critic is fully
    # fine-tuned even when the policy trains LoRA adapters (whose limit, 1e-3, 1e-4 is under)
    rm_critic = PPOConfig(
        model=str(tiny_model_dir), task="advice", reward_model=str(smollm2_config_dir), lora_r=8
    )
    with pytest.raises(RlhfkitError, match=r"^critic_lr=0\.0001 is far too large for .*full fine"):
        train_ppo(rm_critic, run)


@pytest.fixture
def tiny_counts_as_pretrained(monkeypatch):
    """The tiny model above the threshold: the guard applies, and a forced run really trains."""
    monkeypatch.setattr(pretrained, "PRETRAINED_PARAMETERS", 0)


def test_a_forced_sft_run_trains(tiny_counts_as_pretrained, tiny_model_dir, tmp_path):
    rows = ArithTask(flawed_fraction=0.0).sft_examples(16, random.Random(0))
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = sft_config(tiny_model_dir, data, "", max_steps=2, lr=1e-3, sample_every=0)
    with pytest.raises(RlhfkitError, match=r"^lr=0\.001 is far too large"):
        train_sft(cfg, run_dir(tmp_path, "refused"))
    result = train_sft(dataclasses.replace(cfg, force_lr=True), run_dir(tmp_path, "forced"))
    assert len(result.train_losses) == 2 and (tmp_path / "forced" / "final").is_dir()


def test_a_forced_ppo_run_trains(tiny_counts_as_pretrained, tiny_model_dir, tmp_path):
    cfg = ppo_config(tiny_model_dir, tmp_path, max_steps=1, lr=1e-5, critic_lr=1e-2)
    with pytest.raises(RlhfkitError, match=r"^critic_lr=0\.01 is far too large"):
        train_ppo(cfg, run_dir(tmp_path, "refused"))
    result = train_ppo(dataclasses.replace(cfg, force_lr=True), run_dir(tmp_path, "forced"))
    assert len(result.history) == 1 and (tmp_path / "forced" / "final").is_dir()


def test_stage_rates_are_keyed_as_the_job_spells_them():
    rates = stage_learning_rates(
        {"sft": SFTConfig(lr=2e-5), "ppo": PPOConfig(lr=1e-6, lora_r=8, critic_lr=3e-6)}
    )
    # the critic is always fully fine-tuned, whatever the policy's LoRA
    assert rates == {"sft.lr": (2e-5, 0), "ppo.lr": (1e-6, 8), "ppo.critic_lr": (3e-6, 0)}
