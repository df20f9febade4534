r"""Online vs offline DPO at the same labelling budget, on `advice`, from the demo's SFT model.

A measurement, not a test: every arm starts from the same SFT model, takes the same number of
optimizer steps of `--prompts-per-step` ranked groups at the same learning rate (constant after a
5-step warm-up) and beta, and is judged by the gold annotator against the SFT model on the
demo's 200 held-out prompts: win rate (ties half) with a 95% Wilson interval, greedy and
sampled (T = 1, two per prompt). The intervals cover the evaluation prompts and samples, not the
spread between training runs: repeat with `--seed` (and another `--out`) for that.

Labels are pairwise comparisons: a ranking of K counts C(K,2), the comparisons it implies
(pairs.jsonl holds exactly those), so a ranking is charged what the pairs it trains on would
cost; counting it as one label would charge a ranking of 8 as much as a single pair.
The online annotator is the demo's (gold + Bradley-Terry noise at the temperature the demo
calibrated to 72.5% agreement, read from summary.json), so only where the samples come from
differs between the arms.

    python scripts/online_vs_offline_dpo.py                    # every arm, about 30 min at 1 thread
    python scripts/online_vs_offline_dpo.py --arms online_k2_small,offline_pairs_small \
        --seed 1 --out runs/ovo_seed1
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch

from rlhfkit.data.formats import Format
from rlhfkit.data.loading import load_examples, write_jsonl
from rlhfkit.eval.policy import gold_win_rate
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.objectives.ranking import ranking_comparisons
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.online_dpo import OnlineDPOConfig, train_online_dpo


def one_pair_per_ranking(rankings: Path, out: Path, seed: int) -> Path:
    """Two of each ranking's responses, in the annotator's order: K = 2 labels of SFT samples on
    distinct prompts, the offline twin of online K = 2."""
    rng, rows = random.Random(seed), []
    for line in rankings.read_text().splitlines():
        row = json.loads(line)
        first, second = sorted(rng.sample(range(len(row["responses"])), 2))
        rows.append(
            {
                "prompt": row["prompt"],
                "chosen": row["responses"][first],
                "rejected": row["responses"][second],
            }
        )
    return write_jsonl(out, rows)


def arms(args, pairs: Path) -> dict[str, tuple[str, dict]]:
    """name -> (trainer, settings); `small` = the small budget, `all` = every offline label."""
    offline = dict(
        lr=args.lr,
        beta=args.beta,
        max_steps=args.steps,
        batch_size=args.prompts_per_step,
        warmup_steps=5,
        min_lr_ratio=1.0,
        loss="plackett_luce",
        precompute_ref=True,
    )
    online = dict(
        lr=args.lr,
        beta=args.beta,
        max_steps=args.steps,
        prompts_per_step=args.prompts_per_step,
        warmup_steps=5,
        task="advice",
        loss="plackett_luce",
        max_new_tokens=64,
        temperature=1.0,
        labeller="annotator",
        annotator_temperature=args.annotator_temperature,
        eval_data=str(args.eval_prompts),
        eval_max_new_tokens=64,
    )
    small, everything = args.small_budget, args.all_labels
    return {
        "offline_rankings_small": (
            "dpo",
            {**offline, "train_data": str(args.rankings), "max_labels": small},
        ),
        "offline_pairs_small": ("dpo", {**offline, "train_data": str(pairs), "max_labels": small}),
        "online_k2_small": ("online", {**online, "samples_per_prompt": 2, "label_budget": small}),
        "iterative_k2_small": (
            "online",
            {
                **online,
                "samples_per_prompt": 2,
                "label_budget": small,
                "regime": "iterative",
                "refresh_every": 5,
            },
        ),
        # half of each batch from the offline pairs, half online: half the budget each
        "hybrid_k2_small": (
            "online",
            {
                **online,
                "samples_per_prompt": 2,
                "label_budget": small // 2,
                "regime": "hybrid",
                "offline_data": str(pairs),
                "offline_fraction": 0.5,
                "offline_max_labels": small // 2,
            },
        ),
        "offline_rankings_all": ("dpo", {**offline, "train_data": str(args.rankings)}),
        "online_k8_all": (
            "online",
            {**online, "samples_per_prompt": 8, "label_budget": everything},
        ),
    }


def train(kind: str, settings: dict, run_dir: Path, model: str, seed: int) -> tuple[Path, int, int]:
    """(final model, labels used, steps taken); a hybrid run's labels include its offline rows."""
    run = prepare_run_dir(run_dir, resume=False, overwrite=True)
    common = dict(
        model=model,
        seed=seed,
        save_every=0,
        eval_every=0,
        progress=False,
        tensorboard=False,
        device="cpu",
    )
    if kind == "dpo":
        result = train_dpo(DPOConfig(**common, **settings), run)
        return result.model_dir, result.labels, len(result.history)
    result = train_online_dpo(OnlineDPOConfig(**common, **settings), run)
    return result.model_dir, result.labels_used + result.offline_labels, len(result.history)


def win_rates(model_dir: Path, sft_dir: str, prompts, samples_per_prompt: int) -> dict[str, float]:
    """Gold win rate against the SFT model: greedy, and sampled at T = 1."""
    policy, sft, tokenizer = (
        load_causal_lm(model_dir),
        load_causal_lm(sft_dir),
        load_tokenizer(sft_dir),
    )
    common = dict(
        tokenizer=tokenizer, task=get_task("advice"), prompts=prompts, max_new_tokens=64, seed=0
    )
    greedy = gold_win_rate(policy, sft, greedy=True, **common)
    sampled = gold_win_rate(
        policy, sft, temperature=1.0, samples_per_prompt=samples_per_prompt, **common
    )
    return {**greedy.as_dict("win_rate_greedy"), **sampled.as_dict("win_rate_sampled")}


def rate_text(result: dict, key: str) -> str:
    return f"{result[key]:.1%} [{result[key + '_low']:.1%}, {result[key + '_high']:.1%}]"


def main() -> None:
    demo = Path("runs/demo")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", default=str(demo / "sft/final"))
    parser.add_argument("--rankings", type=Path, default=demo / "collect/rankings.jsonl")
    parser.add_argument(
        "--eval-prompts", type=Path, default=demo / "data/advice_eval_prompts.jsonl"
    )
    parser.add_argument(
        "--summary", type=Path, default=demo / "summary.json", help="for the annotator temperature"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/online_vs_offline"))
    parser.add_argument("--arms", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--steps", type=int, default=75)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--small-budget", type=int, default=1200, help="comparisons")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--win-rate-samples", type=int, default=2)
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed (data order, sampling, annotator noise)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.annotator_temperature = json.loads(args.summary.read_text())["collect"]["temperature"]
    args.all_labels = sum(
        ranking_comparisons(len(json.loads(line)["responses"]))
        for line in args.rankings.read_text().splitlines()
    )
    pairs = one_pair_per_ranking(args.rankings, args.out / "one_pair_per_ranking.jsonl", seed=0)
    prompts = load_examples(args.eval_prompts, Format.PROMPT)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    chosen = args.arms.split(",") if args.arms else None
    for name, (kind, settings) in arms(args, pairs).items():
        if chosen and name not in chosen:
            continue
        started = time.perf_counter()
        model_dir, labels, steps = train(kind, settings, args.out / name, args.sft, args.seed)
        trained = time.perf_counter() - started
        results[name] = {
            "labels": labels,
            "steps": steps,
            "train_seconds": round(trained),
            **win_rates(model_dir, args.sft, prompts, args.win_rate_samples),
        }
        results_path.write_text(json.dumps(results, indent=2))
        rates = ", ".join(
            f"{kind} {rate_text(results[name], f'win_rate_{kind}')}"
            for kind in ("greedy", "sampled")
        )
        print(
            f"RESULT {name}: {labels} labels, {steps} steps, {trained:.0f} s; "
            f"win rate vs SFT {rates}",
            flush=True,
        )


if __name__ == "__main__":
    main()
