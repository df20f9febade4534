"""Every command's config: `seed` and `device` declared once (RunConfig), and every choice among
fixed values an Enum, whose typo is a one-line error naming the key and the valid values."""

import dataclasses
import enum
import typing

import pytest

from rlhfkit import cli
from rlhfkit.errors import ConfigError
from rlhfkit.runtime.config import load_config
from rlhfkit.runtime.config_types import section_type
from rlhfkit.runtime.run_config import RunConfig

CONFIGS = {name: cli._load(command.config) for name, command in cli.COMMANDS.items()}


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
        ("eval", "judge"),
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
    with pytest.raises(
        ConfigError, match=r"config key 'task': expected one of 'arith', 'advice', got 'arth'"
    ):
        load_config(CONFIGS["eval"], overrides=["task=arth"])
    assert load_config(CONFIGS["critique"], overrides=["task=null"]).task is None
