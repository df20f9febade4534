"""Kill -9 every trainer at random moments, resume it, and compare with a run never killed.

For each trainer: one uninterrupted run, then `--trials` runs of the same command, each killed
with SIGKILL at a random moment and resumed with `--resume` until it finishes (a run killed
before its first checkpoint is started again with `--overwrite`, as a user would). Each trial is
killed after a random number of logged steps: one in four at the next moment a checkpoint is
being written (a `.tmp-` directory under `checkpoints/`), the others a random fraction of a
second later.
A trial passes when its final weights equal the uninterrupted run's bit for bit and its
metrics log holds every step once, with the same losses.

    python scripts/fault_injection.py                        # 7 trainers x 20 trials
    python scripts/fault_injection.py --trainers sft dpo --trials 5 --workers 2
    python scripts/fault_injection.py --trainers sft rm dpo --nproc 2   # torchrun jobs

Not in CI (about 20 minutes on 2 cores). Every process runs one thread, so that float sums are
reduced in the same order in all of them. Writes `<out>/table.md` and `<out>/results.json`.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.tasks.advice import AdviceTask, gold_score
from rlhfkit.tasks.advice_writer import write_reply
from rlhfkit.tasks.arith import ArithTask

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "0"}
TINY = dict(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
LENGTH_REWARD = (
    "def chars(prompts, responses, **columns):\n    return [len(r) / 10 for r in responses]\n"
)
QUIET = ["progress=false", "tensorboard=false"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def gold_rankings(n: int, seed: int) -> list[dict]:
    """Advice replies ranked by the gold score (equal scores tie)."""
    rng, rows = random.Random(seed), []
    for prompt in AdviceTask().prompts(n, rng):
        topic = prompt.metadata["topic"]
        scored = sorted(
            ((gold_score(topic, r), r) for r in (write_reply(rng, topic) for _ in range(4))),
            key=lambda x: -x[0],
        )
        distinct = sorted({score for score, _ in scored}, reverse=True)
        rows.append(
            {
                "prompt": prompt.prompt,
                "responses": [r for _, r in scored],
                "ranks": [distinct.index(s) for s, _ in scored],
            }
        )
    return rows


def commands(work: Path) -> dict[str, list[str]]:
    """The trainers' command lines (small, with a checkpoint every few steps)."""
    model = build_tiny_model(work / "model", corpus(), seed=0, **TINY)
    sft = write_jsonl(
        work / "sft.jsonl",
        [
            {"prompt": e.prompt, "completion": e.completion}
            for e in ArithTask().sft_examples(300, random.Random(0))
        ],
    )
    rankings = write_jsonl(work / "rankings.jsonl", gold_rankings(40, 0))
    (work / "reward.py").write_text(LENGTH_REWARD)
    reward = f"reward={work / 'reward.py'}:chars"
    policy = [
        "train_prompts=64",
        "eval_prompts=4",
        "eval_max_new_tokens=4",
        "max_new_tokens=12",
        "lr=1e-2",
        "warmup_steps=1",
        "eval_every=100",
        "save_every=2",
    ]
    commands = {
        "sft": [
            "sft",
            f"model={model}",
            f"train_data={sft}",
            "max_steps=60",
            "batch_size=16",
            "warmup_steps=5",
            "save_every=5",
            "sample_every=0",
        ],
        "rm": [
            "rm",
            f"model={model}",
            f"train_data={rankings}",
            "max_steps=30",
            "batch_size=4",
            "warmup_steps=3",
            "save_every=5",
        ],
        "dpo": [
            "dpo",
            f"model={model}",
            f"train_data={rankings}",
            "max_steps=30",
            "batch_size=4",
            "warmup_steps=3",
            "lr=3e-3",
            "save_every=5",
            "precompute_ref=true",
        ],
        "rloo": [
            "rloo",
            f"model={model}",
            "task=arith",
            reward,
            "prompts_per_step=4",
            "group_size=4",
            "mini_batch_size=8",
            "mu=2",
            "max_steps=10",
            "beta=0.05",
            *policy,
        ],
        "grpo": [
            "grpo",
            f"model={model}",
            "task=arith",
            reward,
            "prompts_per_step=4",
            "group_size=4",
            "mini_batch_size=8",
            "mu=2",
            "max_steps=10",
            "beta=0.1",
            *policy,
        ],
        "ppo": [
            "ppo",
            f"model={model}",
            "task=advice",
            reward,
            "critic_init=policy",
            "prompts_per_step=8",
            "mini_batch_size=4",
            "ppo_epochs=2",
            "max_steps=8",
            "kl_target=0.5",
            "critic_lr=1e-2",
            *policy,
        ],
        "raft": [
            "raft",
            f"model={model}",
            "task=arith",
            reward,
            "require_correct=false",
            "prompts_per_round=4",
            "samples_per_prompt=4",
            "epochs_per_round=2",
            "mini_batch_size=2",
            "max_steps=10",
            *policy,
        ],
        "online-dpo": [
            "online-dpo",
            f"model={model}",
            "task=advice",
            "labeller=annotator",
            "regime=iterative",
            "refresh_every=3",
            "samples_per_prompt=3",
            "prompts_per_step=4",
            "max_steps=10",
            *policy,
        ],
    }
    return {**commands, "iterative-grpo": iterative_grpo(work, model, rankings)}


def iterative_grpo(work: Path, model: Path, rankings: str) -> list[str]:
    """Rounds of GRPO and a retrained reward model, started from a reward model trained here."""
    start = [
        "rm",
        f"model={model}",
        f"train_data={rankings}",
        "max_steps=3",
        "batch_size=4",
        "eval_every=0",
        "save_every=0",
        *QUIET,
        "--runs-dir",
        str(work),
        "--name",
        "rm-start",
    ]
    subprocess.run(
        [sys.executable, "-m", "rlhfkit", *start],
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    grpo = {
        "max_steps": 2,
        "prompts_per_step": 4,
        "group_size": 4,
        "mini_batch_size": 8,
        "max_new_tokens": 8,
        "eval_max_new_tokens": 6,
        "train_prompts": 32,
        "eval_prompts": 4,
        "lr": 1e-3,
        "warmup_steps": 1,
        "eval_every": 0,
        "save_every": 1,
    }
    rm = {
        "max_steps": 3,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup_steps": 1,
        "eval_every": 0,
        "save_every": 2,
    }
    return [
        "iterative-grpo",
        f"model={model}",
        "task=advice",
        f"reward_model={work / 'rm-start' / 'final'}",
        f"reward_data={rankings}",
        "rounds=2",
        "label_prompts=9",
        "heldout_prompts=4",
        "samples_per_prompt=3",
        *(f"grpo.{k}={v}" for k, v in grpo.items()),
        *(f"rm.{k}={v}" for k, v in rm.items()),
    ]


def corpus() -> list[str]:
    examples = ArithTask().sft_examples(300, random.Random(0)) + AdviceTask().sft_examples(
        300, random.Random(0)
    )
    return [e.prompt + e.completion for e in examples]


def launcher(nproc: int) -> list[str]:
    """How a run starts: one process, or (nproc > 1) a torchrun job of nproc processes."""
    if nproc == 1:
        return [sys.executable, "-m", "rlhfkit"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*torchrun, "--nproc_per_node", str(nproc), "-m", "rlhfkit"]


def rlhfkit(
    command: list[str], runs: Path, name: str, *flags: str, log: Path, start: list[str]
) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen(
            [
                *start,
                *command,
                *QUIET,
                "--runs-dir",
                str(runs),
                "--name",
                name,
                *flags,
            ],
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def saving(run: Path) -> bool:
    """Whether a checkpoint of the run (or of one of its sub-runs) is being written."""
    return run.is_dir() and any(run.glob("**/checkpoints/.tmp-*"))


def logged_steps(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the run and, for a torchrun job, its workers (they run in sessions of their own,
    so they outlive the launcher)."""
    workers = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(workers, timeout=30)


def killed_run(
    command: list[str],
    runs: Path,
    name: str,
    *,
    after_step: int,
    delay: float,
    mid_save: bool,
    start: list[str],
) -> tuple[bool, bool]:
    """Start the run; once it has logged `after_step` steps, SIGKILL it `delay` seconds later,
    or (mid_save) at the next moment a checkpoint is being written. Returns (killed, killed
    while a checkpoint was being written)."""
    process = rlhfkit(command, runs, name, log=runs / f"{name}.log", start=start)
    armed_at = None
    while process.poll() is None:
        if armed_at is None and logged_steps(runs / name) >= after_step:
            armed_at = time.monotonic()
        in_save = saving(runs / name)
        due = armed_at is not None and (
            in_save if mid_save else time.monotonic() >= armed_at + delay
        )
        if due:
            kill(process)
            return True, in_save
        time.sleep(0.0005 if armed_at is not None and mid_save else 0.002)
    return False, False


def max_steps(command: list[str]) -> int:
    """The run's logged steps: optimizer steps, or rounds (iterative GRPO)."""
    return next(int(a.split("=")[1]) for a in command if a.startswith(("max_steps=", "rounds=")))


def trial(command: list[str], runs: Path, index: int, seed: int, start: list[str]) -> dict:
    """Trial `index`: killed after a random number of steps (one in four mid-save), then
    resumed, or started again when no checkpoint was complete yet. A draw that comes after the
    run has already finished kills nothing: it is drawn again, so every trial is a kill."""
    rng = random.Random(seed * 1000 + index)
    name, mid_save, draws = f"trial{index:02d}", index % 4 == 0, 0
    killed = False
    while not killed and draws < 5:
        shutil.rmtree(runs / name, ignore_errors=True)
        draws += 1
        after_step, delay = rng.randrange(max_steps(command)), rng.random()
        killed, in_save = killed_run(
            command,
            runs,
            name,
            after_step=after_step,
            delay=delay,
            mid_save=mid_save,
            start=start,
        )
    outcome = {
        "trial": index,
        "draws": draws,
        "after_step": after_step,
        "killed": killed,
        "killed_mid_save": in_save,
        "restarted": False,
    }
    if killed:
        # as a user would: --resume, and when there is nothing to resume yet, start again
        log = runs / f"{name}.log"
        outcome["exit"] = rlhfkit(command, runs, name, "--resume", log=log, start=start).wait()
        if outcome["exit"] != 0 and "nothing to resume" in log.read_text()[-2000:]:
            outcome["restarted"] = True
            again = rlhfkit(command, runs, name, "--overwrite", log=log, start=start)
            outcome["exit"] = again.wait()
    outcome["equal"] = same_run(runs / "full", runs / name)
    if outcome["equal"]:
        shutil.rmtree(runs / name, ignore_errors=True)
    return outcome


def same_run(full: Path, other: Path) -> bool:
    try:
        a, b = (
            load_file(full / "final" / "model.safetensors"),
            load_file(other / "final" / "model.safetensors"),
        )
        losses = [
            [
                json.loads(line).get("loss")
                for line in (run / "metrics.jsonl").read_text().splitlines()
            ]
            for run in (full, other)
        ]
        steps = [
            [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (full, other)
        ]
    except (OSError, ValueError):
        return False
    return (
        a.keys() == b.keys()
        and all(torch.equal(a[k], b[k]) for k in a)
        and losses[0] == losses[1]
        and steps[0] == steps[1]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trainers",
        nargs="*",
        default=["sft", "rm", "dpo", "grpo", "rloo", "ppo", "raft", "online-dpo", "iterative-grpo"],
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--workers", type=int, default=2, help="trials run at once (one thread each)"
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes per run: above 1 every run is a torchrun job (sft, rm and dpo)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/fault-injection")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    all_commands, results = commands(out), {}
    for trainer in args.trainers:
        runs, command = out / trainer, all_commands[trainer]
        runs.mkdir()
        started = time.monotonic()
        start = launcher(args.nproc)
        if rlhfkit(command, runs, "full", log=runs / "full.log", start=start).wait() != 0:
            sys.exit(f"{trainer}: the uninterrupted run failed, see {runs / 'full.log'}")
        duration = time.monotonic() - started
        with ThreadPoolExecutor(args.workers) as pool:
            jobs = [
                pool.submit(trial, command, runs, i, args.seed, start) for i in range(args.trials)
            ]
            results[trainer] = {
                "duration_s": round(duration, 1),
                "trials": [job.result() for job in jobs],
            }
        summary = row(trainer, results[trainer])
        print(summary, flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    header = (
        "| trainer | trials | killed | of which mid-save | restarted (no checkpoint yet) "
        "| bitwise equal |\n|---|---|---|---|---|---|\n"
    )
    (out / "table.md").write_text(header + "\n".join(row(t, r) for t, r in results.items()) + "\n")
    print(f"written to {out / 'table.md'}")
    if not all(t["equal"] for r in results.values() for t in r["trials"]):
        sys.exit(1)


def row(trainer: str, result: dict) -> str:
    trials = result["trials"]
    killed, mid_save, restarted, equal = (
        sum(bool(t[key]) for t in trials)
        for key in ("killed", "killed_mid_save", "restarted", "equal")
    )
    return (
        f"| {trainer} | {len(trials)} | {killed} | {mid_save} | {restarted} "
        f"| {equal}/{len(trials)} |"
    )


if __name__ == "__main__":
    main()
