"""rlhfkit on one GPU-benchmark workload; prints one JSON line.

The configs are the shared CPU benchmark's (`benchmarks/peer_workloads.py`: the same learning
rates, losses, clipping, file order and reward), given this benchmark's sizes, the device, bf16
autocast over float32 weights, and `force_lr` (the learning-rate guard is for pretrained
models; this one is random). GRPO and PPO train each step's rollout as one optimizer update in
passes of `micro_batch` sequences (`micro_batch_size`).

    python benchmarks/gpu/rlhfkit_side.py --workload grpo --assets DIR [--tiny] [--device cuda]
"""

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the shared CPU benchmark's rlhfkit workloads

import peer_workloads  # noqa: E402
from workloads import FULL, GENERATION, SMALL, WORKLOADS, Sizes  # noqa: E402

from rlhfkit.runtime.device import Precision  # noqa: E402
from rlhfkit.runtime.metrics import read_metrics  # noqa: E402
from rlhfkit.runtime.rundir import prepare_run_dir  # noqa: E402


def gpu_settings(workload: str, sizes: Sizes, device: str, compile_sampling: bool) -> dict:
    """The fields that turn the shared CPU benchmark's config into this benchmark's."""
    common = dict(device=device, precision=Precision.BF16, force_lr=True)
    if workload == "grpo":
        rollout = sizes.prompts * sizes.group
        return dict(
            prompts_per_step=sizes.prompts,
            group_size=sizes.group,
            mini_batch_size=rollout,
            micro_batch_size=sizes.micro_batch,
            max_new_tokens=sizes.new_tokens,
            compile_sampling=compile_sampling,
            **common,
        )
    if workload == "ppo":
        return dict(
            prompts_per_step=sizes.ppo_prompts,
            mini_batch_size=sizes.ppo_prompts,
            micro_batch_size=sizes.micro_batch,
            max_new_tokens=sizes.new_tokens,
            # the reward model re-tokenises the decoded text, which may take more tokens
            reward_max_length=2 * sizes.new_tokens + 64,
            compile_sampling=compile_sampling,
            **common,
        )
    return dict(batch_size=sizes.pairs, max_length=sizes.seq_tokens, **common)


def step_tokens(workload: str, sizes: Sizes, manifest: dict, step: int) -> int:
    """Training tokens of step `step` (0-based; SFT, RM, DPO), or the prompt tokens of its
    sampled sequences (GRPO, PPO): rows in file order, wrapping at the end."""
    if workload in GENERATION:
        count, samples = (
            (sizes.prompts, sizes.group) if workload == "grpo" else (sizes.ppo_prompts, 1)
        )
        lengths = manifest["prompt_tokens"]
    else:
        count, samples = sizes.pairs, 1
        lengths = manifest["sft_tokens" if workload == "sft" else "preference_tokens"]
    return samples * sum(lengths[(step * count + i) % len(lengths)] for i in range(count))


def metrics(workload: str, sizes: Sizes, manifest: dict, lines: list[dict], warmup: int) -> dict:
    durations = peer_workloads.step_durations(lines, warmup)
    timed = lines[warmup:]
    tokens = [step_tokens(workload, sizes, manifest, k) for k in range(warmup, len(lines))]
    out = peer_workloads.timing(durations)
    losses = [line["loss"] for line in lines]
    if workload == "ppo":  # as the shared benchmark: policy loss + 0.1 * value loss
        losses = [line["loss"] + 0.1 * line["value_loss"] for line in lines]
    out.update(final_loss=losses[-1], loss_per_step=losses)
    if workload not in GENERATION:
        out.update(tokens_per_step=sum(tokens) / len(timed))
        out.update(flop_tokens_per_step=out["tokens_per_step"])
        return out
    completion = [line["response_tokens"] for line in timed]
    generation = [line["time_generation"] for line in timed]
    out.update(
        prompt_tokens_per_step=sum(tokens) / len(timed),
        completion_tokens_per_step=sum(completion) / len(timed),
        flop_tokens_per_step=(sum(tokens) + sum(completion)) / len(timed),
        generation_s_per_step_median=statistics.median(generation),
        first_step_s=lines[0]["step_seconds"],
        first_step_generation_s=lines[0]["time_generation"],
        # one-off work in the first step (compilation, warm-up of kernels): its sampling time
        # beyond a timed step's
        compile_or_capture_s=max(0.0, lines[0]["time_generation"] - statistics.median(generation)),
        phase_s_per_step_median={
            key[5:]: statistics.median(line.get(key, 0.0) for line in timed)
            for key in sorted({k for line in timed for k in line if k.startswith("time_")})
        },
    )
    return out


def run(
    workload: str,
    assets: Path,
    sizes: Sizes,
    device: str,
    compile_sampling: bool = False,
) -> dict:
    """Train `workload` for its warm-up and timed steps; the result line."""
    manifest = json.loads((assets / "manifest.json").read_text())
    warmup, timed = sizes.steps(workload)
    make = (
        peer_workloads.generation_config
        if workload in GENERATION
        else peer_workloads.offline_config
    )
    train, cfg = make(workload, assets, warmup + timed)
    cfg = dataclasses.replace(cfg, **gpu_settings(workload, sizes, device, compile_sampling))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"rlhfkit-{workload}-") as tmp:
        run_dir = prepare_run_dir(Path(tmp) / workload, resume=False, overwrite=True)
        train(cfg, run_dir)
        lines = read_metrics(run_dir.metrics_path)
    wall = time.perf_counter() - started
    if len(lines) != warmup + timed:
        raise SystemExit(f"expected {warmup + timed} steps, the run logged {len(lines)}")
    return {
        "workload": workload,
        "library": "rlhfkit",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": "bf16-autocast",
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "settings": {
            k: getattr(v, "value", v)  # an enum as its config value
            for k, v in gpu_settings(workload, sizes, device, compile_sampling).items()
        },
        "warmup_steps": warmup,
        **metrics(workload, sizes, manifest, lines, warmup),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--assets", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="the CPU smoke test's sizes")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--compile-sampling", action="store_true", help="rlhfkit's compile_sampling=true"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = SMALL if args.tiny else FULL
    result = run(args.workload, args.assets, sizes, args.device, args.compile_sampling)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
