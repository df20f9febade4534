"""What every policy-optimisation trainer (GRPO, PPO, ...) holds during a run: the policy and
its reference, the reward source, the prompts, the sampling RNG, the optimizer, metrics and
checkpoints. The trainers keep the algorithm; this keeps the bookkeeping in one place.
"""

import random
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum

import torch

from rlhfkit.data.formats import Format, PromptExample
from rlhfkit.data.loading import load_examples
from rlhfkit.errors import ConfigError
from rlhfkit.eval.policy import evaluate_policy
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.lora import adapters_disabled, merged_copy
from rlhfkit.rewards.builder import build_reward_source
from rlhfkit.rollout.engine import Rollout, generate
from rlhfkit.rollout.forward import response_logprobs
from rlhfkit.rollout.sample import stop_token_ids
from rlhfkit.rollout.text import char_to_token_index, decode_responses, encode_prompts, response_token_ids, token_char_ends
from rlhfkit.runtime.checkpoint import (
    capture_rng_state,
    load_torch_state,
    restore_rng_state,
    save_checkpoint,
    save_torch_state,
)
from rlhfkit.runtime.device import Precision, autocast, resolve_device
from rlhfkit.runtime.metrics import MetricsLogger
from rlhfkit.runtime.progress import ProgressBar
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.runtime.seeding import seed_everything
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.batching import micro_batch_rows, stream_rows
from rlhfkit.train.policy_config import PolicyRunConfig
from rlhfkit.train.checkpointing import MODEL_SUBDIR, load_policy, resume_point
from rlhfkit.train.optim import clipped_step
from rlhfkit.train.schedule import is_due

# Evaluation prompts are drawn from the task's generator with this offset on the seed, and
# removed from the training prompts, so evaluation is on prompts never trained on.
EVAL_SEED_OFFSET = 10_007


class Supervision(str, Enum):
    OUTCOME = "outcome"
    """One reward per response, on its last token (or spread over all tokens by GRPO)."""
    PROCESS = "process"
    """Step rewards placed on the tokens where each step ends (process supervision)."""


@dataclass
class StepTensors:
    rewards: torch.Tensor  # (batch, max_steps) reward of each step
    mask: torch.Tensor  # (batch, max_steps) bool, True = a real step
    ends: torch.Tensor  # (batch, max_steps) long, response-token index where the step ends


def step_rewards_on_tokens(tokenizer, rollout: Rollout, responses: list[str],
                           steps: list[list[tuple[int, float]]], device) -> StepTensors:
    """Turn (character where a step ends, reward) lists into padded per-token step tensors."""
    width = max(1, max(len(s) for s in steps))
    rewards = torch.zeros(len(steps), width)
    mask = torch.zeros(len(steps), width, dtype=torch.bool)
    ends = torch.zeros(len(steps), width, dtype=torch.long)
    for row, (ids, text, row_steps) in enumerate(zip(response_token_ids(rollout), responses, steps)):
        char_ends = token_char_ends(tokenizer, ids, text)
        for k, (char_end, reward) in enumerate(row_steps):
            rewards[row, k], mask[row, k] = reward, True
            ends[row, k] = char_to_token_index(char_ends, char_end) if char_ends else 0
    return StepTensors(rewards.to(device), mask.to(device), ends.to(device))


class PhaseTimer:
    """Seconds spent per phase of one step (generation, reference, reward, update, ...)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - started


def _prompt_pools(cfg: PolicyRunConfig, task) -> tuple[list[PromptExample], list[PromptExample]]:
    if cfg.eval_data:
        eval_prompts = load_examples(cfg.eval_data, Format.PROMPT)
    else:
        eval_prompts = task.prompts(cfg.eval_prompts, random.Random(cfg.seed + EVAL_SEED_OFFSET))
    if cfg.train_data:
        train = load_examples(cfg.train_data, Format.PROMPT)
    else:
        held_out = {str(p.prompt) for p in eval_prompts}
        drawn = task.prompts(cfg.train_prompts, random.Random(cfg.seed))
        train = [p for p in drawn if str(p.prompt) not in held_out]
        if len(train) < len(drawn) // 2:
            # a task with few distinct prompts (advice: a fixed bank of questions) cannot hold
            # questions out; its evaluation then uses the training questions with fresh samples
            print(f"{task.name}: the held-out prompts repeat training prompts (few distinct prompts); "
                  "evaluating on them with fresh samples")
            train = drawn
    return train, eval_prompts


class PolicyRun:
    """Opened by a trainer; a context manager around the metrics log and progress bar."""

    def __init__(self, cfg: PolicyRunConfig, run_dir: RunDir, *, resume: bool, needs_reference: bool, stage: str,
                 reward_spec: str | None = None):
        seed_everything(cfg.seed)
        self.cfg, self.run_dir, self.stage = cfg, run_dir, stage
        self.device = resolve_device(cfg.device)
        self.task = get_task(cfg.task)
        self.train_prompts, self.eval_prompts = _prompt_pools(cfg, self.task)
        checkpoint = resume_point(run_dir.checkpoints) if resume else None
        self.checkpoint = checkpoint
        # trainer-specific models and optimizers (PPO's critic) saved and restored with the run
        self.extra_models: dict[str, torch.nn.Module] = {}
        self.extra_optimizers: dict[str, torch.optim.Optimizer] = {}
        self.extra_state: dict = {}
        self.tokenizer = load_tokenizer(cfg.model)
        self.policy, self.reference = self._models(cfg, checkpoint, needs_reference)
        self.stop_ids = stop_token_ids(self.policy, self.tokenizer)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.reward = build_reward_source(reward_spec or cfg.reward, task_name=cfg.task, tokenizer=self.tokenizer,
                                          device=self.device, batch_size=64, max_length=cfg.reward_max_length,
                                          uncertainty_coef=cfg.reward_uncertainty_coef,
                                          timeout_s=cfg.reward_timeout_s or None)
        self.optimizer = torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad],
                                           lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.start_step = self._restore(checkpoint) if checkpoint else 0
        self.metrics = MetricsLogger(run_dir.metrics_path, run_dir.tensorboard if cfg.tensorboard else None,
                                     resume_from_step=self.start_step if checkpoint else None)
        self.bar = ProgressBar(cfg.max_steps, stage, enabled=cfg.progress, start=self.start_step)

    # --- set-up and resume
    def _models(self, cfg: PolicyRunConfig, checkpoint, needs_reference: bool):
        policy = load_policy(cfg.model, checkpoint, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, device=self.device)
        if cfg.reference_model and cfg.lora_r > 0:
            raise ConfigError(f"reference_model={cfg.reference_model} with lora_r={cfg.lora_r}: under LoRA the "
                              "reference is the base model with its adapters off; leave reference_model empty")
        # under LoRA the reference is the base model itself, with the adapters switched off
        needs_copy = needs_reference and cfg.lora_r == 0
        reference = (load_causal_lm(cfg.reference_model or cfg.model).to(self.device).eval().requires_grad_(False)
                     if needs_copy else None)
        return policy, reference

    def _restore(self, checkpoint) -> int:
        self.optimizer.load_state_dict(load_torch_state(checkpoint / "optimizer.pt"))
        state = load_torch_state(checkpoint / "state.pt")
        restore_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        self.extra_state = state.get("extra", {})
        return state["step"]

    def extra_model(self, name: str, load, path):
        """A further trained model (PPO's critic): `load(path)` fresh, or its checkpointed copy."""
        model = load(self.checkpoint / name if self.checkpoint else path).to(self.device).train()
        self.extra_models[name] = model
        return model

    def extra_optimizer(self, name: str, params, lr: float) -> torch.optim.Optimizer:
        optimizer = torch.optim.AdamW(list(params), lr=lr, weight_decay=self.cfg.weight_decay)
        if self.checkpoint:
            optimizer.load_state_dict(load_torch_state(self.checkpoint / f"{name}_optimizer.pt"))
        self.extra_optimizers[name] = optimizer
        return optimizer

    def extra_optimizer_step(self, name: str, step: int, lr: float, cfg: PolicyRunConfig) -> float:
        return clipped_step(self.extra_optimizers[name], _warmup(step, cfg) * lr, cfg.max_grad_norm)

    def __enter__(self) -> "PolicyRun":
        self.metrics.__enter__()
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
        self.metrics.__exit__(*exc)

    # --- prompts and text
    def prompts_for_step(self, step: int, count: int) -> list[PromptExample]:
        """The step's prompts: a pure function of (seed, step), so a resumed run sees the same."""
        if not self.cfg.shuffle:
            return [self.train_prompts[i] for i in micro_batch_rows(len(self.train_prompts), count, 0, step, shuffle=False)]
        return [self.train_prompts[i] for i in stream_rows(len(self.train_prompts), count, self.cfg.seed, step)]

    def sample(self, prompts: list[PromptExample], num_samples: int, *, max_new_tokens: int, temperature: float,
               top_p: float = 1.0, top_k: int = 0) -> tuple[Rollout, list[str]]:
        """`num_samples` responses per prompt from the current policy (in eval mode while it samples),
        with their sampling log-probs, and their decoded texts."""
        ids, mask = encode_prompts(self.tokenizer, [p.prompt for p in prompts], self.device)
        self.policy.eval()
        rollout = generate(self.policy, ids, mask, num_samples=num_samples, max_new_tokens=max_new_tokens,
                           stop_ids=self.stop_ids, pad_token_id=self.pad_token_id, temperature=temperature,
                           top_p=top_p, top_k=top_k, generator=self.generator)
        self.policy.train()
        return rollout, decode_responses(self.tokenizer, rollout)

    # --- model passes
    @torch.no_grad()
    def reference_logprobs(self, batch: dict, temperature: float, precision: Precision,
                           chunk: int = 64, group_size: int = 1) -> torch.Tensor:
        """log pi_ref of the response tokens, in chunks of whole groups, without autograd
        (`group_size`: rows sharing a prompt, run once; see `response_logprobs`)."""
        model = self.reference if self.reference is not None else self.policy
        chunk = max(group_size, chunk // group_size * group_size)
        out = []
        with adapters_disabled(model) if self.reference is None else nullcontext():
            for start in range(0, batch["input_ids"].shape[0], chunk):
                with autocast(self.device, precision):
                    out.append(response_logprobs(model, batch["input_ids"][start : start + chunk],
                                                 batch["attention_mask"][start : start + chunk],
                                                 batch["response_mask"].shape[1], temperature=temperature,
                                                 group_size=group_size).logprobs)
        return torch.cat(out)

    def optimizer_step(self, step: int, cfg: PolicyRunConfig) -> float:
        """Clip, set the warm-up learning rate, step, clear; returns the gradient norm."""
        return clipped_step(self.optimizer, _warmup(step, cfg) * cfg.lr, cfg.max_grad_norm)

    # --- metrics, evaluation, checkpoints
    def step_metrics(self, stats: list[dict], rewards: torch.Tensor, prompts: list[PromptExample],
                     responses: list[str], rollout: Rollout, timer: PhaseTimer) -> dict:
        row = {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]}
        gold = [self.task.reward(p, r) for p, r in zip(prompts, responses)]
        tokens = int(rollout.response_mask.sum())
        elapsed = time.perf_counter() - timer.start
        row.update({"reward_mean": rewards.mean().item(), "reward_std": rewards.std().item(),
                    "gold_score": sum(gold) / len(gold), "response_length": tokens / len(responses),
                    "response_tokens": tokens, "tokens_per_s": tokens / elapsed, "step_seconds": elapsed})
        row.update({f"time_{phase}": seconds for phase, seconds in timer.seconds.items()})
        return row

    def evaluate(self, row: dict) -> dict:
        """Greedy answers to the held-out prompts, scored by the task; added to `row` as eval_*."""
        metrics, _ = evaluate_policy(self.policy, self.tokenizer, self.task, self.eval_prompts,
                                     max_new_tokens=self.cfg.eval_max_new_tokens, seed=self.cfg.seed)
        self.policy.train()
        row.update({f"eval_{k}": v for k, v in metrics.items()})
        return metrics

    def end_step(self, done: int, row: dict, result) -> None:
        """After `done` steps: keep the step's row in `result.history`, evaluate when due (adding
        to `result.evals`), log the row, and checkpoint when due."""
        result.history.append(row)
        if self.cfg.eval_every >= 0 and is_due(done, self.cfg.eval_every, self.cfg.max_steps, at_end=True):
            result.evals.append((done, self.evaluate(row)))
        self.log(done, row)
        if is_due(done, self.cfg.save_every, self.cfg.max_steps, at_end=False):
            self.save_checkpoint(done)

    def log(self, step: int, row: dict) -> None:
        self.metrics.log(step, row, stage=self.stage)
        self.bar.update(1, loss=row.get("loss", 0.0), tokens=row["response_tokens"])

    def save_checkpoint(self, step: int) -> None:
        def write(tmp):
            self.policy.save_pretrained(tmp / MODEL_SUBDIR)
            self.tokenizer.save_pretrained(tmp / MODEL_SUBDIR)
            save_torch_state(tmp / "optimizer.pt", self.optimizer.state_dict())
            save_torch_state(tmp / "state.pt", {"step": step, "rng": capture_rng_state(),
                                                "generator": self.generator.get_state(),
                                                "extra": dict(self.extra_state)})
            for name, model in self.extra_models.items():
                model.save_pretrained(tmp / name)
            for name, optimizer in self.extra_optimizers.items():
                save_torch_state(tmp / f"{name}_optimizer.pt", optimizer.state_dict())

        save_checkpoint(self.run_dir.checkpoints, step, write=write, keep_last=self.cfg.keep_last)

    def save_final(self) -> None:
        """A plain causal-LM directory (LoRA adapters merged into a copy of the weights)."""
        model = merged_copy(self.policy) if self.cfg.lora_r > 0 else self.policy
        model.save_pretrained(self.run_dir.final)
        self.tokenizer.save_pretrained(self.run_dir.final)


def _warmup(step: int, cfg: PolicyRunConfig) -> float:
    """Linear warm-up over cfg.warmup_steps, then constant."""
    return min(1.0, (step + 1) / max(1, cfg.warmup_steps))
