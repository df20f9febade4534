"""The main job: build the tiny model, SFT, collect simulated rankings, train the reward
model, PPO against it (advice), GRPO with the verifiable reward (arith), DPO on the rankings
(advice), RAFT with the verifiable reward (arith), evaluate every policy from one set of samples
each, print the tables and write `summary.json` and `report.html`."""

import dataclasses
import json
import random
import time
from pathlib import Path

from rich.console import Console

from rlhfkit.data.formats import PromptExample
from rlhfkit.data.loading import write_jsonl
from rlhfkit.eval.model_eval import evaluate_model, win_rates
from rlhfkit.eval.report import write_report
from rlhfkit.eval.tables import rich_table
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.pipeline_table import ADVICE_METHODS, ARITH_METHODS, eval_tables, stage_rows
from rlhfkit.rewards.builder import load_reward_model_source
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.config import save_config
from rlhfkit.runtime.device import resolve_device
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.collect import label_responses
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.dpo import train_dpo
from rlhfkit.train.grpo import train_grpo
from rlhfkit.train.ppo import train_ppo
from rlhfkit.train.raft import train_raft
from rlhfkit.train.reward import train_reward_model
from rlhfkit.train.sft import train_sft


def _prompt_row(p: PromptExample) -> dict:
    return {"prompt": p.prompt, "answer": p.answer, **p.metadata}


class Pipeline:
    """Stages in order; each records its wall time and its results in `self.summary`."""

    def __init__(self, cfg: PipelineConfig, *, overwrite: bool = True):
        self.cfg = cfg
        self.root = Path(cfg.runs_dir) / cfg.name
        self.run = prepare_run_dir(self.root, resume=False, overwrite=overwrite)
        save_config(cfg, self.run.config_path)
        self.console = Console()
        d = cfg.data
        arith = get_task("arith", flawed_fraction=d.flawed_fraction, shortcut_fraction=d.shortcut_fraction)
        self.tasks = {"arith": arith, "advice": get_task("advice")}
        self.summary: dict = {"stages": {}, "eval": {}}
        self.side_by_side: dict[str, list[dict]] = {}

    def stage(self, name: str, fn):
        self.console.rule(f"[bold]{name}")
        started = time.perf_counter()
        out = fn()
        self.summary["stages"][name] = {"seconds": time.perf_counter() - started}
        return out

    # stage 1. task data: demonstrations (mixed), held-out demonstrations and prompts
    def make_data(self) -> dict[str, Path]:
        rng, d = random.Random(self.cfg.seed), self.cfg.data
        sft, held_out, self.eval_prompts = [], [], {}
        for name, task in self.tasks.items():
            sft += [dataclasses.asdict(x) for x in task.sft_examples(d.sft_rows_per_task, rng)]
            held_out += [dataclasses.asdict(x) for x in task.sft_examples(d.eval_rows_per_task, rng)]
            self.eval_prompts[name] = task.prompts(d.eval_prompts_per_task, rng)
        rng.shuffle(sft)
        rng.shuffle(held_out)
        data = self.root / "data"
        self.eval_files = {name: write_jsonl(data / f"{name}_eval_prompts.jsonl", [_prompt_row(p) for p in prompts])
                           for name, prompts in self.eval_prompts.items()}
        return {"sft": write_jsonl(data / "sft.jsonl", sft), "sft_eval": write_jsonl(data / "sft_eval.jsonl", held_out)}

    # stage 2. the tiny Llama-style model and its tokenizer (or the given model directory)
    def make_model(self, files: dict[str, Path]) -> Path:
        m = self.cfg.model
        if m.base_model:
            return Path(m.base_model)
        corpus = [json.loads(line) for line in open(files["sft"])]
        texts = [row["prompt"] + row["completion"] for row in corpus]
        return build_tiny_model(self.root / "base_model", texts, seed=self.cfg.seed, vocab_size=m.vocab_size,
                                hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
                                intermediate_size=m.intermediate_size)

    # stage 3. supervised fine-tuning
    def sft(self, base: Path, files: dict[str, Path]) -> Path:
        cfg = dataclasses.replace(self.cfg.sft, model=str(base), train_data=str(files["sft"]),
                                  eval_data=str(files["sft_eval"]), seed=self.cfg.seed,
                                  device=self.cfg.device)
        run = prepare_run_dir(self.root / "sft", resume=False, overwrite=True)
        save_config(cfg, run.config_path)
        result = train_sft(cfg, run)
        losses = result.train_losses
        self.summary["sft"] = {"first_loss": losses[0], "last_loss": losses[-1],
                               "eval_loss": result.eval_losses[-1][1] if result.eval_losses else None}
        return result.model_dir

    # stage 5. sample K responses per prompt and have the simulated annotators rank them
    def collect(self, model_dir: Path) -> dict[str, Path]:
        c, task = self.cfg.collect, self.tasks["advice"]
        rng = random.Random(self.cfg.seed + 1)
        prompts = task.prompts(c.train_prompts + c.heldout_prompts, rng)
        model, tokenizer = load_causal_lm(model_dir).to(resolve_device(self.cfg.device)), load_tokenizer(model_dir)
        samples = sample_responses(model, tokenizer, [p.prompt for p in prompts], num_samples=c.responses_per_prompt,
                                   temperature=c.temperature, max_new_tokens=c.max_new_tokens, seed=self.cfg.seed,
                                   batch_size=1024, progress="sampling")
        grouped = list(zip(prompts, samples.texts))
        collection = label_responses(task, grouped[: c.train_prompts], grouped[c.train_prompts :],
                                     target_agreement=c.target_agreement, rng=rng)
        out = self.root / "collect"
        self.summary["collect"] = {"temperature": collection.temperature, "agreement": collection.agreement,
                                   "bayes_limit": collection.bayes_limit, "pairs": len(collection.pairs),
                                   "rankings": len(collection.rankings)}
        self.console.print(self.summary["collect"])
        write_jsonl(out / "pairs.jsonl", collection.pairs)
        return {"rankings": write_jsonl(out / "rankings.jsonl", collection.rankings),
                "heldout": write_jsonl(out / "heldout_rankings.jsonl", collection.heldout_rankings)}

    # stage 6. the reward model on the rankings, judged on annotator A's held-out labels
    def reward_model(self, sft_dir: Path, files: dict[str, Path]) -> Path:
        cfg = dataclasses.replace(self.cfg.rm, model=str(sft_dir), train_data=str(files["rankings"]),
                                  eval_data=str(files["heldout"]), seed=self.cfg.seed,
                                  device=self.cfg.device)
        run = prepare_run_dir(self.root / "rm", resume=False, overwrite=True)
        save_config(cfg, run.config_path)
        result = train_reward_model(cfg, run)
        self.summary["rm"] = {"heldout_accuracy": result.eval_accuracy[-1][1]}
        return result.model_dir

    # stage 7. PPO on advice against the learned reward model (proxy), judged by the gold annotator
    def ppo(self, sft_dir: Path, rm_dir: Path) -> Path:
        cfg = dataclasses.replace(self.cfg.ppo, model=str(sft_dir), reward_model=str(rm_dir), task="advice",
                                  eval_data=str(self.eval_files["advice"]), **self.policy_run_settings())
        run = prepare_run_dir(self.root / "ppo", resume=False, overwrite=True)
        save_config(cfg, run.config_path)
        result = train_ppo(cfg, run)
        first, last = result.history[0], result.history[-1]
        self.summary["ppo"] = {
            "steps": len(result.history), "kl": last["kl"], "stopped_at_kl_limit": result.stopped_at_kl_limit,
            "proxy_first": first["proxy_reward"], "proxy_last": last["proxy_reward"],
            "gold_first": first["gold_score"], "gold_last": last["gold_score"],
        }
        return result.model_dir

    # stage 8. GRPO on arith with the verifiable reward (RLVR)
    def grpo(self, sft_dir: Path) -> Path:
        cfg = dataclasses.replace(self.cfg.grpo, model=str(sft_dir), task="arith",
                                  eval_data=str(self.eval_files["arith"]), **self.policy_run_settings())
        run = prepare_run_dir(self.root / "grpo", resume=False, overwrite=True)
        save_config(cfg, run.config_path)
        result = train_grpo(cfg, run)
        first, last = result.history[0], result.history[-1]
        self.summary["grpo"] = {
            "steps": len(result.history), "kl": last.get("kl", 0.0), "reward_first": first["reward_mean"],
            "reward_last": last["reward_mean"], "length_first": first["response_length"],
            "length_last": last["response_length"],
        }
        return result.model_dir

    # stage 9. DPO on the same rankings as the reward model: no reward model, no sampling
    def dpo(self, sft_dir: Path, files: dict[str, Path]) -> Path:
        cfg = dataclasses.replace(self.cfg.dpo, model=str(sft_dir), train_data=str(files["rankings"]),
                                  eval_data=str(files["heldout"]), seed=self.cfg.seed, device=self.cfg.device)
        run = prepare_run_dir(self.root / "dpo", resume=False, overwrite=True)
        save_config(cfg, run.config_path)
        result = train_dpo(cfg, run)
        held_out = result.evals[-1][1]
        self.summary["dpo"] = {"steps": len(result.history), "loss": cfg.loss.value,
                               "heldout_accuracy": held_out["accuracy"], "heldout_margin": held_out["margin"]}
        return result.model_dir

    # stage 10. RAFT on arith: fine-tune on the best correct sample of each prompt, round after round
    def raft(self, sft_dir: Path) -> Path:
        cfg = dataclasses.replace(self.cfg.raft, model=str(sft_dir), task="arith",
                                  eval_data=str(self.eval_files["arith"]), **self.policy_run_settings())
        run = prepare_run_dir(self.root / "raft", resume=False, overwrite=True)
        save_config(cfg, run.config_path)
        result = train_raft(cfg, run)
        self.summary["raft"] = {"rounds": len(result.history),
                                "kept": sum(row["kept_count"] for row in result.history)}
        return result.model_dir

    def policy_run_settings(self) -> dict:
        """What the RL stages share with the rest of the job: evaluation length, seed, device."""
        return dict(eval_max_new_tokens=self.cfg.eval_max_new_tokens, seed=self.cfg.seed, device=self.cfg.device)

    # stage 11. every policy on the held-out prompts of its task: one greedy and a few sampled
    # answers per prompt give the gold score, the win rate against SFT, the KL to SFT (the
    # reference of every method), the reward-hacking signs, and pass@k / maj@k on arith
    def evaluate(self, models: dict[str, Path], rm_dir: Path) -> None:
        device, c = resolve_device(self.cfg.device), self.cfg
        sft = load_causal_lm(models["sft"]).to(device)
        tokenizer = load_tokenizer(models["sft"])
        proxy = load_reward_model_source(str(rm_dir), tokenizer=tokenizer, device=device, batch_size=256,
                                         max_length=c.rm.max_length, uncertainty_coef=0.0, name="reward model")
        plan = {"advice": (ADVICE_METHODS, c.advice_eval_samples, proxy), "arith": (ARITH_METHODS, c.arith_eval_samples, None)}
        for task_name, (methods, samples, task_proxy) in plan.items():
            task, prompts, evals = self.tasks[task_name], self.eval_prompts[task_name], {}
            for method in methods:
                model = sft if method == "sft" else load_causal_lm(models[method]).to(device)
                evals[method] = evaluate_model(model, tokenizer, task, prompts, reference=sft, proxy=task_proxy,
                                               samples_per_prompt=samples, max_new_tokens=c.eval_max_new_tokens,
                                               seed=c.seed, batch_size=512)
                if method != "sft":
                    evals[method].metrics.update(win_rates(evals[method], evals["sft"]))
            self.summary["eval"][task_name] = {method: e.metrics for method, e in evals.items()}
            self.side_by_side[task_name] = [
                {"prompt": p.prompt, **{method: {"response": e.greedy.texts[i][0], "gold": e.greedy_scores[i]}
                                        for method, e in evals.items()}}
                for i, p in enumerate(prompts[: c.report_samples])]

    def run_all(self) -> dict:
        files = self.stage("data", self.make_data)
        base = self.stage("model", lambda: self.make_model(files))
        sft_dir = self.stage("sft", lambda: self.sft(base, files))
        collected = self.stage("collect", lambda: self.collect(sft_dir))
        rm_dir = self.stage("reward model", lambda: self.reward_model(sft_dir, collected))
        models = {"sft": sft_dir}
        models["ppo"] = self.stage("ppo", lambda: self.ppo(sft_dir, rm_dir))
        models["grpo"] = self.stage("grpo", lambda: self.grpo(sft_dir))
        models["dpo"] = self.stage("dpo", lambda: self.dpo(sft_dir, collected))
        models["raft"] = self.stage("raft", lambda: self.raft(sft_dir))
        self.stage("evaluate", lambda: self.evaluate(models, rm_dir))
        self.report()
        return self.summary

    def report(self) -> None:
        """The tables on the terminal, `summary.json` (every number in them) and `report.html`."""
        self.console.print(rich_table(f"rlhfkit pipeline: {self.root}", ["stage", "result", "yardstick", "wall time"],
                                      stage_rows(self.summary)))
        for task, (columns, rows) in eval_tables(self.summary).items():
            self.console.print(rich_table(f"{task}: held-out evaluation (gold = the hidden annotator)", columns, rows))
        with open(self.root / "summary.json", "w") as f:
            json.dump({**self.summary, "samples": self.side_by_side}, f, indent=2)
        path = write_report(self.root, self.summary, self.side_by_side)
        self.console.print(f"report: {path.resolve()}")


def run_pipeline(cfg: PipelineConfig) -> dict:
    """`rlhfkit pipeline`: every stage in order, the tables, `summary.json` and `report.html`."""
    return Pipeline(cfg).run_all()
