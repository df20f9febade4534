"""config_bounds: the bounds of numeric settings, and `validate` on configs built in Python or
loaded (the table's coverage of every command's config is tested in tests/test_configs.py)."""

import math
from dataclasses import dataclass, field

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.runtime.config import load_config
from rlhfkit.runtime.config_bounds import FINITE, above, at_least, bound_of, validate, within
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.sft import SFTConfig


@dataclass(frozen=True)
class StageConfig:
    max_steps: int = 10
    lr: float = 1e-3
    flag: bool = False
    unbounded: float = -2.5
    scales: tuple[float, ...] = (1.0, 2.0)


@dataclass(frozen=True)
class JobConfig:
    seed: int = 0
    stage: StageConfig = field(default_factory=StageConfig)
    optional: StageConfig | None = None


def error_of(cfg) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    return message


@pytest.mark.parametrize(
    "bound, inside, outside, words",
    [
        (at_least(1), [1, 2, 10**30], [0, -1], ">= 1"),
        (above(0), [1e-300, 3.0], [0.0, -1e-9], "> 0"),
        (within(0, 1, low_open=True), [1e-9, 1.0], [0.0, 1.0000001], "in (0, 1]"),
        (within(0, 0.5, high_open=True), [0.0, 0.49], [0.5, -0.1], "in [0, 0.5)"),
        (at_least(-1, "-1 = never"), [-1, 0, 5], [-2], ">= -1 (-1 = never)"),
        (FINITE, [-1e300, 0.0, 1e300], [], "a finite number"),
    ],
)
def test_a_bound_holds_inside_fails_outside_and_says_its_rule(bound, inside, outside, words):
    assert all(bound.holds(value) for value in inside)
    assert not any(bound.holds(value) for value in outside)
    assert bound.describe() == words


def test_a_class_entry_overrides_the_name_entry_through_the_bases():
    # GRPOConfig inherits eval_every from PolicyRunConfig, where -1 means "never evaluate"
    assert bound_of(GRPOConfig, "eval_every").holds(-1)
    assert not bound_of(SFTConfig, "eval_every").holds(-1)  # SFT has no "never"
    assert bound_of(SFTConfig, "max_steps") == at_least(1)
    assert bound_of(SFTConfig, "no_such_setting") is None


def test_validate_accepts_legal_values_and_ignores_flags():
    validate(JobConfig(stage=StageConfig(max_steps=1, flag=True), optional=None))
    validate(SFTConfig())
    validate(JobConfig(seed=2**32 - 1, stage=StageConfig(max_steps=10**400)))  # no float overflow


@pytest.mark.parametrize(
    "cfg, message",
    [
        (SFTConfig(max_steps=0), "config key 'max_steps': must be >= 1, got 0"),
        (SFTConfig(lr=-1.0), "config key 'lr': must be > 0, got -1.0"),
        (SFTConfig(max_grad_norm=math.nan), "config key 'max_grad_norm': must be a finite"),
        (JobConfig(seed=-1), "config key 'seed': must be in [0, 4294967295], got -1"),
        (
            # refused when the config is read, not after the run has started
            GRPOConfig(reward_uncertainty_coef=-0.5),
            "config key 'reward_uncertainty_coef': must be >= 0 (0 = off), got -0.5",
        ),
        (JobConfig(stage=StageConfig(lr=0.0)), "config key 'stage.lr': must be > 0, got 0.0"),
        (
            # GRPO's lower clip: a ratio never falls to 1 - clip_eps <= 0 (PPO's clips above too)
            GRPOConfig(clip_eps=1.0),
            "config key 'clip_eps': must be in (0, 1) (1 or more never clips), got 1.0",
        ),
        (
            JobConfig(optional=StageConfig(max_steps=-3)),
            "config key 'optional.max_steps': must be >= 1, got -3",
        ),
        (
            JobConfig(stage=StageConfig(unbounded=math.inf)),
            "config key 'stage.unbounded': must be a finite number, got inf",
        ),
        (
            JobConfig(stage=StageConfig(scales=(1.0, math.nan))),
            "config key 'stage.scales': must hold finite numbers, got (1.0, nan)",
        ),
    ],
)
def test_validate_names_the_key_with_its_section_the_rule_and_the_value(cfg, message):
    assert error_of(cfg).startswith(message)


def test_load_config_validates_values_from_a_file_and_from_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("stage:\n  max_steps: 0\n")
    with pytest.raises(ConfigError, match=r"^config key 'stage.max_steps': must be >= 1, got 0$"):
        load_config(JobConfig, path)
    with pytest.raises(ConfigError, match=r"^config key 'stage.lr': must be a finite number"):
        load_config(JobConfig, overrides=["stage.lr=.nan"])
    with pytest.raises(ConfigError, match=r"^config key 'stage.lr': must be a finite number"):
        load_config(JobConfig, overrides=["stage.lr=inf"])  # a string YAML leaves to float()
    # a later override may mend what the file got wrong: only the result is checked
    assert load_config(JobConfig, path, ["stage.max_steps=2"]).stage.max_steps == 2
