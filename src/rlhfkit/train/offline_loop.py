"""The bookkeeping the offline trainers (SFT, reward model, DPO) share around their own step,
written once: which rows each micro-batch of a step holds, the scheduled and clipped update,
and the end of a step (the row into the result, metrics.jsonl, TensorBoard and the progress
bar; a checkpoint when due). The RL trainers' counterpart is `PolicyRun`.

A step's rows and learning rate are pure functions of the step and the config, so a resumed
run repeats the uninterrupted one exactly: the rows come from (seed, position), the learning
rate from the step (`schedule.warmup_cosine`)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rlhfkit.rollout.architecture import warn_past_positions
from rlhfkit.runtime.distributed import Ranks
from rlhfkit.runtime.metrics import MetricsLogger
from rlhfkit.runtime.progress import ProgressBar
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.train.batching import micro_batch_rows
from rlhfkit.train.checkpointing import save_trainer_checkpoint
from rlhfkit.train.offline_config import OfflineConfig
from rlhfkit.train.optim import NonFiniteGuard, clipped_step
from rlhfkit.train.result import TrainResult
from rlhfkit.train.schedule import is_due, warmup_cosine


@dataclass
class OfflineResult(TrainResult):
    train_losses: list[float] = field(default_factory=list)  # one per step, as logged


def longest_sequence(rows: Sequence) -> int:
    """Tokens in the longest sequence of `rows`: tokenised rows (SFT, step-labelled) or ranked
    groups, whose every response is a whole sequence."""
    sequences = (r for row in rows for r in getattr(row, "responses", (row,)))
    return max((len(r.input_ids) for r in sequences), default=0)


class OfflineLoop:
    """Args:
    cfg: an SFT, reward-model or DPO config (its batches, schedule, clipping, cadence and
        output settings are read).
    run: the run's directory.
    ranks: this process's place in the job; only rank 0 writes metrics and shows the bar.
    model, tokenizer: what a checkpoint holds, with the optimizer, `optimizer`, which `update`
        steps.
    stage: the name in metrics.jsonl; `label` the progress bar's.
    start_step: the first step to run: a resumed run's checkpoint step (metrics.jsonl then
        loses its lines after it first), else 0.
    checkpoint_extra: the trainer's own state after `done` steps, kept in its checkpoint.
    saved_model: under torchrun, the model a checkpoint writes from the gathered weights, when
        not the whole trained model (`checkpointing.save_trainer_checkpoint`).
    rows: the run's tokenised rows, train and held out (sequences, ranked groups or
        step-labelled rows): a warning names a sequence past the model's positions.
    """

    def __init__(
        self,
        cfg: OfflineConfig,
        run: RunDir,
        ranks: Ranks,
        *,
        model,
        tokenizer,
        optimizer,
        stage: str,
        label: str,
        start_step: int,
        checkpoint_extra: Callable[[int], dict] = lambda done: {},
        saved_model: Callable[[dict], tuple] | None = None,
        rows: Sequence = (),
    ):
        # it still trains there, on positions the model never learned (silently worse)
        warn_past_positions(model, longest_sequence(rows), f"{label} data")
        self.cfg, self.run, self.ranks, self.stage = cfg, run, ranks, stage
        self.model, self.tokenizer, self.optimizer = model, tokenizer, optimizer
        self.start_step = start_step
        self.checkpoint_extra, self.saved_model = checkpoint_extra, saved_model
        self.guard = NonFiniteGuard(cfg.max_nonfinite_skips, run.checkpoints)
        self.metrics = MetricsLogger(
            run.metrics_path if ranks.is_main else None,
            run.tensorboard if cfg.tensorboard and ranks.is_main else None,
            resume_from_step=start_step or None,  # no checkpoint is step 0
        )
        show = cfg.progress and ranks.is_main
        self.bar = ProgressBar(cfg.max_steps, label, enabled=show, start=start_step)

    def __enter__(self) -> "OfflineLoop":
        self.metrics.__enter__()
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
        self.metrics.__exit__(*exc)

    def steps(self) -> range:
        """The 0-based steps this run takes."""
        return range(self.start_step, self.cfg.max_steps)

    def micro_rows(self, step: int, num_rows: int) -> list[list[int]]:
        """The rows of each of `step`'s `grad_accum` micro-batches, every rank's, fixed by (seed,
        position) alone."""
        cfg = self.cfg
        return [
            micro_batch_rows(
                num_rows, cfg.batch_size, cfg.seed, step * cfg.grad_accum + k, shuffle=cfg.shuffle
            )
            for k in range(cfg.grad_accum)
        ]

    def update(self, step: int, loss: float) -> tuple[float, float]:
        """Clip, set the scheduled learning rate (warm-up then cosine), step, clear; skipped when
        `loss` or the gradient is not finite. Returns (lr, gradient norm before clipping)."""
        cfg = self.cfg
        lr = cfg.lr * warmup_cosine(
            step,
            total_steps=cfg.max_steps,
            warmup_steps=cfg.warmup_steps,
            min_ratio=cfg.min_lr_ratio,
        )
        grad_norm = clipped_step(
            self.optimizer, lr, cfg.max_grad_norm, guard=self.guard, step=step, loss=loss
        )
        return lr, grad_norm

    def eval_due(self, done: int) -> bool:
        """Whether held-out evaluation runs after `done` steps: every eval_every and after the
        last."""
        return is_due(done, self.cfg.eval_every, self.cfg.max_steps, at_end=True)

    def end_step(self, done: int, row: dict, result: OfflineResult, *, tokens: int) -> None:
        """After `done` steps: keep the row (its "loss" also in `result.train_losses`), log it,
        advance the bar, and write a checkpoint when one is due (every save_every steps, not
        after the last: the final model is saved then)."""
        result.train_losses.append(row["loss"])
        result.record(done, row)
        self.metrics.log(done, row, stage=self.stage)
        self.bar.update(1, loss=row["loss"], tokens=tokens)
        if is_due(done, self.cfg.save_every, self.cfg.max_steps, at_end=False):
            self.save_checkpoint(done)

    def save_checkpoint(self, done: int) -> None:
        """Checkpoint `done`: the model, tokenizer, optimizer, every RNG and the trainer's own
        state; under torchrun every rank calls it."""
        save_trainer_checkpoint(
            self.run.checkpoints,
            step=done,
            model=self.model,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            extra=self.checkpoint_extra(done),
            keep_last=self.cfg.keep_last,
            ranks=self.ranks,
            saved_model=self.saved_model,
        )
