"""Sampling responses as text (data collection, evaluation, logged samples) with the rollout engine.

Seeded without touching the caller's RNG streams: sampling draws from its own generator, so
generating samples in the middle of training never changes the training's randomness.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rlhfkit.data.formats import Text
from rlhfkit.rollout.engine import Rollout, generate
from rlhfkit.rollout.text import decode_responses, encode_prompts
from rlhfkit.runtime.progress import work_bar


@dataclass
class Samples:
    texts: list[list[str]]  # (prompts, num_samples) decoded responses, special tokens removed
    num_tokens: int  # generated tokens, each response counted up to and including its EOS


def stop_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted(
        set(ids) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
    )


def batched_rollouts(
    model, tokenizer, prompts: list[Text], *, per_batch: int, progress: str | None, **options
) -> Iterator[Rollout]:
    """`generate` over `prompts`, `per_batch` prompts at a time (each with all its samples),
    stopping at the model's and the tokenizer's EOS; a bar of the batches when `progress`
    names one. `options`: `generate`'s (num_samples, max_new_tokens, generator, ...)."""
    device = next(model.parameters()).device
    stop_ids = stop_token_ids(model, tokenizer)
    with work_bar(-(-len(prompts) // per_batch), progress) as bar:
        for start in range(0, len(prompts), per_batch):
            ids, mask = encode_prompts(tokenizer, prompts[start : start + per_batch], device)
            rollout = generate(
                model, ids, mask, stop_ids=stop_ids, pad_token_id=tokenizer.pad_token_id, **options
            )
            yield rollout
            bar.update(1, tokens=int(rollout.response_mask.sum()))


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: list[Text],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    progress: str | None = None,
    dtype: torch.dtype | None = None,
) -> Samples:
    """`num_samples` responses to each prompt: plain text, or messages that the chat template
    renders here (see `encode_prompts`).

    `batch_size` counts responses; each batch holds whole prompts with all their samples, so a
    prompt is prefilled once. Sampling draws from its own seeded generator, never from the
    caller's RNG streams. `progress`: a description shows a progress bar; None = silent.
    `dtype`: as `generate`'s (bf16 samples as a bf16 run does; None = the model's own).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    per_batch = max(1, batch_size // num_samples)
    texts, num_tokens = [], 0
    try:
        for rollout in batched_rollouts(
            model,
            tokenizer,
            prompts,
            per_batch=per_batch,
            progress=progress,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            greedy=greedy,
            generator=generator,
            dtype=dtype,
        ):
            texts += decode_responses(tokenizer, rollout)
            num_tokens += int(rollout.response_mask.sum())
    finally:
        model.train(was_training)
    grouped = [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]
    return Samples(texts=grouped, num_tokens=num_tokens)
