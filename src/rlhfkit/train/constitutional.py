"""Constitutional AI data: the model critiques and revises its own responses against a list of
principles (Bai et al. 2022, the supervised stage), and an AI judge compares each revision
with the original (the RL-from-AI-feedback stage's preference data).

Writes `revisions.jsonl` (every critique and revision), `sft.jsonl` (each prompt with its final
revision, for `rlhfkit sft`), `preferences.jsonl` (judged original-vs-revision pairs, for
`rlhfkit rm` or `rlhfkit dpo`) and `report.json`. With a built-in task the report also says what
the revisions did to the gold score, which the method itself never sees.
"""

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.data.loading import write_jsonl
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.feedback.critique import (
    Revision,
    changed,
    critique_and_revise,
    load_principles,
    only_deletes,
    revision_preference_rows,
    revision_sft_rows,
)
from rlhfkit.feedback.verdicts import gold_agreement
from rlhfkit.models.loading import check_model_path, load_causal_lm, load_tokenizer
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.run_config import RunConfig
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.base import HasPrinciples
from rlhfkit.tasks.prompt_files import load_task_prompts
from rlhfkit.tasks.registry import TaskName, get_task


@dataclass(frozen=True)
class CritiqueConfig(RunConfig):
    model: str = ""
    """The causal-LM directory that answers, critiques and revises."""
    task: TaskName | None = TaskName.ADVICE
    """Built-in task: its prompts (without `prompts_data`), principles (without `principles`) and
    gold score for the report; null = none."""
    prompts_data: str = ""
    """Prompt-only data (prompt, optional answer and metadata); empty = the task's generator."""
    num_prompts: int = 200
    """Prompts drawn from the task's generator when there is no `prompts_data`."""
    principles: str = ""
    """YAML/JSON list of {name, critique_request, revision_request}; empty = the task's
    principles."""
    judge_model: str = ""
    """A judge of revision vs original (e.g. `rlhfkit judge`'s); empty = no preference rows."""
    temperature: float = 1.0
    """Sampling temperature of the original responses."""
    revise_temperature: float = 0.0
    """Temperature of the critiques and revisions (0 = greedy)."""
    max_new_tokens: int = 64
    """Length limit of responses, critiques and revisions."""
    min_margin: float = 0.0
    """Keep a judged pair only when |P(revision better) - 1/2| > min_margin."""
    batch_size: int = 64
    """Sequences per generation batch (and judge prompts per forward pass)."""
    progress: bool = True
    """Show a progress bar for the replies, each principle's critiques and revisions, and the
    judging."""


@dataclass
class CritiqueResult:
    chains: list[list[Revision]]
    sft: Path
    preferences: Path | None
    report: dict


def check_critique_keys(cfg: CritiqueConfig, given: frozenset[str] = frozenset()) -> None:
    """Refuse `num_prompts` beside `prompts_data`, whose every row is used: it would change
    nothing, silently."""
    if cfg.prompts_data and cfg.num_prompts != CritiqueConfig.num_prompts:
        raise ConfigError(
            f"num_prompts={cfg.num_prompts} is read only without prompts_data (prompts drawn "
            f"from the task's generator); every row of prompts_data={cfg.prompts_data} is "
            "used: cut the file to take fewer"
        )


def _prompts(cfg: CritiqueConfig, task) -> list[PromptExample]:
    if cfg.prompts_data:
        return load_task_prompts(cfg.prompts_data, task)
    if task is None:
        raise RlhfkitError("rlhfkit critique needs prompts_data=PATH or a task")
    return task.prompts(cfg.num_prompts, random.Random(cfg.seed))


def _principles(cfg: CritiqueConfig, task) -> list:
    if cfg.principles:
        return load_principles(cfg.principles)
    if task is None:
        raise RlhfkitError("rlhfkit critique needs principles=PATH (or a task that has some)")
    if not isinstance(task, HasPrinciples):
        raise RlhfkitError(
            f"rlhfkit critique needs principles=PATH: task '{task.name}' has no principles"
        )
    return task.principles


def gold_report(task, prompts: list[PromptExample], chains: list[list[Revision]]) -> dict:
    """What the final revisions did to the task's gold score, per prompt and on average (in
    float64, and shares as counts over n: a report shows 13/24 as 0.5416666666666666)."""
    before = [task.reward(p, chain[0].response) for p, chain in zip(prompts, chains)]
    after = [task.reward(p, chain[-1].revision) for p, chain in zip(prompts, chains)]
    raised = [a > b for a, b in zip(after, before)]
    raised_of_changed = [up for up, chain in zip(raised, chains) if changed(chain)]
    return {
        "gold_before": math.fsum(before) / len(before),
        "gold_after": math.fsum(after) / len(after),
        "raised": sum(raised) / len(raised),
        "lowered": sum(a < b for a, b in zip(after, before)) / len(after),
        "raised_of_changed": sum(raised_of_changed) / max(1, len(raised_of_changed)),
    }


def judge_report(task, prompts: list[PromptExample], chains, judgements, judged: list[int]) -> dict:
    """The judge on revision vs original: how often it prefers the revision, its position bias,
    and (with a task) how often it orders the pair like the gold score."""
    prefers = int((judgements.first_better > 0.5).sum())  # a count: the share is exact
    report = {
        "judged_pairs": len(judged),
        "position_bias": judgements.position_bias,
        "flip_rate": judgements.flip_rate,
        "judge_prefers_revision": prefers / len(judged) if judged else 0.0,
    }
    if task is not None and judged:
        # float64, as the task scores: float32 could round two different scores into a tie
        gold_revised = torch.tensor(
            [task.reward(prompts[i], chains[i][-1].revision) for i in judged], dtype=torch.float64
        )
        gold_original = torch.tensor(
            [task.reward(prompts[i], chains[i][0].response) for i in judged], dtype=torch.float64
        )
        report["judge_vs_gold"], report["gold_ordered_pairs"] = gold_agreement(
            judgements.first_better, gold_revised, gold_original
        )
    return report


def run_critique(cfg: CritiqueConfig, run: RunDir) -> CritiqueResult:
    """Sample, critique and revise; write SFT rows, judged preference rows and a report."""
    if not cfg.model:
        raise RlhfkitError("rlhfkit critique needs model=PATH")
    task = get_task(cfg.task) if cfg.task else None
    if cfg.judge_model:  # a mistyped judge fails now, not after every reply has been revised
        check_model_path(cfg.judge_model)
    # step 1. prompts, principles, and the model's own responses
    prompts, principles = _prompts(cfg, task), _principles(cfg, task)
    device = resolve_device(cfg.device)
    model, tokenizer = load_causal_lm(cfg.model).to(device), load_tokenizer(cfg.model)
    samples = sample_responses(
        model,
        tokenizer,
        [p.prompt for p in prompts],
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        progress="replies" if cfg.progress else None,
    )
    responses = [group[0] for group in samples.texts]

    # step 2. critique and revise against each principle in turn
    chains = critique_and_revise(
        model,
        tokenizer,
        [p.prompt for p in prompts],
        responses,
        principles,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.revise_temperature,
        seed=derive_seed(cfg.seed, SeedStream.REVISIONS),
        batch_size=cfg.batch_size,
        progress=cfg.progress,
    )
    write_jsonl(
        run.root / "revisions.jsonl", [dataclasses.asdict(r) for chain in chains for r in chain]
    )
    sft = write_jsonl(run.root / "sft.jsonl", revision_sft_rows(chains))
    edited = [chain for chain in chains if changed(chain)]
    deletions = sum(only_deletes(chain[0].response, chain[-1].revision) for chain in edited)
    report = {
        "prompts": len(prompts),
        "principles": [p.name for p in principles],
        "changed": len(edited) / max(1, len(chains)),
        "deletions_of_changed": deletions / max(1, len(edited)),
    }
    if task is not None:
        report.update(gold_report(task, prompts, chains))

    # step 3. the judge's verdict on revision vs original becomes preference data
    preferences = None
    if cfg.judge_model:
        judge, judge_tokenizer = (
            load_causal_lm(cfg.judge_model).to(device),
            load_tokenizer(cfg.judge_model),
        )
        rows, judgements, judged = revision_preference_rows(
            chains,
            judge,
            judge_tokenizer,
            min_margin=cfg.min_margin,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
        preferences = write_jsonl(run.root / "preferences.jsonl", rows)
        report.update(
            preference_rows=len(rows), **judge_report(task, prompts, chains, judgements, judged)
        )
    (run.root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return CritiqueResult(chains, sft, preferences, report)
