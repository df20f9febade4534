"""RLAIF labelling: an AI judge turns response pairs into preference data.

The judge is either a given causal-LM directory, or trained here with `train_sft` on
comparison prompts built from human-style preference pairs (each pair in both orders, the
verdict " A" or " B" as the completion). It then judges pairs in both orders
(`feedback.judge.judge_pairs`), and the confident verdicts become `{"prompt", "chosen",
"rejected"}` rows for the reward model or DPO. The report gives the judge's agreement with the
pairs' own labels and, for a built-in task, with its gold annotator beside the labels' own
agreement with gold (Lee et al. 2023 compare RLAIF and RLHF labels the same way), and the
judge's position bias.
"""

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from rlhfkit.data.formats import Format, PreferenceExample, validate_rows
from rlhfkit.data.loading import load_examples, read_rows, write_jsonl
from rlhfkit.data.tokenize import Truncation
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.feedback.judge import PairJudgements, judge_pairs, preference_rows, reply_text
from rlhfkit.feedback.judge_data import judge_sft_rows
from rlhfkit.feedback.verdicts import gold_agreement
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.pretrained import check_learning_rates
from rlhfkit.runtime.config import Filled, fill_section, passed_on, save_config
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.run_config import RUN_KEYS, RunConfig
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from rlhfkit.tasks.base import HasPromptExample
from rlhfkit.tasks.registry import TaskName, get_task
from rlhfkit.train.config_checks import check_trainer_config
from rlhfkit.train.lr_guard import stage_learning_rates
from rlhfkit.train.sft import SFTConfig, train_sft

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeConfig(RunConfig):
    """`seed` seeds the order of the judge's training rows and its training."""

    FILLED: ClassVar[dict[str, tuple[str, ...]]] = {
        "sft": (*RUN_KEYS, "model", "train_data", "eval_data")
    }
    """The keys of the `sft` section the judge fills (`judge_sft_config`)."""

    judge_model: str = ""
    """A causal-LM directory that judges as it is; empty = train a judge from `model` on
    `train_pairs`."""
    model: str = ""
    """Where a trained judge starts (e.g. the SFT model); only without `judge_model`."""
    train_pairs: str = ""
    """Preference pairs (prompt/chosen/rejected) the judge learns from, each in both orders."""
    pairs: str = ""
    """Preference pairs to judge; their chosen/rejected are the labels the judge is compared
    with."""
    max_pairs: int = 0
    """Judge only the first this many of `pairs` (0 = all)."""
    task: TaskName | None = None
    """A built-in task whose gold annotator the judge is also compared with (one with
    `prompt_example`: advice, sentiment); null = none."""
    min_margin: float = 0.0
    """Keep a verdict as a preference row only when |P(first better) - 1/2| > min_margin."""
    batch_size: int = 32
    """Judge prompts per forward pass."""
    progress: bool = True
    """Show a progress bar while the judge judges (its training has its own, `sft.progress`)."""
    sft: SFTConfig = field(
        default_factory=lambda: SFTConfig(
            max_steps=400,
            batch_size=16,
            lr=3e-3,
            eval_every=0,
            sample_every=0,
            save_every=0,
            # the verdict ends each row: a long row loses the start of its prompt, not it
            truncation=Truncation.KEEP_END,
        )
    )
    """Judge training; `model`, `train_data`, `eval_data`, `seed`, `device`,
    `max_nonfinite_skips` and `force_lr` are filled in (`judge_sft_config`), and setting one of
    them is an error."""


@dataclass
class JudgeResult:
    judge_dir: Path
    preferences: Path
    """The judged pairs as preference rows (near-ties dropped)."""
    report: dict


def judge_sft_config(
    cfg: JudgeConfig, data: Path, given: frozenset[str] = frozenset()
) -> SFTConfig:
    """The judge's SFT settings: `cfg.sft` with the keys `rlhfkit judge` fills (the model, its
    rows at `data`, no held-out rows, the seed, device, max_nonfinite_skips and force_lr); a
    user's setting of one (`given`: the keys the user set) is refused."""
    fills = {
        **passed_on(cfg, ("model", *RUN_KEYS)),
        "train_data": Filled(
            str(data), "to the rows it builds from train_pairs=", "set train_pairs= instead"
        ),
        "eval_data": Filled("", "to none (the judge is measured on pairs=)", "set pairs= instead"),
    }
    return fill_section(cfg, "sft", fills, by="rlhfkit judge", given=given)


def check_sft_keys(cfg: JudgeConfig, given: frozenset[str] = frozenset()) -> None:
    """The judge's SFT settings as a run checks them (a key it fills is refused, and what SFT
    refuses), for `--print-config`: what it prints, the run takes."""
    check_trainer_config(judge_sft_config(cfg, Path("judge_sft.jsonl"), given))


def distinct_pairs(pairs: list[dict], path: str) -> list[dict]:
    """The pairs whose two replies differ, the others dropped and counted in the log: two equal
    replies would teach the answer " A" and " B" to one and the same comparison prompt."""
    kept = [p for p in pairs if reply_text(p["chosen"]) != reply_text(p["rejected"])]
    dropped = len(pairs) - len(kept)
    reason = f" (chosen equals rejected: {dropped})" if dropped else ""
    log.info(
        f"judge train pairs {path}: {len(pairs)} rows: {len(kept)} kept, {dropped} dropped{reason}"
    )
    if not kept:
        raise DataError(
            path, None, None, "every pair's chosen equals its rejected: nothing to prefer"
        )
    return kept


def train_judge(cfg: JudgeConfig, run: RunDir) -> Path:
    """Fine-tune `cfg.model` into a judge on `cfg.train_pairs`; returns the judge's directory."""
    if not (cfg.model and cfg.train_pairs):
        raise RlhfkitError(
            "a judge needs judge_model=PATH, or model=PATH and train_pairs=PATH to train one"
        )
    data = run.root / "judge_sft.jsonl"
    sft_cfg = judge_sft_config(cfg, data)
    check_learning_rates(cfg.model, stage_learning_rates({"sft": cfg.sft}), force=cfg.force_lr)
    pairs = [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
        for p in load_examples(cfg.train_pairs, Format.PREFERENCE)
    ]
    pairs = distinct_pairs(pairs, cfg.train_pairs)
    write_jsonl(data, judge_sft_rows(pairs, random.Random(cfg.seed)))
    sft_run = prepare_run_dir(run.root / "judge", resume=False, overwrite=True)
    save_config(sft_cfg, sft_run.config_path)
    judge_dir = train_sft(sft_cfg, sft_run).model_dir
    # the judge is asked within the length it learned at, wherever it is used later
    # (`judge.judge_length`): its tokenizer's model_max_length, as transformers reads it too
    tokenizer = load_tokenizer(judge_dir)
    tokenizer.model_max_length = sft_cfg.max_length
    tokenizer.save_pretrained(judge_dir)
    return judge_dir


def gold_scores(
    task_name: str, pairs: list[PreferenceExample], path: str, row_numbers: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) gold scores of each pair's chosen and rejected reply, the prompts read from text; a
    prompt the task cannot score names its row of `path`."""
    task = get_task(task_name)
    if not isinstance(task, HasPromptExample):
        raise RlhfkitError(f"task '{task_name}' cannot score prompts read from a file")
    examples = []
    for row_number, pair in zip(row_numbers, pairs):
        try:
            examples.append(task.prompt_example(pair.prompt))
        except RlhfkitError as error:
            raise DataError(path, row_number, "prompt", str(error)) from None
    # float64, as the task scores: float32 could round two different scores into a tie
    chosen = [task.reward(e, p.chosen) for e, p in zip(examples, pairs)]
    rejected = [task.reward(e, p.rejected) for e, p in zip(examples, pairs)]
    return torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)


def agreement_report(
    judgements: PairJudgements, gold: tuple[torch.Tensor, torch.Tensor] | None
) -> dict:
    """Agreement of the judge with the pairs' labels and, given gold scores, with the gold
    annotator."""
    n = len(judgements.first_better)
    labels = torch.ones(n)  # the label puts `chosen` first: P(first better) = 1
    report = {
        "pairs": n,
        "position_bias": judgements.position_bias,
        "flip_rate": judgements.flip_rate,
        "pairs_cut": judgements.cut,
        "pairs_replies_cut": judgements.replies_cut,
        "judge_vs_labels": gold_agreement(judgements.first_better, labels, torch.zeros(n))[0],
    }
    if gold is not None:
        judge, count = gold_agreement(judgements.first_better, *gold)
        report.update(
            judge_vs_gold=judge,
            labels_vs_gold=gold_agreement(labels, *gold)[0],
            gold_ordered_pairs=count,
        )
    return report


def run_judge(cfg: JudgeConfig, run: RunDir) -> JudgeResult:
    """Train (or take) a judge, judge `cfg.pairs` in both orders, write preference rows and a
    report."""
    if not cfg.pairs:
        raise RlhfkitError("rlhfkit judge needs pairs=PATH (preference pairs to judge)")
    if cfg.judge_model:  # a given judge: the settings that would train one would be ignored
        trainers = [f"{key}=" for key in ("model", "train_pairs") if getattr(cfg, key)]
        trainers += ["sft.*"] if cfg.sft != JudgeConfig().sft else []
        if trainers:
            verb = "trains" if len(trainers) == 1 else "train"
            raise ConfigError(
                f"{' and '.join(trainers)} {verb} a judge, which judge_model= replaces: give "
                "judge_model= alone, or model= and train_pairs= without it"
            )
    # step 1. the pairs to judge and their gold scores, checked before any training
    rows = read_rows(cfg.pairs)
    rows = rows[: cfg.max_pairs] if cfg.max_pairs else rows
    pairs = validate_rows(rows, Format.PREFERENCE, cfg.pairs)
    gold = gold_scores(cfg.task, pairs, cfg.pairs, [n for n, _ in rows]) if cfg.task else None

    # step 2. the judge: given, or fine-tuned from model on train_pairs
    judge_dir = Path(cfg.judge_model) if cfg.judge_model else train_judge(cfg, run)

    # step 3. judge every pair in both orders, the labelled `chosen` first
    model = load_causal_lm(judge_dir).to(resolve_device(cfg.device))
    tokenizer = load_tokenizer(judge_dir)
    prompts, chosen, rejected = (
        [p.prompt for p in pairs],
        [p.chosen for p in pairs],
        [p.rejected for p in pairs],
    )
    judgements = judge_pairs(
        model,
        tokenizer,
        prompts,
        chosen,
        rejected,
        batch_size=cfg.batch_size,
        progress="judging" if cfg.progress else None,
    )

    # step 4. the confident verdicts as preference rows; agreement and position bias
    rows = preference_rows(
        prompts, chosen, rejected, judgements.first_better, min_margin=cfg.min_margin
    )
    report = {
        "judge": str(judge_dir),
        **agreement_report(judgements, gold),
        "preference_rows": len(rows),
    }
    preferences = write_jsonl(run.root / "preferences.jsonl", rows)
    (run.root / "agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    return JudgeResult(judge_dir, preferences, report)
