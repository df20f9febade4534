"""Load, override, save and list the keys of frozen dataclass configs.

A config is a frozen dataclass whose fields all have defaults; a field may itself be a dataclass
(a section, e.g. `sft: SFTConfig`). `load_config` reads an optional YAML file, applies `key=value`
overrides (dotted keys for sections: `sft.lr=3e-4`), checks every value against the field
annotations and every number against its bound (`config_bounds`: `max_steps` >= 1, `lr` > 0, every
float finite). Every mistake is a one-line `ConfigError` naming the key.

A job that runs trainers as its parts (the pipeline, iterative GRPO) holds each part's config as a
section and fills some of its keys itself (`fill_section`); its class names them in a `FILLED`
class attribute (section -> keys). A user's setting of a filled key is refused by name, even at
its default value (`given_keys` says which keys a file and the overrides set), and a saved or
printed job config leaves the filled keys out, so that loading it back sets none of them.

Config classes must be defined at module level: field annotations are resolved with
`typing.get_type_hints`, which cannot see names local to a function.
"""

import dataclasses
import enum
import json
import typing
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from rlhfkit.errors import ConfigError
from rlhfkit.runtime.config_bounds import validate
from rlhfkit.runtime.config_keys import unknown_key
from rlhfkit.runtime.config_types import convert_value, section_type

ConfigT = TypeVar("ConfigT")


def load_config(
    cls: type[ConfigT], path: str | Path | None = None, overrides: Sequence[str] = ()
) -> ConfigT:
    """Build a `cls` config from an optional YAML file and `key=value` overrides.

    Args:
        cls: a dataclass whose fields all have defaults.
        path: a YAML file holding a mapping of keys (nested mappings for sections); None for none.
        overrides: strings like `sft.lr=3e-4`, applied in order after the file. The value is
            parsed as YAML, so `true`, `1e-4`, `null` and `[1, 2]` mean what they say.

    Returns:
        The frozen config; keys not given keep their defaults.

    Raises:
        ConfigError: unknown key (with a close match suggested), wrong type, a number outside its
            bound (`config_bounds.BOUNDS`, sections included), bad override or file.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    raw = _read_yaml_mapping(Path(path)) if path is not None else {}
    for override in overrides:
        key, value, text = _parse_override(override)
        _apply_override(raw, cls, key, value, text)
    cfg = _build_section(cls, raw, "", None)
    validate(cfg)
    return cfg


def config_from_values(
    cls: type[ConfigT], values: Mapping[str, Any], path: str | Path | None = None
) -> ConfigT:
    """`load_config` with Python values in place of `key=value` strings: `values` (nested
    mappings for sections) overlays the optional YAML file at `path`, and each value is checked
    and converted as a YAML file's is (an enum from its name, a float from an int), with the
    same one-line `ConfigError` naming the key."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"config_from_values needs a dataclass type, got {cls!r}")
    raw = _read_yaml_mapping(Path(path)) if path is not None else {}
    cfg = _build_section(cls, _merged(raw, dict(values)), "", None)
    validate(cfg)
    return cfg


def given_keys(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> frozenset[str]:
    """The dotted keys a YAML file, `key=value` overrides and Python `values` (nested mappings
    for sections) set, whatever their values: `{"seed", "sft.lr"}`. Read after `load_config` or
    `config_from_values` has accepted the same input."""
    raw = _read_yaml_mapping(Path(path)) if path is not None else {}
    keys = set(dotted_items(raw)) | set(dotted_items(dict(values or {})))
    for override in overrides:
        key, value, _ = _parse_override(override)
        # `sft={lr: 1}` sets sft.lr, and names no key of its own
        keys |= set(dotted_items({key: value}))
    return frozenset(keys)


def dotted_items(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings spread into dotted keys: {"sft": {"lr": 1}} -> {"sft.lr": 1}."""
    items = {}
    for name, value in raw.items():
        dotted = _join(prefix, str(name))
        items.update(dotted_items(value, dotted) if isinstance(value, dict) else {dotted: value})
    return items


def filled_keys(cfg: Any) -> dict[str, tuple[str, ...]]:
    """The keys of each section that a job config's runs fill (its class's `FILLED`; {} for a
    config that is no job's)."""
    return dict(getattr(cfg, "FILLED", {}))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data: enums become their values, tuples lists, paths strings;
    a job config's filled keys (`FILLED`) are left out, since its runs set them.

    `load_config(type(cfg), ...)` on this data (saved as YAML) rebuilds a config equal to `cfg`
    (whose filled keys hold their sections' defaults: a job refuses other values but the filled
    ones).
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {cfg!r}")
    data = {
        field.name: plain_value(getattr(cfg, field.name))
        for field in dataclasses.fields(cfg)
        if field.init
    }
    for section, keys in filled_keys(cfg).items():
        data[section] = {key: value for key, value in data[section].items() if key not in keys}
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the config as readable YAML (fields in declaration order, lists inline)."""
    text = yaml.dump(
        config_to_dict(cfg), Dumper=_ConfigDumper, sort_keys=False, allow_unicode=False
    )  # escaped: raw U+0085 etc. read back as spaces
    Path(path).write_text(text, encoding="utf-8")


class Filled(NamedTuple):
    """A value a job writes into one key of a config section, and how to say so when refused."""

    value: Any
    source: str
    """Where the value comes from, as the error says it: "from seed=", "to the SFT model"."""
    instead: str
    """What a user sets instead: "set seed= instead"."""


def passed_on(cfg: Any, keys: Sequence[str]) -> dict[str, Filled]:
    """Fills of a section's `keys` from the job's own keys of the same names (`seed=`)."""
    return {key: Filled(getattr(cfg, key), f"from {key}=", f"set {key}= instead") for key in keys}


def fill_section(
    cfg: Any,
    section: str,
    fills: Mapping[str, Filled],
    *,
    by: str,
    given: frozenset[str] = frozenset(),
) -> Any:
    """`cfg.<section>` with the keys of `fills` set, refusing any key the user set.

    A job that runs a trainer as one of its parts (the pipeline, iterative GRPO) fills some of the
    part's keys itself: the model it starts from, its data, the job's seed. Overwriting a key the
    user set would silently drop the user's value, so a key the user gave (`given`, from
    `given_keys`) or changed from the section's default (the job config's field default, for a
    config built in Python) is refused with a one-line error naming it, unless it holds the
    value the job would fill.

    Args:
        cfg: the job's config, a dataclass holding `section` as a dataclass field with a default;
            its class's `FILLED[section]` names exactly the keys of `fills`.
        section: the field's name, e.g. "sft".
        fills: key of the section -> Filled(value, source, instead).
        by: who fills the keys, for the error ("the pipeline").
        given: the dotted keys the user's file and overrides set (`given_keys`).

    Returns:
        A copy of the section with every key of `fills` set to its value.

    Raises:
        ConfigError: "sft.seed is set by the pipeline from seed=; set seed= instead".
    """
    declared = filled_keys(cfg).get(section, ())
    if set(declared) != set(fills):  # a job's FILLED is what its saved configs leave out
        raise TypeError(
            f"{type(cfg).__name__}.FILLED[{section!r}] is {sorted(declared)}, but the keys "
            f"filled are {sorted(fills)}"
        )
    current = getattr(cfg, section)
    default = _section_default({field.name: field for field in dataclasses.fields(cfg)}[section])
    for key, fill in fills.items():
        value = getattr(current, key)
        user_set = f"{section}.{key}" in given or value != getattr(default, key)
        if user_set and value != fill.value:
            raise ConfigError(f"{section}.{key} is set by {by} {fill.source}; {fill.instead}")
    return dataclasses.replace(current, **{key: fill.value for key, fill in fills.items()})


def refuse_unread_settings(cfg: Any, choice: str, readers: Mapping[enum.Enum, tuple[str, ...]]):
    """Refuse a setting that only another value of the enum key `choice` reads (`readers`: value
    -> the keys read with it alone), when set away from its default: it would change nothing,
    silently. A key set to exactly its default cannot be told apart from one left out.

    Raises:
        ConfigError: "human_port=9000 is read by labeller=human only: leave it out with
            labeller=annotator".
    """
    current = plain_value(getattr(cfg, choice))  # a config built in Python may hold the string
    defaults = {field.name: _section_default(field) for field in dataclasses.fields(cfg)}
    for value, names in readers.items():
        for name in names:
            if value.value != current and getattr(cfg, name) != defaults[name]:
                raise ConfigError(
                    f"{name}={written(getattr(cfg, name))} is read by {choice}={value.value} "
                    f"only: leave it out with {choice}={written(current)}"
                )


def config_keys(cls: type) -> list[str]:
    """Every settable dotted key of a config class, sections expanded ("sft.lr"), in field order."""
    keys = []
    for name, annotation in _field_annotations(cls).items():
        section = section_type(annotation)
        if section is None:
            keys.append(name)
        else:
            keys.extend(f"{name}.{sub_key}" for sub_key in config_keys(section))
    return keys


def _build_section(cls: type, raw: Mapping[str, Any], prefix: str, base: Any) -> Any:
    """Build one dataclass from a mapping, overlaying `base` (the field default) when there is
    one."""
    annotations = _field_annotations(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    kwargs = {}
    for raw_name, value in raw.items():
        name = str(raw_name)
        if name not in annotations:
            raise unknown_key(prefix, name, list(annotations))
        annotation = annotations[name]
        if value is None and annotation in (str, Path) and fields[name].default == "":
            value = ""  # null unsets a text setting whose unset value is empty text
        base_value = (
            _section_default(fields[name]) if section_type(annotation) is not None else None
        )
        kwargs[name] = convert_value(
            value, annotation, _join(prefix, name), base_value, _build_section
        )
    if base is not None and isinstance(base, cls):
        return dataclasses.replace(base, **kwargs)
    missing = [
        name for name, field in fields.items() if name not in kwargs and _has_no_default(field)
    ]
    if missing:
        raise ConfigError(f"missing config key '{_join(prefix, missing[0])}' (it has no default)")
    return cls(**kwargs)


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path}: not UTF-8 text (byte {err.object[err.start]:#x} at offset "
            f"{err.start})"
        ) from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: invalid YAML: {_yaml_error_line(err)}") from None
    if data is None:  # an empty file sets nothing
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of keys to values, got a {type(data).__name__}"
        )
    return data


def _parse_override(override: str) -> tuple[str, Any, str]:
    """`key=value` as (key, the value read as YAML, the value's text as typed)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key=value")
    key, text = override.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{override}' has a malformed key")
    if not text.strip():
        raise ConfigError(
            f"override '{override}' has no value: give one (empty text is '{key}=\"\"' in a "
            f"shell; a key that may be unset takes {key}=null)"
        )
    try:
        return key, yaml.load(text, Loader=_ConfigLoader), text.strip()
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override '{override}': the value is not valid YAML: {_yaml_error_line(err)}"
        ) from None


def _apply_override(
    raw: dict[str, Any], cls: type, key: str, value: Any, text: str | None = None
) -> None:
    """Set `raw[a][b][c] = value` for `key` "a.b.c", checking each part against the config class;
    `text`: the value as typed, which a text setting keeps (`_as_typed`)."""
    parts = key.split(".")
    node, node_cls = raw, cls
    for depth, name in enumerate(parts[:-1]):
        annotations = _field_annotations(node_cls)
        prefix, dotted = ".".join(parts[:depth]), ".".join(parts[: depth + 1])
        if name not in annotations:
            raise unknown_key(prefix, name, list(annotations))
        section = section_type(annotations[name])
        if section is None:
            raise ConfigError(f"config key '{dotted}' is not a section: set it with {dotted}=VALUE")
        child = node.get(name)
        if child is None:  # absent, or `sft: null` in the file
            child = node[name] = {}
        elif not isinstance(child, dict):
            message = (
                f"config key '{dotted}': expected a section (a mapping of keys to values), "
                f"got {child!r}"
            )
            raise ConfigError(message)
        node, node_cls = child, section
    last = parts[-1]
    annotations = _field_annotations(node_cls)
    if last not in annotations:
        raise unknown_key(".".join(parts[:-1]), last, list(annotations))
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        # `sft={lr: 1}` adds to the file's sft section rather than dropping its other keys.
        node[last] = _merged(node[last], value)
    else:
        node[last] = _as_typed(annotations[last], value, text)


_TEXT_TYPES = (str, Path, str | None, Path | None)
_NULLS = ("null", "Null", "NULL", "~")


def _as_typed(annotation: Any, value: Any, text: str | None) -> Any:
    """A text or path setting given on the command line keeps the text as typed where YAML
    reads another scalar: `model=yes` names a folder `yes`, not True; `model=2024` a folder,
    not a number; `train_data=#x` a file, not a comment (None). Only `null` unsets it (to
    None, or to empty text where that is its default)."""
    if text is None or annotation not in _TEXT_TYPES:
        return value
    if isinstance(value, (bool, int, float)) or (value is None and text not in _NULLS):
        return text
    return value


def _field_annotations(cls: type) -> dict[str, Any]:
    """Resolved annotations of the fields that `__init__` takes, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls) if field.init}


def _section_default(field: dataclasses.Field) -> Any:
    """A dataclass field's default value, so that given section keys overlay it; None if none."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _has_no_default(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def plain_value(value: Any) -> Any:
    """A config value as plain YAML-able data (enums as their values, sections as mappings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain_value(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def written(value: Any) -> str:
    """A config value as YAML and the command line write it, for messages: true, null,
    [a, b], 1e-05; a string bare where YAML reads it back as itself, else quoted ("", "true")."""
    plain = plain_value(value)
    if isinstance(plain, str) and plain.isprintable() and plain == plain.strip():
        try:
            if yaml.safe_load(plain) == plain:  # reads back as itself: bare, as one types it
                return plain
        except yaml.YAMLError:
            pass
    return json.dumps(plain)  # "" or "\n" quoted (YAML reads JSON's quoting)


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    result = dict(old)
    for name, value in new.items():
        both_sections = isinstance(value, dict) and isinstance(result.get(name), dict)
        result[name] = _merged(result[name], value) if both_sections else value
    return result


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _yaml_error_line(err: yaml.YAMLError) -> str:
    """PyYAML errors span several lines; keep the problem and where it is."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return (
        f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
        if mark is not None
        else problem
    )


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader refusing a key given twice in one mapping: PyYAML keeps the last one, which
    would drop the first setting (a whole section, for `sft:` written twice) without a word;
    and the YAML 1.1 numbers that mean another number than they show: PyYAML reads
    `seed: 0123` as octal 83 and `max_steps: 1:30` as 90 (base 60)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader says "found unhashable key"
            if key in lines:
                problem = f"key {key!r} given twice (first on line {lines[key]})"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = super().construct_yaml_int(node)
        digits = node.value.replace("_", "")
        if ":" in digits or (digits.lstrip("+-").isdigit() and int(digits) != value):
            _refuse_number(node, value)  # 0x10 and 0b11 say what they are: kept
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if ":" in node.value:
            _refuse_number(node, value)
        return value


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)
_ConfigLoader.add_constructor("tag:yaml.org,2002:float", _ConfigLoader.construct_yaml_float)


def _refuse_number(node: yaml.ScalarNode, value: float) -> None:
    base = "base 60" if ":" in node.value else "octal"
    problem = (
        f"{node.value} reads as {value} in YAML 1.1 ({base}): write {value} for that number, "
        f"or '{node.value}' in quotes for text"
    )
    raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def _represent_list_inline(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


class _ConfigDumper(yaml.SafeDumper):
    """Safe YAML dumper writing lists inline (`targets: [q_proj, v_proj]`) and sections as
    blocks."""

    # A class-level copy, so the shared SafeDumper registry is left untouched.
    yaml_representers = {**yaml.SafeDumper.yaml_representers, list: _represent_list_inline}
