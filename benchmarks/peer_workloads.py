"""rlhfkit on the shared benchmark workloads (the peer harness's assets), one JSON line each.

The same work as the reference harness (`../shared/peer/README.md`): the same model and data
files, file order (batch k = rows k*B ... (k+1)*B - 1), a constant learning rate with no
warm-up, AdamW (0.9, 0.999, 1e-8, no weight decay), global-norm clipping at 1.0, fp32, two
threads, EOS appended to every completion, and for DPO a frozen reference run at every step
(not precomputed). Each run is rlhfkit's own trainer through its config, nothing else.

Keys follow the reference harness: `median_s_per_step` (and mean/min/max) over the timed steps,
`tokens_per_s` (non-padding tokens of every sequence entering the trained model, over the
timed steps' wall time; DPO's reference pass is not counted again), `peak_rss_mib`,
`final_loss`, `loss_per_step`, `step_seconds`. A step's duration is the time between the
metrics lines of consecutive steps, so it includes the trainer's per-step logging, as the
reference's does. The first `--warmup` steps run untimed.

Not yet here: the generation workloads (GRPO, RLOO, PPO) and the `make bench` run that
alternates with the reference library.

    python ../shared/peer/make_assets.py /tmp/peer-assets
    python benchmarks/peer_workloads.py --assets /tmp/peer-assets --workload sft rm dpo
"""

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlhfkit.data.formats import Format
from rlhfkit.data.loading import load_examples
from rlhfkit.data.tokenize import Truncation, tokenize_preferences, tokenize_sft
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.reward import RewardConfig, train_reward_model
from rlhfkit.train.sft import SFTConfig, train_sft

BATCH = 16  # rows (SFT) or pairs (RM, DPO) per step
STEPS = {"sft": 100, "rm": 100, "dpo": 100}
FIRST_LOSS = {"sft": 7.627, "rm": 0.6907, "dpo": 0.6931}  # the reference's step-1 losses


def sequence_tokens(workload: str, assets: Path) -> list[int]:
    """Non-padding tokens of each training row's sequences, in file order (EOS included)."""
    tokenizer = load_tokenizer(assets / "policy")
    if workload == "sft":
        rows, _ = tokenize_sft(tokenizer, load_examples(str(assets / "data" / "sft.jsonl"), Format.SFT),
                               max_length=128, truncation=Truncation.KEEP_START)
        return [len(r.input_ids) for r in rows]
    pairs, _ = tokenize_preferences(tokenizer, load_examples(str(assets / "data" / "preferences.jsonl"), Format.PREFERENCE),
                                    max_length=128, truncation=Truncation.KEEP_START)
    return [len(chosen.input_ids) + len(rejected.input_ids) for chosen, rejected, _ in pairs]


def run_workload(workload: str, assets: Path, steps: int, warmup: int, out_dir: Path) -> dict:
    common = dict(max_steps=warmup + steps, batch_size=BATCH, max_length=128, warmup_steps=0, min_lr_ratio=1.0,
                  weight_decay=0.0, max_grad_norm=1.0, shuffle=False, eval_every=0, save_every=0, seed=0,
                  device="cpu", progress=False, tensorboard=False)
    run = prepare_run_dir(out_dir / workload, resume=False, overwrite=True)
    started = time.perf_counter()
    if workload == "sft":
        train_sft(SFTConfig(model=str(assets / "policy"), train_data=str(assets / "data" / "sft.jsonl"), lr=1e-4,
                            sample_every=0, **common), run)
    elif workload == "rm":
        train_reward_model(RewardConfig(model=str(assets / "seqcls"), train_data=str(assets / "data" / "preferences.jsonl"),
                                        lr=1e-4, **common), run)
    else:
        train_dpo(DPOConfig(model=str(assets / "policy"), train_data=str(assets / "data" / "preferences.jsonl"),
                            lr=1e-5, beta=0.1, precompute_ref=False, **common), run)
    wall = time.perf_counter() - started
    lines = read_metrics(run.metrics_path)
    times, losses = [line["time"] for line in lines], [line["loss"] for line in lines]
    durations = [b - a for a, b in zip(times, times[1:])][warmup - 1 :]  # steps warmup+1 ... warmup+steps
    tokens = sequence_tokens(workload, assets)
    timed_tokens = sum(tokens[(k * BATCH + i) % len(tokens)] for k in range(warmup, warmup + steps) for i in range(BATCH))
    return {
        "workload": workload, "library": "rlhfkit", "precision": "fp32", "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "warmup_steps": warmup, "steps_timed": len(durations),
        "median_s_per_step": statistics.median(durations), "mean_s_per_step": sum(durations) / len(durations),
        "min_s_per_step": min(durations), "max_s_per_step": max(durations),
        "tokens_per_s": timed_tokens / sum(durations), "tokens_per_step": timed_tokens / steps,
        "final_loss": losses[-1], "loss_per_step": losses,
        "first_loss_matches_reference": abs(losses[0] - FIRST_LOSS[workload]) < 1e-3,
        "step_seconds": [round(d, 4) for d in durations],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, required=True, help="the directory make_assets.py wrote")
    parser.add_argument("--workload", nargs="+", choices=sorted(STEPS), default=sorted(STEPS))
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0 = the reference's: 100)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="append the JSON lines here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workload:
            # peak RSS is per process: run one workload per process to compare it (as the reference does)
            line = json.dumps(run_workload(workload, args.assets, args.steps or STEPS[workload], args.warmup, Path(tmp)))
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
