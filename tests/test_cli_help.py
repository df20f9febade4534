"""`rlhfkit --help` and `rlhfkit COMMAND --help` print their help and exit 0, and every row of the
command table names a config class and a run function that exist."""

import dataclasses
import subprocess
import sys

import pytest

from rlhfkit import cli
from rlhfkit.runtime.config import load_config

SUBCOMMANDS = [*cli.COMMANDS, "tasks", "label", "models"]
NO_CONFIG = ("tasks", "label", "models")  # their own arguments, no config


def help_of(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["rlhfkit", *args, "--help"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    assert not err, err
    return exit_.value.code, out


def test_top_level_help_lists_every_command(monkeypatch, capsys):
    code, out = help_of(monkeypatch, capsys)
    assert code == 0 and out.startswith("usage: rlhfkit")
    for name in SUBCOMMANDS:
        assert name in out
    assert "95% CI" in out  # the percent sign of eval's help is printed, not read as a format


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(monkeypatch, capsys, name):
    code, text = help_of(monkeypatch, capsys, name)
    out = text.split("\nconfig keys (")[0]  # the options, without the keys' meanings
    assert code == 0 and out.startswith(f"usage: rlhfkit {name}")
    assert ("--print-config" in out) == (name not in NO_CONFIG)
    if name in cli.COMMANDS:
        assert "".join(cli.COMMANDS[name].help.split()) in "".join(out.split())
    # the pipeline and the frontier name their run in their config: no run-directory options;
    # a command that does not resume (eval, judge, critique) does not offer --resume
    command = cli.COMMANDS.get(name)
    assert ("--overwrite" in out) == (command is not None and command.run_dir)
    assert ("--resume" in out) == (command is not None and command.run_dir and command.resumable)
    # a command that trains nothing takes no --force-lr; the override example is its own key
    assert ("--force-lr" in out) == (command is not None and command.trains)
    if command is not None:
        assert f"e.g. {command.example}" in out
        # then every config key with its default and meaning (tests/runtime/test_config_help.py)
        assert "\nconfig keys (key=value" in text and "\n  seed = 0\n      Seeds every" in text
        # force_lr=true is refused where nothing trains: not offered among the keys either
        assert ("\n  force_lr = false\n" in text) == command.trains


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_names_a_config_class_and_a_run_function_that_exist(name):
    command = cli.COMMANDS[name]
    config = cli.load_object(command.config)
    assert dataclasses.is_dataclass(config) and callable(cli.load_object(command.run))
    load_config(config, overrides=[command.example])  # --help's example is a key of its own
    assert not command.check_keys or callable(cli.load_object(command.check_keys))
    for key in command.needs:
        assert key in {field.name for field in dataclasses.fields(config)}
    assert (command.report is None) == (not command.run_dir)


def test_help_does_not_import_torch():
    """The table names its classes as strings: `rlhfkit --help` stays fast."""
    code = (
        "import sys; from rlhfkit.cli import run\n"
        "try:\n    run(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_an_unknown_option_shows_the_commands_usage(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rlhfkit", "sft", "--bogus"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: rlhfkit sft ")  # not rlhfkit's
    assert err.strip().endswith("rlhfkit sft: error: unrecognized arguments: --bogus")


def print_config(monkeypatch, capsys, argv) -> tuple[int, str, str]:
    """`rlhfkit ARGV --print-config`: its exit status, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["rlhfkit", *argv, "--print-config"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pipeline", "sft.model=x"], "sft.model is set by the pipeline"),
        (["frontier", "sft.model=x"], "sft.model is set by the frontier"),
        (["judge", "sft.model=x"], "sft.model is set by rlhfkit judge"),
        (["iterative-grpo", "grpo.model=x"], "grpo.model is set by iterative GRPO"),
    ],
)
def test_print_config_refuses_what_the_run_refuses(monkeypatch, capsys, argv, message):
    # it printed the config and exited 0, and the same settings were then refused by the run
    code, out, err = print_config(monkeypatch, capsys, argv)
    assert code == 2 and not out and err.startswith(f"error: {message}")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sft", "lora_alpha=32"], "lora_alpha=32 shapes LoRA's adapters"),
        (["pipeline", "sft.lora_alpha=32"], "lora_alpha=32 shapes LoRA's adapters"),
        (["frontier", "sft.lora_alpha=32"], "lora_alpha=32 shapes LoRA's adapters"),
        (["judge", "sft.lora_alpha=32"], "lora_alpha=32 shapes LoRA's adapters"),
        (["iterative-grpo", "rm.lora_alpha=32"], "lora_alpha=32 shapes LoRA's adapters"),
        (["sft", "lora_r=8", "lora_target_modules=[]"], "lora_target_modules: empty"),
        (["dpo", "lora_r=8", "lora_target_modules=[]"], "lora_target_modules: empty"),
        (["pipeline", "sft.lora_r=8", "sft.lora_target_modules=[]"], "lora_target_modules: empty"),
    ],
)
def test_print_config_refuses_the_lora_settings_the_run_refuses(monkeypatch, capsys, argv, message):
    # SFT's LoRA settings were checked by its run alone: --print-config, and the jobs that run
    # an SFT stage, took them
    code, _, err = print_config(monkeypatch, capsys, argv)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pipeline", "raft.reference_model=ref"], "reference_model=ref: this run loads no"),
        (["frontier", "grpo.beta=0", "grpo.reference_model=ref"], "reference_model=ref: this"),
        (["raft", "reference_model=ref"], "reference_model=ref: this run loads no reference"),
        (
            ["pipeline", "grpo.supervision=outcome", "grpo.reward=nofile.py:f"],
            "reward function 'nofile.py:f': no file",
        ),
        (["frontier", "ppo.reward=nofile.py:f"], "reward function 'nofile.py:f': no file"),
        (["rloo", "reward=nofile.py:f"], "reward function 'nofile.py:f': no file"),
        (["frontier", "rm.objective=process"], "rm.objective=process: the frontier trains"),
        (["iterative-grpo", "rm.objective=process"], "rm.objective=process: iterative GRPO"),
    ],
)
def test_print_config_refuses_what_a_trainer_refused_only_when_it_started(
    monkeypatch, capsys, argv, message
):
    # refused by the trainer when it loaded its models or read its data (a job's stage: after
    # the stages before it)
    code, _, err = print_config(monkeypatch, capsys, argv)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_help_read_in_part_ends_without_a_traceback():
    """`rlhfkit grpo --help | head`: the reader leaves after the first lines, while the keys
    (printed after their config class is imported) are still to come."""
    child = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit", "grpo", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout.readline().startswith(b"usage: rlhfkit grpo")
    child.stdout.close()
    _, err = child.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
