"""`rlhfkit eval`: checkpoints on a task's held-out prompts, against a baseline checkpoint.

For each model: the gold score, the win rate against the baseline judged by the gold
annotator, a reward model or an AI judge (each pair asked in both orders), the KL to the
reference per token and per sequence, the reward-hacking signs, and on `arith` pass@k and
maj@k; optionally the reward model's accuracy on held-out pairs. Writes `eval.json` (and every
scored answer to `samples.jsonl`), prints
one table, and writes the same table with the settings, gold against KL and a few greedy answers
side by side as `report.md` and `report.html` (`eval_report`).

A user's own task gets the same table: `judge=` also takes any reward source the trainers take
(`file.py:function`, `model:PATH`, weighted sums), which then plays the gold annotator on the
user's `prompts=` file (with `task=null`, or beside a built-in task's own metrics).
"""

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from rlhfkit.data.loading import write_jsonl
from rlhfkit.data.ranking_batch import RankedGroup, load_ranked_groups
from rlhfkit.data.tokenize import Truncation
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.eval.eval_report import REPORT_PROMPTS, greedy_answers, side_by_side, write_eval_report
from rlhfkit.eval.model_eval import ModelEval, distinct_indices, evaluate_model, win_rates
from rlhfkit.eval.reward_model import pair_outcomes_by_group, score_groups
from rlhfkit.eval.sample_rows import sample_rows
from rlhfkit.eval.win_rate import WinRate, proportion_interval, win_rate
from rlhfkit.feedback.judge import judge_pairs
from rlhfkit.models.gguf_import import is_gguf_path
from rlhfkit.models.loading import (
    check_causal_lm_dir,
    load_causal_lm,
    load_tokenizer,
    same_vocabulary,
)
from rlhfkit.rewards.builder import build_reward_source, check_spec, load_reward_model_source
from rlhfkit.runtime.device import Precision, autocast, resolve_device
from rlhfkit.runtime.provenance import latest_start, start_line
from rlhfkit.runtime.run_config import RunConfig
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.prompt_files import load_task_prompts
from rlhfkit.tasks.registry import TaskName, get_task

log = logging.getLogger(__name__)


class Judge(str, Enum):
    GOLD = "gold"
    """The task's hidden gold annotator (built-in tasks)."""
    REWARD_MODEL = "reward_model"
    """The reward model's scores (`reward_model`)."""
    AI = "ai"
    """An AI judge (`judge_model`) comparing each answer with the baseline's, in both orders."""


@dataclass(frozen=True)
class EvalConfig(RunConfig):
    models: tuple[str, ...] = ()
    """Policy checkpoints to evaluate (causal-LM directories), each once, e.g.
    models=[runs/ppo/final,runs/dpo/final]."""
    baseline: str = ""
    """The checkpoint win rates are measured against (e.g. the SFT model); empty = no win rates."""
    reference: str = ""
    """The model the KL is measured to; empty = the baseline (the usual reference: the SFT
    model)."""
    task: TaskName | None = TaskName.ADVICE
    """Built-in task: its gold annotator scores every answer; null = none (then `prompts` and a
    reward-source `judge` are needed)."""
    prompts: str = ""
    """Held-out prompt file (prompt plus the task's or the judge's metadata columns); empty =
    fresh prompts from the task."""
    num_prompts: int = 200
    """Prompts drawn from the task when `prompts` is empty (beside `prompts`, whose every row is
    used, it is refused)."""
    judge: str = Judge.GOLD.value
    """Who decides the win rates: gold (the task's annotator), reward_model, ai, or any reward
    source as the trainers' `reward=` takes it (`file.py:function`, `model:PATH`, `task`,
    weighted sums), which then also gives the gold scores."""
    reward_model: str = ""
    """A saved reward model: its mean score is reported beside the gold score (the proxy), it
    judges with judge=reward_model, and it is scored on `heldout_pairs`."""
    judge_model: str = ""
    """A causal-LM judge directory for judge=ai (e.g. one `rlhfkit judge` trained)."""
    heldout_pairs: str = ""
    """Held-out pairs or rankings for the reward model's accuracy; empty = none."""
    samples_per_prompt: int = 4
    """Answers sampled (T = 1) per prompt, besides one greedy answer; pass@k for k up to it."""
    max_new_tokens: int = 64
    """Length limit of every answer."""
    max_length: int = 256
    """Tokens per sequence when the reward model scores."""
    batch_size: int = 256
    """Answers generated (or scored) per batch."""
    progress: bool = True
    """Show a progress bar while each model answers."""
    precision: Precision = Precision.FP32
    """fp32, or bf16: every model samples as a bf16 run samples (bf16 weights and cache, the
    draws in float32), and the reference's KL pass, the reward models and the AI judge run under
    bf16 autocast. On a CPU without bf16 units (no AMX or AVX-512 BF16) bf16 is emulated and far
    slower: a warning says so."""


def judge_kind(cfg: EvalConfig) -> Judge | None:
    """The named judge, or None when `judge` is a reward source."""
    return Judge(cfg.judge) if cfg.judge in {j.value for j in Judge} else None


def check_eval_config(cfg: EvalConfig) -> None:
    if not cfg.models:
        raise RlhfkitError("rlhfkit eval needs models=[PATH,...]: the checkpoints to evaluate")
    check_each_model_once(cfg.models)
    kind = judge_kind(cfg)
    if kind is None:
        try:
            check_spec(cfg.judge)
        except RlhfkitError as error:
            named = ", ".join(j.value for j in Judge)
            raise RlhfkitError(
                f"judge={cfg.judge!r}: expected {named}, or a reward source ({error})"
            ) from None
    if cfg.task is None and kind is not None:
        raise RlhfkitError(
            f"judge={kind.value} needs a task: without one the judge is a reward source "
            "(file.py:function, model:PATH for a reward model, or a weighted sum), nothing else "
            "can score the answers"
        )
    if cfg.task is None and not cfg.prompts:
        raise RlhfkitError(
            "rlhfkit eval without a task needs prompts=FILE: the held-out prompts to answer"
        )
    if kind is Judge.REWARD_MODEL and not cfg.reward_model:
        raise RlhfkitError("judge=reward_model needs reward_model=PATH")
    if kind is Judge.AI and not cfg.judge_model:
        raise RlhfkitError("judge=ai needs judge_model=PATH (a causal-LM judge directory)")
    if cfg.heldout_pairs and not cfg.reward_model:
        raise RlhfkitError(
            "heldout_pairs needs reward_model=PATH: it is the reward model's accuracy"
        )
    for path in [*cfg.models, cfg.baseline, cfg.reference, cfg.reward_model, cfg.judge_model]:
        if path and not is_gguf_path(path) and not (Path(path) / "config.json").is_file():
            raise RlhfkitError(f"{path} is not a saved model directory (no config.json)")
    # every policy before the first is sampled: a reward model or a directory without weights
    # among them would otherwise stop the run after minutes spent on the models before it
    for path in [*cfg.models, cfg.baseline, cfg.reference, cfg.judge_model]:
        if path and not is_gguf_path(path):  # a GGUF file is a causal LM with its weights
            check_causal_lm_dir(path)


def check_eval_keys(cfg: EvalConfig, given: frozenset[str] = frozenset()) -> None:
    """Refuse `num_prompts` beside `prompts`, whose every row is used: it would change nothing,
    silently (as `rlhfkit critique` refuses it beside `prompts_data`)."""
    if cfg.prompts and cfg.num_prompts != EvalConfig.num_prompts:
        raise ConfigError(
            f"num_prompts={cfg.num_prompts} is read only without prompts (prompts drawn from "
            f"the task); every row of prompts={cfg.prompts} is used: cut the file to take fewer"
        )


def check_each_model_once(models: Sequence[str]) -> None:
    """Refuse a model listed twice (the same path, however written): the results are keyed by
    model, so one of the two would silently be left out."""
    seen: dict[Path, str] = {}
    for path in models:
        first = seen.get(Path(path).resolve())
        if first is not None:
            written = "" if first == path else f" (as {first} and {path})"
            raise RlhfkitError(f"models lists {first} twice{written}: name each model once")
        seen[Path(path).resolve()] = path


def run_eval(cfg: EvalConfig, run: RunDir) -> dict:
    """Evaluate every model; returns and writes `{model: metrics}` (plus `reward_model`)."""
    check_eval_config(cfg)
    # step 1. the task, its prompts, and the models everyone is compared with
    task = get_task(cfg.task) if cfg.task else None
    device, kind = resolve_device(cfg.device), judge_kind(cfg)
    prompts = (
        load_task_prompts(cfg.prompts, task)
        if cfg.prompts
        else task.prompts(
            cfg.num_prompts, random.Random(derive_seed(cfg.seed, SeedStream.EVAL_PROMPTS))
        )
    )
    tokenizer = load_tokenizer(cfg.baseline or cfg.models[0])
    check_same_tokenizer(tokenizer, cfg.baseline or cfg.models[0], [*cfg.models, cfg.reference])
    reference_path = cfg.reference or cfg.baseline
    reference = load_causal_lm(reference_path).to(device) if reference_path else None
    proxy = (
        load_reward_model_source(
            cfg.reward_model,
            tokenizer=tokenizer,
            device=device,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            uncertainty_coef=0.0,
            name="reward model",
            precision=cfg.precision,
            length_setting="max_length",
        )
        if cfg.reward_model
        else None
    )
    # read now: a bad row must stop the run before every model is sampled, not after
    heldout = load_heldout_groups(proxy, cfg.heldout_pairs, cfg.max_length) if proxy else None
    gold = (
        None
        if kind is not None
        else build_reward_source(
            cfg.judge,
            task_name=cfg.task,
            tokenizer=tokenizer,
            device=device,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            uncertainty_coef=0.0,
            timeout_s=None,
            precision=cfg.precision,
            length_setting="max_length",
        )
    )
    settings = dict(
        reference=reference,
        proxy=proxy,
        gold=gold,
        samples_per_prompt=cfg.samples_per_prompt,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        precision=cfg.precision,
    )

    rows = []  # every answer scored, for samples.jsonl

    def evaluate(path: str) -> ModelEval:
        model = reference if path == reference_path else load_causal_lm(path).to(device)
        bar = Path(path).name if Path(path).name != "final" else Path(path).parent.name
        progress = f"eval {bar}" if cfg.progress else None
        result = evaluate_model(model, tokenizer, task, prompts, progress=progress, **settings)
        rows.extend(sample_rows(path, prompts, result, task))
        return result

    # step 2. every model, and its win rates against the baseline by the chosen judge
    baseline = evaluate(cfg.baseline) if cfg.baseline else None
    out = {"baseline": cfg.baseline, "task": cfg.task, "judge": cfg.judge, "models": {}}
    # the report's greedy answers: kept from each evaluation, so nothing is sampled again
    shown, answers = distinct_indices([p.prompt for p in prompts])[:REPORT_PROMPTS], {}
    if baseline is not None:
        out["models"][cfg.baseline] = baseline.metrics
        answers[cfg.baseline] = greedy_answers(baseline, shown)
    judge = (
        (load_causal_lm(cfg.judge_model).to(device), load_tokenizer(cfg.judge_model))
        if kind is Judge.AI and baseline is not None
        else None
    )
    for path in cfg.models:
        if baseline is not None and Path(path).resolve() == Path(cfg.baseline).resolve():
            continue  # the baseline, however written: evaluated above, under its own name
        result = evaluate(path)
        if baseline is not None:
            with autocast(device, cfg.precision):  # the AI judge's passes
                result.metrics.update(
                    win_rates(result, baseline, by_proxy=kind is Judge.REWARD_MODEL)
                    if judge is None
                    else ai_win_rates(
                        *judge, result, baseline, prompts, cfg.progress, cfg.batch_size
                    )
                )
        out["models"][path] = result.metrics
        answers[path] = greedy_answers(result, shown)
    # step 3. the reward model on held-out comparisons
    if heldout:
        out["reward_model"] = reward_model_accuracy(
            proxy, cfg.heldout_pairs, heldout, cfg.batch_size
        )
    started = latest_start(run.root)  # the command, code and machine that made these numbers
    if started is not None:
        out["started"] = started
    with open(run.root / "eval.json", "w") as f:
        json.dump(out, f, indent=2)
    write_jsonl(run.root / "samples.jsonl", rows)
    # step 4. the report: the table, the settings, gold against KL, answers side by side
    settings = report_settings(cfg, len(prompts))
    if started is not None:
        settings += [["made by", start_line(started)], ["command", started["command"]]]
    write_eval_report(
        run.root,
        out,
        title=report_title(cfg),
        settings=settings,
        side_by_side=side_by_side(prompts, shown, answers),
    )
    return out


def check_same_tokenizer(tokenizer, source: str, paths: list[str]) -> None:
    """Refuse a model whose tokenizer is not `source`'s (`tokenizer`): every model is sampled,
    and its KL measured, with that one tokenizer, so another vocabulary would feed a model ids
    that stand for other tokens (or lie past its embedding table)."""
    for path in dict.fromkeys(p for p in paths if p and p != source):
        if not same_vocabulary(tokenizer, path):
            raise RlhfkitError(
                f"{path}: its tokenizer is not {source}'s; rlhfkit eval samples every model "
                "and measures its KL with that one tokenizer"
            )


def report_title(cfg: EvalConfig) -> str:
    """The title of the printed table, for the report's heading."""
    task = TaskName(cfg.task).value if cfg.task else Path(cfg.prompts).name
    if not cfg.baseline:
        return f"{task}: judged by {cfg.judge} (no baseline: no win rates)"
    return f"{task}: win rates against {cfg.baseline} judged by {cfg.judge}"


def report_settings(cfg: EvalConfig, num_prompts: int) -> list[list[str]]:
    """(setting, value) rows of what decides the numbers; unset optional paths left out."""
    drawn = f"{num_prompts} drawn from the task with seed {cfg.seed}"
    rows = [
        ["models", ", ".join(cfg.models)],
        ["baseline", cfg.baseline or "none (no win rates)"],
        ["reference (KL)", cfg.reference or cfg.baseline or "none (no KL)"],
        ["judge", cfg.judge],
        ["task", TaskName(cfg.task).value if cfg.task else "none"],
        ["prompts", f"{cfg.prompts} ({num_prompts} prompts)" if cfg.prompts else drawn],
        ["samples_per_prompt", f"{cfg.samples_per_prompt} at T = 1, besides one greedy answer"],
        ["max_new_tokens", str(cfg.max_new_tokens)],
        ["seed", str(cfg.seed)],
        # one random stream over the batches: another split draws other sampled answers
        ["batch_size", str(cfg.batch_size)],
        ["precision", Precision(cfg.precision).value],
    ]
    optional = {
        "reward_model": cfg.reward_model,
        "judge_model": cfg.judge_model,
        "heldout_pairs": cfg.heldout_pairs,
    }
    return rows + [[key, value] for key, value in optional.items() if value]


def ai_win_rates(
    judge,
    judge_tokenizer,
    candidate: ModelEval,
    baseline: ModelEval,
    prompts,
    progress=False,
    batch_size: int = 32,
) -> dict:
    """Win rates by an AI judge: each answer against the baseline's answer i to the same prompt,
    asked in both orders (`batch_size` comparisons per pass); with the share of verdicts the
    order flips. Greedy answers count once per distinct prompt, as in `win_rates`."""
    out = {}
    once = baseline.distinct or list(range(len(prompts)))  # a greedy comparison per prompt
    for kind, ours, theirs, rows in (
        ("greedy", candidate.greedy, baseline.greedy, once),
        ("sampled", candidate.sampled, baseline.sampled, range(len(prompts))),
    ):
        asked = [prompts[i].prompt for i in rows for _ in ours.texts[i]]
        verdicts = judge_pairs(
            judge,
            judge_tokenizer,
            asked,
            [t for i in rows for t in ours.texts[i]],
            [t for i in rows for t in theirs.texts[i]],
            batch_size=batch_size,
            progress=f"judging {kind}" if progress else None,
        )
        clusters = [i for i in rows for _ in ours.texts[i]]  # a prompt's samples together
        out |= ai_win_rate(verdicts.first_better.tolist(), clusters).as_dict(f"win_rate_{kind}")
        out[f"judge_flip_rate_{kind}"] = verdicts.flip_rate
        out[f"judge_replies_cut_{kind}"] = verdicts.replies_cut  # pairs read in part (warned)
    return out


def ai_win_rate(first_better: list[float], clusters: list[int] | None = None) -> WinRate:
    """Win rate from a judge's P(candidate better), both orders combined: above 1/2 a win,
    exactly 1/2 a tie, below a loss; `clusters` as `win_rate`'s."""
    return win_rate(first_better, [1.0 - p for p in first_better], clusters)


def load_heldout_groups(proxy, path: str, max_length: int) -> list[RankedGroup] | None:
    """The held-out pairs or rankings `path` (none when empty), tokenised for the reward model."""
    if not path:
        return None
    groups, report = load_ranked_groups(
        path,
        proxy.tokenizer,
        max_length=max_length,
        truncation=Truncation.KEEP_START,
        needed_by="the reward model's held-out accuracy",
    )
    log.info(f"reward data {path}: {report.summary()}")
    return groups


def reward_model_accuracy(proxy, path: str, groups: list[RankedGroup], batch_size: int) -> dict:
    """Share of the held-out labelled pairs `groups` (read from `path`) the reward model orders
    like the label, with the pair count and a Wilson interval that counts the pairs of one
    ranking as correlated (`effective_count`); scored in the proxy's precision (bf16 autocast
    with eval's precision=bf16)."""
    with autocast(proxy.model.device, proxy.precision):  # as the proxy scores (bf16 or not)
        scores = score_groups(proxy.model, groups, proxy.pad_token_id, batch_size)
    outcomes = pair_outcomes_by_group(scores, groups)
    flat = [o for group in outcomes for o in group]
    accuracy, pairs = math.fsum(flat) / max(1, len(flat)), len(flat)
    # the pairs of one ranking share its responses: correlated, so they count as fewer
    low, high = proportion_interval(flat, [g for g, group in enumerate(outcomes) for _ in group])
    return {
        "heldout_pairs": path,
        "accuracy": accuracy,
        "accuracy_low": low,
        "accuracy_high": high,
        "pairs": pairs,
    }
