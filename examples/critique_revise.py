"""AI feedback on the `advice` task, end to end with the tiny model, in a few minutes on a CPU.

1. The tiny model is fine-tuned on advice replies and on critique-and-revise demonstrations
   (`AdviceTask.critique_examples`): it learns to answer, to name the sentence of a reply that
   breaks a principle, and to rewrite the reply without it.
2. Its replies are ranked by the simulated human annotator, as the pipeline's collect stage does.
3. RLAIF: a judge is fine-tuned from the SFT model on those human-style pairs (each in both
   orders) and judges held-out pairs; its agreement with the gold annotator is set beside the
   annotator's own (`rlhfkit judge`).
4. Constitutional AI: the SFT model critiques and revises its own replies to held-out prompts
   against the task's principles; the judge compares each revision with the original
   (`rlhfkit critique`). The gold score says whether the revisions really helped.

    python examples/critique_revise.py [key=value ...]      # e.g. sft_steps=200 out=runs/cai
"""

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import transformers

from rlhfkit.data.loading import write_jsonl
from rlhfkit.feedback.judge import ANSWER_A, judge_prompt
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.config import load_config, save_config
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.collect import label_responses, ranking_pairs
from rlhfkit.train.constitutional import CritiqueConfig, run_critique
from rlhfkit.train.rlaif import JudgeConfig, run_judge
from rlhfkit.train.sft import SFTConfig, train_sft


@dataclass(frozen=True)
class ExampleConfig:
    out: str = "runs/critique_revise"
    """Everything goes here (replaced on every run)."""
    seed: int = 0
    """Seeds data, model and every stage."""
    advice_rows: int = 2000
    """Advice demonstrations in the SFT data."""
    critique_rows: int = 3000
    """Critique-and-revise demonstrations (two rows each: critique, revision)."""
    sft_steps: int = 900
    """SFT steps of the policy."""
    batch_size: int = 16
    """Rows per SFT step, for the policy and the judge."""
    collect_prompts: int = 300
    """Prompts whose sampled replies are ranked for the judge's training pairs."""
    heldout_prompts: int = 100
    """Held-out prompts: ranked pairs for the judge's agreement, and prompts to critique and
    revise."""
    replies_per_prompt: int = 4
    """K replies sampled and ranked per prompt."""
    judge_steps: int = 400
    """SFT steps of the judge."""


def make_data(cfg: ExampleConfig, task: AdviceTask, root: Path) -> tuple[Path, list[str]]:
    """SFT rows (advice and critique demonstrations) and the tokenizer's corpus."""
    rng = random.Random(cfg.seed)
    advice = task.sft_examples(cfg.advice_rows, rng)
    rows = [dataclasses.asdict(x) for x in advice + task.critique_examples(cfg.critique_rows, rng)]
    rng.shuffle(rows)
    # a few judge prompts, so that the judge's format has tokens of its own in the vocabulary
    judged = [
        judge_prompt(a.prompt, a.completion, b.completion) + ANSWER_A
        for a, b in zip(advice[:200], advice[200:400])
    ]
    return write_jsonl(root / "data" / "sft.jsonl", rows), [
        r["prompt"] + r["completion"] for r in rows
    ] + judged


def collect(cfg: ExampleConfig, task: AdviceTask, sft_dir: Path, root: Path) -> tuple[Path, Path]:
    """K sampled replies per prompt ranked by the simulated annotator: train and held-out pairs."""
    rng = random.Random(cfg.seed + 1)
    prompts = task.prompts(cfg.collect_prompts + cfg.heldout_prompts, rng)
    model, tokenizer = load_causal_lm(sft_dir), load_tokenizer(sft_dir)
    samples = sample_responses(
        model,
        tokenizer,
        [p.prompt for p in prompts],
        num_samples=cfg.replies_per_prompt,
        max_new_tokens=64,
        seed=cfg.seed,
        batch_size=256,
    )
    grouped = list(zip(prompts, samples.texts))
    labelled = label_responses(
        task,
        grouped[: cfg.collect_prompts],
        grouped[cfg.collect_prompts :],
        target_agreement=0.725,
        rng=rng,
    )
    heldout = [pair for row in labelled.heldout_rankings for pair in ranking_pairs(row)]
    return (
        write_jsonl(root / "collect" / "pairs.jsonl", labelled.pairs),
        write_jsonl(root / "collect" / "heldout_pairs.jsonl", heldout),
    )


def print_summary(s: dict) -> None:
    j, f, c = s["judge"], s["judge_one_flaw"], s["critique"]
    print(
        f"judge vs gold, held-out pairs of the policy's replies: {j['judge_vs_gold']:.1%} of"
        f" {j['gold_ordered_pairs']} (the annotator's own labels: {j['labels_vs_gold']:.1%});"
        f" vs the annotator: {j['judge_vs_labels']:.1%}"
    )
    print(
        f"judge position bias: {j['position_bias']:+.3f} P(A); verdict flips with the order on"
        f" {j['flip_rate']:.0%}"
    )
    print(
        "judge vs gold, same-length pairs that differ by one flawed sentence:"
        f" {f['judge_vs_gold']:.1%} of {f['gold_ordered_pairs']}"
    )
    print(
        f"critique and revise, {c['prompts']} replies: {c['changed']:.0%} changed"
        f" ({c['deletions_of_changed']:.0%} of them only by deleting sentences);"
        f" gold {c['gold_before']:.2f} -> {c['gold_after']:.2f};"
        f" raised {c['raised']:.0%}, lowered {c['lowered']:.0%}"
    )
    print(
        "judge on revision vs original: prefers the revision"
        f" {c['judge_prefers_revision']:.0%}, agrees with gold"
        f" {c.get('judge_vs_gold', 0.5):.1%} of {c.get('gold_ordered_pairs', 0)};"
        f" {c['preference_rows']} preference rows"
    )
    print(f"wall time {s['seconds']:.0f} s; everything under {s['out']}")


def new_run(root: Path, cfg) -> RunDir:
    run = prepare_run_dir(root, resume=False, overwrite=True)
    save_config(cfg, run.config_path)
    return run


def main(argv: list[str]) -> None:
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # the stages print their own progress
    cfg = load_config(ExampleConfig, None, argv)
    root, task, started = Path(cfg.out), AdviceTask(), time.perf_counter()
    save_config(cfg, prepare_run_dir(root, resume=False, overwrite=True).config_path)

    def stage(name: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {name}", flush=True)

    # step 1. data and the tiny model
    stage("data and tiny model")
    sft_data, corpus = make_data(cfg, task, root)
    base = build_tiny_model(root / "base_model", corpus, seed=cfg.seed)
    # step 2. SFT: answering, critiquing and revising
    stage("sft")
    sft_cfg = SFTConfig(
        model=str(base),
        train_data=str(sft_data),
        max_steps=cfg.sft_steps,
        batch_size=cfg.batch_size,
        lr=2e-3,
        eval_every=0,
        sample_every=0,
        save_every=0,
        seed=cfg.seed,
        progress=False,
    )
    sft_dir = train_sft(sft_cfg, new_run(root / "sft", sft_cfg)).model_dir
    # step 3. human-style labels from the simulated annotator
    stage("collect")
    pairs, heldout_pairs = collect(cfg, task, sft_dir, root)
    # step 4. RLAIF: train the judge on the pairs, judge the held-out pairs
    stage("judge")
    judge_cfg = JudgeConfig(
        model=str(sft_dir),
        train_pairs=str(pairs),
        pairs=str(heldout_pairs),
        task="advice",
        seed=cfg.seed,
        sft=dataclasses.replace(
            JudgeConfig().sft, max_steps=cfg.judge_steps, batch_size=cfg.batch_size, progress=False
        ),
    )
    judge = run_judge(judge_cfg, new_run(root / "judge", judge_cfg))
    # the same judge on equally long pairs that differ by one sentence breaking a principle
    one_flaw = write_jsonl(
        root / "collect" / "one_flaw_pairs.jsonl",
        task.one_flaw_pairs(200, random.Random(cfg.seed + 3)),
    )
    one_flaw_cfg = JudgeConfig(judge_model=str(judge.judge_dir), pairs=str(one_flaw), task="advice")
    judge_one_flaw = run_judge(one_flaw_cfg, new_run(root / "judge_one_flaw", one_flaw_cfg))
    # step 5. Constitutional AI: critique and revise replies to fresh prompts, judged by the judge
    stage("critique and revise")
    critique_cfg = CritiqueConfig(
        model=str(sft_dir),
        task="advice",
        num_prompts=cfg.heldout_prompts,
        judge_model=str(judge.judge_dir),
        seed=cfg.seed + 2,
    )
    critique = run_critique(critique_cfg, new_run(root / "critique", critique_cfg))
    stage("done")
    summary = {
        "judge": judge.report,
        "judge_one_flaw": judge_one_flaw.report,
        "critique": critique.report,
        "seconds": time.perf_counter() - started,
        "out": str(root),
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)


if __name__ == "__main__":
    main(sys.argv[1:])
