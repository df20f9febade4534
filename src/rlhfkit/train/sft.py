"""Supervised fine-tuning (stage 1 of the seeds' pipeline).

Runs next-token cross-entropy on completion tokens only (the prompt is masked out), with
gradient accumulation, global-norm clipping, linear warm-up then cosine decay, a held-out
loss, and sample generations written to `samples.jsonl`. The loss is the token mean over the
whole accumulated batch (the denominator counts every completion token of every micro-batch),
so accumulation gives exactly the gradient of one big batch. Under torchrun each rank runs its
share of every micro-batch, and the token count is summed over the ranks
(`runtime.distributed`): the step's gradient is still that of the one global batch.
"""

import json
import logging
import time
from dataclasses import dataclass, field

import torch

from rlhfkit.data.collate import pad_batch
from rlhfkit.data.formats import Format
from rlhfkit.data.length_chunks import ROWS_PER_CHUNK, length_sorted_chunks
from rlhfkit.data.loading import load_examples
from rlhfkit.data.text_ids import render_text
from rlhfkit.data.tokenize import require_rows, tokenize_sft
from rlhfkit.models.loading import enable_checkpointing, load_tokenizer
from rlhfkit.models.pretrained import check_learning_rates
from rlhfkit.objectives.sft import sft_loss
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.config_bounds import validate
from rlhfkit.runtime.device import (
    Precision,
    autocast,
    move_batch,
    resolve_device,
    sampling_dtype,
)
from rlhfkit.runtime.distributed import (
    current_ranks,
    device_mesh,
    full_state_dict,
    gradient_passes,
    rank_shares,
    reduce_sums,
    shard_model,
)
from rlhfkit.runtime.metrics import drop_lines_after
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.runtime.seeding import seed_everything
from rlhfkit.train.checkpointing import (
    final_policy,
    load_configured_policy,
    restore_trainer_state,
    resume_point,
    save_final_model,
)
from rlhfkit.train.lora_settings import check_lora_settings
from rlhfkit.train.offline_config import OfflineConfig
from rlhfkit.train.offline_loop import OfflineLoop, OfflineResult
from rlhfkit.train.optim import adamw
from rlhfkit.train.schedule import is_due

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTConfig(OfflineConfig):
    """The settings every offline trainer shares are `OfflineConfig`'s; these give SFT's
    values and meanings."""

    model: str = ""
    """Hugging Face causal-LM directory to start from (the tiny default or any real model)."""
    train_data: str = ""
    """SFT data: JSONL, Parquet, a saved `datasets` directory or a hub name (prompt/completion or
    messages)."""
    eval_data: str = ""
    """Held-out SFT data for the eval loss and sample generations; empty = none."""
    max_length: int = 256
    """Tokens per row after tokenisation; longer rows follow `truncation`."""
    batch_size: int = 32
    """Rows per micro-batch."""
    max_steps: int = 300
    lr: float = 1e-3
    warmup_steps: int = 20
    eval_every: int = 100
    """Held-out loss every this many steps and after the last (0 = only at the end)."""
    save_every: int = 100
    lora_r: int = 0
    """LoRA rank (0 = full fine-tuning): only the adapters train, and the final model has them
    merged in."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input (peft's lora_dropout)."""
    sample_every: int = 100
    """Greedy sample generations for a few held-out prompts every this many steps and after the
    last, into samples.jsonl (0 = never)."""
    num_samples: int = 4
    """Held-out prompts whose generations are logged."""
    sample_max_new_tokens: int = 64
    """Length limit of logged generations."""


@dataclass
class SFTResult(OfflineResult):
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # evals' "eval_loss"


def response_window_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of the trailing window of positions that predict response tokens, with the ids and
    response mask of the same window: the LM head skips the prompt positions every row shares
    (about half the positions of a short answer), and the loss is unchanged."""
    ids, mask = batch["input_ids"], batch["response_mask"]
    # earliest response token of any row (a row without one gives 0: the whole width)
    first = int(mask.int().argmax(dim=1).min())
    keep = ids.shape[1] - max(0, first - 1)  # from the position that predicts it
    logits = model(
        input_ids=ids, attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits
    return logits, ids[:, -keep:], mask[:, -keep:]


@torch.no_grad()
def eval_loss(
    model, examples, pad_token_id: int, batch_size: int, precision: Precision = Precision.FP32
) -> float:
    """Token-mean cross-entropy over all completion tokens of `examples`."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = move_batch(pad_batch(examples[start : start + batch_size], pad_token_id), device)
        with autocast(device, precision):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        total += sft_loss(logits, batch["input_ids"], batch["response_mask"], 1.0).item()
        count += int(batch["response_mask"][:, 1:].sum())
    model.train()
    return total / max(1, count)


def _length_chunks(rows: list) -> list[list]:
    return [
        [rows[i] for i in chunk]
        for chunk in length_sorted_chunks([len(r.input_ids) for r in rows], ROWS_PER_CHUNK)
    ]


def _log_samples(
    run: RunDir, step: int, model, tokenizer, eval_rows, cfg: SFTConfig, is_main: bool
) -> None:
    # a text row (the empty prompt) has no question to answer
    rows = [ex for ex in eval_rows if ex.prompt][: cfg.num_samples]
    prompts = [render_text(tokenizer, ex.prompt, as_prompt=True) for ex in rows]  # as logged
    if not prompts:
        return
    samples = sample_responses(
        model,
        tokenizer,
        [ex.prompt for ex in rows],
        greedy=True,
        max_new_tokens=cfg.sample_max_new_tokens,
        seed=cfg.seed,
        dtype=sampling_dtype(cfg.precision),
    )
    if not is_main:  # every rank generates (the sharded weights take all of them), one writes
        return
    with open(run.root / "samples.jsonl", "a") as f:
        for prompt, texts in zip(prompts, samples.texts):
            f.write(json.dumps({"step": step, "prompt": prompt, "response": texts[0]}) + "\n")


def train_sft(cfg: SFTConfig, run: RunDir, *, resume: bool = False) -> SFTResult:
    """Fine-tune `cfg.model` on `cfg.train_data`; the final model goes to `run.final`."""
    validate(cfg)  # as the CLI does, for configs built in Python
    check_lora_settings(cfg)
    check_learning_rates(cfg.model, {"lr": (cfg.lr, cfg.lora_r)}, force=cfg.force_lr)
    ranks = current_ranks()
    seed_everything(cfg.seed)
    # step 1. load the tokenizer and data; every dropped or truncated row is reported
    tokenizer = load_tokenizer(cfg.model)
    train_rows = load_examples(cfg.train_data, Format.SFT)
    train, report = tokenize_sft(
        tokenizer, train_rows, max_length=cfg.max_length, truncation=cfg.truncation
    )
    log.info(f"train data {cfg.train_data}: {report.summary()}")
    require_rows(train, cfg.train_data, report, "train on")
    eval_rows = load_examples(cfg.eval_data, Format.SFT) if cfg.eval_data else []
    held_out, eval_report = (
        tokenize_sft(tokenizer, eval_rows, max_length=cfg.max_length, truncation=cfg.truncation)
        if eval_rows
        else ([], None)
    )
    if eval_report:
        log.info(f"eval data {cfg.eval_data}: {eval_report.summary()}")
        require_rows(held_out, cfg.eval_data, eval_report, "evaluate on")

    # step 2. the model and optimizer, restored from the last checkpoint when resuming
    checkpoint = resume_point(run.checkpoints, ranks, total_steps=cfg.max_steps) if resume else None
    device = resolve_device(cfg.device)
    model = load_configured_policy(cfg, checkpoint, device)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if ranks.sharded:  # under torchrun: each rank keeps a shard (FSDP2)
        model = shard_model(model, device_mesh(device, ranks), cfg.precision)
    model.train()
    optimizer = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    start_step = (
        restore_trainer_state(
            checkpoint, optimizer, model=model, extra_like={"micro_index": 0}, ranks=ranks
        )[0]
        if checkpoint
        else 0
    )
    result = SFTResult(model_dir=run.final)
    loop = OfflineLoop(
        cfg,
        run,
        ranks,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        stage="sft",
        label="sft",
        start_step=start_step,
        checkpoint_extra=lambda done: {"micro_index": done * cfg.grad_accum},
        rows=[*train, *held_out],
    )
    samples_path = run.root / "samples.jsonl"
    if checkpoint and ranks.is_main and samples_path.exists():
        # as metrics.jsonl: the killed run's generations after the checkpoint are made again
        drop_lines_after(samples_path, start_step)

    with loop:
        for step in loop.steps():
            started = time.perf_counter()
            # step 3. this step's micro-batches, fixed by (seed, position) alone; this rank's share
            # of each is run in length-sorted chunks so that padding costs no compute (same loss:
            # one denominator)
            shares = rank_shares(loop.micro_rows(step, len(train)), ranks)
            micro = [
                (move_batch(pad_batch(chunk, tokenizer.pad_token_id), device), share.stand_in)
                for share in shares
                for chunk in _length_chunks([train[i] for i in share.rows])
            ]
            counts = {
                "targets": sum(
                    int(b["response_mask"][:, 1:].sum()) for b, stand_in in micro if not stand_in
                ),
                "tokens": sum(
                    int(b["attention_mask"].sum()) for b, stand_in in micro if not stand_in
                ),
            }
            totals = reduce_sums(counts, ranks)  # over every rank's rows
            num_targets = totals["targets"]

            # step 4. forward/backward: token mean over the whole accumulated global batch
            loss_value = 0.0
            for batch, stand_in in gradient_passes(model, micro):
                with autocast(device, cfg.precision):
                    logits, ids, mask = response_window_logits(model, batch)
                loss = sft_loss(logits, ids, mask, num_targets)
                if stand_in:  # a rank without rows only takes part in the collectives
                    loss = loss * 0.0
                loss.backward()
                loss_value += loss.item()
            # each rank's loss is its share of the global one
            loss_value = reduce_sums({"loss": loss_value}, ranks)["loss"]

            # step 5. clip, schedule, update
            lr, grad_norm = loop.update(step, loss_value)

            # step 6. log, evaluate, sample, checkpoint
            done = step + 1
            tokens = int(totals["tokens"])
            elapsed = time.perf_counter() - started
            row = {
                "loss": loss_value,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens / elapsed,
            }
            if held_out and loop.eval_due(done):
                row["eval_loss"] = eval_loss(
                    model, held_out, tokenizer.pad_token_id, cfg.batch_size, cfg.precision
                )
                result.eval_losses.append((done, row["eval_loss"]))
                result.evals.append((done, {"loss": row["eval_loss"]}))
            if (
                eval_rows
                and cfg.sample_every
                and is_due(done, cfg.sample_every, cfg.max_steps, at_end=True)
            ):
                _log_samples(run, done, model, tokenizer, eval_rows, cfg, ranks.is_main)
            loop.end_step(done, row, result, tokens=tokens)

    # step 7. the final model, loadable with AutoModelForCausalLM.from_pretrained (LoRA merged);
    # under torchrun the shards are gathered to rank 0, which writes it
    weights = full_state_dict(model, ranks)
    if ranks.is_main:
        final, weights = final_policy(model, weights, cfg)
        save_final_model(final, tokenizer, run.final, run.checkpoints, state_dict=weights)
    return result
