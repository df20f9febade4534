"""The main job: build the tiny model, SFT, collect simulated rankings, train the reward
model, PPO against it (advice), GRPO with the verifiable reward (arith), DPO on the rankings
(advice), RAFT with the verifiable reward (arith), evaluate every policy from one set of samples
each, print the tables and write `summary.json` and `report.html`. Under torchrun the training
stages run sharded on every rank; the others (data, model, collect, evaluate, report) on rank 0
alone while the other ranks wait (`runtime.stages.main_stage`)."""

import dataclasses
import json
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhfkit.data.formats import PromptExample
from rlhfkit.data.loading import write_jsonl
from rlhfkit.eval.model_eval import distinct_indices, evaluate_model, win_rates
from rlhfkit.eval.report import write_report
from rlhfkit.eval.tables import rich_table
from rlhfkit.models.loading import check_model_path, load_causal_lm, load_tokenizer
from rlhfkit.models.pretrained import check_learning_rates
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.pipeline_config import RL_KEYS, PipelineConfig
from rlhfkit.pipeline_table import (
    ADVICE_METHODS,
    ARITH_METHODS,
    GOLD,
    collection_line,
    eval_tables,
    stage_rows,
)
from rlhfkit.rewards.builder import load_reward_model_source
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.config import Filled, fill_section, passed_on
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.distributed import current_ranks
from rlhfkit.runtime.provenance import latest_start
from rlhfkit.runtime.run_config import RUN_KEYS
from rlhfkit.runtime.rundir import RunDir, run_root
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.runtime.stages import job_run_dir, main_stage, timed_stage, train_stage
from rlhfkit.tasks.collect import label_responses
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.config_checks import check_stage_configs
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.lr_guard import stage_learning_rates
from rlhfkit.train.ppo import PPOConfig, train_ppo
from rlhfkit.train.raft import RAFTConfig, train_raft
from rlhfkit.train.reward import RewardConfig, check_trains_on_rankings, train_reward_model
from rlhfkit.train.sft import SFTConfig, train_sft


def _prompt_row(p: PromptExample) -> dict:
    return {"prompt": p.prompt, "answer": p.answer, **p.metadata}


def _data_file(root: Path, name: str) -> Path:
    return root / "data" / f"{name}.jsonl"


def _collected_file(root: Path, name: str) -> Path:
    return root / "collect" / f"{name}.jsonl"


def _final(root: Path, stage: str) -> str:
    return str(RunDir(root / stage).final)


@dataclass(frozen=True)
class StageConfigs:
    """Every training stage's config as the pipeline runs it."""

    sft: SFTConfig
    rm: RewardConfig
    ppo: PPOConfig
    grpo: GRPOConfig
    dpo: DPOConfig
    raft: RAFTConfig


def check_stage_keys(cfg: PipelineConfig, given: frozenset[str] = frozenset()) -> None:
    """The stages' settings as a run checks them (a key the pipeline fills is refused), for
    `--print-config`: what it prints, the run takes."""
    check_stage_configs(vars(stage_configs(cfg, Path(cfg.runs_dir) / cfg.name, given)).values())


def stage_configs(
    cfg: PipelineConfig, root: Path, given: frozenset[str] = frozenset()
) -> StageConfigs:
    """Each stage's section with what the pipeline fills in: the paths earlier stages write under
    `root`, the stage's task, and the job's seed, device, max_nonfinite_skips, force_lr (and the
    RL stages' evaluation length).
    Built before the first stage runs, so a filled key the user set (changed, or `given`) is
    refused at once, by name."""
    base = cfg.model.base_model or str(root / "base_model")
    base_model = Filled(base, "to the base model", "set model.base_model= instead")
    sft, rm = _final(root, "sft"), _final(root, "rm")
    demonstrations, held_out = str(_data_file(root, "sft")), str(_data_file(root, "sft_eval"))
    rankings = str(_collected_file(root, "rankings"))
    heldout = str(_collected_file(root, "heldout_rankings"))
    check_trains_on_rankings(cfg.rm, "the pipeline")

    def fill(section: str, shared: tuple[str, ...], **wired: tuple[Any, str] | Filled) -> Any:
        """`shared` keys come from the pipeline's own; `wired` ones are (value, where from)."""
        fills = passed_on(cfg, shared)
        for key, wire in wired.items():
            fills[key] = (
                wire
                if isinstance(wire, Filled)
                else Filled(*wire, f"run `rlhfkit {section}` alone for another {key}")
            )
        return fill_section(cfg, section, fills, by="the pipeline", given=given)

    eval_prompts = {
        task: (str(_data_file(root, f"{task}_eval_prompts")), f"to its held-out {task} prompts")
        for task in ("advice", "arith")
    }
    return StageConfigs(
        sft=fill(
            "sft",
            RUN_KEYS,
            model=base_model,
            train_data=(demonstrations, "to the demonstrations it generates"),
            eval_data=(held_out, "to its held-out demonstrations"),
        ),
        rm=fill(
            "rm",
            RUN_KEYS,
            model=(sft, "to its SFT model"),
            train_data=(rankings, "to the rankings it collects"),
            eval_data=(heldout, "to the held-out rankings it collects"),
        ),
        ppo=fill(
            "ppo",
            RL_KEYS,
            model=(sft, "to its SFT model"),
            reward_model=(rm, "to the reward model it trains"),
            task=("advice", "to advice"),
            eval_data=eval_prompts["advice"],
        ),
        grpo=fill(
            "grpo",
            RL_KEYS,
            model=(sft, "to its SFT model"),
            task=("arith", "to arith"),
            eval_data=eval_prompts["arith"],
        ),
        dpo=fill(
            "dpo",
            RUN_KEYS,
            model=(sft, "to its SFT model"),
            train_data=(rankings, "to the rankings it collects"),
            eval_data=(heldout, "to the held-out rankings it collects"),
        ),
        raft=fill(
            "raft",
            RL_KEYS,
            model=(sft, "to its SFT model"),
            task=("arith", "to arith"),
            eval_data=eval_prompts["arith"],
        ),
    )


class Pipeline:
    """Stages in order; each records its wall time and its results in `self.summary`."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        # a plain name inside runs_dir
        self.root = run_root(Path(cfg.runs_dir), cfg.name, name_key="name", dir_key="runs_dir")
        # checked before anything is written or replaced: the stages' configs, a given base
        # model (the tiny default is built from scratch) and the rates that train it
        self.stages = stage_configs(cfg, self.root)
        check_stage_configs(vars(self.stages).values())  # what each stage's trainer would refuse
        if cfg.model.base_model:
            check_model_path(cfg.model.base_model)
        sections = {field.name: getattr(self.stages, field.name) for field in fields(StageConfigs)}
        check_learning_rates(
            cfg.model.base_model, stage_learning_rates(sections), force=cfg.force_lr
        )
        self.console = Console(quiet=not current_ranks().is_main)  # rank 0 alone prints
        d = cfg.data
        arith = get_task(
            "arith", flawed_fraction=d.flawed_fraction, shortcut_fraction=d.shortcut_fraction
        )
        self.tasks = {"arith": arith, "advice": get_task("advice")}
        self.summary: dict = {"stages": {}, "eval": {}}
        self.side_by_side: dict[str, list[dict]] = {}

    def stage(self, name: str, fn):
        return timed_stage(self.console, self.summary["stages"], name, fn)

    def train(self, name: str, train_fn):
        """Run the training stage `name` with its config in a fresh run directory; its result."""
        return train_stage(self.root, name, train_fn, getattr(self.stages, name))

    # stage 1. task data: demonstrations (mixed), held-out demonstrations and prompts
    def make_data(self) -> None:
        rng, d = random.Random(self.cfg.seed), self.cfg.data
        sft, held_out, self.eval_prompts = [], [], {}
        for name, task in self.tasks.items():
            sft += [dataclasses.asdict(x) for x in task.sft_examples(d.sft_rows_per_task, rng)]
            held_out += [
                dataclasses.asdict(x) for x in task.sft_examples(d.eval_rows_per_task, rng)
            ]
            self.eval_prompts[name] = task.prompts(d.eval_prompts_per_task, rng)
        rng.shuffle(sft)
        rng.shuffle(held_out)
        for name, prompts in self.eval_prompts.items():
            write_jsonl(
                _data_file(self.root, f"{name}_eval_prompts"), [_prompt_row(p) for p in prompts]
            )
        write_jsonl(_data_file(self.root, "sft"), sft)
        write_jsonl(_data_file(self.root, "sft_eval"), held_out)

    # stage 2. the tiny Llama-style model and its tokenizer (or the given model directory)
    def make_model(self) -> None:
        m = self.cfg.model
        if m.base_model:
            return
        corpus = [json.loads(line) for line in open(self.stages.sft.train_data)]
        texts = [row["prompt"] + row["completion"] for row in corpus]
        build_tiny_model(
            self.stages.sft.model,
            texts,
            seed=self.cfg.seed,
            vocab_size=m.vocab_size,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            intermediate_size=m.intermediate_size,
        )

    # stage 3. supervised fine-tuning
    def sft(self) -> Path:
        result = self.train("sft", train_sft)
        losses = result.train_losses
        self.summary["sft"] = {
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "eval_loss": result.eval_losses[-1][1] if result.eval_losses else None,
        }
        return result.model_dir

    # stage 5. sample K responses per prompt and have the simulated annotators rank them
    def collect(self, model_dir: Path) -> None:
        c, task = self.cfg.collect, self.tasks["advice"]
        rng = random.Random(derive_seed(self.cfg.seed, SeedStream.COLLECT))
        prompts = task.prompts(c.train_prompts + c.heldout_prompts, rng)
        model, tokenizer = (
            load_causal_lm(model_dir).to(resolve_device(self.cfg.device)),
            load_tokenizer(model_dir),
        )
        samples = sample_responses(
            model,
            tokenizer,
            [p.prompt for p in prompts],
            num_samples=c.responses_per_prompt,
            temperature=c.temperature,
            max_new_tokens=c.max_new_tokens,
            seed=self.cfg.seed,
            batch_size=1024,
            progress="sampling",
        )
        grouped = list(zip(prompts, samples.texts))
        collection = label_responses(
            task,
            grouped[: c.train_prompts],
            grouped[c.train_prompts :],
            target_agreement=c.target_agreement,
            rng=rng,
        )
        self.summary["collect"] = {
            "temperature": collection.temperature,
            "agreement": collection.agreement,
            "bayes_limit": collection.bayes_limit,
            "pairs": len(collection.pairs),
            "rankings": len(collection.rankings),
        }
        self.console.print(collection_line(self.summary["collect"]))
        write_jsonl(_collected_file(self.root, "pairs"), collection.pairs)
        write_jsonl(_collected_file(self.root, "rankings"), collection.rankings)
        write_jsonl(_collected_file(self.root, "heldout_rankings"), collection.heldout_rankings)

    # stage 6. the reward model on the rankings, judged on annotator A's held-out labels
    def reward_model(self) -> Path:
        result = self.train("rm", train_reward_model)
        self.summary["rm"] = {"heldout_accuracy": result.eval_accuracy[-1][1]}
        return result.model_dir

    # stage 7. PPO on advice against the learned reward model (proxy), judged by the gold annotator
    def ppo(self) -> Path:
        result = self.train("ppo", train_ppo)
        first, last = result.history[0], result.history[-1]
        self.summary["ppo"] = {
            "steps": len(result.history),
            "kl_per_sequence": last["kl_per_sequence"],
            "stopped_at_kl_limit": result.stopped_at_kl_limit,
            "proxy_first": first["proxy_reward"],
            "proxy_last": last["proxy_reward"],
            "gold_first": first["gold_score"],
            "gold_last": last["gold_score"],
        }
        return result.model_dir

    # stage 8. GRPO on arith with the verifiable reward (RLVR)
    def grpo(self) -> Path:
        result = self.train("grpo", train_grpo)
        first, last = result.history[0], result.history[-1]
        self.summary["grpo"] = {
            "steps": len(result.history),
            "kl_per_token": last.get("kl_per_token", 0.0),
            "reward_first": first["reward_mean"],
            "reward_last": last["reward_mean"],
            "length_first": first["response_length"],
            "length_last": last["response_length"],
        }
        return result.model_dir

    # stage 9. DPO on the same rankings as the reward model: no reward model, no sampling
    def dpo(self) -> Path:
        result = self.train("dpo", train_dpo)
        held_out = result.evals[-1][1]
        self.summary["dpo"] = {
            "steps": len(result.history),
            "loss": self.stages.dpo.loss.value,
            "heldout_accuracy": held_out["accuracy"],
            "heldout_margin": held_out["margin"],
        }
        return result.model_dir

    # stage 10. RAFT on arith: fine-tune on the best correct sample of each prompt, round after
    # round
    def raft(self) -> Path:
        result = self.train("raft", train_raft)
        self.summary["raft"] = {
            "rounds": len(result.history),
            "kept": sum(row["kept_count"] for row in result.history),
        }
        return result.model_dir

    # stage 11. every policy on the held-out prompts of its task: one greedy and a few sampled
    # answers per prompt give the gold score, the win rate against SFT, the KL to SFT (the
    # reference of every method), the reward-hacking signs, and pass@k / maj@k on arith
    def evaluate(self, models: dict[str, Path], rm_dir: Path) -> None:
        device = resolve_device(self.cfg.device)
        sft = load_causal_lm(models["sft"]).to(device)
        tokenizer = load_tokenizer(models["sft"])
        proxy = self.proxy(rm_dir, tokenizer, device)
        plan = {"advice": (ADVICE_METHODS, proxy), "arith": (ARITH_METHODS, None)}
        for task_name, (methods, task_proxy) in plan.items():
            prompts, evals = self.eval_prompts[task_name], {}
            for method in methods:
                model = sft if method == "sft" else load_causal_lm(models[method]).to(device)
                evals[method] = self.evaluate_policy(task_name, model, tokenizer, sft, task_proxy)
                if method != "sft":
                    evals[method].metrics.update(win_rates(evals[method], evals["sft"]))
            self.summary["eval"][task_name] = {method: e.metrics for method, e in evals.items()}
            self.side_by_side[task_name] = [
                {
                    "prompt": p.prompt,
                    **{
                        method: {"response": e.greedy.texts[i][0], "gold": e.greedy_scores[i]}
                        for method, e in evals.items()
                    },
                }
                for i in distinct_indices([p.prompt for p in prompts])[: self.cfg.report_samples]
                for p in [prompts[i]]
            ]

    def proxy(self, rm_dir: Path, tokenizer, device):
        """The reward model as the evaluation reads it: its mean score, no uncertainty penalty."""
        return load_reward_model_source(
            str(rm_dir),
            tokenizer=tokenizer,
            device=device,
            batch_size=256,
            max_length=self.cfg.rm.max_length,
            uncertainty_coef=0.0,
            name="reward model",
        )

    def evaluate_policy(self, task_name: str, model, tokenizer, sft, proxy):
        """One policy on a task's held-out prompts (`make_data` draws them), as the evaluate
        stage measures every policy: one greedy and a few sampled answers per prompt."""
        c = self.cfg
        samples = c.advice_eval_samples if task_name == "advice" else c.arith_eval_samples
        return evaluate_model(
            model,
            tokenizer,
            self.tasks[task_name],
            self.eval_prompts[task_name],
            reference=sft,
            proxy=proxy,
            samples_per_prompt=samples,
            max_new_tokens=c.eval_max_new_tokens,
            seed=c.seed,
            batch_size=512,
        )

    def run_all(self) -> dict:
        with job_run_dir(self.root, self.cfg):
            return self._stages()

    def _stages(self) -> dict:
        # each stage reads what the earlier ones wrote where its config (self.stages) says
        self.stage("data", main_stage(self.make_data))
        self.stage("model", main_stage(self.make_model))
        models = {"sft": self.stage("sft", self.sft)}
        self.stage("collect", main_stage(lambda: self.collect(models["sft"])))
        rm_dir = self.stage("reward model", self.reward_model)
        models["ppo"] = self.stage("ppo", self.ppo)
        models["grpo"] = self.stage("grpo", self.grpo)
        models["dpo"] = self.stage("dpo", self.dpo)
        models["raft"] = self.stage("raft", self.raft)
        self.stage("evaluate", main_stage(lambda: self.evaluate(models, rm_dir)))
        main_stage(self.report)()
        return self.summary  # rank 0's is the whole one

    def report(self) -> None:
        """The tables on the terminal, `summary.json` (every number in them) and `report.html`."""
        stages, evaluations = stage_rows(self.summary), eval_tables(self.summary)
        started = latest_start(self.root)  # the command, code and machine behind the numbers
        if started is not None:
            self.summary["started"] = started
        self.console.print(
            rich_table(
                f"rlhfkit pipeline: {self.root}",
                ["stage", "result", "yardstick", "wall time"],
                stages,
            )
        )
        for task, (columns, rows) in evaluations.items():
            title = f"{task}: held-out evaluation (gold = {GOLD[task]})"
            self.console.print(rich_table(title, columns, rows))
        with open(self.root / "summary.json", "w") as f:
            json.dump({**self.summary, "samples": self.side_by_side}, f, indent=2)
        path = write_report(
            self.root,
            self.summary,
            self.side_by_side,
            stage_rows=stages,
            eval_tables=evaluations,
            methods_by_task={"advice": ADVICE_METHODS, "arith": ARITH_METHODS},
        )
        self.console.print(f"report: {path.resolve()}")


def run_pipeline(cfg: PipelineConfig) -> dict:
    """`rlhfkit pipeline`: every stage in order, the tables, `summary.json` and `report.html`."""
    return Pipeline(cfg).run_all()
