"""`rlhfkit`: parse, build, call. Every user error is one line on stderr and exit status 2.

Every command with a config is one row of `COMMANDS` (cli_commands.py); `tasks`, `label` and
`models` take their own arguments.
"""

import argparse
import dataclasses
import json
import logging
import os
import random
import re
import shlex
import signal
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from rlhfkit.cli_commands import COMMANDS, Command, check_command_config, load_object
from rlhfkit.cli_label import add_label_parser, run_label
from rlhfkit.cli_models import add_models_parser, run_models
from rlhfkit.errors import RlhfkitError, Terminated
from rlhfkit.runner import silence_libraries
from rlhfkit.runtime.logs import console_messages
from rlhfkit.runtime.provenance import started_by

log = logging.getLogger(__name__)


class _Once(argparse.Action):
    """An option given at most once: argparse keeps the last of two and drops the first."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        earlier = getattr(namespace, self.dest)
        if earlier is not None:
            parser.error(
                f"{option_string} given twice ({earlier}, then {values}): one config file per run; "
                "give the other's keys as key=value overrides"
            )
        setattr(namespace, self.dest, values)


class _HelpWithKeys(argparse.Action):
    """A command's --help: its options, then its config keys (importing its config class, and so
    torch, only when asked: `rlhfkit --help` stays fast)."""

    def __init__(self, option_strings, dest, config: str, trains: bool, help: str) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS)
        self.config, self.trains, self.help = config, trains, help

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from rlhfkit.runtime.config_help import keys_help

        command_of = {c.config: name for name, c in COMMANDS.items()}  # "module:Class" -> name
        parser.print_help()
        omit = () if self.trains else ("force_lr",)  # refused where nothing trains
        print(f"\n{keys_help(load_object(self.config), command_of, omit=omit)}")
        parser.exit()


EXPORT_OPTIONS = (
    ("--out", str, "data", "export: the directory to write the task's files to"),
    ("--rows", int, 1000, "export: rows per file"),
    ("--seed", int, 0, "export: seeds the task's generator; the same seed writes the same rows"),
)
"""`rlhfkit tasks export`'s options: flag, type, default, help."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfkit", description="Train language models from human feedback."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        # argparse %-formats a help string (not a description): "95% CI" must reach it as "95%% CI"
        p = sub.add_parser(
            name, help=command.help.replace("%", "%%"), description=command.help, add_help=False
        )
        p.add_argument(
            "-h",
            "--help",
            action=_HelpWithKeys,
            config=command.config,
            trains=command.trains,
            help="show this help, then every config key with its default and meaning, and exit",
        )
        p.add_argument("--config", action=_Once, help="YAML config file")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help=f"config overrides, e.g. {command.example}",
        )
        if command.run_dir:
            p.add_argument("--name", default=name, help="run name (default: the command)")
            p.add_argument(
                "--runs-dir", default="runs", help="where runs are written (default: runs)"
            )
            # a command that does not resume still takes the flags, to say so in one line, but
            # does not offer them in its --help
            p.add_argument(
                "--resume",
                action="store_true",
                help="continue the run from its last checkpoint"
                if command.resumable
                else argparse.SUPPRESS,
            )
            p.add_argument(
                "--resume-with-changes",
                action="store_true",
                help="resume although the config differs from the run's config.yaml; the new "
                "values are saved and the change recorded there (implies --resume)"
                if command.resumable
                else argparse.SUPPRESS,
            )
            p.add_argument(
                "--overwrite",
                action="store_true",
                help="replace an existing run of that name (kept until the new run has saved "
                "progress)",
            )
        p.add_argument(
            "--print-config", action="store_true", help="print the resolved config and exit"
        )
        if command.trains:
            p.add_argument(
                "--force-lr",
                action="store_true",
                help="train a pretrained model with an lr far above its safe range: sets "
                "force_lr=true (docs/pretrained-models.md)",
            )
    tasks = sub.add_parser("tasks", help="list the built-in tasks, or export one's data")
    tasks.add_argument("action", nargs="?", choices=("list", "export"), default="list")
    tasks.add_argument("task", nargs="?", help="task to export")
    for flag, kind, default, what in EXPORT_OPTIONS:
        # None when not given, so that `tasks list` can refuse it
        tasks.add_argument(flag, type=kind, default=None, help=f"{what} (default {default})")
    add_label_parser(sub)
    add_models_parser(sub)
    parser.commands = sub.choices  # each command's parser, whose usage an error shows
    return parser


def _run_in_dir(args, command: Command, cfg) -> None:
    from rlhfkit.runner import run_in_dir
    from rlhfkit.runtime.rundir import run_root

    run, result = run_in_dir(
        args.command,
        command,
        cfg,
        run_root(Path(args.runs_dir), args.name),
        resume=args.resume or args.resume_with_changes,
        allow_changes=args.resume_with_changes,
        overwrite=args.overwrite,
    )
    if run is not None:
        command.report(cfg, run, result)


def _tasks(args) -> None:
    from rlhfkit.data.loading import write_jsonl
    from rlhfkit.tasks.base import HasStepExamples
    from rlhfkit.tasks.registry import TASKS, get_task

    given = {flag: getattr(args, flag[2:]) for flag, *_ in EXPORT_OPTIONS}
    if args.action == "list":
        if args.task:  # was ignored: `tasks list arith` listed every task
            raise RlhfkitError(
                f"rlhfkit tasks list takes no task name (got {args.task}); "
                f"rlhfkit tasks export {args.task} writes its data"
            )
        for flag, value in given.items():
            if value is not None:
                raise RlhfkitError(f"{flag} is read by rlhfkit tasks export only, not by list")
        width = max(len(name) for name in TASKS)
        for name, cls in sorted(TASKS.items()):
            print(f"{name:{width}s} {cls.description}")
        return
    if not args.task:
        raise RlhfkitError("rlhfkit tasks export needs a task name")
    out, rows, seed = (
        default if given[flag] is None else given[flag] for flag, _, default, _ in EXPORT_OPTIONS
    )
    if rows < 1:
        raise RlhfkitError(f"--rows must be at least 1, got {rows}")
    task, rng, out = get_task(args.task), random.Random(seed), Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file of that name, a folder that cannot be made
        raise RlhfkitError(f"--out {out}: cannot write there ({error.strerror})") from None
    sft = [dataclasses.asdict(x) for x in task.sft_examples(rows, rng)]
    prompts = [
        {"prompt": p.prompt, "answer": p.answer, **p.metadata} for p in task.prompts(rows, rng)
    ]
    print(f"wrote {write_jsonl(out / f'{args.task}_sft.jsonl', sft)}")
    print(f"wrote {write_jsonl(out / f'{args.task}_prompts.jsonl', prompts)}")
    if isinstance(task, HasStepExamples):
        steps = [dataclasses.asdict(x) for x in task.step_examples(rows, rng)]
        print(f"wrote {write_jsonl(out / f'{args.task}_steps.jsonl', steps)}")


def _parse(argv: list[str]) -> argparse.Namespace:
    """Overrides may stand before and after options (`lr=1 --name x steps=3`)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    command = parser.commands.get(getattr(args, "command", None), parser)
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if not hasattr(args, "overrides"):
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run one command line; `env` (default: the process environment) says whether torchrun
    started this process."""
    environ = os.environ if env is None else env
    if _torchrun_started(environ) and environ.get("RANK", "0") != "0":
        # every rank parses the same command line: rank 0 alone prints a usage error (or --help)
        with open(os.devnull, "w") as null, redirect_stdout(null), redirect_stderr(null):
            args = _parse(argv)
    else:
        args = _parse(argv)
    args.argv = list(map(str, argv))
    if _torchrun_started(environ):
        return _run_under_torchrun(args, environ)
    if args.command == "label":  # needs neither torch nor transformers: starts at once
        return run_label(args)
    silence_libraries()
    with console_messages(program=True):
        if args.command == "tasks":
            return _tasks(args)
        if args.command == "models":
            return run_models(args)
        _run_command(args, COMMANDS[args.command])


def _torchrun_started(env) -> bool:
    return "WORLD_SIZE" in env


def _run_under_torchrun(args, env) -> None:
    """One rank of a torchrun job: start the process group, run the command, close it. Only
    rank 0 prints; an error every rank shares is printed once, by rank 0 (`rank_errors`)."""
    from rlhfkit.runtime.distributed import (
        close_distributed,
        init_distributed,
        launch_from_env,
        wait_for_every_rank,
    )
    from rlhfkit.runtime.lost_rank import lost_a_rank, own_stop_after_a_peer, say_stopped
    from rlhfkit.runtime.rank_errors import error_kind, prints_error

    launch = launch_from_env(env)
    command = COMMANDS.get(args.command)
    if command is None or not command.torchrun:
        if launch.rank != 0:
            sys.exit(2)  # every rank is refused alike: rank 0 says why
        supported = ", ".join(name for name, c in COMMANDS.items() if c.torchrun)
        reason = (
            f" ({command.not_under_torchrun})" if command and command.not_under_torchrun else ""
        )
        raise RlhfkitError(
            f"rlhfkit {args.command} does not run under torchrun yet{reason}; commands that do: "
            f"{supported}"
        )
    init_distributed(launch)
    quiet = launch.rank != 0 and open(os.devnull, "w")
    try:
        if quiet:
            sys.stdout = quiet
        silence_libraries()
        with console_messages(quiet=launch.rank != 0, program=True):
            _run_command(args, command)
        wait_for_every_rank()
    except RlhfkitError as error:
        try:
            prints = prints_error(launch.rank, error_kind(error), env)
        except (KeyboardInterrupt, Terminated):
            prints = False  # torchrun stops the job: the rank that failed first reports
        if not prints:
            sys.exit(getattr(error, "exit_status", 2))  # rank 0 printed one of its kind
        if launch.rank != 0:
            print(f"error (rank {launch.rank}): {error}", file=sys.stderr)
            sys.exit(getattr(error, "exit_status", 2))
        raise
    except Exception as error:
        if not lost_a_rank(error):
            raise
        stop = own_stop_after_a_peer(error)  # torchrun stopping the job, seen as a peer gone
        if stop is not None:
            if launch.rank != 0:  # rank 0 says so
                sys.exit(130 if isinstance(stop, KeyboardInterrupt) else 143)
            raise stop from None
        # another process of the job died (killed, out of memory): this rank's collective
        # failed. One line instead of the collective's traceback; torchrun stops the others.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # its SIGTERM: no traceback at exit
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". This is typically")[0]
        print(
            f"error (rank {launch.rank}): another process of the job stopped ({detail[:160]}); "
            "the job stops. An error that process printed says why; a process that was killed "
            "prints none, and the job continues from its last checkpoint with --resume",
            file=sys.stderr,
        )
        sys.exit(1)
    except (KeyboardInterrupt, Terminated) as stop:
        if launch.world_size > 1:
            say_stopped(env)  # a peer losing this process then knows the job is stopping
        if launch.rank != 0:  # torchrun stops every rank alike: rank 0 says so
            sys.exit(130 if isinstance(stop, KeyboardInterrupt) else 143)
        raise
    finally:
        if quiet:
            sys.stdout = sys.__stdout__
            quiet.close()
        close_distributed()


def _config_file(args, command: Command) -> str | None:
    """The --config file; when resuming a run of this command without one, the run's own
    config.yaml, so that it resumes with the settings it started with (the keys given on the
    command line then change them, which --resume refuses and --resume-with-changes records)."""
    resuming = command.run_dir and command.resumable and (args.resume or args.resume_with_changes)
    if args.config is not None or not resuming:
        return args.config
    from rlhfkit.runner import check_made_by
    from rlhfkit.runtime.config import load_config
    from rlhfkit.runtime.rundir import require_run_dir, run_root

    root = run_root(Path(args.runs_dir), args.name)
    require_run_dir(root)
    check_made_by(root, args.command)  # before its config: another command's keys
    saved = root / "config.yaml"
    if not saved.is_file():
        return None  # opening the run says why it cannot resume
    try:  # alone first, so that a bad key=value is not taken for a damaged file
        load_config(load_object(command.config), saved)
    except RlhfkitError as error:
        raise RlhfkitError(f"--resume cannot read the run's saved config: {error}") from None
    if not args.overrides:
        log.info(f"resuming with the settings of {saved}")
    return str(saved)


def _run_command(args, command: Command) -> None:
    from rlhfkit.runtime.config import config_to_dict, given_keys, load_config

    # --force-lr is the config key force_lr: every trainer (and job) checks its rates itself
    forced = getattr(args, "force_lr", False)
    overrides = [*args.overrides, "force_lr=true"] if forced else args.overrides
    config_file = _config_file(args, command)
    cfg = load_config(load_object(command.config), config_file, overrides)
    check_command_config(args.command, command, cfg, given_keys(config_file, overrides))
    if args.print_config:
        from rlhfkit.train.config_checks import check_trainer_config

        print(json.dumps(config_to_dict(cfg), indent=2))
        # what the run would refuse, refused here too, after the printout: a config that is not
        # complete yet (`rlhfkit ppo --print-config`, with no reward) still shows its defaults
        check_trainer_config(cfg)
        return
    with started_by(shlex.join(["rlhfkit", *args.argv])):  # recorded in starts.jsonl
        if command.run_dir:
            _run_in_dir(args, command, cfg)
        else:
            load_object(command.run)(cfg)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    # SIGTERM stops a run as Ctrl-C does (errors.Terminated), instead of killing it mid-step
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        run(sys.argv[1:])
    except RlhfkitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_status", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        sys.exit(143)
    except BrokenPipeError:
        # the reader of the output left (`rlhfkit grpo --help | head`): stop without a
        # traceback, and without another one when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        # the run is over: a SIGTERM during the interpreter's teardown ends the process as
        # SIGTERM does, not with a Terminated traceback from an exit handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
