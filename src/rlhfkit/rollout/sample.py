"""Batched sampling with the model's own `generate` (KV cache on).

Seeded without touching the caller's RNG streams: sampling runs inside a forked RNG state,
so generating samples in the middle of training never changes the training's randomness.
"""

from dataclasses import dataclass

import torch

from rlhfkit.runtime.progress import ProgressBar


@dataclass
class Samples:
    texts: list[list[str]]  # (prompts, num_samples) decoded responses, special tokens removed
    num_tokens: int  # generated tokens, each response counted up to and including its EOS


def stop_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted(set(ids) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: list[str],
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
) -> Samples:
    """`num_samples` responses to each prompt (prompts are already rendered text).

    `progress`: a description shows a progress bar (batches, tokens/s, ETA); None = silent.
    """
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
    stop_ids = stop_token_ids(model, tokenizer)
    expanded = [p for p in prompts for _ in range(num_samples)]
    texts, num_tokens = [], 0
    device = next(model.parameters()).device
    try:
        num_batches = -(-len(expanded) // batch_size)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                ProgressBar(num_batches, progress or "", enabled=progress is not None) as bar:
            torch.manual_seed(seed)
            for start in range(0, len(expanded), batch_size):
                batch = tokenizer(expanded[start : start + batch_size], return_tensors="pt",
                                  padding=True, add_special_tokens=False).to(device)
                out = model.generate(
                    **batch,
                    do_sample=not greedy,
                    temperature=temperature if not greedy else None,
                    top_p=top_p if not greedy else None,
                    top_k=top_k if not greedy else None,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stop_ids,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = out[:, batch["input_ids"].shape[1] :]
                batch_tokens = 0
                for row in new_tokens.tolist():
                    length = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
                    batch_tokens += length
                    texts.append(tokenizer.decode(row[:length], skip_special_tokens=True))
                num_tokens += batch_tokens
                bar.update(1, tokens=batch_tokens)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    grouped = [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]
    return Samples(texts=grouped, num_tokens=num_tokens)
