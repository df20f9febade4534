"""Every command's config: `seed` and `device` declared once (RunConfig), every choice among
fixed values an Enum, whose typo is a one-line error naming the key and the valid values, and
every number given a bound (`config_bounds`), a value outside it refused before the run starts."""

import dataclasses
import enum
import math
import sys
import typing

import pytest

from rlhfkit import cli
from rlhfkit.errors import ConfigError
from rlhfkit.runtime.config import load_config
from rlhfkit.runtime.config_bounds import BOUNDS, bound_of
from rlhfkit.runtime.config_types import section_type
from rlhfkit.runtime.run_config import RunConfig
from rlhfkit.tasks.registry import TaskName

CONFIGS = {name: cli.load_object(command.config) for name, command in cli.COMMANDS.items()}


def enum_keys(cls: type, prefix: str = "") -> list[tuple[str, type[enum.Enum]]]:
    """(dotted key, Enum class) of every field annotated `E` or `E | None`, sections expanded."""
    keys = []
    for field in dataclasses.fields(cls):
        annotation = typing.get_type_hints(cls)[field.name]
        section = section_type(annotation)
        if section is not None:
            keys += enum_keys(section, f"{prefix}{field.name}.")
            continue
        arms = typing.get_args(annotation) or (annotation,)
        keys += [
            (prefix + field.name, arm)
            for arm in arms
            if isinstance(arm, type) and issubclass(arm, enum.Enum)
        ]
    return keys


ENUM_KEYS = [
    (name, key, choices) for name, cls in CONFIGS.items() for key, choices in enum_keys(cls)
]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_seed_and_device_are_declared_once(name):
    cls = CONFIGS[name]
    assert issubclass(cls, RunConfig)
    for klass in cls.__mro__:
        if klass is not RunConfig:
            assert not {"seed", "device"} & set(vars(klass).get("__annotations__", {})), klass


def test_the_choices_of_the_configs_are_enums():
    keys = {(name, key) for name, key, _ in ENUM_KEYS}
    assert {
        ("eval", "task"),
        ("critique", "task"),
        ("judge", "task"),
        ("rm", "objective"),
        ("dpo", "loss"),
        ("sft", "truncation"),
        ("sft", "precision"),
        ("pipeline", "dpo.loss"),
        ("pipeline", "rm.objective"),
        ("judge", "sft.truncation"),
    } <= keys


@pytest.mark.parametrize("name, key, choices", ENUM_KEYS, ids=[f"{n}-{k}" for n, k, _ in ENUM_KEYS])
def test_a_typo_in_a_choice_is_a_one_line_error_naming_the_key_and_the_choices(name, key, choices):
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS[name], overrides=[f"{key}=not_a_choice"])
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert (
        message.startswith(f"config key '{key}': expected one of ") and "'not_a_choice'" in message
    )
    assert all(repr(member.value) in message for member in choices)


def test_a_task_typo_names_the_built_in_tasks():
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS["eval"], overrides=["task=arth"])
    names = ", ".join(repr(name.value) for name in TaskName)
    assert str(caught.value) == f"config key 'task': expected one of {names} or null, got 'arth'"
    assert load_config(CONFIGS["critique"], overrides=["task=null"]).task is None


def numeric_keys(cls: type, prefix: str = "") -> list[tuple[str, type, str, type]]:
    """(dotted key, class declaring it, field name, int or float) of every numeric field."""
    keys = []
    for field in dataclasses.fields(cls):
        annotation = typing.get_type_hints(cls)[field.name]
        section = section_type(annotation)
        if section is not None:
            keys += numeric_keys(section, f"{prefix}{field.name}.")
            continue
        arms = typing.get_args(annotation) or (annotation,)
        keys += [(prefix + field.name, cls, field.name, arm) for arm in arms if arm in (int, float)]
    return keys


NUMERIC_KEYS = {name: numeric_keys(cls) for name, cls in CONFIGS.items()}


def test_every_number_of_every_config_has_a_declared_bound():
    unbounded = {
        f"{name}: {key}"
        for name, keys in NUMERIC_KEYS.items()
        for key, cls, field_name, _ in keys
        if bound_of(cls, field_name) is None
    }
    assert not unbounded, "add these settings to config_bounds.BOUNDS"


def test_every_class_entry_of_the_bounds_names_a_field_of_that_class():
    declared = {
        f"{klass.__name__}.{field_name}"
        for keys in NUMERIC_KEYS.values()
        for _, cls, field_name, _ in keys
        for klass in cls.__mro__
        if dataclasses.is_dataclass(klass)
        and field_name in {f.name for f in dataclasses.fields(klass)}
    }
    assert {entry for entry in BOUNDS if "." in entry} <= declared


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_default_is_within_its_bound(name):
    assert load_config(CONFIGS[name]) == CONFIGS[name]()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_number_past_its_bound_or_not_finite_is_refused_by_its_dotted_key(name):
    for key, cls, field_name, kind in NUMERIC_KEYS[name]:
        bound = bound_of(cls, field_name)
        # a list of numbers (the frontier's dpo_betas) holds each item to the bound; its
        # non-finite items have their own message (tests/runtime/test_config_bounds.py)
        is_list = typing.get_origin(typing.get_type_hints(cls)[field_name]) in (list, tuple)
        bad = ["nan", "-inf"] if kind is float and not is_list else []
        if math.isfinite(bound.low):
            bad.append(str(math.floor(bound.low) - 1 if kind is int else bound.low - 0.5))
        for value in bad:
            with pytest.raises(ConfigError) as caught:
                load_config(
                    CONFIGS[name], overrides=[f"{key}=[{value}]" if is_list else f"{key}={value}"]
                )
            message = str(caught.value)
            assert message.startswith(f"config key '{key}': must be ") and "got" in message
            assert len(message.splitlines()) == 1


HOSTILE_SETTINGS = [
    ("sft", "max_steps=0", ">= 1, got 0"),
    ("sft", "max_steps=-1", ">= 1, got -1"),
    ("sft", "grad_accum=0", ">= 1, got 0"),
    ("sft", "batch_size=-1", ">= 1, got -1"),
    ("sft", "batch_size=0", ">= 1, got 0"),
    ("sft", "max_grad_norm=nan", "a finite number, got nan"),
    ("sft", "warmup_steps=-5", ">= 0, got -5"),
    ("sft", "lr=nan", "a finite number, got nan"),
    ("sft", "lr=-1", "> 0, got -1.0"),
    ("sft", "keep_last=0", ">= 1, got 0"),
    ("sft", "lora_dropout=1", "in [0, 1), got 1.0"),
    ("grpo", "lora_dropout=-0.1", "in [0, 1), got -0.1"),
    ("rm", "num_heads=0", ">= 1, got 0"),
    ("grpo", "prompts_per_step=0", ">= 1, got 0"),
    ("ppo", "prompts_per_step=0", ">= 1, got 0"),
    ("dpo", "max_steps=0", ">= 1, got 0"),
    ("pipeline", "sft.lr=-1", "> 0, got -1.0"),
    ("iterative-grpo", "rm.num_heads=0", ">= 1, got 0"),
]


@pytest.mark.parametrize("command, setting, rule", HOSTILE_SETTINGS)
def test_the_command_stops_with_one_line_and_status_2_before_making_its_run(
    monkeypatch, capsys, tmp_path, command, setting, rule
):
    key = setting.split("=")[0]
    # the pipeline takes its runs directory as a setting, the trainers as an option
    where = ["--runs-dir", str(tmp_path), "model=m"] if cli.COMMANDS[command].run_dir else []
    where = where or [f"runs_dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", ["rlhfkit", command, setting, *where])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err == f"error: config key '{key}': must be {rule}\n"
    assert list(tmp_path.iterdir()) == []  # no run directory, no final/


@pytest.mark.parametrize(
    "command, setting",
    [
        ("grpo", "eval_every=-1"),  # never evaluate
        ("pipeline", "ppo.eval_every=-1"),
        ("ppo", "eval_every=0"),  # only at the start and end
        ("sft", "eval_every=0"),  # only at the end
        ("sft", "save_every=0"),  # only the final model
        ("dpo", "max_labels=0"),  # every row
        ("online-dpo", "label_budget=0"),  # no limit
        ("online-dpo", "annotator_temperature=0"),  # calibrate
        ("grpo", "lora_r=0"),  # full fine-tuning
        ("grpo", "beta=0"),  # no reference model
        ("grpo", "top_k=0"),  # off
        ("ppo", "max_grad_norm=0"),  # no clipping
        ("ppo", "kl_target=0"),  # a fixed beta
        ("critique", "revise_temperature=0"),  # greedy
        ("raft", "wrong_coef=-1"),
        ("grpo", "reward_timeout_s=0"),  # no limit
    ],
)
def test_a_documented_special_value_stays_legal(command, setting):
    key, value = setting.split("=")
    cfg = load_config(CONFIGS[command], overrides=[setting])
    for part in key.split("."):
        cfg = getattr(cfg, part)
    assert cfg == float(value)


def test_a_special_value_is_refused_where_it_means_nothing():
    # -1 means "never" to the policy trainers only; SFT always evaluates at the end
    with pytest.raises(ConfigError, match=r"'eval_every': must be >= 0 \(0 = only at the end\)"):
        load_config(CONFIGS["sft"], overrides=["eval_every=-1"])
    with pytest.raises(ConfigError, match=r"'samples_per_prompt': must be >= 2"):
        load_config(CONFIGS["online-dpo"], overrides=["samples_per_prompt=1"])
    assert load_config(CONFIGS["raft"], overrides=["samples_per_prompt=1"]).samples_per_prompt == 1
