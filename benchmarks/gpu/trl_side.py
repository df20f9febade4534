"""TRL on one GPU-benchmark workload; prints one JSON line.

Runs the shared CPU benchmark's TRL script (`bench_trl.py` in the folder --peer names: its
trainers, hyperparameters, step timer and token counters), called rather than copied, after
four changes made here in this process:
- its workload table gets this benchmark's sizes;
- its common trainer settings leave the CPU (`use_cpu`) on a GPU;
- GRPO and PPO train each step's rollout in passes of `micro_batch` sequences through gradient
  accumulation, one optimizer update per step as rlhfkit's `micro_batch_size` (GRPO: TRL's
  generation batch is then the whole rollout, `per_device_train_batch_size` * accumulation);
- PPO samples and scores the whole rollout in one batch (`local_rollout_forward_batch_size`), as
  rlhfkit does.
Its own `--bf16` is TRL's `bf16=True`: bf16 autocast over float32 weights, as rlhfkit's. Its
JSON line comes back with the GPU's peak memory and the first step's one-off sampling time.

    python benchmarks/gpu/trl_side.py --workload grpo --assets DIR --peer DIR [--tiny]
PPO needs TRL 1.12 first on PYTHONPATH (TRL removed PPOTrainer in 1.13).
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
from pathlib import Path

from workloads import FULL, GENERATION, SMALL, WORKLOADS, Sizes


def configure(bench_trl, workload: str, sizes: Sizes, device: str) -> None:
    """Give the shared TRL script this benchmark's sizes and device (see the module docstring)."""
    table = bench_trl.WORKLOADS[workload]
    accumulation = 1
    if workload == "grpo":
        if sizes.micro_batch % sizes.group:
            raise SystemExit(
                f"micro_batch {sizes.micro_batch} is not whole groups of {sizes.group}"
            )
        # per_device_train_batch_size = prompts * generations: one micro-batch
        table.update(prompts=sizes.micro_batch // sizes.group, generations=sizes.group)
        accumulation = sizes.prompts * sizes.group // sizes.micro_batch
    elif workload == "ppo":
        table.update(prompts=sizes.ppo_prompts)  # the rollout, and its forward batch
        accumulation = sizes.ppo_prompts // sizes.micro_batch
        patch_ppo_micro_batch(sizes.micro_batch)
    else:
        table.update(batch=sizes.pairs, max_length=sizes.seq_tokens)
    if workload in GENERATION:
        table.update(max_completion_length=sizes.new_tokens)
    common = bench_trl.common_config_kwargs

    def gpu_common(wl, total_steps, outdir):
        kwargs = common(wl, total_steps, outdir)
        kwargs.update(use_cpu=device == "cpu", gradient_accumulation_steps=accumulation)
        return kwargs

    bench_trl.common_config_kwargs = gpu_common


def patch_ppo_micro_batch(micro_batch: int) -> None:
    """TRL's PPO passes (per_device_train_batch_size) of `micro_batch` rows; the shared script
    sets it to the whole rollout, and takes the rollout's size (total_episodes, the forward
    batch) from the same number, which stays."""
    import trl.experimental.ppo as ppo

    config = ppo.PPOConfig

    def micro_batched(**kwargs):
        return config(**{**kwargs, "per_device_train_batch_size": micro_batch})

    ppo.PPOConfig = micro_batched


def gpu_fields(result: dict, device: str) -> dict:
    """The peak GPU memory, the device and the first step's one-off sampling time."""
    import torch

    cuda = device != "cpu"
    fields = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    counts = result.get("counts_per_step_all", [])
    if result["workload"] in GENERATION and counts:
        timed = [c["generation_s"] for c in counts[result["warmup_steps"] :]]
        fields.update(
            first_step_s=result["step_seconds"][0],
            first_step_generation_s=counts[0]["generation_s"],
            compile_or_capture_s=max(0.0, counts[0]["generation_s"] - statistics.median(timed)),
            flop_tokens_per_step=result["prompt_tokens_per_step"]
            + result["completion_tokens_per_step"],
        )
    else:
        fields.update(flop_tokens_per_step=result["tokens_per_step"])
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--assets", type=Path, required=True)
    parser.add_argument("--peer", type=Path, required=True, help="folder of bench_trl.py")
    parser.add_argument("--tiny", action="store_true", help="the CPU smoke test's sizes")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    sizes = SMALL if args.tiny else FULL
    # the shared script defaults to hiding every GPU; keep the one asked for
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", args.device.partition(":")[2] or "0")
        os.environ["ACCELERATE_USE_CPU"] = "false"
    sys.path.insert(0, str(args.peer.resolve()))
    import bench_trl

    configure(bench_trl, args.workload, sizes, args.device)
    warmup, timed = sizes.steps(args.workload)
    sys.argv = [
        "bench_trl.py",
        *("--workload", args.workload, "--assets", str(args.assets)),
        *("--steps", str(timed), "--warmup", str(warmup), "--threads", str(args.threads)),
        "--bf16",
    ]
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        bench_trl.main()
    result = json.loads(captured.getvalue().strip().splitlines()[-1])
    result.update(gpu_fields(result, args.device))
    result.update(library="trl", trl_micro_batch=sizes.micro_batch)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
