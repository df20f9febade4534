"""The parts every policy-optimisation trainer (PPO, GRPO, RLOO, RAFT, online DPO) is built
from, so that each trainer file holds its algorithm and reads top to bottom:

- `build_policy_models` (`policy_models.py`): the policy, its frozen reference, PPO's critic and
  their optimizers, as one frozen `PolicyModels` bundle (from the checkpoint on resume);
- `prompt_pools` (`policy_prompts.py`): the training and held-out prompts (a prompt file, or a
  task's generator), and each step's share of them on this rank;
- `PolicyRun`: the run around a trainer's loop: sampling, the reference's log-probs, the
  optimizer step, and the end of every step (`end_step`: the history, evaluation when due, the
  metrics log, a checkpoint when due), one mechanism for every trainer.

Under torchrun (GRPO, RLOO, PPO) each rank samples for its own contiguous share of a step's
prompts (`policy_prompts.PromptShare`), scores them and computes their advantages; the losses
divide by counts over every rank and the gradients are reduced once per update
(`runtime.distributed.one_reduction`), so an update equals the one-process update of the same
global batch. The policy (and PPO's critic) is sharded with FSDP2; the reference and reward
models are whole on every rank, or sharded alike with `frozen_models=sharded` and gathered
around their passes (`runtime.distributed.gathered`). Every rank draws the sampling noise of
the whole batch from the same generator and keeps its own rows' (`rollout.engine.DrawRows`), so
the sampled tokens do not depend on the number of ranks. Rank 0 alone logs, shows progress and
writes files.

A checkpoint (`policy_checkpoint.py`) holds the models, optimizers, RNG states and step, and the
trainer's own state (PPO's KL coefficient, online DPO's labelled pool, ...) as plain data:
tensors, numbers, strings, lists and dicts, read back with `torch.load(weights_only=True)`, never
a pickled object. Under torchrun every rank writes its shard of the optimizer states.
"""

import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.eval.policy import evaluate_policy
from rlhfkit.models.lora import adapters_disabled
from rlhfkit.models.pretrained import check_learning_rates
from rlhfkit.rewards.base import RewardScores
from rlhfkit.rollout.engine import DrawRows, Rollout, generate, skip_draws
from rlhfkit.rollout.forward import ResponseLogprobs, response_logprobs
from rlhfkit.rollout.sample import sample_responses, stop_token_ids
from rlhfkit.rollout.text import decode_responses, encode_prompts
from rlhfkit.runtime.config_bounds import validate
from rlhfkit.runtime.device import Precision, autocast, sampling_dtype
from rlhfkit.runtime.distributed import (
    Ranks,
    current_ranks,
    full_state_dict,
    gather_objects,
    gather_parameters,
    gathered,
    one_reduction,
    reduce_sums,
)
from rlhfkit.runtime.metrics import MetricsLogger
from rlhfkit.runtime.progress import ProgressBar
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.runtime.seeding import seed_everything
from rlhfkit.tasks.registry import get_task
from rlhfkit.train.batching import micro_batch_rows, stream_rows
from rlhfkit.train.checkpointing import final_policy, resume_point, save_final_model
from rlhfkit.train.micro_batches import backward_micro_batches, first_part_only
from rlhfkit.train.optim import NonFiniteGuard, clipped_step
from rlhfkit.train.phase_timer import PhaseTimer
from rlhfkit.train.policy_checkpoint import (
    TrainerState,
    restore_policy_checkpoint,
    save_policy_checkpoint,
)
from rlhfkit.train.policy_config import PolicyRunConfig
from rlhfkit.train.policy_models import build_policy_models, build_run_reward, warn_if_cut
from rlhfkit.train.policy_prompts import (
    PromptShare,
    prompt_pools,
    prompt_share,
    prompts_setting,
    require_a_prompt_per_rank,
    run_reward,
)
from rlhfkit.train.result import TrainResult
from rlhfkit.train.schedule import is_due, linear_warmup


class PolicyRun:
    """Opened by a trainer: seeds everything, builds the models, prompts and reward, restores a
    checkpoint on resume; a context manager around the metrics log and progress bar.

    Args:
        total_steps: the run's length (default `cfg.max_steps`; online DPO: its labelling plan's).
        reward: the reward spec (default `reward_spec(cfg)`; PPO: its reward model).
        needs_reward: False where the trainer learns from another signal (online DPO ranked by
            a judge or by people): without `reward` or a task the run then has none
            (`self.reward` None), its samples are not scored, and it does not evaluate.
        critic_start, critic_lr: PPO's critic (see `build_policy_models`).
    """

    def __init__(
        self,
        cfg: PolicyRunConfig,
        run_dir: RunDir,
        *,
        resume: bool,
        needs_reference: bool,
        stage: str,
        total_steps: int | None = None,
        reward: str | None = None,
        needs_reward: bool = True,
        critic_start: str = "",
        critic_lr: float = 0.0,
    ):
        validate(cfg)  # as the CLI does, for configs built in Python
        check_learning_rates(cfg.model, {"lr": (cfg.lr, cfg.lora_r)}, force=cfg.force_lr)
        if critic_start:  # PPO's critic: always fully fine-tuned, from its own start
            check_learning_rates(critic_start, {"critic_lr": (critic_lr, 0)}, force=cfg.force_lr)
        self.ranks = current_ranks()
        setting = prompts_setting(cfg)  # checked before any model loads
        count = getattr(cfg, setting)
        require_a_prompt_per_rank(count, f"{setting}={count} is", setting, self.ranks.world_size)
        seed_everything(cfg.seed)
        self.cfg, self.run_dir, self.stage = cfg, run_dir, stage
        self.total_steps = cfg.max_steps if total_steps is None else total_steps
        checkpoint = (
            resume_point(run_dir.checkpoints, self.ranks, total_steps=self.total_steps)
            if resume
            else None
        )
        # the task first: one that cannot be built (an extra not installed) fails before the
        # models load
        self.task = get_task(cfg.task) if cfg.task else None
        spec = run_reward(cfg, reward, needs_reward=needs_reward)  # before the models load
        self.models = build_policy_models(
            cfg,
            checkpoint,
            needs_reference=needs_reference,
            critic_start=critic_start,
            critic_lr=critic_lr,
            ranks=self.ranks,
        )
        self.prompts = prompt_pools(cfg, self.task)
        self.reward = build_run_reward(cfg, spec, self.models)
        self.generator = torch.Generator(device=self.models.device).manual_seed(cfg.seed)
        # shared by every optimizer of the run (PPO: the critic's too)
        self.guard = NonFiniteGuard(cfg.max_nonfinite_skips, run_dir.checkpoints)
        # the step to start from, and the trainer's own state saved with it ({} on a fresh start)
        self.start_step, self.trainer_state = (
            restore_policy_checkpoint(
                checkpoint, models=self.models, generator=self.generator, ranks=self.ranks
            )
            if checkpoint
            else (0, {})
        )
        main = self.ranks.is_main  # under torchrun rank 0 alone logs and shows progress
        tensorboard = run_dir.tensorboard if cfg.tensorboard and main else None
        self.metrics = MetricsLogger(
            run_dir.metrics_path if main else None,
            tensorboard,
            resume_from_step=self.start_step if checkpoint else None,
        )
        self.bar = ProgressBar(
            self.total_steps, stage, enabled=cfg.progress and main, start=self.start_step
        )

    def __enter__(self) -> "PolicyRun":
        self.metrics.__enter__()
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
        self.metrics.__exit__(*exc)

    # --- prompts and sampling
    def prompts_for_step(self, step: int, count: int) -> list[PromptExample]:
        """The step's prompts: a pure function of (seed, step), so a resumed run sees the same."""
        pool = self.prompts.train
        if not self.cfg.shuffle:
            return [pool[i] for i in micro_batch_rows(len(pool), count, 0, step, shuffle=False)]
        return [pool[i] for i in stream_rows(len(pool), count, self.cfg.seed, step)]

    def rank_prompts(self, step: int, count: int) -> PromptShare:
        """This rank's share of the step's prompts (`prompts_for_step`); all of them in one
        process."""
        return self.rank_share(self.prompts_for_step(step, count))

    def rank_share(self, prompts: list[PromptExample]) -> PromptShare:
        """This rank's share of the prompts a step samples for; all of them in one process."""
        subject = f"{len(prompts)} prompts in a step,"
        setting = prompts_setting(self.cfg)
        require_a_prompt_per_rank(len(prompts), subject, setting, self.ranks.world_size)
        return prompt_share(prompts, self.ranks)

    def sample(
        self,
        prompts: list[PromptExample] | PromptShare,
        num_samples: int,
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
    ) -> tuple[Rollout, list[str]]:
        """`num_samples` responses per prompt from the current policy (in eval mode while it
        samples), with their sampling log-probs, and their decoded texts. A `PromptShare`: this
        rank's rows of the step's batch, drawn as the whole batch would draw them."""
        share = prompts if isinstance(prompts, PromptShare) else prompt_share(prompts, Ranks())
        policy, tokenizer, device = self.models.policy, self.models.tokenizer, self.models.device
        ids, mask = encode_prompts(tokenizer, [p.prompt for p in share.prompts], device)
        total = share.total * num_samples
        # the step's longest prompt, over every rank's share: what one process warns about
        longest = max(gather_objects(int(mask.sum(dim=1).max()), self.ranks))
        # sharded: gathered once, so the decoding steps take no collectives and each rank may
        # stop when its own rows are done
        gather_parameters(policy)
        policy.eval()
        rollout = generate(
            policy,
            ids,
            mask,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_token_ids(policy, tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            generator=self.generator,
            dtype=sampling_dtype(self.cfg.precision),
            compiled=self.cfg.compile_sampling,
            cuda_graphs=None if self.cfg.cuda_graphs else False,
            draw_rows=DrawRows(share.first * num_samples, total),
            longest_prompt=longest,
        )
        policy.train()
        # the generator goes on as far as the longest share's decoding took it
        steps = rollout.response_mask.shape[1]
        skip_draws(self.generator, device, total, max(gather_objects(steps, self.ranks)) - steps)
        return rollout, decode_responses(tokenizer, rollout)

    def score(self, prompts: list[PromptExample], responses: list[str], first: int) -> RewardScores:
        """The run's rewards of this rank's samples (one process: the step's), the first of them
        sample `first` of the step's (`PromptShare.first_sample`), as errors number them. Every
        rank calls it together: a reward model's samples cut to fit reward_max_length are
        counted over every rank's and warned about as one process would (`warn_if_cut`)."""
        scored = self.reward.score(prompts, responses, first=first)
        warn_if_cut(self.reward, scored, len(prompts), self.ranks)
        return scored

    # --- model passes and updates
    def reference_logprobs(
        self,
        batch: dict,
        temperature: float,
        precision: Precision,
        chunk: int = 64,
        group_size: int = 1,
    ) -> torch.Tensor:
        """log pi_ref of the response tokens, in chunks of whole groups, in inference mode and
        the run's precision (`group_size`: rows sharing a prompt, run once; see
        `response_logprobs`). A sharded reference is gathered once around the chunks, whose
        number depends on this rank's rows."""
        reference = self.models.reference
        model = reference if reference is not None else self.models.policy
        chunk = max(group_size, chunk // group_size * group_size)
        out = []
        with (
            gathered(model),
            adapters_disabled(model) if reference is None else nullcontext(),
            torch.inference_mode(),
        ):
            for start in range(0, batch["input_ids"].shape[0], chunk):
                rows = slice(start, start + chunk)
                with autocast(self.models.device, precision):
                    out.append(
                        response_logprobs(
                            model,
                            batch["input_ids"][rows],
                            batch["attention_mask"][rows],
                            batch["response_mask"].shape[1],
                            temperature=temperature,
                            group_size=group_size,
                        ).logprobs
                    )
            logprobs = torch.cat(out)
        return logprobs.clone()  # an ordinary tensor again: the loss keeps it for its backward

    def policy_logprobs(
        self,
        batch: dict,
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
        group_size: int = 1,
    ) -> ResponseLogprobs:
        """The policy's log-probs (with gradient) of a batch of rollout rows' response tokens, in
        the run's precision (`rollout.forward.response_logprobs`)."""
        with autocast(self.models.device, self.cfg.precision):
            return response_logprobs(
                self.models.policy,
                batch["input_ids"],
                batch["attention_mask"],
                batch["response_mask"].shape[1],
                temperature=temperature,
                with_entropy=with_entropy,
                group_size=group_size,
            )

    def backward(
        self,
        part: dict,
        micro_batch_size: int,
        loss_of: Callable[[dict], tuple],
        model: torch.nn.Module | None = None,
    ) -> tuple[float, dict[str, float]]:
        """Backpropagate `loss_of` over this rank's rows of a mini-batch (maybe none), in
        micro-batches; the gradients of `model` (default: the policy; PPO: also the critic)
        reduced once over the ranks. Returns the loss and statistics of the whole mini-batch,
        over every rank."""
        with one_reduction(self.models.policy if model is None else model):
            return backward_micro_batches(part, micro_batch_size, loss_of, ranks=self.ranks)

    def global_sum(self, value):
        """`value` summed over the ranks (a loss denominator); unchanged in one process."""
        return reduce_sums({"value": value}, self.ranks)["value"]

    def all_rows(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row `values` (batch,) or (batch, response_len) of every rank's rows, in the
        step's order, responses padded on the right with zeros (False) to the longest; as one
        process holds them. Unchanged in one process."""
        if not self.ranks.sharded:
            return values
        every = gather_objects(values.cpu(), self.ranks)
        if values.dim() == 2:
            width = max(part.shape[1] for part in every)
            every = [torch.nn.functional.pad(part, (0, width - part.shape[1])) for part in every]
        return torch.cat(every).to(values.device)

    def learning_rate(self, step: int) -> float:
        """The policy's learning rate at `step` (0-based): linear warm-up, then `lr`."""
        return linear_warmup(step, self.cfg.warmup_steps) * self.cfg.lr

    def optimizer_step(self, step: int, loss: float = 0.0) -> float:
        """The policy's update: clip, set the warm-up learning rate, step, clear; returns the
        gradient norm before clipping. Skipped when `loss` or the gradient is not finite."""
        return clipped_step(
            self.models.optimizer,
            self.learning_rate(step),
            self.cfg.max_grad_norm,
            guard=self.guard,
            step=step,
            loss=loss,
        )

    # --- metrics, evaluation, checkpoints
    def step_metrics(
        self,
        stats: list[dict],
        rewards: torch.Tensor,
        prompts: list[PromptExample],
        responses: list[str],
        rollout: Rollout,
        timer: PhaseTimer,
        scored: RewardScores | None = None,
    ) -> dict:
        """The step's row: the mean of each update's stats (the sampler-vs-trainer gap from the
        first update only), the rewards (`scored`'s: a sum's sources as `reward/<source>`, the
        share of samples each reward model read truncated as `reward_cut_fraction/<source>`),
        the task's gold score (only when a task is named), lengths and times."""
        stats = first_part_only(stats)
        keys = dict.fromkeys(key for part in stats for key in part)
        row = {
            key: sum(values) / len(values)
            for key in keys
            for values in [[part[key] for part in stats if key in part]]
        }
        rewards = self.all_rows(rewards)  # every rank's rows (one process: these)
        # one response (RAFT's best of 1 on one prompt) has no spread: null, without torch's warning
        spread = rewards.std().item() if rewards.numel() > 1 else math.nan
        row.update({"reward_mean": rewards.mean().item(), "reward_std": spread})
        for source, values in (scored.components if scored else {}).items():
            row[f"reward/{source}"] = self.all_rows(values.to(rewards.device)).mean().item()
        for source, cut in (scored.cut if scored else {}).items():
            cut = self.all_rows(cut.to(device=rewards.device, dtype=torch.float64))
            row[f"reward_cut_fraction/{source}"] = cut.mean().item()
        if self.task is not None:
            gold = [self.task.reward(p, r) for p, r in zip(prompts, responses)]
            gold = self.all_rows(torch.tensor(gold, dtype=torch.float64))
            row["gold_score"] = gold.sum().item() / len(gold)
        cut = self.all_rows((~rollout.finished).to(torch.float64))
        row["truncated_fraction"] = cut.mean().item()  # cut at max_new_tokens, no stop token
        tokens = int(self.all_rows(rollout.response_lengths).sum())
        elapsed = time.perf_counter() - timer.start
        row.update(
            {
                "response_length": tokens / len(rewards),
                "response_tokens": tokens,
                "tokens_per_s": tokens / elapsed,
                "step_seconds": elapsed,
            }
        )
        row.update({f"time_{phase}": seconds for phase, seconds in timer.seconds.items()})
        return row

    @property
    def evaluates(self) -> bool:
        """Whether this run evaluates at all: eval_every >= 0, held-out prompts to do it on, and
        a task or a reward to score the answers with."""
        scorer = self.task is not None or self.reward is not None
        return self.cfg.eval_every >= 0 and bool(self.prompts.eval) and scorer

    def evaluate(self, row: dict) -> dict:
        """Greedy answers to the held-out prompts, scored by the task when one is named, else by
        the run's reward (`reward_mean`); added to `row` as eval_*. Under torchrun every rank
        runs the same evaluation, on parameters gathered once (no collective while decoding)."""
        policy, tokenizer, prompts = self.models.policy, self.models.tokenizer, self.prompts.eval
        gather_parameters(policy)
        settings = dict(
            max_new_tokens=self.cfg.eval_max_new_tokens,
            seed=self.cfg.seed,
            dtype=sampling_dtype(self.cfg.precision),
        )
        if self.task is not None:
            metrics, _ = evaluate_policy(policy, tokenizer, self.task, prompts, **settings)
        else:
            samples = sample_responses(
                policy,
                tokenizer,
                [p.prompt for p in prompts],
                greedy=True,
                batch_size=256,
                **settings,
            )
            scored = self.reward.score(prompts, [texts[0] for texts in samples.texts])
            warn_if_cut(self.reward, scored, len(prompts), Ranks())  # alike on every rank
            metrics = {"reward_mean": scored.rewards.mean().item()}
        policy.train()
        row.update({f"eval_{k}": v for k, v in metrics.items()})
        return metrics

    def begin(self, result: TrainResult) -> None:
        """On a fresh start, evaluate the starting policy (the run's baseline), if it evaluates,
        and log it as step 0 (a line of eval_* keys only), where curves start."""
        if self.start_step == 0 and self.evaluates:
            row: dict = {}
            result.evals.append((0, self.evaluate(row)))
            self.metrics.log(0, row, stage=self.stage)

    def end_step(
        self,
        done: int,
        row: dict,
        result: TrainResult,
        *,
        state: Callable[[], TrainerState] | None = None,
        stop: bool = False,
    ) -> None:
        """After `done` steps: keep the row in `result.history`, evaluate when due (every
        eval_every steps and after the last; eval_every=-1: never), log the row, and write a
        checkpoint when due (every save_every steps, not after the last: the final model is
        saved then). `stop`: the trainer ends the run here (PPO's KL limit), so this step is
        the last. `state`: the trainer's own state, called only when a checkpoint is written."""
        row["lr"] = self.learning_rate(done - 1)
        total = done if stop else self.total_steps
        if self.evaluates and is_due(done, self.cfg.eval_every, total, at_end=True):
            result.evals.append((done, self.evaluate(row)))  # also into the row, as eval_*
        result.record(done, row)  # the row as metrics.jsonl has it
        self.metrics.log(done, row, stage=self.stage)
        self.bar.update(1, loss=row.get("loss", 0.0), tokens=row["response_tokens"])
        if is_due(done, self.cfg.save_every, total, at_end=False):
            self.save_checkpoint(done, state() if state is not None else {})

    def save_checkpoint(self, step: int, trainer_state: TrainerState) -> None:
        """Checkpoint `step` (`policy_checkpoint`); under torchrun every rank calls it."""
        save_policy_checkpoint(
            self.run_dir,
            step,
            models=self.models,
            generator=self.generator,
            trainer_state=trainer_state,
            keep_last=self.cfg.keep_last,
            ranks=self.ranks,
        )

    def save_final(self) -> None:
        """A plain causal-LM directory (LoRA adapters merged into a copy of the weights); under
        torchrun the shards are gathered to rank 0, which writes it."""
        policy, cfg = self.models.policy, self.cfg
        weights = full_state_dict(policy, self.ranks)
        if not self.ranks.is_main:
            return
        model, weights = final_policy(policy, weights, cfg)
        save_final_model(
            model,
            self.models.tokenizer,
            self.run_dir.final,
            self.run_dir.checkpoints,
            state_dict=weights,
        )
