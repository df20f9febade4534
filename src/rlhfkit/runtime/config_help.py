"""The config keys a command's `--help` lists: each key, its default and its meaning.

The meanings are the attribute docstrings under each field of the config dataclasses, the same
text a reader of the source sees. Python keeps no attribute docstring at run time, so they are
read from the classes' source with `ast`."""

import ast
import dataclasses
import inspect
import shutil
import textwrap
import typing
from typing import Any

from rlhfkit.runtime.config import config_to_dict, written
from rlhfkit.runtime.config_types import section_type


def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string right under it), over the class and its
    dataclass bases; a subclass's text replaces its base's. Fields without one are absent."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source at hand (a frozen install): no meanings
            continue
        body = ast.parse(source).body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def keys_help(
    cls: type, command_of: dict[str, str], width: int | None = None, omit: tuple[str, ...] = ()
) -> str:
    """The text that follows a command's usage in its `--help`: every key of config class `cls`
    as `key = default` and its meaning, indented and wrapped. A section that is another
    command's config (the pipeline's `sft`) is one entry naming that command's `--help` and the
    defaults the section changes; `command_of` maps such classes ("module:Class", as the command
    table names them) to their command's name. `omit`: top-level keys the command refuses to
    set (`force_lr` where nothing trains), not listed."""
    width = width or min(shutil.get_terminal_size().columns, 100)
    lines = textwrap.wrap(  # as narrow as the entries below it
        "config keys (key=value on the command line, or in the --config YAML file), with "
        "their defaults:",
        width,
    )
    _describe(cls, cls(), "", command_of, width, lines, omit)  # every config has defaults
    return "\n".join(lines)


def _describe(
    cls: type,
    defaults: Any,
    prefix: str,
    command_of: dict[str, str],
    width: int,
    out: list,
    omit: tuple[str, ...] = (),
) -> None:
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init or field.name in omit:
            continue
        key, default = prefix + field.name, getattr(defaults, field.name)
        section = section_type(hints[field.name])
        command = (
            command_of.get(f"{section.__module__}:{section.__qualname__}") if section else None
        )
        if command is not None:
            changed = _changed(default, section())
            note = f"The keys of `rlhfkit {command}` (its --help lists them)"
            note += f", with these defaults here: {changed}." if changed else "."
            _entry(f"{key}.KEY", " ".join(filter(None, [docs.get(field.name), note])), width, out)
        elif section is not None:
            if field.name in docs:
                _entry(f"{key}.*", docs[field.name], width, out)
            _describe(section, default, f"{key}.", command_of, width, out)
        else:
            _entry(f"{key} = {written(default)}", docs.get(field.name, ""), width, out)


def _entry(head: str, text: str, width: int, out: list) -> None:
    out.append(f"  {head}")
    if text:
        indent = " " * 6
        out.extend(
            textwrap.wrap(
                text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
            )
        )


def _changed(section: Any, plain: Any) -> str:
    """`key=value` for each key where a section's defaults differ from its command's own."""
    ours, theirs = config_to_dict(section), config_to_dict(plain)
    return ", ".join(
        f"{key}={written(value)}" for key, value in ours.items() if theirs.get(key) != value
    )
