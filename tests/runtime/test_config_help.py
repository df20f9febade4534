"""A command's --help lists every config key with its default and the meaning its source gives."""

import dataclasses

import pytest

from rlhfkit.cli_commands import COMMANDS, load_object
from rlhfkit.runtime.config_help import field_docs, keys_help

COMMAND_OF = {command.config: name for name, command in COMMANDS.items()}


@dataclasses.dataclass(frozen=True)
class _Base:
    steps: int = 3
    """How many steps.

    A second paragraph."""
    silent: bool = False
    rate: float = 0.5
    """Base's rate."""


@dataclasses.dataclass(frozen=True)
class _Child(_Base):
    rate: float = 0.25
    """Child's rate."""
    name: str = ""
    """A name."""
    separator: str = "\n"
    """Between steps."""
    word: str = "null"
    """A word YAML would read as another value."""


def test_field_docs_read_the_string_under_each_field_and_a_subclass_replaces_its_base():
    docs = field_docs(_Child)
    assert docs == {
        "steps": "How many steps. A second paragraph.",
        "rate": "Child's rate.",
        "name": "A name.",
        "separator": "Between steps.",
        "word": "A word YAML would read as another value.",
    }  # `silent` has no docstring: absent, not the next field's text


def test_keys_help_shows_each_default_as_it_is_written_on_the_command_line():
    text = keys_help(_Child, {}, width=60)
    assert "  steps = 3\n      How many steps. A second paragraph." in text
    assert "  silent = false\n" in text and '  name = ""\n      A name.' in text
    assert "  rate = 0.25\n      Child's rate." in text
    assert '  separator = "\\n"\n' in text and '  word = "null"\n' in text  # quoted to read back


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_key_of_every_command_is_listed_with_a_meaning(name):
    config = load_object(COMMANDS[name].config)
    lines = keys_help(config, COMMAND_OF, width=80).splitlines()
    heads = {
        line.strip(): i
        for i, line in enumerate(lines)
        if line.startswith("  ") and not line.startswith("   ")
    }
    for field in dataclasses.fields(config):
        head = next((h for h in heads if h.split(" = ")[0].split(".")[0] == field.name), None)
        assert head is not None, f"{name}: {field.name} not listed"
        following = lines[heads[head] + 1] if heads[head] + 1 < len(lines) else ""
        assert following.startswith("      ") and following.strip(), (
            f"{name}: {head} has no meaning"
        )


def test_a_section_that_is_another_commands_config_names_it_and_the_defaults_it_changes():
    text = keys_help(load_object(COMMANDS["pipeline"].config), COMMAND_OF, width=1000)
    sft = text.split("  sft.KEY\n", 1)[1].split("\n")[0]
    assert "The keys of `rlhfkit sft` (its --help lists them)" in sft
    assert "max_steps=600" in sft and "lr=0.002" in sft and "batch_size=48" in sft
    assert "seed=" not in sft  # unchanged defaults are not repeated
    assert "  data.sft_rows_per_task = 6000\n" in text  # a section of its own is expanded


def test_the_heading_wraps_to_the_width_as_the_entries_do():
    """COLUMNS=40: the line above the keys is wrapped like their meanings, not one 95-column
    line."""
    lines = keys_help(_Child, {}, width=40).splitlines()
    assert lines[0].startswith("config keys (key=value")
    assert all(len(line) <= 40 for line in lines), [line for line in lines if len(line) > 40]
