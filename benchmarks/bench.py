"""`make bench`: rlhfkit and the reference library (TRL) on the shared benchmark's six workloads,
in one run, and one table of the ratios.

1. Builds the shared assets and the reference library's environment when missing (its own
   virtualenv with the pinned requirements; PPO from the last release that has it).
2. Measures the fp32 matmul ceiling (1024 x 1024, the shared harness's script).
3. Runs the workloads in the shared order, each library in its own process per workload,
   alternating which library goes first, so that drift of the machine hits both alike; with
   --rounds N all of it N times, each library's median run per workload counting (a shared
   machine's speed drifts by more than some of the gaps measured).
4. Measures the ceiling again, writes every JSON line to `results.jsonl` and prints (and saves
   as `table.md`) the table: seconds per step, speed-up (reference / rlhfkit), peak memory,
   first and final loss, utilisation of the ceiling on the full FLOP count, and the targets.

    python benchmarks/bench.py [--out-dir runs/bench] [--bf16] [--steps-scale 1] [--rounds 1]
                               [--workload grpo ...]

Environment defaults as the shared harness: --peer ../shared/peer, --assets /tmp/peer-assets,
--venv /tmp/peer-venv, --ppo-dir /tmp/peer-trl-1.12.0, two threads.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = ("sft", "rm", "dpo", "grpo", "rloo", "ppo")
STEPS = {"sft": 100, "rm": 100, "dpo": 100, "grpo": 30, "rloo": 30, "ppo": 30}
FIRST_LOSS = {"sft": 7.627, "rm": 0.6907, "dpo": 0.6931}  # the shared README's step-1 losses
TARGET_SPEEDUP = {"sft": 1.3, "rm": 1.3, "dpo": 1.3, "grpo": 1.5, "rloo": 1.5, "ppo": 1.5}
TARGET_GRPO_UTILISATION = 0.70


def environment(threads: int) -> dict:
    """The shared harness's environment: fixed threads, everything offline, no GPU."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_DISABLED": "true",
        "WANDB_MODE": "disabled",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONHASHSEED": "0",
    }


def prepare(args) -> None:
    """The reference library's virtualenv and the assets, as the shared `run_all.sh` makes them."""
    python = args.venv / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3.11", "-m", "venv", str(args.venv)], check=True)
        pip = [str(args.venv / "bin" / "pip"), "install", "--quiet"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)  # first and pinned: no other torch
        subprocess.run(pip + ["-r", str(args.peer / "requirements-trl.txt")], check=True)
    if not (args.ppo_dir / "trl" / "experimental" / "ppo" / "ppo_trainer.py").exists():
        subprocess.run(
            [
                str(args.venv / "bin" / "pip"),
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(args.ppo_dir),
                "trl==1.12.0",
            ],
            check=True,
        )
    if not (args.assets / "manifest.json").exists():
        subprocess.run(
            [sys.executable, str(args.peer / "make_assets.py"), str(args.assets)],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def run_json(command: list[str], env: dict, log: Path) -> dict:
    """Run one benchmark process; its last stdout line is its JSON result."""
    with open(log, "w") as err:
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": f"exit {done.returncode}: " + log.read_text(errors="replace")[-2000:]}
    return json.loads(lines[-1])


def ceiling(args, env: dict, log: Path) -> dict:
    return run_json(
        [sys.executable, str(args.peer / "matmul_ceiling.py"), "--threads", str(args.threads)],
        env,
        log,
    )


def run_reference(args, workload: str, steps: int, env: dict, log: Path) -> dict:
    command = [
        str(args.venv / "bin" / "python"),
        str(args.peer / "bench_trl.py"),
        "--workload",
        workload,
        "--assets",
        str(args.assets),
        "--steps",
        str(steps),
        "--warmup",
        "2",
        "--threads",
        str(args.threads),
    ]
    if workload == "ppo":  # PPO left the reference library after 1.12
        env = {**env, "PYTHONPATH": str(args.ppo_dir)}
    result = run_json(command + (["--bf16"] if args.bf16 else []), env, log)
    return {"workload": workload, "library": "trl", **result}


def run_rlhfkit(args, workload: str, steps: int, env: dict, log: Path) -> dict:
    command = [
        sys.executable,
        str(HERE / "peer_workloads.py"),
        "--workload",
        workload,
        "--assets",
        str(args.assets),
        "--steps",
        str(steps),
        "--warmup",
        "2",
        "--threads",
        str(args.threads),
    ]
    result = run_json(command + (["--bf16"] if args.bf16 else []), env, log)
    return {"workload": workload, "library": "rlhfkit", **result}


def median_run(found: list[dict]) -> dict:
    """Of one library's runs of one workload (--rounds), the one with the median s/step (the
    upper median of an even count); a failed run stands for the workload when any failed."""
    failed = [r for r in found if "error" in r]
    if failed:
        return failed[0]
    ranked = sorted(found, key=lambda r: r["median_s_per_step"])
    return {
        **ranked[len(ranked) // 2],
        "rounds_s_per_step": [r["median_s_per_step"] for r in found],
    }


def utilisation(result: dict, gflops: float) -> float | None:
    return result["achieved_gflops_full"] / gflops if "achieved_gflops_full" in result else None


def table(results: list[dict], ceilings: list[float], precision: str) -> tuple[str, dict]:
    """The markdown table and the summary (ratios, medians, which targets hold)."""
    gflops = statistics.median(ceilings)
    by = {(r["workload"], r["library"]): r for r in results}
    rows, summary = [], {"ceiling_gflops": ceilings, "precision": precision, "workloads": {}}
    head = (
        "| workload | TRL s/step | rlhfkit s/step | speed-up | target "
        "| peak RSS MiB TRL / rlhfkit | first loss TRL / rlhfkit | final loss TRL / rlhfkit "
        "| utilisation (full FLOPs) TRL / rlhfkit |"
    )
    rows += [head, "|" + "---|" * 9]
    for workload in WORKLOADS:
        trl, ours = by.get((workload, "trl")), by.get((workload, "rlhfkit"))
        if not trl or not ours:
            continue
        if "error" in trl or "error" in ours:
            rows.append(
                f"| {workload} | {'FAILED' if 'error' in trl else '-'} | "
                f"{'FAILED' if 'error' in ours else '-'} | - | - | - | - | - | - |"
            )
            continue
        speedup = trl["median_s_per_step"] / ours["median_s_per_step"]
        util = [utilisation(r, gflops) for r in (trl, ours)]
        memory_ok = ours["peak_rss_mib"] <= trl["peak_rss_mib"]
        first_ok = (
            workload not in FIRST_LOSS
            or abs(ours["loss_per_step"][0] - FIRST_LOSS[workload]) < 1e-3
        )
        summary["workloads"][workload] = {
            "speedup": speedup,
            "memory_ok": memory_ok,
            "first_loss_ok": first_ok,
            "utilisation": util[1],
            "utilisation_trl": util[0],
        }
        util_text = "-" if util[0] is None else f"{util[0]:.0%} / {util[1]:.0%}"
        rows.append(
            f"| {workload} "
            f"| {trl['median_s_per_step']:.3f} | {ours['median_s_per_step']:.3f} "
            f"| **{speedup:.2f}x** | {TARGET_SPEEDUP[workload]}x "
            f"{'met' if speedup >= TARGET_SPEEDUP[workload] else 'NOT met'} | "
            f"{trl['peak_rss_mib']:.0f} / {ours['peak_rss_mib']:.0f}"
            f"{'' if memory_ok else ' (higher)'} | "
            f"{trl['loss_per_step'][0]:.4g} / {ours['loss_per_step'][0]:.4g} | "
            f"{trl['final_loss']:.4g} / {ours['final_loss']:.4g} | {util_text} |"
        )
    groups = {"rl": ("grpo", "rloo", "ppo"), "offline": ("sft", "rm", "dpo")}
    for name, members in groups.items():
        ratios = [summary["workloads"][w]["speedup"] for w in members if w in summary["workloads"]]
        summary[f"median_speedup_{name}"] = statistics.median(ratios) if ratios else None
    return "\n".join(rows), summary


def targets(summary: dict) -> list[str]:
    lines = []
    for name, goal in (("rl", 1.5), ("offline", 1.3)):
        value = summary[f"median_speedup_{name}"]
        if value is not None:
            lines.append(
                f"- median speed-up, {'GRPO/RLOO/PPO' if name == 'rl' else 'SFT/RM/DPO'}: "
                f"{value:.2f}x "
                f"(target {goal}x: {'met' if value >= goal else 'NOT met'})"
            )
    workloads = summary["workloads"]
    if workloads:
        high = [w for w, s in workloads.items() if not s["memory_ok"]]
        lines.append(
            f"- peak memory no higher than TRL's: "
            f"{'met' if not high else 'NOT met on ' + ', '.join(high)}"
        )
        wrong = [w for w, s in workloads.items() if not s["first_loss_ok"]]
        lines.append(
            f"- first-step losses equal the reference values to 1e-3: "
            f"{'met' if not wrong else 'NOT met on ' + ', '.join(wrong)}"
        )
    if "grpo" in workloads:
        util = workloads["grpo"]["utilisation"]
        lines.append(
            f"- GRPO utilisation of the matmul ceiling (full FLOP count): {util:.0%} "
            f"(target {TARGET_GRPO_UTILISATION:.0%}: "
            f"{'met' if util >= TARGET_GRPO_UTILISATION else 'NOT met'})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--peer", type=Path, default=HERE.parent.parent / "shared" / "peer")
    parser.add_argument("--assets", type=Path, default=Path("/tmp/peer-assets"))
    parser.add_argument("--venv", type=Path, default=Path("/tmp/peer-venv"))
    parser.add_argument("--ppo-dir", type=Path, default=Path("/tmp/peer-trl-1.12.0"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast on both sides (the shared BF16=1)"
    )
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="timed steps x this (1 = the shared counts)"
    )
    parser.add_argument("--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run everything this many times, alternating; each library's median run counts",
    )
    args = parser.parse_args()
    if not args.peer.is_dir():
        sys.exit(f"no shared benchmark at {args.peer}: pass --peer DIR")
    prepare(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    logs = args.out_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = environment(args.threads)
    started = datetime.datetime.now(datetime.UTC)

    ceilings = []
    ceilings.append(ceiling(args, env, logs / "ceiling_before.log")["gflops_median"])
    print(f"matmul ceiling before: {ceilings[0]:.1f} GFLOP/s", flush=True)
    runs: dict[tuple[str, str], list[dict]] = {}
    for round_index in range(args.rounds):
        for index, workload in enumerate(args.workload):
            steps = max(3, round(STEPS[workload] * args.steps_scale))
            runners = [("trl", run_reference), ("rlhfkit", run_rlhfkit)]
            for library, run in runners if (index + round_index) % 2 == 0 else runners[::-1]:
                result = run(
                    args, workload, steps, env, logs / f"{workload}-{library}-{round_index}.log"
                )
                runs.setdefault((workload, library), []).append(result)
                status = (
                    result.get("error", "")[:200] or f"{result['median_s_per_step']:.3f} s/step"
                )
                print(f"{workload:5s} {library:8s} {status}", flush=True)
    results = [median_run(found) for found in runs.values()]
    ceilings.append(ceiling(args, env, logs / "ceiling_after.log")["gflops_median"])
    print(f"matmul ceiling after: {ceilings[1]:.1f} GFLOP/s", flush=True)

    precision = "bf16 autocast" if args.bf16 else "fp32"
    text, summary = table(results, ceilings, precision)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    header = (
        f"{started:%Y-%m-%d}, {precision}, {args.threads} threads, {cpu}; "
        "matmul ceiling (1024^2 fp32) "
        f"{ceilings[0]:.1f} before, {ceilings[1]:.1f} after (GFLOP/s); TRL 1.16 (PPO: 1.12)"
    )
    report = "\n".join([header, "", text, "", *targets(summary)])
    print("\n" + report)
    with open(args.out_dir / "results.jsonl", "w") as f:
        for line in [
            {"workload": "matmul_ceiling", "gflops_median": c} for c in ceilings
        ] + results:
            f.write(json.dumps(line) + "\n")
    (args.out_dir / "table.md").write_text(report + "\n")
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
