"""The checks a job runs for every stage before its first one (`check_trainer_config`) refuse
what the trainers refuse when they start: made from the config alone (no model exists at "m")."""

from dataclasses import replace

import pytest

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.train.config_checks import check_trainer_config
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.online_dpo_config import OnlineDPOConfig
from rlhfkit.train.ppo import PPOConfig
from rlhfkit.train.raft import RAFTConfig
from rlhfkit.train.rloo import RLOOConfig

NO_REFERENCE = "^reference_model=ref: this run loads no reference model"


@pytest.mark.parametrize(
    "cfg",
    [
        RAFTConfig(model="m", task="arith"),
        GRPOConfig(model="m", task="arith", beta=0.0),
        RLOOConfig(model="m", task="arith", beta=0.0),
        OnlineDPOConfig(model="m", task="advice", refresh_reference=True),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_reference_model_no_reference_is_loaded_from_is_refused_up_front(cfg):
    # it was refused only when the trainer built its models: a pipeline trained its earlier
    # stages first, and --print-config accepted it
    check_trainer_config(cfg)
    with pytest.raises(ConfigError, match=NO_REFERENCE):
        check_trainer_config(replace(cfg, reference_model="ref"))


@pytest.mark.parametrize(
    "cfg",
    [
        GRPOConfig(model="m", task="arith", beta=0.1),
        RLOOConfig(model="m", task="arith", beta=0.1),
        PPOConfig(model="m", task="advice", reward_model="rm"),
        OnlineDPOConfig(model="m", task="advice"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_reference_model_is_taken_where_it_is_loaded_and_refused_under_lora(cfg):
    check_trainer_config(replace(cfg, reference_model="ref"))
    with pytest.raises(ConfigError, match="^reference_model=ref with lora_r=4: under LoRA"):
        check_trainer_config(replace(cfg, reference_model="ref", lora_r=4))


@pytest.mark.parametrize(
    "cfg",
    [
        GRPOConfig(model="m", task="arith"),
        RLOOConfig(model="m", task="arith"),
        RAFTConfig(model="m", task="arith"),
        PPOConfig(model="m", task="advice", reward_model="rm"),
        OnlineDPOConfig(model="m", task="advice", labeller="reward"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_missing_reward_file_is_refused_up_front(cfg, tmp_path):
    # checked when the trainer started: a pipeline's GRPO stage failed after SFT, the reward
    # model and PPO had run
    missing = tmp_path / "nofile.py"
    with pytest.raises(RlhfkitError, match=f"^reward function '{missing}:f': no file {missing}"):
        check_trainer_config(replace(cfg, reward=f"{missing}:f"))
    (tmp_path / "rewards.py").write_text("def f(prompts, responses):\n    return [0.0]\n")
    check_trainer_config(replace(cfg, reward=f"{tmp_path / 'rewards.py'}:f"))


def test_a_config_that_names_no_reward_yet_passes_until_its_run_starts():
    # --print-config shows such a config (`rlhfkit grpo --print-config`); the run says what is
    # missing
    for cls in (GRPOConfig, RLOOConfig, RAFTConfig):
        check_trainer_config(cls(model="m"))
