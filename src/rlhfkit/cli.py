"""`rlhfkit`: parse, build, call. Every user error is one line on stderr and exit status 2.

Every command with a config is one row of `COMMANDS`: its help, its config class, the function
that runs it and what it prints after. Classes and functions are named as strings and imported
only when the command runs, so `rlhfkit --help` does not import torch.
"""

import argparse
import dataclasses
import importlib
import json
import os
import random
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rlhfkit.cli_label import add_label_parser, run_label
from rlhfkit.cli_models import add_models_parser, run_models
from rlhfkit.errors import RlhfkitError, Terminated


def _print_model_saved(cfg, run, result) -> None:
    print(f"model saved to {result.model_dir}")


def _print_reward_accuracy(cfg, run, result) -> None:
    if result.eval_accuracy:
        print(f"held-out accuracy: {result.eval_accuracy[-1][1]:.4f}")
    _print_model_saved(cfg, run, result)


def _print_preference_accuracy(cfg, run, result) -> None:
    if result.evals:
        print(f"held-out preference accuracy: {result.evals[-1][1]['accuracy']:.4f}")
    _print_model_saved(cfg, run, result)


def _print_policy_eval(cfg, run, result) -> None:
    held_out = cfg.task or cfg.eval_data or "held-out prompts"
    for step, metrics in result.evals[:1] + result.evals[1:][-1:]:  # the start and the end
        when = "at the start" if step == 0 else f"after step {step}"
        print(f"held-out {held_out} {when}: {metrics}")
    _print_model_saved(cfg, run, result)


def _print_rounds(cfg, run, result) -> None:
    for summary in result.rounds:
        before, after = summary["accuracy_before"], summary["accuracy_after"]
        gold, reward = summary["eval_gold_end"], summary.get("eval_reward_end")
        held_out = f"gold {gold}" if gold is not None else f"held-out reward {reward}"
        print(
            f"round {summary['round']}: {held_out}, "
            f"reward-model accuracy on the new policy {before:.3f} -> {after:.3f}"
        )
    _print_model_saved(cfg, run, result)


def _print_report(cfg, run, result) -> None:
    print(json.dumps(result.report, indent=2))
    print(f"written to {run.root}")


def _print_candidates(cfg, run, result) -> None:
    print(
        f"{result.rows} prompts with {cfg.k} responses each in {result.path} "
        f"({result.written} written by this run)"
    )


def _print_eval_table(cfg, run, result) -> None:
    from rich.console import Console

    from rlhfkit.eval.tables import metric_table, rich_table

    columns, rows = metric_table(result["models"])
    short = [c if c == "metric" else "/".join(Path(c).parts[-2:]) for c in columns]
    console = Console()
    task = cfg.task or Path(cfg.prompts).name
    title = f"{task}: win rates against {cfg.baseline or '-'} judged by {cfg.judge}"
    console.print(rich_table(title, short, rows))
    if "reward_model" in result:
        rm = result["reward_model"]
        console.print(
            f"reward model on {rm['heldout_pairs']}: accuracy {rm['accuracy']:.1%} "
            f"[{rm['accuracy_low']:.1%}, {rm['accuracy_high']:.1%}] "
            f"over {rm['pairs']} pairs"
        )
    print(f"written to {run.root / 'eval.json'}")


@dataclasses.dataclass(frozen=True)
class Command:
    """One `rlhfkit NAME` command that reads a config."""

    help: str
    config: str
    """Its config class, "module:Class"."""
    run: str
    """The function that runs it, "module:function": `f(cfg, run_dir)`, plus `resume=` when
    `resumable`; without `run_dir`, `f(cfg)`."""
    report: Callable[[Any, Any, Any], None] | None = None
    """Prints the outcome: (config, run directory, the run function's result)."""
    needs: tuple[str, ...] = ()
    """Config keys that must be set (paths), checked before the run directory is made."""
    resumable: bool = True
    """Takes --resume; otherwise --resume is refused (a data-making recipe or a measurement)."""
    resume_needs_checkpoint: bool = True
    """--resume needs a checkpoint in the run directory (false where sub-runs keep their own)."""
    run_dir: bool = True
    """Takes --name, --runs-dir, --resume and --overwrite (the pipeline names its run in its
    config instead)."""
    trains: bool = True
    """Trains a model, so takes --force-lr (its learning rates are checked)."""
    check_keys: str = ""
    """"module:function" that checks the config's sections as a run fills them (a filled key
    set by the user is refused), before --print-config prints it; empty = none."""
    example: str = "lr=3e-4"
    """An override its --help shows: a key of its own config."""
    torchrun: bool = False
    """Runs data-parallel under torchrun, one process per device (docs/scaling.md)."""
    not_under_torchrun: str = ""
    """For a command without `torchrun`: why it is refused under torchrun (empty: not yet)."""


COMMANDS: dict[str, Command] = {
    "sft": Command(
        "supervised fine-tuning",
        config="rlhfkit.train.sft:SFTConfig",
        run="rlhfkit.train.sft:train_sft",
        report=_print_model_saved,
        needs=("model", "train_data"),
        torchrun=True,
    ),
    "rm": Command(
        "reward-model training (pairs, rankings, steps)",
        config="rlhfkit.train.reward:RewardConfig",
        run="rlhfkit.train.reward:train_reward_model",
        report=_print_reward_accuracy,
        needs=("model", "train_data"),
        torchrun=True,
    ),
    "dpo": Command(
        "DPO on preference pairs or rankings (sigmoid, conservative, IPO, Plackett-Luce)",
        config="rlhfkit.train.dpo:DPOConfig",
        run="rlhfkit.train.dpo:train_dpo",
        report=_print_preference_accuracy,
        needs=("model", "train_data"),
        torchrun=True,
    ),
    "online-dpo": Command(
        "online, iterative or hybrid DPO: the policy's samples labelled during training, "
        "on a budget",
        config="rlhfkit.train.online_dpo:OnlineDPOConfig",
        run="rlhfkit.train.online_dpo:train_online_dpo",
        report=_print_policy_eval,
        needs=("model",),
        torchrun=True,
    ),
    "ppo": Command(
        "PPO against a reward model: actor, critic, reference, reward; GAE, KL penalty",
        config="rlhfkit.train.ppo:PPOConfig",
        run="rlhfkit.train.ppo:train_ppo",
        report=_print_policy_eval,
        needs=("model",),
        torchrun=True,
    ),
    "grpo": Command(
        "GRPO: group-relative policy optimisation (outcome or process rewards)",
        config="rlhfkit.train.grpo:GRPOConfig",
        run="rlhfkit.train.grpo:train_grpo",
        report=_print_policy_eval,
        needs=("model",),
        torchrun=True,
    ),
    "rloo": Command(
        "RLOO: leave-one-out baseline over G samples, KL penalty in the reward",
        config="rlhfkit.train.rloo:RLOOConfig",
        run="rlhfkit.train.rloo:train_rloo",
        report=_print_policy_eval,
        needs=("model",),
        torchrun=True,
    ),
    "iterative-grpo": Command(
        "rounds of GRPO, each followed by fresh rankings and a retrained reward model",
        config="rlhfkit.train.iterative_grpo:IterativeGRPOConfig",
        run="rlhfkit.train.iterative_grpo:train_iterative_grpo",
        # its sub-runs checkpoint themselves: it resumes from wherever a round stopped
        report=_print_rounds,
        needs=("model",),
        resume_needs_checkpoint=False,
        torchrun=True,
        check_keys="rlhfkit.train.iterative_config:check_round_keys",
        example="grpo.lr=1e-4",
    ),
    "raft": Command(
        "RAFT: fine-tune on the best of K samples (or online RFT: +1 / -1 weighted samples)",
        config="rlhfkit.train.raft:RAFTConfig",
        run="rlhfkit.train.raft:train_raft",
        report=_print_policy_eval,
        needs=("model",),
        torchrun=True,
    ),
    "judge": Command(
        "RLAIF: train or take an AI judge, label pairs in both orders, report agreement with gold",
        config="rlhfkit.train.rlaif:JudgeConfig",
        run="rlhfkit.train.rlaif:run_judge",
        report=_print_report,
        resumable=False,
        example="sft.lr=1e-4",
        check_keys="rlhfkit.train.rlaif:check_sft_keys",
    ),
    "critique": Command(
        "Constitutional AI: critique and revise own replies; SFT rows and judged preference rows",
        config="rlhfkit.train.constitutional:CritiqueConfig",
        run="rlhfkit.train.constitutional:run_critique",
        report=_print_report,
        resumable=False,
        example="num_prompts=100",
        trains=False,
    ),
    "eval": Command(
        "checkpoints on held-out prompts: gold score, win rate vs a baseline (95% CI), KL, "
        "pass@k, reward-hacking signs",
        config="rlhfkit.eval.run_eval:EvalConfig",
        run="rlhfkit.eval.run_eval:run_eval",
        report=_print_eval_table,
        resumable=False,
        example="num_prompts=100",
        trains=False,
    ),
    "sample": Command(
        "sample K responses per prompt from a policy into candidates.jsonl, for people to rank",
        config="rlhfkit.labelling.sample:SampleConfig",
        run="rlhfkit.labelling.sample:run_sample",
        report=_print_candidates,
        needs=("model",),
        # no checkpoints: --resume continues after the last complete row of candidates.jsonl
        resume_needs_checkpoint=False,
        example="num_prompts=100",
        trains=False,
    ),
    "pipeline": Command(
        "the main job: tiny model, SFT, simulated rankings, reward model, PPO, GRPO, DPO, RAFT, "
        "table",
        config="rlhfkit.pipeline_config:PipelineConfig",
        run="rlhfkit.pipeline:run_pipeline",
        run_dir=False,
        torchrun=True,
        example="sft.max_steps=100",
        check_keys="rlhfkit.pipeline:check_stage_keys",
    ),
    "frontier": Command(
        "the reward-KL frontier on a pretrained model: SFT, rankings, reward model, PPO, GRPO, "
        "DPO at several betas; every checkpoint evaluated",
        config="rlhfkit.train.frontier_config:FrontierConfig",
        run="rlhfkit.train.frontier:run_frontier",
        run_dir=False,
        not_under_torchrun=(
            "its rankings and the evaluation of every checkpoint are not yet split between "
            "the ranks or run on rank 0"
        ),
        example="dpo_betas=[0.1,0.5]",
        check_keys="rlhfkit.train.frontier:check_stage_keys",
    ),
}


def _load(path: str):
    """The object a "module:name" string names, imported now."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _quiet_libraries() -> None:
    """Our own progress bars and messages replace the libraries' per-file ones."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfkit", description="Train language models from human feedback."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        # argparse %-formats a help string (not a description): "95% CI" must reach it as "95%% CI"
        p = sub.add_parser(name, help=command.help.replace("%", "%%"), description=command.help)
        p.add_argument("--config", help="YAML config file")
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
    tasks.add_argument("--out", default="data", help="output directory for export")
    tasks.add_argument("--rows", type=int, default=1000, help="rows per exported file")
    tasks.add_argument("--seed", type=int, default=0)
    add_label_parser(sub)
    add_models_parser(sub)
    parser.commands = sub.choices  # each command's parser, whose usage an error shows
    return parser


def _run_in_dir(args, command: Command, cfg) -> None:
    """Lock and open the run directory, save (or, on resume, check) the config, run, print the
    outcome. What a failed run leaves behind, and when a replaced run is deleted, is
    `open_run`'s rule (runtime/rundir.py)."""
    from rlhfkit.runtime.config import save_config
    from rlhfkit.runtime.distributed import broadcast_from_main, current_ranks
    from rlhfkit.runtime.rundir import RunDir, open_run, resumed_with_config, run_root

    resume = args.resume or args.resume_with_changes
    if resume and not command.resumable:
        raise RlhfkitError(f"rlhfkit {args.command} does not resume: run it again with --overwrite")
    if command.needs and not all(getattr(cfg, key) for key in command.needs):
        paths = " and ".join(f"{key}=PATH" for key in command.needs)
        raise RlhfkitError(f"rlhfkit {args.command} needs {paths}")
    root = run_root(Path(args.runs_dir), args.name)
    run_fn = _load(command.run)
    ranks = current_ranks()
    if not ranks.is_main:  # under torchrun rank 0 holds the run directory; the others use it
        if broadcast_from_main(None, ranks) is not None:
            raise SystemExit(2)  # rank 0 could not open it, and says why
        run = RunDir(root)
        run_fn(cfg, run, resume=resume) if command.resumable else run_fn(cfg, run)
        return
    ready = False
    try:
        with open_run(
            root,
            resume=resume,
            overwrite=args.overwrite,
            resume_needs_checkpoint=command.resume_needs_checkpoint,
            resumable=command.resumable,
        ) as (run, lock):
            if lock.notice:
                print(lock.notice, file=sys.stderr)
            with ExitStack() as config_kept:
                if resume:  # a change the run then refuses is undone (rundir.py)
                    config_kept.enter_context(
                        resumed_with_config(run, cfg, allow_changes=args.resume_with_changes)
                    )
                else:
                    save_config(cfg, run.config_path)
                ready = broadcast_from_main(None, ranks) is None
                result = run_fn(cfg, run, resume=resume) if command.resumable else run_fn(cfg, run)
    except BaseException as error:
        if not ready:  # the other ranks wait for the run directory: tell them it failed
            broadcast_from_main(str(error) or type(error).__name__, ranks)
        raise
    command.report(cfg, run, result)


def _tasks(args) -> None:
    from rlhfkit.data.loading import write_jsonl
    from rlhfkit.tasks.registry import TASKS, get_task

    if args.action == "list":
        width = max(len(name) for name in TASKS)
        for name, cls in sorted(TASKS.items()):
            print(f"{name:{width}s} {cls.description}")
        return
    if not args.task:
        raise RlhfkitError("rlhfkit tasks export needs a task name")
    if args.rows < 1:
        raise RlhfkitError(f"--rows must be at least 1, got {args.rows}")
    task, rng, out = get_task(args.task), random.Random(args.seed), Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file of that name, a folder that cannot be made
        raise RlhfkitError(f"--out {out}: cannot write there ({error.strerror})") from None
    sft = [dataclasses.asdict(x) for x in task.sft_examples(args.rows, rng)]
    prompts = [
        {"prompt": p.prompt, "answer": p.answer, **p.metadata} for p in task.prompts(args.rows, rng)
    ]
    print(f"wrote {write_jsonl(out / f'{args.task}_sft.jsonl', sft)}")
    print(f"wrote {write_jsonl(out / f'{args.task}_prompts.jsonl', prompts)}")
    if hasattr(task, "step_examples"):
        steps = [dataclasses.asdict(x) for x in task.step_examples(args.rows, rng)]
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
    args = _parse(argv)
    if _torchrun_started(os.environ if env is None else env):
        return _run_under_torchrun(args, os.environ if env is None else env)
    if args.command == "label":  # needs neither torch nor transformers: starts at once
        return run_label(args)
    _quiet_libraries()
    if args.command == "tasks":
        return _tasks(args)
    if args.command == "models":
        return run_models(args)
    _run_command(args, COMMANDS[args.command])


def _torchrun_started(env) -> bool:
    return "WORLD_SIZE" in env


def _run_under_torchrun(args, env) -> None:
    """One rank of a torchrun job: start the process group, run the command, close it. Only
    rank 0 prints; errors come from every rank."""
    from rlhfkit.runtime.distributed import (
        close_distributed,
        init_distributed,
        launch_from_env,
        wait_for_every_rank,
    )

    command = COMMANDS.get(args.command)
    if command is None or not command.torchrun:
        supported = ", ".join(name for name, c in COMMANDS.items() if c.torchrun)
        reason = (
            f" ({command.not_under_torchrun})" if command and command.not_under_torchrun else ""
        )
        raise RlhfkitError(
            f"rlhfkit {args.command} does not run under torchrun yet{reason}; commands that do: "
            f"{supported}"
        )
    launch = launch_from_env(env)
    init_distributed(launch)
    quiet = launch.rank != 0 and open(os.devnull, "w")
    try:
        if quiet:
            sys.stdout = quiet
        _quiet_libraries()
        _run_command(args, command)
        wait_for_every_rank()
    finally:
        if quiet:
            sys.stdout = sys.__stdout__
            quiet.close()
        close_distributed()


def _run_command(args, command: Command) -> None:
    from rlhfkit.runtime.config import config_to_dict, load_config

    # --force-lr is the config key force_lr: every trainer (and job) checks its rates itself
    forced = getattr(args, "force_lr", False)
    overrides = [*args.overrides, "force_lr=true"] if forced else args.overrides
    cfg = load_config(_load(command.config), args.config, overrides)
    if command.check_keys:
        _load(command.check_keys)(cfg)
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return
    if command.run_dir:
        _run_in_dir(args, command, cfg)
    else:
        _load(command.run)(cfg)


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
