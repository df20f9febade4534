"""Iterative GRPO: the reward model follows the policy (DeepSeekMath, Shao et al. 2024, section
4.1.2; seed 003, Q16). A reward model trained on the SFT model's samples grows stale as the
policy moves away from them, and a stale proxy is what RL learns to exploit. Each round:
    1. GRPO for `grpo.max_steps` steps on the current reward model, with the reference reset to
       the round's starting policy (the KL term then bounds each round's move, not the total);
    2. sample K responses to fresh prompts from the new policy; the labeller ranks them (and,
       apart, a held-out set of the same kind): a task's simulated annotator, or on your own data
       (no task) your reward function (`labeller=reward`, `label_reward=file.py:function`) or an
       AI judge, on prompts drawn from `label_data`;
    3. the current reward model's accuracy on those held-out rankings: how far the policy has
       moved off the data the reward model was trained on;
    4. the reward model trained further on the new rankings plus `replay_fraction` of rows drawn
       from every earlier round's rankings (and the initial data), so it does not forget them.
Each round's parts go to `round_NN/` (grpo/, rankings, rm/, a summary JSON per part); on resume a
finished part is skipped and an interrupted GRPO or reward-model run resumes from its checkpoint.
With `retrain_reward_model=false` the same rounds run on the first reward model throughout, and
with `reset_reference=false` every round keeps the starting policy as its reference: the two
controls that isolate what each half of the recipe does.
Iterative GRPO fills some keys of its `grpo` and `rm` sections itself (each round's model,
reward, seed, ...): a value a user sets for one of them is refused with an error naming it.
Under torchrun each round's GRPO and reward-model training run sharded on every rank, as the
trainers do alone; the glue between them (sub-run directories, sampling and labelling, the
held-out accuracy, the replay mix, every file and summary) runs on rank 0 while the other ranks
wait for it (`on_main`), so a round's files are complete before any rank reads them.
"""

import dataclasses
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.data.formats import Format, PromptExample
from rlhfkit.data.length_chunks import ROWS_PER_CHUNK
from rlhfkit.data.loading import load_examples, write_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.labellers import Labeller, LabellerKind, build_labeller, rank_with_ties
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.pretrained import check_learning_rates
from rlhfkit.models.reward import RewardModel
from rlhfkit.rewards.builder import build_reward_source
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.checkpoint import (
    latest_checkpoint,
    load_torch_state,
    publish_dir,
    save_torch_state,
    temporary_sibling,
)
from rlhfkit.runtime.config import save_config
from rlhfkit.runtime.device import resolve_device, sampling_dtype
from rlhfkit.runtime.distributed import Ranks, current_ranks
from rlhfkit.runtime.distributed_checkpoint import on_main
from rlhfkit.runtime.metrics import MetricsLogger, read_metrics
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.prompt_files import load_task_prompts
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.config_checks import check_trainer_config
from rlhfkit.train.grpo import train_grpo
from rlhfkit.train.iterative_config import (
    IterativeGRPOConfig,
    check_config,
    check_label_prompts,
    check_reward_model,
    grpo_round_config,
    rm_round_config,
)
from rlhfkit.train.iterative_rows import ranked_rows, read_plain_rows, replay_rows, reward_history
from rlhfkit.train.lr_guard import stage_learning_rates
from rlhfkit.train.result import TrainResult
from rlhfkit.train.reward import (
    RewardConfig,
    evaluate_reward_model,
    load_reward_data,
    train_reward_model,
)


@dataclass
class IterativeGRPOResult(TrainResult):
    rounds: list[dict] = field(default_factory=list)  # one summary per round (history: numbers)


class _Part:
    """One part of a round: done when its summary JSON exists."""

    def __init__(self, folder: Path, name: str):
        self.path = folder / f"{name}.json"

    @property
    def done(self) -> bool:
        return self.path.is_file()

    def read(self) -> dict:
        return json.loads(self.path.read_text())

    def write(self, summary: dict) -> dict:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(self.path)  # atomic: a part is either done or not
        return summary


def _done_or_make(part: _Part, make: Callable[[], dict], ranks: Ranks) -> dict:
    """A part's summary: read when it is done (rank 0 looks, for every rank, so all ranks take
    the same branch), else `make()` on every rank."""
    done = on_main(lambda: part.read() if part.done else None, ranks)
    return done if done is not None else make()


def _sub_run(root: Path, cfg, ranks: Ranks) -> tuple[RunDir, bool]:
    """A GRPO or reward-model run directory holding `cfg`: resumed from its checkpoint, else
    started afresh. Rank 0 prepares it; the other ranks wait, then open the same directory."""

    def prepare() -> bool:
        resume = latest_checkpoint(root / "checkpoints") is not None
        save_config(cfg, prepare_run_dir(root, resume=resume, overwrite=not resume).config_path)
        return resume

    resume = on_main(prepare, ranks)
    return RunDir(root), resume


def _grpo_round(
    cfg: IterativeGRPOConfig, r: int, folder: Path, policy: str, rm: str, part: _Part, ranks: Ranks
) -> dict:
    grpo_cfg = grpo_round_config(cfg, r, policy, rm)
    if not cfg.grpo.eval_data and cfg.task:
        # every round evaluates on the same held-out prompts, those no round labels (the task's
        # evaluation stream for `seed`), not on a stream of its own round seed: the rounds'
        # eval_gold_start / eval_gold_end then compare
        path = folder.parent / "eval_prompts.jsonl"
        on_main(lambda: path.exists() or write_jsonl(path, _eval_prompt_rows(cfg)), ranks)
        grpo_cfg = dataclasses.replace(grpo_cfg, eval_data=str(path))
    run, resume = _sub_run(folder / "grpo", grpo_cfg, ranks)
    train_grpo(grpo_cfg, run, resume=resume)  # sharded under torchrun
    return on_main(lambda: part.write(_grpo_summary(run)), ranks)


def _grpo_summary(run: RunDir) -> dict:
    """What a round's GRPO did, from the metrics rank 0 wrote."""
    lines = read_metrics(run.metrics_path)  # all steps, also those before a resume
    rows = [line for line in lines if line["step"] > 0]  # step 0: the starting evaluation
    start = next((line for line in lines if line["step"] == 0), {})
    evals = [line for line in rows if "eval_gold_score" in line or "eval_reward_mean" in line]
    return {
        "policy": str(run.final),
        "proxy_first": rows[0]["reward_mean"],
        "proxy_last": rows[-1]["reward_mean"],
        "gold_first": rows[0].get("gold_score"),
        "gold_last": rows[-1].get("gold_score"),
        "kl_per_token_last": rows[-1].get("kl_per_token", 0.0),
        # held-out: the task's gold score, or without a task the run's reward
        "eval_gold_start": start.get("eval_gold_score"),
        "eval_gold_end": evals[-1].get("eval_gold_score") if evals else None,
        "eval_reward_start": start.get("eval_reward_mean"),
        "eval_reward_end": evals[-1].get("eval_reward_mean") if evals else None,
    }


def held_out_prompts(cfg: IterativeGRPOConfig) -> set[str]:
    """The evaluation prompts no round labels: `grpo.eval_data`, else the first
    `grpo.eval_prompts` of the task's evaluation stream for `seed` (which `rlhfkit eval` with
    that seed draws by default)."""
    if cfg.grpo.eval_data:
        return {str(p.prompt) for p in load_examples(cfg.grpo.eval_data, Format.PROMPT)}
    if not cfg.task:
        return set()
    return {str(row["prompt"]) for row in _eval_prompt_rows(cfg)}


def _eval_prompt_rows(cfg: IterativeGRPOConfig) -> list[dict]:
    """The first `grpo.eval_prompts` of the task's evaluation stream for `seed`, as prompt rows
    (as `rlhfkit tasks export` writes them)."""
    rng = random.Random(derive_seed(cfg.seed, SeedStream.EVAL_PROMPTS))
    return [
        {"prompt": p.prompt, "answer": p.answer, **p.metadata}
        for p in get_task(cfg.task).prompts(cfg.grpo.eval_prompts, rng)
    ]


def label_data_prompts(cfg: IterativeGRPOConfig) -> list[PromptExample]:
    """`label_data`'s prompts, each one the task's labeller can judge (when a task is named)."""
    return load_task_prompts(cfg.label_data, get_task(cfg.task) if cfg.task else None)


def round_prompts(cfg: IterativeGRPOConfig, r: int, held_out: set[str]) -> list[PromptExample]:
    """Round r's prompts to label, drawn on the round's own seed stream (from `label_data`, else
    the task's generator), without the held-out evaluation prompts; a task with too few distinct
    prompts to leave them out (advice: a fixed bank of questions) keeps them."""
    count = cfg.label_prompts + cfg.heldout_prompts
    rng = random.Random(derive_seed(cfg.seed, SeedStream.ROUND_PROMPTS, r))
    if cfg.label_data:
        rows = label_data_prompts(cfg)
        fresh = [p for p in rows if str(p.prompt) not in held_out]
        return rng.sample(fresh, min(count, len(fresh)))
    drawn = get_task(cfg.task).prompts(count + len(held_out), rng)
    fresh = [p for p in drawn if str(p.prompt) not in held_out]
    return fresh[:count] if len(fresh) >= count else drawn[:count]


def _labels(
    cfg: IterativeGRPOConfig,
    r: int,
    folder: Path,
    policy: str,
    labeller: Labeller,
    held_out: set[str],
    part: _Part,
) -> dict:
    """Round r's rankings, on rank 0 alone. Sampling is not split over the ranks: one seeded
    generator draws every sample and one stateful labeller (its calibration, its noise) ranks
    them, so the rankings are a single process's whatever the number of ranks; label_prompts x
    K short samples from an unsharded copy of the policy cost little beside the round's GRPO.
    Done before a resume: the labeller takes back its state after them."""
    if part.done:
        labeller.load_state_dict(load_torch_state(folder / "labeller.pt"))
        return part.read()
    prompts = round_prompts(cfg, r, held_out)
    model, tokenizer = (
        load_causal_lm(policy).to(resolve_device(cfg.device)).eval(),
        load_tokenizer(policy),
    )
    samples = sample_responses(
        model,
        tokenizer,
        [p.prompt for p in prompts],
        num_samples=cfg.samples_per_prompt,
        temperature=cfg.label_temperature,
        max_new_tokens=cfg.grpo.max_new_tokens,
        seed=derive_seed(cfg.seed, SeedStream.ROUND_SAMPLING, r),
        batch_size=256,
        progress=f"round {r}: sampling" if cfg.progress else None,
        dtype=sampling_dtype(cfg.grpo.precision),  # as the round's GRPO samples
    )
    rows = ranked_rows(prompts, samples.texts, rank_with_ties(labeller, prompts, samples.texts))
    train, heldout = rows[: cfg.label_prompts], rows[cfg.label_prompts :]
    if not train:  # the reward model would find an empty file to train on (none held out
        # is allowed: that round's accuracy is then not measured)
        raise RlhfkitError(
            f"round {r}: of {len(prompts)} prompts ranked, {len(prompts) - len(rows)} had no "
            "preference (every response tied or empty), leaving 0 rankings to train the reward "
            "model on: a labeller that tells the responses apart, or more label_prompts or "
            "label_data prompts"
        )
    write_jsonl(folder / "rankings.jsonl", train)
    write_jsonl(folder / "heldout_rankings.jsonl", heldout)
    save_torch_state(folder / "labeller.pt", labeller.state_dict())
    summary = {
        "rankings": len(train),
        "heldout": len(heldout),
        "annotator_temperature": getattr(labeller, "temperature", None),
        "labels_used": labeller.labels_used,
    }
    return part.write(summary)


def _reward_round(
    cfg: IterativeGRPOConfig,
    r: int,
    folder: Path,
    rm: str,
    new: list[dict],
    history: list[dict],
    heldout: int,
    part: _Part,
    ranks: Ranks,
) -> dict:
    rm_cfg = rm_round_config(cfg, r, rm, folder)
    if not heldout:  # no held-out prompt had a preference: nothing to evaluate on
        rm_cfg = dataclasses.replace(rm_cfg, eval_data="")
    before, train_path, replayed = on_main(
        lambda: _reward_rows(cfg, r, folder, rm, rm_cfg, new, history), ranks
    )
    if not cfg.retrain_reward_model:
        summary = {"reward_model": rm, "accuracy_before": before, "accuracy_after": before}
        return on_main(lambda: part.write({**summary, "train_rows": 0, "replay_rows": 0}), ranks)
    rm_cfg = dataclasses.replace(rm_cfg, train_data=train_path)
    run, resume = _sub_run(folder / "rm", rm_cfg, ranks)
    result = train_reward_model(rm_cfg, run, resume=resume)  # sharded under torchrun
    summary = {
        "reward_model": str(run.final),
        "accuracy_before": before,
        "accuracy_after": result.eval_accuracy[-1][1] if result.eval_accuracy else float("nan"),
        "train_rows": len(new),
        "replay_rows": replayed,
    }
    return on_main(lambda: part.write(summary), ranks)


def _reward_rows(
    cfg: IterativeGRPOConfig,
    r: int,
    folder: Path,
    rm: str,
    rm_cfg: RewardConfig,
    new: list[dict],
    history: list[dict],
) -> tuple[float, str, int]:
    """On rank 0: the current reward model's accuracy on the new policy's held-out rankings,
    before it sees them; with `retrain_reward_model`, its training rows (the new rankings plus
    replay) written to `rm_train.jsonl`. Returns the accuracy, that file and the replayed rows."""
    tokenizer = load_tokenizer(rm)
    heldout = (
        load_reward_data(rm_cfg, tokenizer, rm_cfg.eval_data, "eval") if rm_cfg.eval_data else []
    )
    device = resolve_device(cfg.device)
    # an unsharded copy on rank 0: scoring a few held-out rankings needs no other rank
    before = (
        evaluate_reward_model(
            RewardModel.from_pretrained(rm, num_heads=rm_cfg.num_heads).to(device),
            heldout,
            rm_cfg,
            tokenizer.pad_token_id,
        )
        if heldout
        else float("nan")
    )
    if not cfg.retrain_reward_model:
        return before, "", 0
    rng = random.Random(derive_seed(cfg.seed, SeedStream.ROUND_REPLAY, r))
    replayed = replay_rows(new, history, cfg.replay_fraction, rng)
    mix = new + replayed
    rng.shuffle(mix)
    return before, str(write_jsonl(folder / "rm_train.jsonl", mix)), len(replayed)


def _labeller(cfg: IterativeGRPOConfig) -> Labeller:
    """The labeller of every round; labeller=reward builds its `label_reward` source."""
    device = resolve_device(cfg.device)
    reward = None
    if LabellerKind(cfg.labeller) is LabellerKind.REWARD:
        reward = build_reward_source(
            cfg.label_reward,
            task_name=cfg.task or None,
            tokenizer=load_tokenizer(cfg.model),
            device=device,
            batch_size=ROWS_PER_CHUNK,
            max_length=cfg.rm.max_length,
            uncertainty_coef=0.0,
            timeout_s=None,
            length_setting="rm.max_length",
        )
    return build_labeller(
        cfg.labeller,
        task=get_task(cfg.task) if cfg.task else None,
        reward=reward,
        annotator_temperature=cfg.annotator_temperature,
        target_agreement=cfg.target_agreement,
        seed=cfg.seed,
        judge_model=cfg.judge_model,
        device=device,
    )


def train_iterative_grpo(
    cfg: IterativeGRPOConfig, run_dir: RunDir, *, resume: bool = False
) -> IterativeGRPOResult:
    """Rounds of GRPO and reward-model refresh; the last policy goes to `run_dir.final`."""
    check_config(cfg)
    check_reward_model(cfg)
    check_trainer_config(cfg)  # its grpo and rm sections, as each round's trainers would, up front
    # every round's rates before the first round: GRPO trains the policy, the refresh the reward
    # model (each round's trainers check theirs again)
    check_learning_rates(cfg.model, stage_learning_rates({"grpo": cfg.grpo}), force=cfg.force_lr)
    check_learning_rates(cfg.reward_model, stage_learning_rates({"rm": cfg.rm}), force=cfg.force_lr)
    # step 1. the starting policy and reward model, the labeller (built on every rank, so a bad
    # setting fails on all alike; rank 0's alone ranks), the data replay draws from, the
    # evaluation prompts no round labels
    ranks = current_ranks()
    policy, rm = cfg.model, cfg.reward_model
    history = reward_history(cfg.reward_data) if cfg.reward_data else []
    labeller = _labeller(cfg)
    held_out = held_out_prompts(cfg)
    if cfg.label_data:  # read again each round: checked here, before round 1
        check_label_prompts(cfg, label_data_prompts(cfg), held_out)
    result = IterativeGRPOResult(model_dir=run_dir.final)
    done_rounds = sum(
        1 for r in range(1, cfg.rounds + 1) if _Part(run_dir.root / f"round_{r:02d}", "round").done
    )
    metrics = MetricsLogger(  # rank 0 alone logs
        run_dir.metrics_path if ranks.is_main else None,
        run_dir.tensorboard if cfg.tensorboard and ranks.is_main else None,
        resume_from_step=done_rounds if resume else None,
    )

    with metrics:
        for r in range(1, cfg.rounds + 1):
            # steps 2-4. GRPO, fresh rankings, the reward model refreshed on them
            folder = run_dir.root / f"round_{r:02d}"
            summary, new = _round(cfg, r, folder, policy, rm, labeller, held_out, history, ranks)
            history += new
            policy, rm = summary["policy"], summary["reward_model"]
            # step 5. the round's metrics row, then its summary (rank 0): round.json marks the
            # round done, so a kill between the two leaves a row that the resume drops (it keeps
            # the rows of done rounds only) and writes again, never a done round without a row
            part = _Part(folder, "round")
            row = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
            if ranks.is_main and not part.done:
                metrics.log(r, row, stage="iterative_grpo")
                part.write(summary)
            result.rounds.append(summary)
            result.record(r, row)

    # step 6. the last policy as a plain causal-LM directory (rank 0; the others wait for it)
    on_main(lambda: _publish_copy(policy, run_dir.final), ranks)
    return result


def _round(
    cfg: IterativeGRPOConfig,
    r: int,
    folder: Path,
    policy: str,
    rm: str,
    labeller: Labeller,
    held_out: set[str],
    history: list[dict],
    ranks: Ranks,
) -> tuple[dict, list[dict]]:
    """Round r's parts, each read back instead when it was done before a resume; returns the
    round's summary (the same on every rank) and its new rankings."""
    on_main(lambda: folder.mkdir(parents=True, exist_ok=True), ranks)
    parts = {name: _Part(folder, name) for name in ("grpo", "labels", "reward")}
    # step 2. GRPO on the current reward model, reference = this round's starting policy
    grpo = _done_or_make(
        parts["grpo"], lambda: _grpo_round(cfg, r, folder, policy, rm, parts["grpo"], ranks), ranks
    )
    # step 3. fresh samples of the new policy, ranked by the labeller (rank 0)
    labels = on_main(
        lambda: _labels(cfg, r, folder, grpo["policy"], labeller, held_out, parts["labels"]),
        ranks,
    )
    # step 4. the reward model on the new rankings plus replayed history
    new = read_plain_rows(folder / "rankings.jsonl")
    reward = _done_or_make(
        parts["reward"],
        lambda: _reward_round(
            cfg, r, folder, rm, new, history, labels["heldout"], parts["reward"], ranks
        ),
        ranks,
    )
    return {"round": r, **grpo, **labels, **reward}, new


def _publish_copy(source: str, final: Path) -> None:
    tmp = temporary_sibling(final)
    shutil.copytree(source, tmp, dirs_exist_ok=True)
    publish_dir(tmp, final)
