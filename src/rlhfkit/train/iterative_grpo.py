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
"""

import dataclasses
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.data.formats import Format, PromptExample
from rlhfkit.data.loading import load_examples, read_rows, write_jsonl
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.labellers import Labeller, LabellerKind, build_labeller
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
from rlhfkit.runtime.config import Filled, fill_section, save_config
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.metrics import MetricsLogger, read_metrics
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.iterative_config import IterativeGRPOConfig
from rlhfkit.train.lr_guard import stage_learning_rates
from rlhfkit.train.reward import (
    RewardConfig,
    evaluate_reward_model,
    load_reward_data,
    train_reward_model,
)


@dataclass
class IterativeGRPOResult:
    model_dir: Path
    rounds: list[dict] = field(default_factory=list)  # one summary per round


def check_config(cfg: IterativeGRPOConfig) -> None:
    if not cfg.model or not cfg.reward_model:
        raise ConfigError(
            "rlhfkit iterative-grpo needs model=PATH (the policy) and reward_model=PATH"
        )
    if not cfg.task and not (cfg.label_data and cfg.grpo.train_data):
        raise ConfigError(
            "without a task, iterative-grpo needs grpo.train_data=PATH (GRPO's "
            "prompts) and label_data=PATH (the prompts labelled each round); or set "
            "task=arith|advice"
        )
    kind = LabellerKind(cfg.labeller)
    if kind is LabellerKind.ANNOTATOR and not cfg.task:
        raise ConfigError(
            "labeller=annotator is a built-in task's simulated human: set "
            "task=arith|advice, or labeller=reward with "
            "label_reward=file.py:function, or labeller=judge"
        )
    if kind is LabellerKind.REWARD and not cfg.label_reward:
        raise ConfigError("labeller=reward needs label_reward=SPEC (e.g. path/to/file.py:function)")
    if kind is LabellerKind.JUDGE and not cfg.judge_model:
        raise ConfigError(
            "labeller=judge needs judge_model=PATH (a causal LM that answers ' A' or ' B')"
        )
    # the keys each round fills: a user's own value for one of them is refused, naming it
    grpo_round_config(cfg, 1, cfg.model, cfg.reward_model)
    rm_round_config(cfg, 1, cfg.reward_model, Path("."))
    if cfg.rounds < 1 or cfg.samples_per_prompt < 2 or cfg.label_prompts < 1:
        raise ConfigError(
            f"rounds={cfg.rounds}, samples_per_prompt={cfg.samples_per_prompt}, label_prompts="
            f"{cfg.label_prompts}: need at least 1 round, 2 samples and 1 prompt to rank"
        )
    if not 0.0 <= cfg.replay_fraction < 1.0:
        raise ConfigError(f"replay_fraction={cfg.replay_fraction}: must be in [0, 1)")
    # a LoRA round's reference is its own base: from round 2 on the last round's policy, so
    # keeping the first policy as every round's reference cannot be expressed
    if cfg.grpo.lora_r > 0 and not cfg.reset_reference:
        raise ConfigError(
            f"reset_reference=false with grpo.lora_r={cfg.grpo.lora_r}: under LoRA each "
            "round's reference is that round's starting policy with its adapters off; set "
            "reset_reference=true or grpo.lora_r=0"
        )


def replay_rows(
    new: list[dict], history: list[dict], fraction: float, rng: random.Random
) -> list[dict]:
    """Rows drawn from `history` so they make up `fraction` of new + replayed (fewer if history is
    short)."""
    wanted = round(len(new) * fraction / (1.0 - fraction))
    return rng.sample(history, min(wanted, len(history)))


def _rows(path: str | Path) -> list[dict]:
    """A dataset's rows (JSONL, JSON, Parquet, a saved dataset) as plain dicts."""
    return [row for _, row in read_rows(path)]


def as_ranking_row(row: dict) -> dict:
    """A preference pair as a ranking of two, so replayed pairs and new rankings share one file."""
    if "chosen" in row:
        return {"prompt": row["prompt"], "responses": [row["chosen"], row["rejected"]]}
    return row


def _ranked_rows(prompts, texts, orders) -> list[dict]:
    """Ranking rows (responses best first), without empty responses or prompts left with one."""
    rows = []
    for prompt, responses, order in zip(prompts, texts, orders):
        ranked = [responses[i] for i in order if responses[i].strip()]
        if len(ranked) >= 2:
            rows.append({"prompt": prompt.prompt, "responses": ranked})
    return rows


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


def _sub_run(root: Path) -> tuple[RunDir, bool]:
    """A GRPO or reward-model run directory: resumed from its checkpoint, else started afresh."""
    resume = latest_checkpoint(root / "checkpoints") is not None
    return prepare_run_dir(root, resume=resume, overwrite=not resume), resume


def _common_fills(cfg: IterativeGRPOConfig, r: int) -> dict[str, Filled]:
    return {
        "seed": Filled(
            derive_seed(cfg.seed, SeedStream.ROUND_TRAINERS, r),
            "from seed= (round r: its own derived seed)",
            "set seed= instead",
        ),
        "device": Filled(cfg.device, "from device=", "set device= instead"),
        "force_lr": Filled(cfg.force_lr, "from force_lr=", "set force_lr= instead"),
        "progress": Filled(cfg.progress, "from progress=", "set progress= instead"),
        "tensorboard": Filled(cfg.tensorboard, "from tensorboard=", "set tensorboard= instead"),
    }


def grpo_round_config(cfg: IterativeGRPOConfig, r: int, policy: str, rm: str) -> GRPOConfig:
    """Round r's GRPO settings: `cfg.grpo` with the keys each round fills."""
    reference = "" if cfg.reset_reference else cfg.model
    fills = {
        "model": Filled(
            policy, "each round (the last round's policy)", "set model= for the first round"
        ),
        "reward": Filled(
            f"model:{rm}",
            "each round (the current reward model)",
            "set reward_model= for the first round",
        ),
        "reference_model": Filled(
            reference, "from reset_reference=", "set reset_reference= instead"
        ),
        "task": Filled(cfg.task, "from task=", "set task= instead"),
        **_common_fills(cfg, r),
    }
    return fill_section(cfg, "grpo", fills, by="iterative GRPO")


def rm_round_config(cfg: IterativeGRPOConfig, r: int, rm: str, folder: Path) -> RewardConfig:
    """Round r's reward-model settings: `cfg.rm` with the keys each round fills (`train_data`:
    written once the round's rows are, see `_reward_round`)."""
    fills = {
        "model": Filled(
            rm, "each round (the current reward model)", "set reward_model= for the first round"
        ),
        "eval_data": Filled(
            str(folder / "heldout_rankings.jsonl"),
            "each round (its held-out rankings)",
            "set heldout_prompts= instead",
        ),
        "train_data": Filled(
            "", "each round (its rankings plus replay)", "set reward_data= instead"
        ),
        **_common_fills(cfg, r),
    }
    return fill_section(cfg, "rm", fills, by="iterative GRPO")


def _grpo_round(cfg: IterativeGRPOConfig, r: int, folder: Path, policy: str, rm: str) -> dict:
    grpo_cfg = grpo_round_config(cfg, r, policy, rm)
    run, resume = _sub_run(folder / "grpo")
    save_config(grpo_cfg, run.config_path)
    result = train_grpo(grpo_cfg, run, resume=resume)
    rows = read_metrics(run.metrics_path)  # all steps, also those before a resume
    evals = [row for row in rows if "eval_gold_score" in row]
    start = result.evals[0][1] if result.evals and result.evals[0][0] == 0 else {}
    return {
        "policy": str(run.final),
        "proxy_first": rows[0]["reward_mean"],
        "proxy_last": rows[-1]["reward_mean"],
        "gold_first": rows[0].get("gold_score"),
        "gold_last": rows[-1].get("gold_score"),
        "kl_per_token_last": rows[-1].get("kl_per_token", 0.0),
        "eval_gold_start": start.get("gold_score"),
        "eval_gold_end": evals[-1]["eval_gold_score"] if evals else None,
    }


def held_out_prompts(cfg: IterativeGRPOConfig) -> set[str]:
    """The evaluation prompts no round labels: `grpo.eval_data`, else the first
    `grpo.eval_prompts` of the task's evaluation stream for `seed` (which `rlhfkit eval` with
    that seed draws by default)."""
    if cfg.grpo.eval_data:
        return {str(p.prompt) for p in load_examples(cfg.grpo.eval_data, Format.PROMPT)}
    if not cfg.task:
        return set()
    rng = random.Random(derive_seed(cfg.seed, SeedStream.EVAL_PROMPTS))
    return {str(p.prompt) for p in get_task(cfg.task).prompts(cfg.grpo.eval_prompts, rng)}


def round_prompts(cfg: IterativeGRPOConfig, r: int, held_out: set[str]) -> list[PromptExample]:
    """Round r's prompts to label, drawn on the round's own seed stream (from `label_data`, else
    the task's generator), without the held-out evaluation prompts; a task with too few distinct
    prompts to leave them out (advice: a fixed bank of questions) keeps them."""
    count = cfg.label_prompts + cfg.heldout_prompts
    rng = random.Random(derive_seed(cfg.seed, SeedStream.ROUND_PROMPTS, r))
    if cfg.label_data:
        rows = load_examples(cfg.label_data, Format.PROMPT)
        fresh = [p for p in rows if str(p.prompt) not in held_out]
        return rng.sample(fresh, min(count, len(fresh)))
    drawn = get_task(cfg.task).prompts(count + len(held_out), rng)
    fresh = [p for p in drawn if str(p.prompt) not in held_out]
    return fresh[:count] if len(fresh) >= count else drawn[:count]


def _label_round(
    cfg: IterativeGRPOConfig,
    r: int,
    folder: Path,
    policy: str,
    labeller: Labeller,
    held_out: set[str],
) -> dict:
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
    )
    orders = labeller.rank(prompts, samples.texts)
    rows = _ranked_rows(prompts, samples.texts, orders)
    train, heldout = rows[: cfg.label_prompts], rows[cfg.label_prompts :]
    write_jsonl(folder / "rankings.jsonl", train)
    write_jsonl(folder / "heldout_rankings.jsonl", heldout)
    save_torch_state(folder / "labeller.pt", labeller.state_dict())
    return {
        "rankings": len(train),
        "heldout": len(heldout),
        "annotator_temperature": getattr(labeller, "temperature", None),
        "labels_used": labeller.labels_used,
    }


def _reward_round(
    cfg: IterativeGRPOConfig, r: int, folder: Path, rm: str, new: list[dict], history: list[dict]
) -> dict:
    rm_cfg = rm_round_config(cfg, r, rm, folder)
    # the current reward model on the new policy's held-out rankings, before it sees them
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(rm)
    heldout = load_reward_data(rm_cfg, tokenizer, rm_cfg.eval_data)
    before = (
        evaluate_reward_model(
            RewardModel.from_pretrained(rm).to(device), heldout, rm_cfg, tokenizer.pad_token_id
        )
        if heldout
        else float("nan")
    )
    if not cfg.retrain_reward_model:
        return {
            "reward_model": rm,
            "accuracy_before": before,
            "accuracy_after": before,
            "train_rows": 0,
            "replay_rows": 0,
        }
    rng = random.Random(derive_seed(cfg.seed, SeedStream.ROUND_REPLAY, r))
    replayed = replay_rows(new, history, cfg.replay_fraction, rng)
    mix = new + replayed
    rng.shuffle(mix)
    train_path = write_jsonl(folder / "rm_train.jsonl", mix)
    run, resume = _sub_run(folder / "rm")
    rm_cfg = dataclasses.replace(rm_cfg, train_data=str(train_path))
    save_config(rm_cfg, run.config_path)
    result = train_reward_model(rm_cfg, run, resume=resume)
    return {
        "reward_model": str(run.final),
        "accuracy_before": before,
        "accuracy_after": result.eval_accuracy[-1][1] if result.eval_accuracy else float("nan"),
        "train_rows": len(new),
        "replay_rows": len(replayed),
    }


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
            batch_size=64,
            max_length=cfg.rm.max_length,
            uncertainty_coef=0.0,
            timeout_s=None,
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
    # every round's rates before the first round: GRPO trains the policy, the refresh the reward
    # model (each round's trainers check theirs again)
    check_learning_rates(cfg.model, stage_learning_rates({"grpo": cfg.grpo}), force=cfg.force_lr)
    check_learning_rates(cfg.reward_model, stage_learning_rates({"rm": cfg.rm}), force=cfg.force_lr)
    # step 1. the starting policy and reward model, the labeller, the data replay draws from,
    # the evaluation prompts no round labels
    policy, rm = cfg.model, cfg.reward_model
    history = [as_ranking_row(row) for row in _rows(cfg.reward_data)] if cfg.reward_data else []
    labeller = _labeller(cfg)
    held_out = held_out_prompts(cfg)
    result = IterativeGRPOResult(model_dir=run_dir.final)
    done_rounds = sum(
        1 for r in range(1, cfg.rounds + 1) if _Part(run_dir.root / f"round_{r:02d}", "round").done
    )
    metrics = MetricsLogger(
        run_dir.metrics_path,
        run_dir.tensorboard if cfg.tensorboard else None,
        resume_from_step=done_rounds if resume else None,
    )

    with metrics:
        for r in range(1, cfg.rounds + 1):
            folder = run_dir.root / f"round_{r:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            parts = {name: _Part(folder, name) for name in ("grpo", "labels", "reward", "round")}
            # step 2. GRPO on the current reward model, reference = this round's starting policy
            grpo = (
                parts["grpo"].read()
                if parts["grpo"].done
                else parts["grpo"].write(_grpo_round(cfg, r, folder, policy, rm))
            )
            # step 3. fresh samples of the new policy, ranked by the labeller
            if parts["labels"].done:
                labeller.load_state_dict(load_torch_state(folder / "labeller.pt"))
                labels = parts["labels"].read()
            else:
                labelled = _label_round(cfg, r, folder, grpo["policy"], labeller, held_out)
                labels = parts["labels"].write(labelled)
            # step 4. the reward model on the new rankings plus replayed history
            new = _rows(folder / "rankings.jsonl")
            reward = (
                parts["reward"].read()
                if parts["reward"].done
                else parts["reward"].write(_reward_round(cfg, r, folder, rm, new, history))
            )
            history += new
            policy, rm = grpo["policy"], reward["reward_model"]
            # step 5. the round's summary and metrics row
            summary = {"round": r, **grpo, **labels, **reward}
            if not parts["round"].done:
                parts["round"].write(summary)
                metrics.log(
                    r,
                    {k: v for k, v in summary.items() if isinstance(v, (int, float))},
                    stage="iterative_grpo",
                )
            result.rounds.append(summary)

    # step 6. the last policy as a plain causal-LM directory
    tmp = temporary_sibling(run_dir.final)
    shutil.copytree(policy, tmp, dirs_exist_ok=True)
    publish_dir(tmp, run_dir.final)
    return result
