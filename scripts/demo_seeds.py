"""The demo on several seeds: `rlhfkit pipeline seed=S` for each seed, then one table of every
method's effect (min / median / max over the seeds) against the demo's targets.

    python scripts/demo_seeds.py                       # seeds 0 1 2, one after another
    python scripts/demo_seeds.py --seeds 0 1 2 --parallel 3 --threads 2 grpo.max_steps=30

Targets (the demo's conclusions, which must hold on every seed): GRPO and RAFT raise arith's
greedy accuracy over SFT on every seed, by at least 5 points at the median; PPO and DPO win at
least 60% of sampled comparisons against SFT with the interval above 50%, and at least 50% of
greedy ones. Writes `<runs-dir>/demo-seeds/table.md` and `results.json`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_seed(seed: int, args, overrides: list[str]) -> subprocess.Popen:
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = [
        sys.executable,
        "-m",
        "rlhfkit",
        "pipeline",
        f"name={args.prefix}{seed}",
        f"seed={seed}",
        f"runs_dir={args.runs_dir}",
        *overrides,
    ]
    log = open(Path(args.runs_dir) / f"{args.prefix}{seed}.log", "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def seed_row(summary: dict) -> dict:
    """The numbers the targets are about, from one run's summary.json."""
    arith, advice = summary["eval"]["arith"], summary["eval"]["advice"]
    row = {
        f"{m}_gain_points": 100 * (arith[m]["greedy_accuracy"] - arith["sft"]["greedy_accuracy"])
        for m in ("grpo", "raft")
    }
    row["sft_arith_accuracy"] = 100 * arith["sft"]["greedy_accuracy"]
    for m in ("ppo", "dpo"):
        for kind in ("greedy", "sampled"):
            row[f"{m}_win_{kind}"] = 100 * advice[m][f"win_rate_{kind}"]
            row[f"{m}_win_{kind}_low"] = 100 * advice[m][f"win_rate_{kind}_low"]
    row["seconds"] = sum(stage["seconds"] for stage in summary["stages"].values())
    # percentages of whole counts: 21.5 - 16.5 is 4.999999999999999 in floats, which must
    # not read as short of a 5-point target
    return {key: round(value, 6) for key, value in row.items()}


def targets(rows: list[dict]) -> list[tuple[str, bool]]:
    def every(key, bound):
        return all(r[key] >= bound for r in rows)

    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return [
        ("GRPO raises greedy accuracy on every seed", every("grpo_gain_points", 1e-9)),
        ("GRPO: +5 points at the median", median["grpo_gain_points"] >= 5),
        ("RAFT raises greedy accuracy on every seed", every("raft_gain_points", 1e-9)),
        ("RAFT: +5 points at the median", median["raft_gain_points"] >= 5),
        *[
            (
                f"{m.upper()}: sampled win rate >= 60% on every seed, interval above 50%",
                every(f"{m}_win_sampled", 60) and all(r[f"{m}_win_sampled_low"] > 50 for r in rows),
            )
            for m in ("ppo", "dpo")
        ],
        *[
            (f"{m.upper()}: greedy win rate >= 50% on every seed", every(f"{m}_win_greedy", 50))
            for m in ("ppo", "dpo")
        ],
    ]


def table(rows: list[dict], seeds: list[int]) -> str:
    lines = [
        "| measure | " + " | ".join(f"seed {s}" for s in seeds) + " | min / median / max |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for key in rows[0]:
        values = [r[key] for r in rows]
        spread = f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"
        lines.append(f"| {key} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {spread} |")
    lines += ["", *[f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in targets(rows)]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="pipelines run at once")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads per pipeline (0 = torch's choice)"
    )
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--prefix", default="demo-seed", help="run names: PREFIX<seed>")
    parser.add_argument(
        "--aggregate-only", action="store_true", help="only read the runs' summaries"
    )
    parser.add_argument(
        "overrides", nargs="*", help="pipeline config overrides, e.g. grpo.max_steps=30"
    )
    args = parser.parse_args()
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    if not args.aggregate_only:
        pending, running = list(args.seeds), []
        while pending or running:
            while pending and len(running) < args.parallel:
                seed = pending.pop(0)
                running.append((seed, run_seed(seed, args, args.overrides), time.time()))
            time.sleep(2)
            for seed, proc, started in [r for r in running if r[1].poll() is not None]:
                running.remove((seed, proc, started))
                print(
                    f"seed {seed}: exit {proc.returncode} after {time.time() - started:.0f} s",
                    flush=True,
                )
    summaries = [Path(args.runs_dir) / f"{args.prefix}{s}" / "summary.json" for s in args.seeds]
    missing = [str(path) for path in summaries if not path.is_file()]
    if missing:
        sys.exit(f"no summary (a run failed or has not run): {', '.join(missing)}")
    rows = [seed_row(json.loads(path.read_text())) for path in summaries]
    out = Path(args.runs_dir) / "demo-seeds"
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows, args.seeds)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(
        json.dumps({"seeds": args.seeds, "overrides": args.overrides, "rows": rows}, indent=2)
    )
    print(text)


if __name__ == "__main__":
    main()
