r"""rlhfkit on the shared benchmark workloads (the peer harness's assets), one JSON line each.

The same work as the reference harness (`../shared/peer/README.md`): the same model and data
files, file order (batch k = rows k*B ... (k+1)*B - 1), a constant learning rate with no
warm-up, AdamW (0.9, 0.999, 1e-8, no weight decay), global-norm clipping at 1.0, fp32, two
threads, EOS appended to every completion, and for DPO a frozen reference run at every step
(not precomputed). Each run is rlhfkit's own trainer through its config, in a process set up
as an `rlhfkit` command sets up its own (threads, and the C allocator keeping freed memory:
`runtime/host_memory.py`), nothing else.

Keys follow the reference harness: `median_s_per_step` (and mean/min/max) over the timed steps,
`tokens_per_s` (non-padding tokens of every sequence entering the trained model, over the
timed steps' wall time; DPO's reference pass is not counted again), `peak_rss_mib`,
`final_loss`, `loss_per_step`, `step_seconds`. A step's duration is the time between the
metrics lines of consecutive steps, so it includes the trainer's per-step logging, as the
reference's does. The first `--warmup` steps run untimed.

The generation workloads (GRPO, RLOO, PPO: 64 rollouts of at most 32 tokens per step) also
report `completion_tokens_per_s`, `total_tokens_per_s` (prompt tokens once per sampled sequence
plus completion tokens), the reference's FLOP estimates and achieved GFLOP/s, and the median
seconds per phase of a step (generation, reward, reference forward, value forward,
forward/backward, optimizer step), from the trainer's own phase timer.

    python ../shared/peer/make_assets.py /tmp/peer-assets
    python benchmarks/peer_workloads.py --assets /tmp/peer-assets \
        --workload sft rm dpo grpo rloo ppo
"""

import argparse
import dataclasses
import importlib.metadata
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
from rlhfkit.objectives.aggregate import LossAggregation
from rlhfkit.objectives.group_advantages import GroupNorm
from rlhfkit.objectives.kl import KLEstimator
from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.host_memory import keep_freed_memory
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.ppo import PPOConfig, train_ppo
from rlhfkit.train.reward import RewardConfig, train_reward_model
from rlhfkit.train.rloo import RLOOConfig, train_rloo
from rlhfkit.train.sft import SFTConfig, train_sft

BATCH = 16  # rows (SFT) or pairs (RM, DPO) per step
STEPS = {"sft": 100, "rm": 100, "dpo": 100, "grpo": 30, "rloo": 30, "ppo": 30}
FIRST_LOSS = {"sft": 7.627, "rm": 0.6907, "dpo": 0.6931}  # the reference's step-1 losses
GENERATION = ("grpo", "rloo", "ppo")
PROMPTS, GROUP, NEW_TOKENS = 8, 8, 32  # GRPO/RLOO: 8 prompts x 8 samples; PPO: 64 prompts x 1
# matmul parameters per token (peer README): 4 layers x (4*256^2 + 3*256*688) + the 2048 x 256 LM
# head; the sequence classifier has a 256 -> 1 score head instead of the LM head
MATMUL_PARAMS = 4 * (4 * 256**2 + 3 * 256 * 688) + 2048 * 256
MATMUL_PARAMS_SEQCLS = MATMUL_PARAMS - 2048 * 256 + 256
REWARD_FN = f"{Path(__file__).resolve().parent / 'peer_reward.py'}:digits_and_answer"


def sequence_tokens(workload: str, assets: Path) -> list[int]:
    """Non-padding tokens of each training row's sequences, in file order (EOS included)."""
    tokenizer = load_tokenizer(assets / "policy")
    if workload == "sft":
        rows, _ = tokenize_sft(
            tokenizer,
            load_examples(str(assets / "data" / "sft.jsonl"), Format.SFT),
            max_length=128,
            truncation=Truncation.KEEP_START,
        )
        return [len(r.input_ids) for r in rows]
    pairs, _ = tokenize_preferences(
        tokenizer,
        load_examples(str(assets / "data" / "preferences.jsonl"), Format.PREFERENCE),
        max_length=128,
        truncation=Truncation.KEEP_START,
    )
    return [len(chosen.input_ids) + len(rejected.input_ids) for chosen, rejected, _ in pairs]


def offline_config(workload: str, assets: Path, max_steps: int):
    """rlhfkit's config for an SFT, reward-model or DPO workload."""
    common = dict(
        max_steps=max_steps,
        batch_size=BATCH,
        max_length=128,
        warmup_steps=0,
        min_lr_ratio=1.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        shuffle=False,
        eval_every=0,
        save_every=0,
        seed=0,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    if workload == "sft":
        return train_sft, SFTConfig(
            model=str(assets / "policy"),
            train_data=str(assets / "data" / "sft.jsonl"),
            lr=1e-4,
            sample_every=0,
            **common,
        )
    if workload == "rm":
        return train_reward_model, RewardConfig(
            model=str(assets / "seqcls"),
            lr=1e-4,
            train_data=str(assets / "data" / "preferences.jsonl"),
            **common,
        )
    return train_dpo, DPOConfig(
        model=str(assets / "policy"),
        train_data=str(assets / "data" / "preferences.jsonl"),
        lr=1e-5,
        beta=0.1,
        precompute_ref=False,
        **common,
    )


def generation_config(workload: str, assets: Path, max_steps: int):
    """rlhfkit's config for a GRPO, RLOO or PPO workload: prompts in file order, 32 new tokens at
    T = 1, stop at EOS, constant learning rate 1e-5, no evaluation, no checkpoints."""
    common = dict(
        model=str(assets / "policy"),
        task="arith",
        train_data=str(assets / "data" / "prompts.jsonl"),
        shuffle=False,
        max_new_tokens=NEW_TOKENS,
        temperature=1.0,
        max_steps=max_steps,
        lr=1e-5,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        eval_every=-1,
        save_every=0,
        seed=0,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    if workload == "grpo":
        return train_grpo, GRPOConfig(
            reward=REWARD_FN,
            prompts_per_step=PROMPTS,
            group_size=GROUP,
            mini_batch_size=PROMPTS * GROUP,
            mu=1,
            clip_eps=0.2,
            clip_eps_high=0.2,
            beta=0.04,
            kl_estimator=KLEstimator.K3,
            norm=GroupNorm.GRPO,
            std_unbiased=True,
            adv_eps=1e-4,
            loss_aggregation=LossAggregation.SEQUENCE_MEAN,
            **common,
        )
    if workload == "rloo":
        return train_rloo, RLOOConfig(
            reward=REWARD_FN,
            prompts_per_step=PROMPTS,
            group_size=GROUP,
            mini_batch_size=PROMPTS * GROUP,
            clip_eps=0.2,
            beta=0.04,
            **common,
        )
    # PPO as the reference runs it: the sequence classifier is both the frozen reward model and
    # the critic's start; one epoch, one mini-batch of 64; no gradient clipping (0 = off). The
    # reference sums pg + 0.1 * vf into one AdamW; AdamW's update does not depend on a loss's
    # scale (up to its eps), so the critic's own AdamW at the same rate takes the same steps.
    return train_ppo, PPOConfig(
        reward_model=str(assets / "seqcls"),
        critic_init="reward_model",
        reward_max_length=128,
        prompts_per_step=PROMPTS * GROUP,
        mini_batch_size=PROMPTS * GROUP,
        ppo_epochs=1,
        clip_eps=0.2,
        value_clip=0.2,
        gamma=1.0,
        lam=0.95,
        kl_coef=0.04,
        kl_target=0.0,
        critic_lr=1e-5,
        **{**common, "max_grad_norm": 0.0},
    )


def step_durations(lines: list[dict], warmup: int) -> list[float]:
    """Steps warmup+1 ... : the time between consecutive metrics lines (step 1 has no start)."""
    times = [line["time"] for line in lines]
    return [b - a for a, b in zip(times, times[1:])][warmup - 1 :]


def timing(durations: list[float]) -> dict:
    return {
        "steps_timed": len(durations),
        "median_s_per_step": statistics.median(durations),
        "mean_s_per_step": sum(durations) / len(durations),
        "min_s_per_step": min(durations),
        "max_s_per_step": max(durations),
        "step_seconds": [round(d, 4) for d in durations],
    }


def flop_estimates(workload: str, tokens_per_step: float) -> tuple[float, float]:
    """The reference's per-step FLOP estimates: 8*N*T (generation forwards + training forward and
    backward) and that plus the other forwards its trainers do (see the peer README)."""
    brief = 8 * MATMUL_PARAMS * tokens_per_step
    extra = {
        "grpo": 2 * MATMUL_PARAMS,
        "rloo": 4 * MATMUL_PARAMS,
        "ppo": 2 * MATMUL_PARAMS + 10 * MATMUL_PARAMS_SEQCLS,
    }[workload]
    return brief, brief + extra * tokens_per_step


def generation_metrics(workload: str, lines: list[dict], warmup: int, assets: Path) -> dict:
    timed = lines[warmup:]
    durations = step_durations(lines, warmup)
    tokenizer = load_tokenizer(assets / "policy")
    prompts = load_examples(str(assets / "data" / "prompts.jsonl"), Format.PROMPT)
    prompt_lengths = [
        len(tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) for p in prompts
    ]
    per_step = PROMPTS if workload != "ppo" else PROMPTS * GROUP
    samples = GROUP if workload != "ppo" else 1
    prompt_tokens = sum(
        prompt_lengths[(k * per_step + i) % len(prompts)] * samples
        for k in range(warmup, len(lines))
        for i in range(per_step)
    )
    completion = sum(line["response_tokens"] for line in timed)
    total = sum(durations)
    brief, full = flop_estimates(workload, (prompt_tokens + completion) / len(timed))
    median = statistics.median(durations)
    phases = sorted({key for line in timed for key in line if key.startswith("time_")})
    losses = [
        line["loss"] + (0.1 * line["value_loss"] if workload == "ppo" else 0.0) for line in lines
    ]
    return {
        **timing(durations),
        "completion_tokens_per_s": completion / total,
        "total_tokens_per_s": (completion + prompt_tokens) / total,
        "tokens_per_s": (completion + prompt_tokens) / total,
        "completion_tokens_per_step": completion / len(timed),
        "prompt_tokens_per_step": prompt_tokens / len(timed),
        "sequences_per_step": per_step * samples,
        "phase_s_per_step_median": {
            key[5:]: statistics.median(line.get(key, 0.0) for line in timed) for key in phases
        },
        "generation_s_per_step_median": statistics.median(
            line["time_generation"] for line in timed
        ),
        "generation_fraction_of_step": sum(line["time_generation"] for line in timed) / total,
        "matmul_params_N": MATMUL_PARAMS,
        "est_flops_per_step_2N_gen_plus_6N_train": brief,
        "est_flops_per_step_incl_ref_and_aux_models": full,
        "achieved_gflops_brief": brief / median / 1e9,
        "achieved_gflops_full": full / median / 1e9,
        "final_loss": losses[-1],
        "loss_per_step": losses,
    }


def offline_metrics(workload: str, lines: list[dict], warmup: int, assets: Path) -> dict:
    durations = step_durations(lines, warmup)
    losses = [line["loss"] for line in lines]
    tokens = sequence_tokens(workload, assets)
    timed_tokens = sum(
        tokens[(k * BATCH + i) % len(tokens)]
        for k in range(warmup, len(lines))
        for i in range(BATCH)
    )
    return {
        **timing(durations),
        "tokens_per_s": timed_tokens / sum(durations),
        "tokens_per_step": timed_tokens / len(durations),
        "final_loss": losses[-1],
        "loss_per_step": losses,
        "first_loss_matches_reference": abs(losses[0] - FIRST_LOSS[workload]) < 1e-3,
    }


def run_workload(
    workload: str, assets: Path, steps: int, warmup: int, out_dir: Path, bf16: bool = False
) -> dict:
    make = generation_config if workload in GENERATION else offline_config
    train, cfg = make(workload, assets, warmup + steps)
    # bf16 autocast over float32 master weights, as the reference's bf16=True
    cfg = dataclasses.replace(cfg, precision=Precision.BF16 if bf16 else Precision.FP32)
    run = prepare_run_dir(out_dir / workload, resume=False, overwrite=True)
    started = time.perf_counter()
    train(cfg, run)
    wall = time.perf_counter() - started
    lines = read_metrics(run.metrics_path)
    metrics = (generation_metrics if workload in GENERATION else offline_metrics)(
        workload, lines, warmup, assets
    )
    return {
        "workload": workload,
        "library": "rlhfkit",
        "version": importlib.metadata.version("rlhfkit"),
        "precision": "bf16-autocast" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "warmup_steps": warmup,
        **metrics,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--assets", type=Path, required=True, help="the directory make_assets.py wrote"
    )
    parser.add_argument("--workload", nargs="+", choices=sorted(STEPS), default=sorted(STEPS))
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps (0 = the reference's: 100 or 30)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast (the reference's BF16=1); default fp32"
    )
    parser.add_argument("--out", type=Path, help="append the JSON lines here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every `rlhfkit` run does (runner.run_in_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workload:
            # peak RSS is per process: run one workload per process to compare it (as the
            # reference does)
            line = json.dumps(
                run_workload(
                    workload,
                    args.assets,
                    args.steps or STEPS[workload],
                    args.warmup,
                    Path(tmp),
                    args.bf16,
                )
            )
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
