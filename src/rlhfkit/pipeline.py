"""The main job: build the tiny model, SFT, collect simulated rankings, train the reward
model, PPO against it (advice), GRPO with the verifiable reward (arith), DPO on the rankings
(advice), RAFT with the verifiable reward (arith), evaluate, and print one table."""

import dataclasses
import json
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlhfkit.data.formats import PromptExample
from rlhfkit.data.loading import write_jsonl
from rlhfkit.eval.policy import evaluate_policy, gold_scores
from rlhfkit.eval.win_rate import win_rate
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.pipeline_config import PipelineConfig
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
        self.summary: dict = {"stages": {}}
        self.sft_scores: dict = {}  # (task, SFT directory) -> {"greedy"/"sampled": gold scores}

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

    # stage 4. the SFT policy on held-out prompts of each task
    def evaluate_sft(self, model_dir: Path) -> None:
        model, tokenizer = load_causal_lm(model_dir).to(resolve_device(self.cfg.device)), load_tokenizer(model_dir)
        for name, task in self.tasks.items():
            metrics, responses = evaluate_policy(model, tokenizer, task, self.eval_prompts[name],
                                                 max_new_tokens=self.cfg.eval_max_new_tokens, seed=self.cfg.seed,
                                                 progress=f"eval {name}")
            self.summary[f"sft_{name}"] = metrics
            self.console.print(f"{name}: {metrics}  e.g. {responses[0]!r}")

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
            "eval_gold_score": result.evals[-1][1]["gold_score"],
            **self.win_rates("advice", result.model_dir, sft_dir),
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
        before, after = result.evals[0][1], result.evals[-1][1]
        self.summary["grpo"] = {
            "steps": len(result.history), "kl": last.get("kl", 0.0),
            "accuracy_before": before["accuracy"], "accuracy": after["accuracy"],
            "step_accuracy": after["step_accuracy"], "reward_first": first["reward_mean"],
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
                               "heldout_accuracy": held_out["accuracy"], "heldout_margin": held_out["margin"],
                               **self.win_rates("advice", result.model_dir, sft_dir)}
        return result.model_dir

    # stage 10. RAFT on arith: fine-tune on the best correct sample of each prompt, round after round
    def raft(self, sft_dir: Path) -> Path:
        cfg = dataclasses.replace(self.cfg.raft, model=str(sft_dir), task="arith",
                                  eval_data=str(self.eval_files["arith"]), **self.policy_run_settings())
        run = prepare_run_dir(self.root / "raft", resume=False, overwrite=True)
        save_config(cfg, run.config_path)
        result = train_raft(cfg, run)
        before, after = result.evals[0][1], result.evals[-1][1]
        self.summary["raft"] = {"rounds": len(result.history), "accuracy_before": before["accuracy"],
                                "accuracy": after["accuracy"], "step_accuracy": after["step_accuracy"],
                                "kept": sum(row["kept_count"] for row in result.history)}
        return result.model_dir

    def policy_run_settings(self) -> dict:
        """What the RL stages share with the rest of the job: evaluation length, seed, device."""
        return dict(eval_max_new_tokens=self.cfg.eval_max_new_tokens, seed=self.cfg.seed, device=self.cfg.device)

    def win_rates(self, task_name: str, model_dir: Path, sft_dir: Path) -> dict[str, float]:
        """Gold win rate against the SFT model: greedy answers, and sampled ones at T = 1. The
        SFT model's answers are the same for every stage (same prompts, same seed), so they are
        scored once."""
        device = resolve_device(self.cfg.device)
        tokenizer, task, prompts = load_tokenizer(sft_dir), self.tasks[task_name], self.eval_prompts[task_name]
        settings = {"greedy": dict(greedy=True),
                    "sampled": dict(temperature=1.0, samples_per_prompt=self.cfg.win_rate_samples)}
        if (task_name, sft_dir) not in self.sft_scores:
            sft = load_causal_lm(sft_dir).to(device)
            self.sft_scores[task_name, sft_dir] = {
                kind: gold_scores(sft, tokenizer, task, prompts, max_new_tokens=self.cfg.eval_max_new_tokens,
                                  seed=self.cfg.seed, **options) for kind, options in settings.items()}
        policy, out = load_causal_lm(model_dir).to(device), {}
        for kind, options in settings.items():
            scores = gold_scores(policy, tokenizer, task, prompts, max_new_tokens=self.cfg.eval_max_new_tokens,
                                 seed=self.cfg.seed, **options)
            out |= win_rate(scores, self.sft_scores[task_name, sft_dir][kind]).as_dict(f"win_rate_{kind}")
        return out

    def run_all(self) -> dict:
        files = self.stage("data", self.make_data)
        base = self.stage("model", lambda: self.make_model(files))
        sft_dir = self.stage("sft", lambda: self.sft(base, files))
        self.stage("eval sft", lambda: self.evaluate_sft(sft_dir))
        collected = self.stage("collect", lambda: self.collect(sft_dir))
        rm_dir = self.stage("reward model", lambda: self.reward_model(sft_dir, collected))
        self.stage("ppo", lambda: self.ppo(sft_dir, rm_dir))
        self.stage("grpo", lambda: self.grpo(sft_dir))
        self.stage("dpo", lambda: self.dpo(sft_dir, collected))
        self.stage("raft", lambda: self.raft(sft_dir))
        self.report()
        return self.summary

    def report(self) -> None:
        s = self.summary
        table = Table(title=f"rlhfkit pipeline: {self.root}")
        for column in ("stage", "result", "yardstick", "wall time"):
            table.add_column(column)
        secs = {k: f"{v['seconds']:.0f} s" for k, v in s["stages"].items()}
        table.add_row("data + model", "tiny Llama + BPE tokenizer", "", f"{s['stages']['data']['seconds'] + s['stages']['model']['seconds']:.0f} s")
        table.add_row("sft", f"loss {s['sft']['first_loss']:.3f} -> {s['sft']['last_loss']:.3f}",
                      f"held-out loss {s['sft']['eval_loss']:.3f}", secs["sft"])
        table.add_row("sft on arith", f"accuracy {s['sft_arith']['accuracy']:.1%}",
                      f"step accuracy {s['sft_arith']['step_accuracy']:.1%}", secs["eval sft"])
        table.add_row("sft on advice", f"gold score {s['sft_advice']['gold_score']:.2f}", "", "")
        table.add_row("collect", f"{s['collect']['rankings']} rankings, {s['collect']['pairs']} pairs",
                      f"annotator T {s['collect']['temperature']:.2f}", secs["collect"])
        table.add_row("reward model", f"held-out accuracy {s['rm']['heldout_accuracy']:.1%}",
                      f"agreement {s['collect']['agreement']:.1%}, Bayes limit {s['collect']['bayes_limit']:.1%}",
                      secs["reward model"])
        ppo, grpo = s["ppo"], s["grpo"]
        table.add_row("ppo on advice", f"gold win rate vs SFT {_rate(ppo, 'win_rate_greedy')} greedy, "
                      f"{_rate(ppo, 'win_rate_sampled')} sampled",
                      f"KL {ppo['kl']:.1f} nats; proxy {ppo['proxy_first']:.2f} -> {ppo['proxy_last']:.2f}, "
                      f"gold {ppo['gold_first']:.2f} -> {ppo['gold_last']:.2f} (samples)", secs["ppo"])
        table.add_row("grpo on arith", f"accuracy {grpo['accuracy_before']:.1%} -> {grpo['accuracy']:.1%}",
                      f"KL {grpo['kl']:.2f}; reward {grpo['reward_first']:.2f} -> {grpo['reward_last']:.2f}, "
                      f"length {grpo['length_first']:.0f} -> {grpo['length_last']:.0f} tokens", secs["grpo"])
        dpo, raft = s["dpo"], s["raft"]
        table.add_row(f"dpo on advice ({dpo['loss']})", f"gold win rate vs SFT {_rate(dpo, 'win_rate_greedy')} greedy, "
                      f"{_rate(dpo, 'win_rate_sampled')} sampled",
                      f"held-out preference accuracy {dpo['heldout_accuracy']:.1%}", secs["dpo"])
        table.add_row("raft on arith", f"accuracy {raft['accuracy_before']:.1%} -> {raft['accuracy']:.1%}",
                      f"{raft['kept']} samples kept in {raft['rounds']} rounds", secs["raft"])
        self.console.print(table)
        with open(self.root / "summary.json", "w") as f:
            json.dump(s, f, indent=2)


def _rate(summary: dict, key: str) -> str:
    return f"{summary[key]:.0%} [{summary[key + '_low']:.0%}, {summary[key + '_high']:.0%}]"
