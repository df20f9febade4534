"""The command table: every `rlhfkit NAME` command that reads a config is one row of
`COMMANDS` (its help, its config class, the function that runs it and what it prints after),
and the printers of those outcomes. Classes and functions are named as strings and imported
only when the command runs (`load_object`), so `rlhfkit --help` does not import torch."""

import dataclasses
import importlib
import json
import math
from collections.abc import Callable
from typing import Any


def _print_model_saved(cfg, run, result) -> None:
    print(f"model saved to {result.model_dir}")


def _print_reward_accuracy(cfg, run, result) -> None:
    if result.eval_accuracy:
        print(f"held-out accuracy: {result.eval_accuracy[-1][1]:.1%}")  # as the pipeline's
    _print_model_saved(cfg, run, result)


def _print_preference_accuracy(cfg, run, result) -> None:
    if result.evals:
        print(f"held-out preference accuracy: {result.evals[-1][1]['accuracy']:.1%}")
    _print_model_saved(cfg, run, result)


def _numbers(metrics: dict) -> str:
    """`accuracy 0.305, gold_score 3.127`: each metric to 4 significant digits."""
    return ", ".join(
        f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in metrics.items()
    )


def _print_policy_eval(cfg, run, result) -> None:
    held_out = cfg.task or cfg.eval_data or "held-out prompts"
    evals = result.evals
    if evals and evals[0][0] != 0 and run is not None:
        # resumed: the run's start was evaluated by the process that began it
        evals = _logged_start(run.metrics_path) + evals
    for step, metrics in evals[:1] + evals[1:][-1:]:  # the start and the end
        when = "at the start" if step == 0 else f"after step {step}"
        print(f"held-out {held_out} {when}: {_numbers(metrics)}")
    _print_model_saved(cfg, run, result)


def _logged_start(metrics_path) -> list[tuple[int, dict]]:
    """The starting evaluation as the run logged it (step 0's eval_* keys in metrics.jsonl),
    as `evals` holds it; [] when there is none."""
    from rlhfkit.runtime.metrics import read_metrics

    for line in read_metrics(metrics_path) if metrics_path.is_file() else []:
        metrics = {k.removeprefix("eval_"): v for k, v in line.items() if k.startswith("eval_")}
        if line.get("step") == 0 and metrics:
            # null in the file is a value that was not finite
            return [(0, {k: math.nan if v is None else v for k, v in metrics.items()})]
    return []


def _print_rounds(cfg, run, result) -> None:
    for summary in result.rounds:
        before, after = summary["accuracy_before"], summary["accuracy_after"]
        gold, reward = summary["eval_gold_end"], summary.get("eval_reward_end")
        if gold is not None:
            held_out = f"gold {gold:.4g}"
        else:
            held_out = "no evaluation" if reward is None else f"held-out reward {reward:.4g}"
        accuracy = (
            "not measured (no held-out rankings)"
            if math.isnan(before) and math.isnan(after)
            else f"{before:.3f} -> {after:.3f}"
        )
        print(
            f"round {summary['round']}: {held_out}, "
            f"reward-model accuracy on the new policy {accuracy}"
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

    from rlhfkit.eval.run_eval import report_title
    from rlhfkit.eval.tables import metric_table, rich_table, short_names

    columns, rows = metric_table(result["models"])
    console = Console()
    console.print(rich_table(report_title(cfg), short_names(columns), rows))
    if "reward_model" in result:
        rm = result["reward_model"]
        console.print(
            f"reward model on {rm['heldout_pairs']}: accuracy {rm['accuracy']:.1%} "
            f"[{rm['accuracy_low']:.1%}, {rm['accuracy_high']:.1%}] "
            f"over {rm['pairs']} pairs"
        )
    print(f"written to {run.root / 'eval.json'}")
    print(f"report: {(run.root / 'report.html').resolve()}")


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
    """"module:function" that checks the config's sections as a run fills them, `f(cfg, given)`
    (a filled key the user set, `given`, is refused), before --print-config prints it; empty =
    none."""
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
        not_under_torchrun="its judge training and labelling run in one process only; run it "
        "without torchrun",
    ),
    "critique": Command(
        "Constitutional AI: critique and revise own replies; SFT rows and judged preference rows",
        config="rlhfkit.train.constitutional:CritiqueConfig",
        run="rlhfkit.train.constitutional:run_critique",
        check_keys="rlhfkit.train.constitutional:check_critique_keys",
        report=_print_report,
        resumable=False,
        example="num_prompts=100",
        trains=False,
        not_under_torchrun="its generation and judging run in one process only; run it without "
        "torchrun",
    ),
    "eval": Command(
        "checkpoints on held-out prompts: gold score, win rate vs a baseline (95% CI), KL, "
        "pass@k, reward-hacking signs",
        config="rlhfkit.eval.run_eval:EvalConfig",
        run="rlhfkit.eval.run_eval:run_eval",
        check_keys="rlhfkit.eval.run_eval:check_eval_keys",
        report=_print_eval_table,
        resumable=False,
        example="num_prompts=100",
        trains=False,
        not_under_torchrun="its sampling and scoring run in one process only; run it without "
        "torchrun",
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
        not_under_torchrun="it writes its candidates file from one process only; run it without "
        "torchrun",
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


def load_object(path: str):
    """The object a "module:name" string names, imported now."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def check_command_config(
    name: str, command: Command, cfg, given: frozenset[str] = frozenset()
) -> None:
    """What the command refuses in its config before anything runs (the command line's and
    `rlhfkit.run`'s alike): its own `check_keys`, and `force_lr` and `max_nonfinite_skips` where
    nothing is trained, since a setting that changes nothing must not look as if it did.
    `given`: the keys the user set (`runtime.config.given_keys`), so that a key a job fills is
    refused even at its default."""
    from rlhfkit.errors import ConfigError
    from rlhfkit.runtime.run_config import RunConfig

    if cfg.force_lr and not command.trains:
        raise ConfigError(f"force_lr: rlhfkit {name} trains nothing, so no lr to force; remove it")
    if cfg.max_nonfinite_skips != RunConfig.max_nonfinite_skips and not command.trains:
        raise ConfigError(
            f"max_nonfinite_skips={cfg.max_nonfinite_skips}: rlhfkit {name} trains nothing, so "
            "no update to skip; remove it"
        )
    if command.check_keys:
        load_object(command.check_keys)(cfg, given)
