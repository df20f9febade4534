"""Iterative GRPO: the reward model follows the policy (DeepSeekMath, Shao et al. 2024, section
4.1.2; seed 003, Q16). A reward model trained on the SFT model's samples grows stale as the
policy moves away from them, and a stale proxy is what RL learns to exploit. Each round:
    1. GRPO for `grpo.max_steps` steps on the current reward model, with the reference reset to
       the round's starting policy (the KL term then bounds each round's move, not the total);
    2. sample K responses to fresh prompts from the new policy; the simulated annotator ranks them
       (and, apart, a held-out set of the same kind);
    3. the current reward model's accuracy on those held-out rankings: how far the policy has
       moved off the data the reward model was trained on;
    4. the reward model trained further on the new rankings plus `replay_fraction` of rows drawn
       from every earlier round's rankings (and the initial data), so it does not forget them.
Each round's parts go to `round_NN/` (grpo/, rankings, rm/, a summary JSON per part); on resume a
finished part is skipped and an interrupted GRPO or reward-model run resumes from its checkpoint.
With `retrain_reward_model=false` the same rounds run on the first reward model throughout, and
with `reset_reference=false` every round keeps the starting policy as its reference: the two
controls that isolate what each half of the recipe does.
"""

import dataclasses
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.data.loading import read_rows, write_jsonl
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.labellers import SimulatedAnnotator
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.reward import RewardModel
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.checkpoint import latest_checkpoint, load_torch_state, save_torch_state
from rlhfkit.runtime.config import save_config
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.metrics import MetricsLogger, read_metrics
from rlhfkit.runtime.run_config import RunConfig
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.reward import RewardConfig, evaluate_reward_model, load_reward_data, train_reward_model

# Prompts of round r are drawn with seed + PROMPT_SEED_STRIDE * r: fresh in every round.
PROMPT_SEED_STRIDE = 7_919


@dataclass(frozen=True)
class IterativeGRPOConfig(RunConfig):
    """`seed` (from `RunConfig`) seeds every round: round r uses seed + r."""

    model: str = ""
    """Causal-LM directory of the starting policy (usually the SFT model)."""
    reward_model: str = ""
    """The first round's reward model (a directory `rlhfkit rm` wrote)."""
    reward_data: str = ""
    """Rankings or pairs (JSONL) that reward model was trained on: replay draws from them too (empty = none)."""
    task: str = "advice"
    """Built-in task: prompts, the simulated annotator's gold score, evaluation."""
    rounds: int = 3
    """RL rounds; the reward model is retrained after each."""
    label_prompts: int = 200
    """Fresh prompts sampled and ranked after each round (the reward model's new training rows)."""
    heldout_prompts: int = 50
    """Further prompts ranked the same way, held out: the reward model's accuracy on the new policy."""
    samples_per_prompt: int = 4
    """K responses per labelled prompt: C(K,2) comparisons each."""
    label_temperature: float = 1.0
    """Sampling temperature of the responses to label."""
    replay_fraction: float = 0.1
    """Share of the reward model's training rows drawn from earlier rounds' rankings."""
    annotator_temperature: float = 0.0
    """The simulated annotator's Bradley-Terry T; 0 = calibrated on the first round's samples, then fixed."""
    target_agreement: float = 0.725
    """The inter-annotator agreement that calibration aims at."""
    retrain_reward_model: bool = True
    """false: every round uses the first reward model (the control without the refresh)."""
    reset_reference: bool = True
    """false: every round keeps the starting policy as its reference (the control without the reset)."""
    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(task="advice", max_steps=20, prompts_per_step=16,
                                                                group_size=4, mini_batch_size=64, lr=5e-5,
                                                                eval_every=0, save_every=10))
    """Each round's GRPO run; `model`, `reward`, `task`, `seed`, `device` and `precision` are set per round."""
    rm: RewardConfig = field(default_factory=lambda: RewardConfig(max_steps=60, lr=5e-5, batch_size=16,
                                                                  warmup_steps=5, eval_every=0, save_every=30))
    """Each round's reward-model training; `model`, `train_data`, `eval_data`, `seed`, `device` are set per round."""
    tensorboard: bool = True
    """Also write TensorBoard scalars (one point per round)."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class IterativeGRPOResult:
    model_dir: Path
    rounds: list[dict] = field(default_factory=list)  # one summary per round


def check_config(cfg: IterativeGRPOConfig) -> None:
    if not cfg.model or not cfg.reward_model:
        raise ConfigError("rlhfkit iterative-grpo needs model=PATH (the policy) and reward_model=PATH")
    if cfg.rounds < 1 or cfg.samples_per_prompt < 2 or cfg.label_prompts < 1:
        raise ConfigError(f"rounds={cfg.rounds}, samples_per_prompt={cfg.samples_per_prompt}, label_prompts="
                          f"{cfg.label_prompts}: need at least 1 round, 2 samples and 1 prompt to rank")
    if not 0.0 <= cfg.replay_fraction < 1.0:
        raise ConfigError(f"replay_fraction={cfg.replay_fraction}: must be in [0, 1)")


def replay_rows(new: list[dict], history: list[dict], fraction: float, rng: random.Random) -> list[dict]:
    """Rows drawn from `history` so they make up `fraction` of new + replayed (fewer if history is short)."""
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


def _grpo_round(cfg: IterativeGRPOConfig, r: int, folder: Path, policy: str, rm: str) -> dict:
    grpo_cfg = dataclasses.replace(cfg.grpo, model=policy, reward=f"model:{rm}", task=cfg.task, seed=cfg.seed + r,
                                   device=cfg.device, progress=cfg.progress, tensorboard=cfg.tensorboard,
                                   reference_model="" if cfg.reset_reference else cfg.model)
    run, resume = _sub_run(folder / "grpo")
    save_config(grpo_cfg, run.config_path)
    result = train_grpo(grpo_cfg, run, resume=resume)
    rows = read_metrics(run.metrics_path)  # all steps, also those before a resume
    evals = [row for row in rows if "eval_gold_score" in row]
    return {"policy": str(run.final), "proxy_first": rows[0]["reward_mean"], "proxy_last": rows[-1]["reward_mean"],
            "gold_first": rows[0]["gold_score"], "gold_last": rows[-1]["gold_score"],
            "kl_last": rows[-1].get("kl", 0.0),
            "eval_gold_start": result.evals[0][1]["gold_score"] if result.evals and result.evals[0][0] == 0 else None,
            "eval_gold_end": evals[-1]["eval_gold_score"] if evals else None}


def _label_round(cfg: IterativeGRPOConfig, r: int, folder: Path, policy: str, annotator: SimulatedAnnotator) -> dict:
    task = get_task(cfg.task)
    prompts = task.prompts(cfg.label_prompts + cfg.heldout_prompts, random.Random(cfg.seed + PROMPT_SEED_STRIDE * r))
    model, tokenizer = load_causal_lm(policy).to(resolve_device(cfg.device)).eval(), load_tokenizer(policy)
    samples = sample_responses(model, tokenizer, [p.prompt for p in prompts], num_samples=cfg.samples_per_prompt,
                               temperature=cfg.label_temperature, max_new_tokens=cfg.grpo.max_new_tokens,
                               seed=cfg.seed + r, batch_size=256,
                               progress=f"round {r}: sampling" if cfg.progress else None)
    orders = annotator.rank(prompts, samples.texts)
    rows = _ranked_rows(prompts, samples.texts, orders)
    train, heldout = rows[: cfg.label_prompts], rows[cfg.label_prompts :]
    write_jsonl(folder / "rankings.jsonl", train)
    write_jsonl(folder / "heldout_rankings.jsonl", heldout)
    save_torch_state(folder / "annotator.pt", annotator.state_dict())
    return {"rankings": len(train), "heldout": len(heldout), "annotator_temperature": annotator.temperature,
            "labels_used": annotator.labels_used}


def _reward_round(cfg: IterativeGRPOConfig, r: int, folder: Path, rm: str, new: list[dict],
                  history: list[dict]) -> dict:
    rm_cfg = dataclasses.replace(cfg.rm, model=rm, eval_data=str(folder / "heldout_rankings.jsonl"),
                                 seed=cfg.seed + r, device=cfg.device, progress=cfg.progress,
                                 tensorboard=cfg.tensorboard)
    # the current reward model on the new policy's held-out rankings, before it sees them
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(rm)
    heldout = load_reward_data(rm_cfg, tokenizer, rm_cfg.eval_data)
    before = evaluate_reward_model(RewardModel.from_pretrained(rm).to(device), heldout, rm_cfg,
                                   tokenizer.pad_token_id) if heldout else float("nan")
    if not cfg.retrain_reward_model:
        return {"reward_model": rm, "accuracy_before": before, "accuracy_after": before, "train_rows": 0,
                "replay_rows": 0}
    replayed = replay_rows(new, history, cfg.replay_fraction, random.Random(cfg.seed + r))
    mix = new + replayed
    random.Random(cfg.seed - r).shuffle(mix)
    train_path = write_jsonl(folder / "rm_train.jsonl", mix)
    run, resume = _sub_run(folder / "rm")
    rm_cfg = dataclasses.replace(rm_cfg, train_data=str(train_path))
    save_config(rm_cfg, run.config_path)
    result = train_reward_model(rm_cfg, run, resume=resume)
    return {"reward_model": str(run.final), "accuracy_before": before,
            "accuracy_after": result.eval_accuracy[-1][1] if result.eval_accuracy else float("nan"),
            "train_rows": len(new), "replay_rows": len(replayed)}


def train_iterative_grpo(cfg: IterativeGRPOConfig, run_dir: RunDir, *, resume: bool = False) -> IterativeGRPOResult:
    """Rounds of GRPO and reward-model refresh; the last policy goes to `run_dir.final`."""
    check_config(cfg)
    # step 1. the starting policy and reward model, the annotator, the data replay draws from
    policy, rm = cfg.model, cfg.reward_model
    history = [as_ranking_row(row) for row in _rows(cfg.reward_data)] if cfg.reward_data else []
    annotator = SimulatedAnnotator(get_task(cfg.task).reward, temperature=cfg.annotator_temperature or None,
                                   target_agreement=cfg.target_agreement, seed=cfg.seed)
    result = IterativeGRPOResult(model_dir=run_dir.final)
    done_rounds = sum(1 for r in range(1, cfg.rounds + 1) if _Part(run_dir.root / f"round_{r:02d}", "round").done)
    metrics = MetricsLogger(run_dir.metrics_path, run_dir.tensorboard if cfg.tensorboard else None,
                            resume_from_step=done_rounds if resume else None)

    with metrics:
        for r in range(1, cfg.rounds + 1):
            folder = run_dir.root / f"round_{r:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            parts = {name: _Part(folder, name) for name in ("grpo", "labels", "reward", "round")}
            # step 2. GRPO on the current reward model, reference = this round's starting policy
            grpo = parts["grpo"].read() if parts["grpo"].done else parts["grpo"].write(
                _grpo_round(cfg, r, folder, policy, rm))
            # step 3. fresh samples of the new policy, ranked by the simulated annotator
            if parts["labels"].done:
                annotator.load_state_dict(load_torch_state(folder / "annotator.pt"))
                labels = parts["labels"].read()
            else:
                labels = parts["labels"].write(_label_round(cfg, r, folder, grpo["policy"], annotator))
            # step 4. the reward model on the new rankings plus replayed history
            new = _rows(folder / "rankings.jsonl")
            reward = parts["reward"].read() if parts["reward"].done else parts["reward"].write(
                _reward_round(cfg, r, folder, rm, new, history))
            history += new
            policy, rm = grpo["policy"], reward["reward_model"]
            # step 5. the round's summary and metrics row
            summary = {"round": r, **grpo, **labels, **reward}
            if not parts["round"].done:
                parts["round"].write(summary)
                metrics.log(r, {k: v for k, v in summary.items() if isinstance(v, (int, float))},
                            stage="iterative_grpo")
            result.rounds.append(summary)

    # step 6. the last policy as a plain causal-LM directory
    if run_dir.final.exists():
        shutil.rmtree(run_dir.final)
    shutil.copytree(policy, run_dir.final)
    return result
