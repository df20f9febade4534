"""Sampling speed: the rollout engine (eager or compiled, fp32 or bf16) against
`model.generate` on the same prompts and model.

    python benchmarks/rollout.py                       # a fresh tiny model, fixed-length responses
    python benchmarks/rollout.py --model runs/demo/sft/final --stop   # a trained model, EOS stops
    python benchmarks/rollout.py --model /tmp/peer-assets/policy --prompts 8 --samples 8 \
        --max-new-tokens 32 --variants engine compiled bf16 bf16-compiled
    # on a CPU: the decoding steps' weights packed for oneDNN against MKL's multiply
    python benchmarks/rollout.py --model /tmp/peer-assets/policy --prompts 8 --samples 8 \
        --max-new-tokens 32 --repeats 7 --variants engine unpacked bf16 bf16-unpacked
    # on a GPU: CUDA-graph steps against eager ones and transformers' compiled generate
    python benchmarks/rollout.py --model DIR --device cuda --prompts 32 --samples 8 \
        --max-new-tokens 256 --repeats 3 --variants bf16 bf16-eager generate-compiled-bf16

Prints generated tokens per second of each variant and its ratio to the first (median of
--repeats runs each, alternating so that machine drift hits all alike). The first call of each
variant runs untimed and is reported apart: it holds the compile of a compiled one.
"""

import argparse
import random
import statistics
import tempfile
import time
from copy import deepcopy as copy_model
from functools import partial

import torch

from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.rollout.engine import generate
from rlhfkit.tasks.registry import TASKS


def _prompts(n: int) -> list[str]:
    rng = random.Random(0)
    tasks = [TASKS[name]() for name in sorted(TASKS)]
    return [tasks[i % len(tasks)].prompts(1, rng)[0].prompt for i in range(n)]


def _engine(model, batch, stop_ids, pad_id, args, **options) -> int:
    rollout = generate(
        model,
        batch["input_ids"],
        batch["attention_mask"].bool(),
        num_samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        stop_ids=stop_ids,
        pad_token_id=pad_id,
        generator=torch.Generator(args.device).manual_seed(0),
        **options,
    )
    return int(rollout.response_mask.sum())  # waits for the device


VARIANTS = {
    "engine": partial(_engine),
    "generic": partial(_engine, fast_decode=False),  # every step through the model's modules
    "compiled": partial(_engine, compiled=True),
    "bf16": partial(_engine, dtype=torch.bfloat16),
    "bf16-compiled": partial(_engine, dtype=torch.bfloat16, compiled=True),
    # on a CPU the engine packs its weights for oneDNN where that pays; these variants do not
    "unpacked": partial(_engine, pack_weights=False),
    "bf16-unpacked": partial(_engine, dtype=torch.bfloat16, pack_weights=False),
    # on CUDA the engine replays its decoding steps from CUDA graphs; these variants do not
    "eager": partial(_engine, cuda_graphs=False),
    "bf16-eager": partial(_engine, dtype=torch.bfloat16, cuda_graphs=False),
}


def _hf_generate(model, batch, stop_ids, pad_id, args) -> int:
    ids = batch["input_ids"].repeat_interleave(args.samples, dim=0)
    mask = batch["attention_mask"].repeat_interleave(args.samples, dim=0)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        max_new_tokens=args.max_new_tokens,
        eos_token_id=stop_ids or None,
        pad_token_id=pad_id,
        top_k=None,
        top_p=None,
        # fixed length as the engine's (EOS suppressed), not the model's own EOS
        min_new_tokens=None if stop_ids else args.max_new_tokens,
    )
    new = out[:, ids.shape[1] :]
    if not stop_ids:
        return new.numel()
    stops = torch.isin(new, torch.tensor(stop_ids))
    # tokens up to and including the first stop (HF pads after it)
    return int(torch.where(stops.any(1), stops.int().argmax(1) + 1, new.shape[1]).sum())


def _hf_bf16(model, compiled: bool):
    """A bf16 copy of the model for `model.generate`, made once per variant; compiled: a static
    cache and the forward through `torch.compile(mode="reduce-overhead")` (CUDA graphs on a
    GPU), as transformers documents for fast generation."""
    key = "_bench_bf16_compiled" if compiled else "_bench_bf16"
    if key not in model.__dict__:
        copy = copy_model(model).to(torch.bfloat16)
        if compiled:
            copy.generation_config.cache_implementation = "static"
            copy.forward = torch.compile(copy.forward, mode="reduce-overhead", fullgraph=True)
        model.__dict__[key] = copy
    return model.__dict__[key]


VARIANTS["generate"] = _hf_generate
VARIANTS["generate-bf16"] = lambda model, *rest: _hf_generate(_hf_bf16(model, False), *rest)
VARIANTS["generate-compiled-bf16"] = lambda model, *rest: _hf_generate(_hf_bf16(model, True), *rest)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a causal-LM directory (default: a fresh tiny model)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--stop", action="store_true", help="stop at EOS (default: fixed-length responses)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=["engine", "generate"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = _prompts(args.prompts)
    model_dir = args.model or build_tiny_model(tempfile.mkdtemp(), prompts * 10, seed=0)
    model, tokenizer = load_causal_lm(model_dir).to(args.device).eval(), load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    batch = {key: value.to(args.device) for key, value in batch.items()}
    eos = model.generation_config.eos_token_id
    stop_ids = ([eos] if isinstance(eos, int) else list(eos)) if args.stop else []
    first_call, timings, tokens = {}, {name: [] for name in args.variants}, {}
    with torch.no_grad():
        for repeat in range(args.repeats + 1):
            for name in args.variants:
                start = time.perf_counter()
                tokens[name] = VARIANTS[name](model, batch, stop_ids, tokenizer.pad_token_id, args)
                elapsed = time.perf_counter() - start
                if repeat == 0:
                    first_call[name] = elapsed  # the compile, for a compiled variant
                else:
                    timings[name].append(elapsed)
    rate = {name: tokens[name] / statistics.median(times) for name, times in timings.items()}
    print(
        f"{args.prompts} prompts x {args.samples} samples, up to {args.max_new_tokens} new tokens, "
        f"{'EOS stops' if args.stop else 'fixed length'}, {args.threads} threads, "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}"
    )
    base = args.variants[0]
    for name in rate:
        print(
            f"  {name:13s} {rate[name]:9.0f} tokens/s  ({tokens[name]} tokens, median "
            f"{statistics.median(timings[name]):.3f} s, first call {first_call[name]:.1f} s)  "
            f"{rate[name] / rate[base]:.2f}x {base}"
        )


if __name__ == "__main__":
    main()
