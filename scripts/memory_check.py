r"""Peak memory of SFT and GRPO steps on small models, measured, beside the memory model's
prediction (`rlhfkit.runtime.memory_model`).

Measured: the bytes of live tensor storage, followed op by op (`LiveTensorBytes`): what a CUDA
caching allocator's `max_memory_allocated` would count, without its block rounding. The peak
RSS of a CPU process says less: it holds the Python runtime and the libraries, and glibc keeps
freed blocks.

    SFT   one process, a hand-written step as `train/sft.py` runs it (the model's logits,
          `sft_loss`, backward, clipped AdamW), B rows of T random tokens, every token scored,
          2 steps; two sizes of B x T give the measured bytes per token (the slope).
    GRPO  `train_grpo` itself on a freshly initialised tiny model (arith prompts, a rule reward,
          beta 0.04 so a reference model is loaded), 2 steps, at two response lengths.

    .venv/bin/python scripts/memory_check.py            # prints a markdown table
    .venv/bin/python scripts/memory_check.py --quick    # one setting each, a smoke test
"""

import argparse
import random
import tempfile
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import LlamaConfig, LlamaForCausalLM

from rlhfkit.data.text_ids import encode_text
from rlhfkit.models.loading import enable_checkpointing, load_tokenizer
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.objectives.sft import sft_loss
from rlhfkit.runtime.device import Precision, autocast
from rlhfkit.runtime.memory_model import ModelShape, estimate_memory
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.optim import NonFiniteGuard, adamw, clipped_step

MIB = 1 << 20
# (name, hidden, layers, heads, kv heads, intermediate): the demo's tiny model, and a GQA shape
SHAPES = {
    "tiny": (128, 4, 4, 4, 384),
    "gqa": (256, 4, 8, 2, 704),
}
VOCAB = 1024


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive, and their peak, seen through every op's inputs and
    outputs; a storage counts from the first op that touches it until it is freed."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.current = 0
        self.peak = 0

    def _see(self, tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key in self.live:
            ref, seen = self.live[key]
            if seen == size:
                return
            self.current -= seen  # resized in place
        else:
            ref = weakref.ref(storage, lambda _, key=key: self._free(key))
        self.live[key] = (ref, size)
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        _, size = self.live.pop(key, (None, 0))
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten((args, kwargs, out))[0]:
            self._see(tensor)
        return out


def llama(name: str) -> LlamaForCausalLM:
    hidden, layers, heads, kv_heads, intermediate = SHAPES[name]
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def shape_of(model) -> ModelShape:
    return ModelShape.from_config(model.config.to_dict())


def sft_peak(name: str, precision: Precision, checkpointing: bool, rows: int, length: int):
    """Measured peak of 2 SFT steps, and the model's estimate."""
    model = llama(name)
    if checkpointing:
        enable_checkpointing(model)
    model.train()
    optimizer = adamw(model.parameters(), lr=1e-4, weight_decay=0.0)  # as the trainers build it
    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False  # the first token has no prediction
    guard = NonFiniteGuard(max_skips=0, checkpoints_dir=Path("."))
    device = torch.device("cpu")
    with LiveTensorBytes() as tracker:
        for step in range(2):
            with autocast(device, precision):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                loss = sft_loss(logits, ids, mask, mask.sum())
            loss.backward()
            del logits, loss
            clipped_step(optimizer, 1e-4, 1.0, guard=guard, step=step)
    estimate = estimate_memory(
        shape_of(model),
        precision=precision,
        micro_batch=rows,
        seq_len=length,
        checkpointing=checkpointing,
        repeated_kv=False,  # no padding: the mask is dropped and SDPA runs GQA itself
        chunked_head=False,
    )
    return tracker.peak, estimate


def grpo_peak(workdir: Path, precision: Precision, checkpointing: bool, new_tokens: int):
    """Measured peak of 2 GRPO steps of `train_grpo`, the model's estimate, the step's rows."""
    model_dir = workdir / "tiny_model"
    if not model_dir.exists():
        corpus = [e.prompt + e.completion for e in ArithTask().sft_examples(300, random.Random(0))]
        build_tiny_model(model_dir, corpus, seed=0, vocab_size=VOCAB, max_positions=512)
    reward = workdir / "length_reward.py"
    reward.write_text(
        "def chars(prompts, responses, **columns):\n    return [len(r) / 10 for r in responses]\n"
    )
    prompts, group = 4, 8
    cfg = GRPOConfig(
        model=str(model_dir),
        task="arith",
        reward=f"{reward}:chars",
        train_prompts=64,
        eval_prompts=1,
        prompts_per_step=prompts,
        group_size=group,
        mini_batch_size=prompts * group,
        max_new_tokens=new_tokens,
        eval_max_new_tokens=8,
        max_steps=2,
        lr=1e-4,
        warmup_steps=0,
        beta=0.04,
        eval_every=-1,
        save_every=0,
        progress=False,
        tensorboard=False,
        precision=precision,
        gradient_checkpointing=checkpointing,
    )
    run = prepare_run_dir(
        workdir / f"run_{precision.value}_{checkpointing}_{new_tokens}",
        resume=False,
        overwrite=True,
    )
    with LiveTensorBytes() as tracker:
        train_grpo(cfg, run)
    rows = prompts * group
    response_len = max(row["response_length"] for row in read_metrics(run.metrics_path))
    prompt_len = prompt_tokens(model_dir, cfg)
    # each group's prompt runs once, except under checkpointing (then per row)
    prompt_rows = rows if checkpointing else prompts
    tokens = prompt_rows * prompt_len + rows * new_tokens
    shape = ModelShape.from_config(LlamaConfig.from_pretrained(model_dir).to_dict())
    estimate = estimate_memory(
        shape,
        precision=precision,
        micro_batch=1,
        seq_len=tokens,
        checkpointing=checkpointing,
        chunked_head=False,  # below CHUNKED_HEAD_MIN_LOGITS the head keeps the logits
        scored_len=rows * new_tokens,
        reference=True,
        sample_rows=rows,
        sample_positions=prompt_len + new_tokens,
    )
    return tracker.peak, estimate, (rows, prompt_len, response_len)


def prompt_tokens(model_dir: Path, cfg: GRPOConfig) -> int:
    """The longest arith prompt of the run's pool, in tokens: an upper bound on the padded
    prompt width of each step (the trainer pads a step's prompts to its longest)."""
    tokenizer = load_tokenizer(model_dir)
    prompts = ArithTask().prompts(cfg.train_prompts, random.Random(0))
    return max(len(encode_text(tokenizer, p.prompt, as_prompt=True)) for p in prompts)


def row(label: str, peak: int, estimate, tokens: int) -> dict:
    return {
        "run": label,
        "tokens": tokens,
        "measured_mib": peak / MIB,
        "model_mib": estimate.peak / MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one setting each")
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = [(Precision.FP32, False)]
    if not args.quick:
        settings += [(Precision.FP32, True), (Precision.BF16, False), (Precision.BF16, True)]
    sizes = [(8, 128)] if args.quick else [(8, 128), (16, 256)]
    rows = []
    for name in ["tiny"] if args.quick else list(SHAPES):
        for precision, checkpointing in settings:
            for batch, length in sizes:
                peak, estimate = sft_peak(name, precision, checkpointing, batch, length)
                label = f"sft {name} {precision.value} ckpt={int(checkpointing)} {batch}x{length}"
                rows.append(row(label, peak, estimate, batch * length))
                print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for precision, checkpointing in settings:
            for new_tokens in [32] if args.quick else [32, 128]:
                peak, estimate, (n, p, r) = grpo_peak(
                    Path(tmp), precision, checkpointing, new_tokens
                )
                label = (
                    f"grpo tiny {precision.value} ckpt={int(checkpointing)} "
                    f"{n} rows, prompt {p}, response {r:.0f}"
                )
                rows.append(
                    row(
                        label,
                        peak,
                        estimate,
                        estimate.activations // max(estimate.activations_per_token, 1),
                    )
                )
                print(rows[-1], flush=True)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("\n| run | tokens | measured MiB | model MiB | model / measured |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["model_mib"] / r["measured_mib"]
        print(
            f"| {r['run']} | {r['tokens']} | {r['measured_mib']:.1f} | {r['model_mib']:.1f} "
            f"| {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
