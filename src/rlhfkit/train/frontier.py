"""`rlhfkit frontier`: the reward-KL frontier of the DPO paper (Rafailov et al. 2023, section
6.1 and figure 2) on one built-in task and one base model.

Stages, each calling its trainer as `rlhfkit <trainer>` would:
1. data: the task's demonstrations and held-out prompts;
2. sft: a short SFT of the base model;
3. collect: K responses per prompt sampled from the SFT model, ranked by the task's simulated
   annotators (noise calibrated to the target agreement), training and held-out rankings;
4. rm: a reward model on the SFT model's backbone, on those rankings;
5. the runs, each started from the SFT model, which is also every run's reference: PPO against
   the reward model, GRPO against the reward model, GRPO against the task's gold reward (a
   verifiable reward), and DPO on the rankings at each beta of `dpo_betas`. Each saves
   `points_per_run` checkpoints;
6. evaluate: SFT and every checkpoint answer the same held-out prompts (one greedy answer and
   `eval_samples` at T = 1): gold score and KL to SFT (bootstrap 95% intervals) place the point
   on the frontier; win rates against SFT (Wilson 95%), the reward model's score and the task's
   reward-hacking signs sit beside it;
7. report: `frontier.png` and `.svg`, `summary.json`, `report.md` and `report.html`.
"""

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from rlhfkit.data.length_chunks import ROWS_PER_CHUNK
from rlhfkit.data.loading import write_jsonl
from rlhfkit.data.text_stats import distinct_n, mean_words
from rlhfkit.errors import ConfigError
from rlhfkit.eval.frontier_report import Point, write_frontier_report
from rlhfkit.eval.model_eval import evaluate_model, win_rates
from rlhfkit.models.loading import check_model_path, load_causal_lm, load_tokenizer
from rlhfkit.models.pretrained import check_learning_rates
from rlhfkit.rewards.builder import load_reward_model_source
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.checkpoint import checkpoint_step
from rlhfkit.runtime.config import Filled, fill_section, passed_on
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.provenance import latest_start
from rlhfkit.runtime.run_config import RUN_KEYS
from rlhfkit.runtime.rundir import RunDir, run_root
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.runtime.stages import job_run_dir, timed_stage, train_stage
from rlhfkit.tasks.collect import label_responses
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.checkpointing import load_policy
from rlhfkit.train.config_checks import check_stage_configs
from rlhfkit.train.dpo import train_dpo
from rlhfkit.train.frontier_config import FrontierConfig
from rlhfkit.train.grpo import train_grpo
from rlhfkit.train.lr_guard import stage_learning_rates
from rlhfkit.train.ppo import train_ppo
from rlhfkit.train.reward import check_trains_on_rankings, train_reward_model
from rlhfkit.train.sft import train_sft

BY = "the frontier"


@dataclass(frozen=True)
class RunPlan:
    """One run on the frontier: its directory name, method, label, trainer and filled config."""

    name: str
    method: str
    """ppo, grpo or dpo: the plot's colour family."""
    label: str
    train: Callable
    cfg: Any


@dataclass(frozen=True)
class Plan:
    """The configs of every stage, as the frontier runs them."""

    sft: Any
    rm: Any
    runs: tuple[RunPlan, ...]


def _files(root: Path) -> dict[str, str]:
    return {
        "sft": str(root / "data" / "sft.jsonl"),
        "sft_eval": str(root / "data" / "sft_eval.jsonl"),
        "eval_prompts": str(root / "data" / "eval_prompts.jsonl"),
        "rankings": str(root / "collect" / "rankings.jsonl"),
        "heldout": str(root / "collect" / "heldout_rankings.jsonl"),
        "sft_model": str(RunDir(root / "sft").final),
        "rm_model": str(RunDir(root / "rm").final),
    }


def _cadence(cfg: FrontierConfig, section: Any) -> dict[str, Filled]:
    """Checkpoint every ceil(max_steps / points_per_run) steps, all of them kept."""
    every = max(1, math.ceil(section.max_steps / max(1, cfg.points_per_run)))
    instead = "set points_per_run= instead"
    return {
        "save_every": Filled(every, "from points_per_run=", instead),
        "keep_last": Filled(max(1, cfg.points_per_run), "from points_per_run=", instead),
    }


def check_stage_keys(cfg: FrontierConfig, given: frozenset[str] = frozenset()) -> None:
    """The stages' settings as a run checks them (a key the frontier fills is refused), for
    `--print-config`: what it prints, the run takes."""
    check_stage_configs(stage_configs_of(plan_stages(cfg, Path(cfg.runs_dir) / cfg.name, given)))


def stage_configs_of(plan: Plan) -> list:
    """Every stage's filled config in `plan`."""
    return [plan.sft, plan.rm, *(run.cfg for run in plan.runs)]


def plan_stages(cfg: FrontierConfig, root: Path, given: frozenset[str] = frozenset()) -> Plan:
    """Every stage's config with what the frontier fills in, built before anything runs, so a
    filled key the user set (changed, or `given`) is refused at once, by name."""
    if not cfg.dpo_betas:
        raise ConfigError("dpo_betas is empty: give at least one beta, e.g. dpo_betas=[0.1,0.5]")
    names = [f"dpo_beta{beta:g}" for beta in cfg.dpo_betas]
    if len(set(names)) < len(names):  # one run directory each: a second would replace the first
        raise ConfigError(
            f"dpo_betas={list(cfg.dpo_betas)} repeats a beta (to 6 significant digits, the run "
            f"names {names}): give each beta once"
        )
    f = _files(root)

    def fill(section: str, **wired: Any) -> Any:
        fills = passed_on(cfg, RUN_KEYS)
        for key, value in wired.items():
            fills[key] = (
                value
                if isinstance(value, Filled)
                else Filled(value, f"to {value}", f"run `rlhfkit {section}` alone for another")
            )
        return fill_section(cfg, section, fills, by=BY, given=given)

    sft = fill(
        "sft", model=Filled(cfg.model, "from model=", "set model= instead"),
        train_data=f["sft"], eval_data=f["sft_eval"],
    )  # fmt: skip
    rm = fill("rm", model=f["sft_model"], train_data=f["rankings"], eval_data=f["heldout"])
    check_trains_on_rankings(rm, BY)
    itself = Filled(-1, "to -1 (it evaluates every checkpoint itself)", "leave it out")
    policy = dict(
        model=f["sft_model"], task=cfg.task, eval_data=f["eval_prompts"], eval_every=itself
    )
    ppo = fill("ppo", reward_model=f["rm_model"], **policy, **_cadence(cfg, cfg.ppo))
    grpo = {
        reward: fill("grpo", reward=reward, **policy, **_cadence(cfg, cfg.grpo))
        for reward in (f"model:{f['rm_model']}", "task")
    }
    runs = [
        RunPlan("ppo", "ppo", "PPO (reward model)", train_ppo, ppo),
        RunPlan(
            "grpo_rm", "grpo", "GRPO (reward model)", train_grpo, grpo[f"model:{f['rm_model']}"]
        ),
        RunPlan("grpo_gold", "grpo", f"GRPO ({cfg.task} reward)", train_grpo, grpo["task"]),
    ]
    for beta in cfg.dpo_betas:
        dpo = fill(
            "dpo", model=f["sft_model"], train_data=f["rankings"], eval_data=f["heldout"],
            beta=Filled(beta, "from dpo_betas=", "set dpo_betas= instead"),
            **_cadence(cfg, cfg.dpo),
        )  # fmt: skip
        runs.append(RunPlan(f"dpo_beta{beta:g}", "dpo", f"DPO beta={beta:g}", train_dpo, dpo))
    return Plan(sft, rm, tuple(runs))


def cpu_name() -> str:
    """The CPU's model name as Linux reports it (the timings in summary.json depend on it)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else "unknown CPU"


class Frontier:
    """Stages in order; each records its wall time and its results in `self.summary`."""

    def __init__(self, cfg: FrontierConfig):
        self.cfg = cfg
        # a plain name inside runs_dir
        self.root = run_root(Path(cfg.runs_dir), cfg.name, name_key="name", dir_key="runs_dir")
        # checked before anything is written or replaced: the model, the stages, the rates
        if not cfg.model:
            raise ConfigError(
                "rlhfkit frontier needs model=PATH (a Hugging Face causal-LM directory or a "
                ".gguf file)"
            )
        check_model_path(cfg.model)
        self.plan = plan_stages(cfg, self.root)
        check_stage_configs(stage_configs_of(self.plan))  # what each trainer would refuse, now
        sections = {name: getattr(cfg, name) for name in ("sft", "rm", "ppo", "grpo", "dpo")}
        check_learning_rates(cfg.model, stage_learning_rates(sections), force=cfg.force_lr)
        self.files = _files(self.root)
        self.console = Console()
        self.task = get_task(cfg.task)
        self.summary: dict = {"stages": {}, "runs": {}}

    def stage(self, name: str, fn) -> Any:
        return timed_stage(self.console, self.summary["stages"], name, fn)

    def train(self, name: str, train_fn, cfg) -> Any:
        return train_stage(self.root, name, train_fn, cfg)

    # stage 1. demonstrations, held-out demonstrations and the held-out prompts
    def make_data(self) -> None:
        rng, d = random.Random(self.cfg.seed), self.cfg.data
        rows = {
            "sft": self.task.sft_examples(d.sft_rows, rng),
            "sft_eval": self.task.sft_examples(d.sft_eval_rows, rng),
        }
        for name, examples in rows.items():
            write_jsonl(self.files[name], [dataclasses.asdict(x) for x in examples])
        self.eval_prompts = self.task.prompts(d.eval_prompts, rng)
        prompt_rows = [
            {"prompt": p.prompt, "answer": p.answer, **p.metadata} for p in self.eval_prompts
        ]
        write_jsonl(self.files["eval_prompts"], prompt_rows)

    # stage 2. a short SFT
    def sft(self) -> None:
        result = self.train("sft", train_sft, self.plan.sft)
        self.summary["sft"] = {
            "steps": len(result.train_losses),
            "first_loss": result.train_losses[0],
            "last_loss": result.train_losses[-1],
            "eval_loss": result.eval_losses[-1][1] if result.eval_losses else None,
        }

    # stage 3. K responses per prompt from the SFT model, ranked by the simulated annotators
    def collect(self) -> None:
        d = self.cfg.data
        rng = random.Random(derive_seed(self.cfg.seed, SeedStream.COLLECT))
        held_out = {p.prompt for p in self.eval_prompts}
        prompts = [
            p for p in self.task.prompts(2 * (d.collect_prompts + d.heldout_rankings), rng)
            if p.prompt not in held_out
        ][: d.collect_prompts + d.heldout_rankings]  # fmt: skip
        model = load_causal_lm(self.files["sft_model"]).to(resolve_device(self.cfg.device))
        samples = sample_responses(
            model,
            load_tokenizer(self.files["sft_model"]),
            [p.prompt for p in prompts],
            num_samples=d.responses_per_prompt,
            temperature=d.temperature,
            max_new_tokens=d.max_new_tokens,
            seed=self.cfg.seed,
            progress="sampling",
        )
        grouped = list(zip(prompts, samples.texts))
        collection = label_responses(
            self.task,
            grouped[: d.collect_prompts],
            grouped[d.collect_prompts :],
            target_agreement=d.target_agreement,
            rng=rng,
        )
        self.summary["collect"] = {
            "rankings": len(collection.rankings),
            "pairs": len(collection.pairs),
            "heldout_rankings": len(collection.heldout_rankings),
            "annotator_temperature": collection.temperature,
            "agreement": collection.agreement,
            "bayes_limit": collection.bayes_limit,
        }
        write_jsonl(self.files["rankings"], collection.rankings)
        write_jsonl(self.files["heldout"], collection.heldout_rankings)

    # stage 4. the reward model on the SFT model's backbone
    def reward_model(self) -> None:
        result = self.train("rm", train_reward_model, self.plan.rm)
        self.summary["rm"] = {"heldout_accuracy": result.eval_accuracy[-1][1]}

    # stage 5. one run of each method (DPO: one per beta), each from the SFT model
    def run_method(self, plan: RunPlan) -> None:
        result = self.train(plan.name, plan.train, plan.cfg)
        first, last = result.history[0], result.history[-1]
        self.summary["runs"][plan.name] = {
            "method": plan.method,
            "label": plan.label,
            "steps": len(result.history),
            "first": first,
            "last": last,
        }

    # stage 6. SFT and every checkpoint of every run on the same held-out prompts
    def evaluate(self) -> None:
        c, device = self.cfg, resolve_device(self.cfg.device)
        sft = load_causal_lm(self.files["sft_model"]).to(device)
        tokenizer = load_tokenizer(self.files["sft_model"])
        proxy = load_reward_model_source(
            self.files["rm_model"],
            tokenizer=tokenizer,
            device=device,
            batch_size=ROWS_PER_CHUNK,
            max_length=self.plan.rm.max_length,
            uncertainty_coef=0.0,
            name="reward model",
        )

        def measure(model):
            e = evaluate_model(
                model,
                tokenizer,
                self.task,
                self.eval_prompts,
                reference=sft,
                proxy=proxy,
                samples_per_prompt=c.eval_samples,
                max_new_tokens=c.eval_max_new_tokens,
                seed=c.seed,
                batch_size=64,
            )
            # the task's own signs of the sampled answers too (evaluate_model: greedy only),
            # and the words and distinct-1 of the report's table whatever the task measures
            repeated = [p for p in self.eval_prompts for _ in range(c.eval_samples)]
            texts = e.sampled.flat(e.sampled.texts)
            e.metrics.update(
                {"sampled_words": mean_words(texts), "sampled_distinct_1": distinct_n(texts, 1)}
            )
            sampled = self.task.evaluate(repeated, texts)
            e.metrics.update({f"sampled_{k}": v for k, v in sampled.items()})
            return e

        base = measure(sft)
        self.points = [Point("sft", "sft", "SFT", 0, base.metrics)]
        self.finals = {"sft": base}
        for plan in self.plan.runs:
            steps = self.summary["runs"][plan.name]["steps"]
            for step, final, path in run_points(self.root / plan.name, steps):
                model = checkpoint_model(plan.cfg, path, final, device)
                e = measure(model)
                e.metrics.update(win_rates(e, base))
                self.points.append(Point(plan.name, plan.method, plan.label, step, e.metrics))
                if final:
                    self.finals[plan.name] = e
                del model

    def run_all(self) -> dict:
        with job_run_dir(self.root, self.cfg):
            return self._stages()

    def _stages(self) -> dict:
        started = time.perf_counter()
        self.summary["machine"] = machine_info()
        self.stage("data", self.make_data)
        self.stage("sft", self.sft)
        self.stage("collect", self.collect)
        self.stage("reward model", self.reward_model)
        for plan in self.plan.runs:
            self.stage(plan.name, lambda plan=plan: self.run_method(plan))
        self.stage("evaluate", self.evaluate)
        self.summary["seconds"] = time.perf_counter() - started
        self.summary["machine"]["load_average_end"] = list(os.getloadavg())
        started = latest_start(self.root)  # the command, code and machine behind the numbers
        if started is not None:
            self.summary["started"] = started
        paths = write_frontier_report(
            self.root,
            self.summary,
            self.points,
            side_by_side(self.eval_prompts, self.finals, self.plan, self.cfg.report_samples),
            title=f"{self.cfg.task} on {self.cfg.model}",
        )
        for path in paths:
            self.console.print(f"wrote {path}")
        return self.summary


def run_points(run_root: Path, steps: int) -> list[tuple[int, bool, Path]]:
    """(step, is final, path) of a run's saved checkpoints and of its final model after `steps`
    steps, by step."""
    run = RunDir(run_root)
    points = sorted((checkpoint_step(path), False, path) for path in run.checkpoints.glob("step_*"))
    return [p for p in points if p[0] < steps] + [(steps, True, run.final)]


def checkpoint_model(cfg, path: Path, final: bool, device):
    """A checkpoint's policy as a plain model (LoRA adapters merged), or the final model."""
    if final:
        return load_causal_lm(path).to(device)
    lora_r = cfg.lora_r
    policy = load_policy(cfg.model, path, lora_r=lora_r, lora_alpha=cfg.lora_alpha, device=device)
    return policy.merge_and_unload() if lora_r > 0 else policy


def side_by_side(prompts, finals: dict, plan: Plan, count: int) -> list[dict]:
    labels = {"sft": "SFT", **{p.name: p.label for p in plan.runs}}
    return [
        {
            "prompt": p.prompt,
            **{
                labels[name]: {"response": e.greedy.texts[i][0], "gold": e.greedy_scores[i]}
                for name, e in finals.items()
            },
        }
        for i, p in enumerate(prompts[:count])
    ]


def machine_info() -> dict:
    return {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
    }


def run_frontier(cfg: FrontierConfig) -> dict:
    """`rlhfkit frontier`: every stage in order, then the plot, the tables and the report."""
    return Frontier(cfg).run_all()
