"""One RL stage of a finished demo run again, with other settings, evaluated against SFT as the
pipeline evaluates it: how the demo's PPO, DPO and RAFT settings were chosen (docs/demo.md).

    python scripts/stage_rerun.py runs/demo ppo ppo.max_steps=40 ppo.save_every=10 ppo.keep_last=4
    python scripts/stage_rerun.py runs/demo rm+ppo rm.max_steps=150   # PPO on a new reward model

The stage (ppo, grpo, dpo or raft) runs in a sibling run directory, `<run>-rerun-<stage>`, on a
copy of what it reads from the run (its data, SFT model, rankings and reward model), with the
run's own config and seed and the given overrides; the run itself is not touched. Stages joined
by `+` run in that order, each on what the ones before it wrote (`rm+ppo`: the reward model
again, then PPO against it); the last one is evaluated. Then every checkpoint the rerun kept
and its final policy answer the task's held-out prompts as in the pipeline: on arith (grpo,
raft) the greedy accuracy's gain over SFT in points, on advice (ppo, dpo) the greedy and
sampled win rates against SFT. One JSON line per policy, on stdout and in `<rerun>/rerun.jsonl`.

Run it with the environment the run had (threads, forced kernels): the floats depend on it. A
checkpoint's numbers equal a shorter run's where the stage's learning rate does not depend on
`max_steps` (PPO, GRPO and RAFT: constant after warm-up; DPO's cosine schedule does).
"""

import argparse
import json
import shutil
from pathlib import Path

from rlhfkit.eval.model_eval import win_rates
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.pipeline import Pipeline
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.runtime.checkpoint import complete_checkpoints
from rlhfkit.runtime.config import load_config
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.train.checkpointing import MODEL_SUBDIR

TASK_OF_STAGE = {"ppo": "advice", "dpo": "advice", "grpo": "arith", "raft": "arith"}
# the pipeline's method that runs each stage; the reward model only before a stage that reads it
PIPELINE_STAGES = {"rm": "reward_model", **{stage: stage for stage in TASK_OF_STAGE}}
# what a stage reads from the earlier ones (the data stage's files are written again, the same)
INPUTS = ("base_model", "collect", "sft", "rm")


def policies(stage_dir: Path) -> list[tuple[str, Path]]:
    """The checkpoints a run kept, oldest first, then its final policy: (label, model dir)."""
    run = RunDir(stage_dir)
    kept = [(path.name, path / MODEL_SUBDIR) for _, path in complete_checkpoints(run.checkpoints)]
    return [*kept, ("final", run.final)]


def greedy_changes(rates: dict) -> dict:
    """How many of the distinct prompts' greedy answers scored above SFT's and how many below,
    from the greedy win rate (ties half) and its share of ties."""
    n, ties = rates["win_rate_greedy_n"], rates["win_rate_greedy_ties"]
    better = round(n * (rates["win_rate_greedy"] - ties / 2))
    return {"greedy_better": better, "greedy_worse": n - better - round(n * ties)}


def stage_chain(stages: str) -> list[str]:
    """The stages of "rm+ppo" in order; the last one an RL stage to evaluate."""
    chain = stages.split("+")
    if any(name not in PIPELINE_STAGES for name in chain) or chain[-1] not in TASK_OF_STAGE:
        raise ValueError(
            f"{stages}: stages joined by '+' from {', '.join(PIPELINE_STAGES)}, "
            f"ending with one of {', '.join(TASK_OF_STAGE)}"
        )
    return chain


def rerun(run: Path, stages: str, overrides: list[str]) -> list[dict]:
    chain = stage_chain(stages)
    stage = chain[-1]  # the one evaluated
    root = run.parent / f"{run.name}-rerun-{'-'.join(chain)}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    for name in INPUTS:
        shutil.copytree(run / name, root / name)
    cfg = load_config(
        PipelineConfig,
        str(run / "config.yaml"),
        [f"name={root.name}", f"runs_dir={root.parent}", *overrides],
    )
    pipeline = Pipeline(cfg)
    pipeline.make_data()  # the run's files again, and its held-out prompts
    for name in chain:
        getattr(pipeline, PIPELINE_STAGES[name])()

    task_name = TASK_OF_STAGE[stage]
    device, sft_dir = resolve_device(cfg.device), root / "sft" / "final"
    sft, tokenizer = load_causal_lm(sft_dir).to(device), load_tokenizer(sft_dir)
    proxy = None  # the reward model scores advice answers only, as in the pipeline's tables
    if task_name == "advice":
        proxy = pipeline.proxy(root / "rm" / "final", tokenizer, device)

    def evaluate(model):
        return pipeline.evaluate_policy(task_name, model, tokenizer, sft, proxy)

    base, rows = evaluate(sft), []
    for label, path in policies(root / stage):
        result = evaluate(load_causal_lm(path).to(device))
        row = {"stage": stages, "policy": label, "overrides": overrides}
        if task_name == "arith":
            gain = result.metrics["greedy_accuracy"] - base.metrics["greedy_accuracy"]
            row["greedy_gain_points"] = round(100 * gain, 6)
        else:
            rates = win_rates(result, base)
            kept = ("win_rate_greedy", "win_rate_sampled", "win_rate_sampled_low")
            row.update({key: rates[key] for key in kept}, **greedy_changes(rates))
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(root / "rerun.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a finished `rlhfkit pipeline` run directory")
    parser.add_argument(
        "stage", help=f"one of {', '.join(TASK_OF_STAGE)}, or stages joined by '+': rm+ppo"
    )
    parser.add_argument("overrides", nargs="*", help="pipeline config overrides for the rerun")
    args = parser.parse_args()
    try:
        stage_chain(args.stage)
    except ValueError as err:
        parser.error(str(err))
    rerun(args.run, args.stage, args.overrides)


if __name__ == "__main__":
    main()
