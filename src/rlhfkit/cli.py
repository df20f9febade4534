"""`rlhfkit`: parse, build, call. Every user error is one line on stderr and exit status 2."""

import argparse
import dataclasses
import json
import random
import shutil
import sys
from pathlib import Path

from rlhfkit.errors import RlhfkitError

COMMANDS_WITH_CONFIG = ("sft", "rm", "dpo", "online-dpo", "ppo", "grpo", "rloo", "iterative-grpo", "raft", "judge",
                        "critique", "eval", "pipeline")


def _quiet_libraries() -> None:
    """Our own progress bars and messages replace the libraries' per-file ones."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhfkit", description="Train language models from human feedback.")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"sft": "supervised fine-tuning", "rm": "reward-model training (pairs, rankings, steps)",
             "dpo": "DPO on preference pairs or rankings (sigmoid, conservative, IPO, Plackett-Luce)",
             "online-dpo": "online, iterative or hybrid DPO: the policy's samples labelled during training, on a budget",
             "ppo": "PPO against a reward model: actor, critic, reference, reward; GAE, KL penalty",
             "grpo": "GRPO: group-relative policy optimisation (outcome or process rewards)",
             "rloo": "RLOO: leave-one-out baseline over G samples, KL penalty in the reward",
             "iterative-grpo": "rounds of GRPO, each followed by fresh rankings and a retrained reward model",
             "raft": "RAFT: fine-tune on the best of K samples (or online RFT: +1 / -1 weighted samples)",
             "judge": "RLAIF: train or take an AI judge, label pairs in both orders, report agreement with gold",
             "critique": "Constitutional AI: critique and revise own replies; SFT rows and judged preference rows",
             "eval": "checkpoints on held-out prompts: gold score, win rate vs a baseline (95% CI), KL, pass@k, "
                     "reward-hacking signs",
             "pipeline": "the main job: tiny model, SFT, simulated rankings, reward model, PPO, GRPO, DPO, RAFT, table"}
    for name in COMMANDS_WITH_CONFIG:
        p = sub.add_parser(name, help=helps[name])
        p.add_argument("--config", help="YAML config file")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=3e-4")
        if name != "pipeline":
            p.add_argument("--name", default=name, help="run name (default: the command)")
            p.add_argument("--runs-dir", default="runs", help="where runs are written (default: runs)")
            p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
            p.add_argument("--overwrite", action="store_true", help="replace an existing run of that name")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    tasks = sub.add_parser("tasks", help="list the built-in tasks, or export one's data")
    tasks.add_argument("action", nargs="?", choices=("list", "export"), default="list")
    tasks.add_argument("task", nargs="?", help="task to export")
    tasks.add_argument("--out", default="data", help="output directory for export")
    tasks.add_argument("--rows", type=int, default=1000, help="rows per exported file")
    tasks.add_argument("--seed", type=int, default=0)
    return parser


def _config_class(command: str):
    if command == "sft":
        from rlhfkit.train.sft import SFTConfig
        return SFTConfig
    if command == "rm":
        from rlhfkit.train.reward import RewardConfig
        return RewardConfig
    if command == "dpo":
        from rlhfkit.train.dpo import DPOConfig
        return DPOConfig
    if command == "online-dpo":
        from rlhfkit.train.online_dpo import OnlineDPOConfig
        return OnlineDPOConfig
    if command == "grpo":
        from rlhfkit.train.grpo import GRPOConfig
        return GRPOConfig
    if command == "rloo":
        from rlhfkit.train.rloo import RLOOConfig
        return RLOOConfig
    if command == "iterative-grpo":
        from rlhfkit.train.iterative_grpo import IterativeGRPOConfig
        return IterativeGRPOConfig
    if command == "raft":
        from rlhfkit.train.raft import RAFTConfig
        return RAFTConfig
    if command == "ppo":
        from rlhfkit.train.ppo import PPOConfig
        return PPOConfig
    if command == "judge":
        from rlhfkit.train.rlaif import JudgeConfig
        return JudgeConfig
    if command == "critique":
        from rlhfkit.train.constitutional import CritiqueConfig
        return CritiqueConfig
    if command == "eval":
        from rlhfkit.eval.run_eval import EvalConfig
        return EvalConfig
    from rlhfkit.pipeline_config import PipelineConfig
    return PipelineConfig


def _run_trainer(args, cfg) -> None:
    from rlhfkit.runtime.config import save_config
    from rlhfkit.runtime.rundir import prepare_run_dir

    if args.command in ("sft", "rm", "dpo") and not (cfg.model and cfg.train_data):
        raise RlhfkitError(f"rlhfkit {args.command} needs model=PATH and train_data=PATH")
    if not cfg.model:
        raise RlhfkitError(f"rlhfkit {args.command} needs model=PATH")
    # iterative GRPO's sub-runs checkpoint themselves: it resumes from wherever a round stopped
    run = prepare_run_dir(Path(args.runs_dir) / args.name, resume=args.resume, overwrite=args.overwrite,
                          resume_needs_checkpoint=args.command != "iterative-grpo")
    save_config(cfg, run.config_path)
    try:
        if args.command == "sft":
            from rlhfkit.train.sft import train_sft
            result = train_sft(cfg, run, resume=args.resume)
        elif args.command == "dpo":
            from rlhfkit.train.dpo import train_dpo
            result = train_dpo(cfg, run, resume=args.resume)
            if result.evals:
                print(f"held-out preference accuracy: {result.evals[-1][1]['accuracy']:.4f}")
        elif args.command in ("grpo", "rloo", "ppo", "raft", "online-dpo"):
            from rlhfkit.train.grpo import train_grpo
            from rlhfkit.train.online_dpo import train_online_dpo
            from rlhfkit.train.ppo import train_ppo
            from rlhfkit.train.raft import train_raft
            from rlhfkit.train.rloo import train_rloo
            train = {"grpo": train_grpo, "rloo": train_rloo, "ppo": train_ppo, "raft": train_raft,
                     "online-dpo": train_online_dpo}[args.command]
            result = train(cfg, run, resume=args.resume)
            if result.evals:
                print(f"held-out {cfg.task}: {result.evals[-1][1]}")
        elif args.command == "iterative-grpo":
            from rlhfkit.train.iterative_grpo import train_iterative_grpo
            result = train_iterative_grpo(cfg, run, resume=args.resume)
            for summary in result.rounds:
                print(f"round {summary['round']}: gold {summary['eval_gold_end']}, reward-model accuracy on the "
                      f"new policy {summary['accuracy_before']:.3f} -> {summary['accuracy_after']:.3f}")
        else:
            from rlhfkit.train.reward import train_reward_model
            result = train_reward_model(cfg, run, resume=args.resume)
            if result.eval_accuracy:
                print(f"held-out accuracy: {result.eval_accuracy[-1][1]:.4f}")
    except RlhfkitError:
        # A fresh run stopped by bad input leaves nothing worth keeping: the corrected
        # command must start cleanly, not meet "already exists".
        if not args.resume and not any(run.checkpoints.glob("step_*")) and not run.final.exists():
            shutil.rmtree(run.root, ignore_errors=True)
        raise
    print(f"model saved to {result.model_dir}")


def _run_feedback(args, cfg) -> None:
    """`rlhfkit judge` and `rlhfkit critique`: data-making recipes, so nothing to resume."""
    from rlhfkit.runtime.config import save_config
    from rlhfkit.runtime.rundir import prepare_run_dir
    from rlhfkit.train.constitutional import run_critique
    from rlhfkit.train.rlaif import run_judge

    if args.resume:
        raise RlhfkitError(f"rlhfkit {args.command} does not resume: run it again with --overwrite")
    run = prepare_run_dir(Path(args.runs_dir) / args.name, resume=False, overwrite=args.overwrite)
    save_config(cfg, run.config_path)
    try:
        result = (run_judge if args.command == "judge" else run_critique)(cfg, run)
    except RlhfkitError:
        shutil.rmtree(run.root, ignore_errors=True)  # bad input: the corrected command starts cleanly
        raise
    print(json.dumps(result.report, indent=2))
    print(f"written to {run.root}")


def _run_eval(args, cfg) -> None:
    """`rlhfkit eval`: a measurement, so nothing to resume; prints one table, writes eval.json."""
    from rich.console import Console

    from rlhfkit.eval.run_eval import run_eval
    from rlhfkit.eval.tables import metric_table, rich_table
    from rlhfkit.runtime.config import save_config
    from rlhfkit.runtime.rundir import prepare_run_dir

    if args.resume:
        raise RlhfkitError("rlhfkit eval does not resume: run it again with --overwrite")
    run = prepare_run_dir(Path(args.runs_dir) / args.name, resume=False, overwrite=args.overwrite)
    save_config(cfg, run.config_path)
    try:
        result = run_eval(cfg, run)
    except RlhfkitError:
        shutil.rmtree(run.root, ignore_errors=True)  # bad input: the corrected command starts cleanly
        raise
    columns, rows = metric_table(result["models"])
    short = [column if column == "metric" else "/".join(Path(column).parts[-2:]) for column in columns]
    console = Console()
    console.print(rich_table(f"{cfg.task}: win rates against {cfg.baseline or '-'} judged by {cfg.judge.value}",
                             short, rows))
    if "reward_model" in result:
        rm = result["reward_model"]
        console.print(f"reward model on {rm['heldout_pairs']}: accuracy {rm['accuracy']:.1%} "
                      f"[{rm['accuracy_low']:.1%}, {rm['accuracy_high']:.1%}] over {rm['pairs']} pairs")
    print(f"written to {run.root / 'eval.json'}")


def _tasks(args) -> None:
    from rlhfkit.data.loading import write_jsonl
    from rlhfkit.tasks.registry import TASKS, get_task

    if args.action == "list":
        for name, cls in sorted(TASKS.items()):
            print(f"{name:8s} {cls.description}")
        return
    if not args.task:
        raise RlhfkitError("rlhfkit tasks export needs a task name")
    task, rng, out = get_task(args.task), random.Random(args.seed), Path(args.out)
    sft = [dataclasses.asdict(x) for x in task.sft_examples(args.rows, rng)]
    prompts = [{"prompt": p.prompt, "answer": p.answer, **p.metadata} for p in task.prompts(args.rows, rng)]
    print(f"wrote {write_jsonl(out / f'{args.task}_sft.jsonl', sft)}")
    print(f"wrote {write_jsonl(out / f'{args.task}_prompts.jsonl', prompts)}")
    if hasattr(task, "step_examples"):
        steps = [dataclasses.asdict(x) for x in task.step_examples(args.rows, rng)]
        print(f"wrote {write_jsonl(out / f'{args.task}_steps.jsonl', steps)}")


def _parse(argv: list[str]) -> argparse.Namespace:
    """Overrides may stand before and after options (`lr=1 --name x steps=3`)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def run(argv: list[str]) -> None:
    args = _parse(argv)
    _quiet_libraries()
    if args.command == "tasks":
        return _tasks(args)
    from rlhfkit.runtime.config import config_to_dict, load_config

    cfg = load_config(_config_class(args.command), args.config, args.overrides)
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return
    if args.command == "pipeline":
        from rlhfkit.pipeline import Pipeline
        Pipeline(cfg).run_all()
    elif args.command in ("judge", "critique"):
        _run_feedback(args, cfg)
    elif args.command == "eval":
        _run_eval(args, cfg)
    else:
        _run_trainer(args, cfg)


def main() -> None:
    try:
        run(sys.argv[1:])
    except RlhfkitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
