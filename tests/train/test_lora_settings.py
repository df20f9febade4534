"""LoRA's settings that would change nothing are refused before anything loads."""

import dataclasses

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.train.config_checks import check_trainer_config
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.lora_settings import check_lora_settings
from rlhfkit.train.reward import RewardConfig
from rlhfkit.train.sft import SFTConfig

CONFIGS = [SFTConfig(), RewardConfig(), DPOConfig(), GRPOConfig()]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize(
    "setting, shown",
    [
        ({"lora_alpha": 32}, "lora_alpha=32"),
        ({"lora_dropout": 0.1, "disable_dropout": False}, "lora_dropout=0.1"),
        ({"lora_target_modules": ("q_proj",)}, "lora_target_modules=['q_proj']"),
    ],
)
def test_an_adapter_setting_without_adapters_is_refused(cfg, setting, shown):
    setting = {k: v for k, v in setting.items() if hasattr(cfg, k)}
    with pytest.raises(ConfigError, match=rf"^{shown.split('=')[0]}=.* lora_r=0 trains the whole"):
        check_lora_settings(dataclasses.replace(cfg, **setting))
    check_lora_settings(dataclasses.replace(cfg, lora_r=8, **setting))  # with adapters: read


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_the_defaults_and_all_linear_written_as_a_list_pass(cfg):
    check_lora_settings(cfg)
    check_lora_settings(dataclasses.replace(cfg, lora_target_modules=("all-linear",)))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_adapters_on_no_layer_are_refused_before_the_model_loads(cfg):
    with pytest.raises(ConfigError, match="^lora_target_modules: empty"):
        check_lora_settings(dataclasses.replace(cfg, lora_r=8, lora_target_modules=()))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_trainer_registers_the_checks_its_run_makes(cfg):
    # what the jobs and --print-config run (`check_trainer_config`) is what the trainer runs
    with pytest.raises(ConfigError, match="^lora_alpha=32 shapes"):
        check_trainer_config(dataclasses.replace(cfg, lora_alpha=32))


def test_dropout_that_disable_dropout_turns_off_is_refused_where_it_does():
    grpo = GRPOConfig(lora_r=8, lora_dropout=0.05)
    with pytest.raises(ConfigError, match="lora_dropout=0.05 with disable_dropout=true"):
        check_lora_settings(grpo)
    check_lora_settings(dataclasses.replace(grpo, disable_dropout=False))
    check_lora_settings(SFTConfig(lora_r=8, lora_dropout=0.05))  # SFT keeps the model's dropout
