"""rlhfkit against TRL on one GPU: GRPO, PPO, DPO, SFT and the reward model on a randomly
initialised Llama in Qwen2.5-0.5B's shape (386M parameters), bf16 autocast, the same work on
both sides.

1. Builds the assets (`assets.py`: tokenizer, model, reward-model start, data) unless the
   out folder's `assets/` already holds them.
2. Runs each workload in the order of `workloads.WORKLOADS`, each library in its own process,
   alternating which library goes first; `rlhfkit_side.py` and `trl_side.py` print one JSON
   line each. A run that would start with less time left than it needs is skipped, and every
   run is stopped when the budget is spent, so the benchmark ends in time.
3. Adds the derived numbers (tokens/s at the median step, the full FLOP count per step, MFU
   against `--peak-flops`) and writes `results.jsonl` (one line per library and workload) and
   `table.md`; every process's log goes to `logs/`.

    python benchmarks/gpu/bench_gpu.py --out-dir runs/bench-gpu             # on a GPU
    python benchmarks/gpu/bench_gpu.py --tiny --device cpu --out-dir /tmp/b \\
        --trl-python /tmp/peer-venv/bin/python --trl-ppo-path /tmp/peer-trl-1.12.0

TRL runs under --trl-python (default: this interpreter) with its PPO from the folder
--trl-ppo-path first on PYTHONPATH (TRL 1.12, the last release with PPOTrainer); --peer is the
folder of the shared benchmark's `bench_trl.py`.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from assets import build_assets
from flops import H200_BF16_FLOPS, QWEN_05B, TINY, flops_per_step
from workloads import FULL, SMALL, WORKLOADS

from rlhfkit.runtime.memory_model import ModelShape

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LIBRARIES = ("rlhfkit", "trl")
# the least time (s) a run takes at the full sizes on one H200, setup included: with less left
# the run is skipped rather than started
MIN_SECONDS = {"grpo": 45, "ppo": 60, "dpo": 25, "sft": 20, "rm": 20}


def default_peer() -> Path:
    """The shared benchmark's folder: the carried copy `.peer/` when there is one."""
    carried = ROOT / ".peer"
    return carried if (carried / "bench_trl.py").exists() else ROOT.parent / "shared" / "peer"


def environment(device: str) -> dict:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
        "WANDB_MODE": "disabled",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONUNBUFFERED": "1",
    }
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def command(args, library: str, workload: str, assets: Path) -> tuple[list[str], dict]:
    """One run's command line and environment."""
    common = ["--workload", workload, "--assets", str(assets), "--device", args.device]
    common += ["--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    env = environment(args.device)
    if library == "rlhfkit":
        extra = ["--compile-sampling"] if args.compile_sampling else []
        return [sys.executable, str(HERE / "rlhfkit_side.py"), *common, *extra], env
    if workload == "ppo" and args.trl_ppo_path:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(args.trl_ppo_path), env.get("PYTHONPATH", "")) if p
        )
    python = args.trl_python or sys.executable
    return [python, str(HERE / "trl_side.py"), *common, "--peer", str(args.peer)], env


def run_one(cmd: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Run one process; its last stdout line that is JSON is its result."""
    with open(log, "w") as err:
        try:
            done = subprocess.run(
                cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {"error": f"stopped after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = log.read_text(errors="replace")[-1500:]
        return {"error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def derived(result: dict, shape: ModelShape, peak_flops: float) -> dict:
    """Tokens/s at the median step, the full FLOP count per step and MFU."""
    if "median_s_per_step" not in result:
        return {}
    median = result["median_s_per_step"]
    flops = flops_per_step(result["workload"], shape, result["flop_tokens_per_step"])
    return {
        "throughput_tokens_per_s": result["flop_tokens_per_step"] / median,
        "flops_per_step": flops,
        "achieved_tflops": flops / median / 1e12,
        "mfu": flops / median / peak_flops,
        "peak_flops": peak_flops,
    }


def cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(results: list[dict], header: str) -> str:
    rows = [
        header,
        "",
        "| workload | library | s/step | generation s/step | tokens/s | peak GPU GiB | MFU "
        "| first-step one-off s | first / final loss | TRL / rlhfkit |",
        "|" + "---|" * 10,
    ]
    by = {(r["workload"], r["library"]): r for r in results}
    for workload in WORKLOADS:
        for library in LIBRARIES:
            r = by.get((workload, library))
            if r is None:
                continue
            if "median_s_per_step" not in r:
                why = r.get("skipped") or r.get("error", "")[:80].replace("\n", " ")
                rows.append(f"| {workload} | {library} | {why} |" + " |" * 7)
                continue
            other = by.get((workload, "trl"), {})
            speedup = "-"
            if library == "rlhfkit" and "median_s_per_step" in other:
                speedup = f"**{other['median_s_per_step'] / r['median_s_per_step']:.2f}x**"
            losses = r.get("loss_per_step") or [None]
            rows.append(
                f"| {workload} | {library} | {r['median_s_per_step']:.3f} "
                f"| {cell(r.get('generation_s_per_step_median'), '.3f')} "
                f"| {r['throughput_tokens_per_s']:,.0f} "
                f"| {cell(r.get('peak_gpu_memory_gib'), '.1f')} | {r['mfu']:.1%} "
                f"| {cell(r.get('compile_or_capture_s'), '.2f')} "
                f"| {cell(losses[0], '.4g')} / {cell(r.get('final_loss'), '.4g')} | {speedup} |"
            )
    return "\n".join(rows)


def header_line(args, results: list[dict], shape: ModelShape, parameters: int, started) -> str:
    done = [r for r in results if "median_s_per_step" in r]
    device = next((r["device"] for r in done), args.device)
    versions = next((r["versions"] for r in done if r["library"] == "trl"), {})
    trl = sorted({r["trl_version"] for r in done if "trl_version" in r})
    sizes = SMALL if args.tiny else FULL
    return (
        f"{started:%Y-%m-%d %H:%M} UTC, {device}; torch {versions.get('torch', '?')}, "
        f"transformers {versions.get('transformers', '?')}, TRL {' / '.join(trl) or '?'}; "
        f"Llama {shape.layers} layers x {shape.hidden} ({shape.heads} heads / {shape.kv_heads} "
        f"KV, MLP {shape.intermediate}, vocab {shape.vocab}), {parameters / 1e6:.1f}M "
        f"parameters, bf16 autocast over fp32 weights. GRPO {sizes.prompts} x {sizes.group} "
        f"and PPO {sizes.ppo_prompts} responses of {sizes.new_tokens} tokens, one update per "
        f"step in passes of {sizes.micro_batch}; SFT {sizes.pairs} rows, RM and DPO "
        f"{sizes.pairs} pairs, of {sizes.seq_tokens} tokens. s/step: median of the timed "
        f"steps; tokens/s: the step's tokens (GRPO/PPO: prompt + response of every sample) "
        f"over it; MFU: the full FLOP count over {args.peak_flops / 1e12:.0f} TFLOP/s; "
        f"first-step one-off: the first step's sampling time beyond a timed step's."
    )


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "bench-gpu")
    parser.add_argument("--assets", type=Path, help="default: OUT_DIR/assets")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model, few tokens")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--library", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--budget-s", type=float, default=0, help="whole run's time (0 = none)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--peak-flops", type=float, default=H200_BF16_FLOPS)
    parser.add_argument("--peer", type=Path, default=default_peer())
    parser.add_argument("--trl-python", help="TRL's interpreter (default: this one)")
    parser.add_argument("--trl-ppo-path", type=Path, help="TRL 1.12, first on PPO's PYTHONPATH")
    parser.add_argument(
        "--compile-sampling", action="store_true", help="rlhfkit's compile_sampling=true"
    )
    parser.add_argument("--assets-only", action="store_true", help="build the assets, then stop")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started_at = time.monotonic()
    deadline = started_at + args.budget_s if args.budget_s > 0 else float("inf")
    started = datetime.datetime.now(datetime.UTC)
    (args.out_dir / "logs").mkdir(parents=True, exist_ok=True)
    assets = args.assets or args.out_dir / "assets"

    shape, sizes = (TINY, SMALL) if args.tiny else (QWEN_05B, FULL)
    manifest = build_assets(assets, shape, sizes)
    print(f"assets ready in {time.monotonic() - started_at:.0f} s: {assets}", flush=True)
    if args.assets_only:
        return

    scale = 0.1 if args.tiny else 1.0
    results = []
    for index, workload in enumerate(args.workload):
        libraries = [lib for lib in LIBRARIES if lib in args.library]
        for order, library in enumerate(libraries if index % 2 else libraries[::-1]):
            left = deadline - time.monotonic()
            base = {"workload": workload, "library": library, "order": order}
            if left < MIN_SECONDS[workload] * scale:
                results.append({**base, "skipped": f"time budget ({left:.0f} s left)"})
                print(f"{workload:5s} {library:8s} skipped: {left:.0f} s left", flush=True)
                continue
            cmd, env = command(args, library, workload, assets)
            log = args.out_dir / "logs" / f"{workload}-{library}.log"
            # a run past 4 times its expected time is stuck: stopped, so the others still run
            cap = 3600.0 if args.tiny else 4 * MIN_SECONDS[workload]
            result = {**base, **run_one(cmd, env, log, min(left, cap))}
            result.update(derived(result, shape, args.peak_flops))
            results.append(result)
            status = result.get("error", "")[:300] or (
                f"{result['median_s_per_step']:.3f} s/step, MFU {result['mfu']:.1%}"
            )
            print(f"{workload:5s} {library:8s} {status}", flush=True)

    text = table(results, header_line(args, results, shape, manifest["parameters"], started))
    print("\n" + text, flush=True)
    (args.out_dir / "table.md").write_text(text + "\n")
    with open(args.out_dir / "results.jsonl", "w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
