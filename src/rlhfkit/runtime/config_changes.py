"""What changed between a run's saved config and the config it is resumed with: the keys, each
with its old and new value, on one line (`rundir.resume_with_config` refuses or records them)."""

import json
from typing import Any

from rlhfkit.runtime.config import dotted_items

_UNSET = object()  # a key one of two configs lacks (a section that is None in the other)

UNORDERED_KEYS = frozenset({"lora_target_modules"})
"""Keys whose value is a set of names: a resumed run compares them in any order."""


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict with sections spread into dotted keys ("sft.lr"), each value as it compares
    (`_compared`)."""
    return {
        key: _compared(key.rsplit(".", 1)[-1], value) for key, value in dotted_items(config).items()
    }


def _compared(name: str, value: Any) -> Any:
    """A key's value as a resumed run compares it: the layers named in `lora_target_modules` are
    a set (peft matches each against every layer's name), so naming them in another order, or one
    twice, is the same run."""
    if name in UNORDERED_KEYS and isinstance(value, list):
        return sorted(set(value))
    return value


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The keys whose values differ, "lr: 0.001 -> 0.002; ..." (empty when none), in the order of
    the saved config."""
    keys = list(old) + [key for key in new if key not in old]
    changed = [key for key in keys if old.get(key, _UNSET) != new.get(key, _UNSET)]
    return "; ".join(
        f"{key}: {_show(old.get(key, _UNSET))} -> {_show(new.get(key, _UNSET))}" for key in changed
    )


def _show(value: Any) -> str:
    # JSON keeps every value on one line (a newline in a string is escaped): the message and the
    # history comment stay one line each
    return "(unset)" if value is _UNSET else json.dumps(value)
