"""Length hacking on purpose: a length-biased annotator, its reward model, and PPO against it.

The demo's SFT samples (its `collect/rankings.jsonl` responses) are ranked again by annotators
who judge by the gold score plus `--bias` per word, calibrated to the same 72.5% agreement. A
reward model learns that bias; PPO against it then lengthens its answers while the unbiased
gold score does not follow (reward hacking, seed 003). Three PPO runs from the same SFT model,
same steps and learning rate, show what contains it:
  1. no KL penalty (kl_coef 0), single reward model;
  2. the KL penalty (kl_coef `--kl-coef`), single reward model;
  3. no KL penalty, a 4-head ensemble reward model with the uncertainty penalty
     (reward = mean - `--uncertainty-coef` * std over heads).
Each final policy is evaluated on the demo's 200 held-out prompts (length, gold score, proxy,
KL to SFT, win rate against SFT) and `report.html` shows length, proxy and gold over training.

    python scripts/length_hacking.py                   # about 15 min on 2 CPU cores
"""

import argparse
import dataclasses
import json
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlhfkit.data.formats import Format, PromptExample  # noqa: E402
from rlhfkit.data.loading import load_examples, write_jsonl  # noqa: E402
from rlhfkit.eval.model_eval import evaluate_model, win_rates  # noqa: E402
from rlhfkit.eval.overoptimisation import gold_peak  # noqa: E402
from rlhfkit.eval.report import figure_html, html_table, overoptimisation_plot, png_data  # noqa: E402
from rlhfkit.eval.tables import metric_table  # noqa: E402
from rlhfkit.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from rlhfkit.rewards.builder import load_reward_model_source  # noqa: E402
from rlhfkit.runtime.metrics import read_metrics  # noqa: E402
from rlhfkit.runtime.rundir import prepare_run_dir  # noqa: E402
from rlhfkit.tasks.collect import label_responses  # noqa: E402
from rlhfkit.tasks.registry import get_task  # noqa: E402
from rlhfkit.train.ppo import PPOConfig, train_ppo  # noqa: E402
from rlhfkit.train.reward import RewardConfig, train_reward_model  # noqa: E402


def biased_rankings(demo: Path, out: Path, bias: float, seed: int) -> dict:
    """The demo's sampled responses ranked again by length-biased annotators."""
    task = get_task("advice")

    def groups(path: Path) -> list[tuple[PromptExample, list[str]]]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [(task.prompt_example(row["prompt"]), row["responses"]) for row in rows]

    collection = label_responses(
        task,
        groups(demo / "collect" / "rankings.jsonl"),
        groups(demo / "collect" / "heldout_rankings.jsonl"),
        target_agreement=0.725,
        rng=random.Random(seed),
        length_bias=bias,
    )
    write_jsonl(out / "rankings.jsonl", collection.rankings)
    write_jsonl(out / "heldout_rankings.jsonl", collection.heldout_rankings)
    return {"temperature": collection.temperature, "agreement": collection.agreement}


def train_rm(sft: Path, out: Path, name: str, heads: int, steps: int, seed: int) -> Path:
    """The demo's reward-model settings, on the biased rankings."""
    cfg = RewardConfig(
        model=str(sft),
        train_data=str(out / "rankings.jsonl"),
        eval_data=str(out / "heldout_rankings.jsonl"),
        num_heads=heads,
        max_steps=steps,
        batch_size=16,
        lr=1e-3,
        eval_every=0,
        save_every=0,
        seed=seed,
    )
    return train_reward_model(
        cfg, prepare_run_dir(out / name, resume=False, overwrite=True)
    ).model_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--demo", type=Path, default=Path("runs/demo"), help="a finished `make demo` run"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/length_hacking"))
    parser.add_argument("--bias", type=float, default=0.1, help="annotator score added per word")
    parser.add_argument("--steps", type=int, default=40, help="PPO steps per run")
    parser.add_argument("--rm-steps", type=int, default=150, help="reward-model steps (the demo's)")
    parser.add_argument("--kl-coef", type=float, default=0.2)
    parser.add_argument("--uncertainty-coef", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite report.html from a finished run"
    )
    args = parser.parse_args()
    if args.report_only:
        return write_report(args.out)
    sft, out = args.demo / "sft" / "final", args.out
    out.mkdir(parents=True, exist_ok=True)

    # step 1. biased labels, and reward models that learn them
    labels = biased_rankings(args.demo, out, args.bias, args.seed)
    single = train_rm(sft, out, "rm", 1, args.rm_steps, args.seed)
    ensemble = train_rm(sft, out, "rm_ensemble", 4, args.rm_steps, args.seed)

    # step 2. PPO against them: no penalty, the KL penalty, the ensemble's uncertainty penalty
    base = PPOConfig(
        model=str(sft),
        task="advice",
        max_steps=args.steps,
        lr=2e-5,
        eval_every=0,
        save_every=0,
        eval_data=str(args.demo / "data" / "advice_eval_prompts.jsonl"),
        seed=args.seed,
    )
    runs = {
        "no penalty": dataclasses.replace(base, reward_model=str(single), kl_coef=0.0),
        f"KL penalty {args.kl_coef}": dataclasses.replace(
            base, reward_model=str(single), kl_coef=args.kl_coef
        ),
        f"ensemble, uncertainty {args.uncertainty_coef}": dataclasses.replace(
            base,
            reward_model=str(ensemble),
            kl_coef=0.0,
            reward_uncertainty_coef=args.uncertainty_coef,
        ),
    }
    policies = {
        name: train_ppo(
            cfg, prepare_run_dir(out / f"ppo_{i}", resume=False, overwrite=True)
        ).model_dir
        for i, (name, cfg) in enumerate(runs.items())
    }

    # step 3. every policy on the held-out prompts, judged by the unbiased gold score
    task, tokenizer = get_task("advice"), load_tokenizer(sft)
    prompts = load_examples(str(args.demo / "data" / "advice_eval_prompts.jsonl"), Format.PROMPT)
    reference = load_causal_lm(sft)
    proxy = load_reward_model_source(
        str(single),
        tokenizer=tokenizer,
        device="cpu",
        batch_size=256,
        max_length=256,
        uncertainty_coef=0.0,
        name="biased reward model",
    )
    settings = dict(
        reference=reference,
        proxy=proxy,
        samples_per_prompt=2,
        max_new_tokens=64,
        seed=args.seed,
        batch_size=512,
    )
    sft_eval = evaluate_model(reference, tokenizer, task, prompts, **settings)
    metrics = {"sft": sft_eval.metrics}
    for name, path in policies.items():
        result = evaluate_model(load_causal_lm(path), tokenizer, task, prompts, **settings)
        metrics[name] = {**result.metrics, **win_rates(result, sft_eval)}
    summary = {
        "bias_per_word": args.bias,
        "labels": labels,
        "steps": args.steps,
        "runs": list(runs),
        "eval": metrics,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out)


def write_report(out: Path) -> None:
    """`report.html` from `summary.json` and the PPO runs' metrics: length, proxy and gold over
    training, proxy and gold against KL (gold peak marked), and the evaluation table."""
    summary = json.loads((out / "summary.json").read_text())
    names = summary.get("runs") or [name for name in summary["eval"] if name != "sft"]
    logs = {  # training steps (step 0 holds the starting evaluation alone)
        name: [r for r in read_metrics(out / f"ppo_{i}" / "metrics.jsonl") if r["step"] > 0]
        for i, name in enumerate(names)
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, rows in logs.items():
        for ax, key in zip(axes, ("response_length", "proxy_reward", "gold_score")):
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=name)
            ax.set_title(f"{key} (training samples)")
            ax.set_xlabel("PPO step")
    axes[0].legend(fontsize=8)
    columns, table = metric_table(summary["eval"])
    peaks = {
        name: gold_peak([r["proxy_reward"] for r in rows], [r["gold_score"] for r in rows])
        for name, rows in logs.items()
    }
    labels = summary["labels"]
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<title>length hacking</title></head><body>"
        f"<h1>Length hacking: annotators add {summary['bias_per_word']} per word</h1>"
        f"<p>Biased annotators: temperature {labels['temperature']:.2f}, "
        f"agreement {labels['agreement']:.1%}. "
        f"PPO {summary['steps']} steps from the demo's SFT model. "
        "Gold = the unbiased annotator.</p>"
        + figure_html("over training", png_data(fig))
        + html_table(columns, table)
        + "".join(
            figure_html(
                f"{name}: proxy and gold against KL",
                overoptimisation_plot(
                    rows,
                    "kl_per_sequence",
                    "KL to SFT per sequence (k1, training samples)",
                    "proxy_reward",
                    "proxy: biased reward model",
                ),
            )
            for name, rows in logs.items()
        )
        + "</body></html>"
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    print(
        "gold peaks (logged step index; None = gold does not turn down while the proxy rises):",
        peaks,
    )
    print(
        json.dumps(
            {
                name: {
                    k: m.get(k)
                    for k in (
                        "length_tokens",
                        "gold_sampled",
                        "proxy_sampled",
                        "kl_k1_per_sequence",
                        "win_rate_sampled",
                    )
                }
                for name, m in summary["eval"].items()
            },
            indent=2,
        )
    )
    print(f"report: {(out / 'report.html').resolve()}")


if __name__ == "__main__":
    main()
