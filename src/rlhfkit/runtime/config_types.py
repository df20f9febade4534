"""Check and convert one config value against its dataclass field annotation.

`load_config` reads plain YAML values (str, int, float, bool, None, list, dict); this module turns
them into what a field's annotation asks for, or says in one line why it cannot. Supported
annotations: int, float, bool, str, Path, str-valued Enum subclasses, Literal[...], `X | None` (and
other unions), list[X], tuple[X, ...], tuple[A, B, ...] and nested dataclasses.
"""

import dataclasses
import enum
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rlhfkit.errors import ConfigError

# Builds a nested dataclass section: (section class, mapping, dotted prefix, base instance or None).
SectionBuilder = Callable[[type, Mapping[str, Any], str, Any], Any]


class TypeMismatch(Exception):
    """A value does not fit an annotation; the caller turns it into a ConfigError naming the key."""


def convert_value(
    value: Any, annotation: Any, key: str, base: Any, build_section: SectionBuilder
) -> Any:
    """Convert `value` for the field `key` annotated `annotation`.

    Args:
        value: the value as YAML produced it (or as an override parsed it).
        annotation: the resolved field annotation (from `typing.get_type_hints`).
        key: the dotted config key, for error messages ("sft.lr").
        base: the field's default when it is a dataclass section, so that given keys overlay it.
        build_section: builds a nested dataclass from a mapping (passed in to avoid an import
            cycle).

    Returns:
        The converted value: tuples for lists, Enum members for their value strings, floats for ints
        given to float fields.

    Raises:
        ConfigError: one line, `config key 'sft.lr': expected float, got 'abc'`.
    """
    try:
        return _convert(value, annotation, key, base, build_section)
    except TypeMismatch:
        raise ConfigError(
            f"config key '{key}': expected {describe(annotation)}, got {_show(value)}"
            + _list_hint(value, annotation)
        ) from None


def _list_hint(value: Any, annotation: Any) -> str:
    """The likely slips, said: one value where a list is wanted (`models=runs/a/final`: the
    list form of that value), the word none where null is allowed (`task=none`), or an empty
    list of rows where a data file is wanted (`rlhfkit.run(..., train_data=[])`)."""
    if isinstance(value, str) and value.lower() == "none" and _allows_null(annotation):
        return "; null means none"
    if isinstance(value, (list, tuple)) and not value and not _wants_sequence(annotation):
        return "; an empty list holds no rows to read"  # rows in memory (`rlhfkit.run`), none
    if isinstance(value, (list, tuple, Mapping)) or not _wants_sequence(annotation):
        return ""
    if value is None:  # no list of null: the setting cannot be unset
        return "; it cannot be null"
    return f"; write a list: [{value}]"


def _allows_null(annotation: Any) -> bool:
    return _is_union(annotation) and type(None) in typing.get_args(annotation)


def _wants_sequence(annotation: Any) -> bool:
    if _is_union(annotation):
        return any(_wants_sequence(arg) for arg in typing.get_args(annotation))
    return typing.get_origin(annotation) in (list, tuple) or annotation in (list, tuple)


def describe(annotation: Any) -> str:
    """Say in words what an annotation accepts, for error messages
    ("list of int", "float or null": null is what a config file or override writes for None)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if _is_union(annotation):
        return " or ".join(describe(arg) for arg in args)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f"list of {describe(args[0])}" if args else "list"
    if origin is tuple:
        return f"list of {len(args)} items ({', '.join(describe(arg) for arg in args)})"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    if dataclasses.is_dataclass(annotation):
        return "a section (a mapping of keys to values)"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def section_type(annotation: Any) -> type | None:
    """The dataclass behind a field annotated `Sub` or `Sub | None`, else None (a plain value)."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    if _is_union(annotation):
        sections = [arg for arg in typing.get_args(annotation) if dataclasses.is_dataclass(arg)]
        if len(sections) == 1:
            return sections[0]
    return None


def _convert(
    value: Any, annotation: Any, key: str, base: Any, build_section: SectionBuilder
) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise TypeMismatch
    if origin is typing.Literal:
        # Compare the type too: True == 1, but a bool is not the literal 1.
        if any(value == arg and type(value) is type(arg) for arg in args):
            return value
        raise TypeMismatch
    if _is_union(annotation):
        return _convert_union(value, args, key, base, build_section)
    if origin in (list, tuple) or annotation in (list, tuple):
        return _convert_sequence(value, annotation, key, build_section)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise TypeMismatch
        return build_section(annotation, value, key, base)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _convert_enum(value, annotation)
    converter = _SCALAR_CONVERTERS.get(annotation)
    if converter is None:
        raise TypeError(f"config key '{key}': unsupported field annotation {annotation!r}")
    return converter(value)


def _convert_union(
    value: Any, args: tuple, key: str, base: Any, build_section: SectionBuilder
) -> Any:
    if value is None and type(None) in args:
        return None
    arms = [arg for arg in args if arg is not type(None)]
    if len(arms) == 1:
        # A single arm reports its own precise errors (an unknown key inside an optional section).
        return _convert(value, arms[0], key, base, build_section)
    for arm in arms:
        try:
            return _convert(value, arm, key, base, build_section)
        except (TypeMismatch, ConfigError):
            continue
    raise TypeMismatch


def _convert_sequence(
    value: Any, annotation: Any, key: str, build_section: SectionBuilder
) -> tuple:
    # A frozen config holds tuples: a list default would be shared and mutable.
    if not isinstance(value, (list, tuple)):
        raise TypeMismatch
    args = typing.get_args(annotation)
    if not args:
        return tuple(value)
    if typing.get_origin(annotation) is list or (len(args) == 2 and args[1] is Ellipsis):
        return tuple(_convert(item, args[0], key, None, build_section) for item in value)
    if len(value) != len(args):
        raise TypeMismatch
    return tuple(_convert(item, arg, key, None, build_section) for item, arg in zip(value, args))


def _convert_enum(value: Any, enum_cls: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, enum_cls):
        return value
    for member in enum_cls:
        if member.value == value and type(member.value) is type(value):
            return member
    raise TypeMismatch


def _to_int(value: Any) -> int:
    # bool is a subclass of int; `steps: true` is a mistake, not 1. An Integral is also numpy's
    # int64 (a sweep's `np.arange`), kept as a Python int so the config saves as YAML.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise TypeMismatch


def _to_float(value: Any) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    # YAML 1.1 reads `1e-4` (no dot) as a string; accept any string that is a float literal.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise TypeMismatch from None
    raise TypeMismatch


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeMismatch


def _to_str(value: Any) -> str:
    # Strict: `name: 001` is the int 1 to YAML; silently writing "1" would hide that.
    if isinstance(value, str):
        return value
    raise TypeMismatch


def _to_path(value: Any) -> Path:
    if isinstance(value, (str, Path)) and str(value):
        return Path(value)
    raise TypeMismatch


_SCALAR_CONVERTERS: Mapping[Any, Callable[[Any], Any]] = types.MappingProxyType(
    {int: _to_int, float: _to_float, bool: _to_bool, str: _to_str, Path: _to_path}
)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _show(value: Any) -> str:
    """repr() of a value, cut short so an error stays one readable line."""
    text = " ".join(repr(value).split())  # a DataFrame's repr spans lines
    return text if len(text) <= 80 else text[:77] + "..."
