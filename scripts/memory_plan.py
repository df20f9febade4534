r"""What the memory model (`rlhfkit.runtime.memory_model`) predicts for the GPU benchmark's GRPO
step, and for 7B and 70B GRPO runs on 8 x 80 GB GPUs, with step times scaled from the GPU
benchmark's measured per-token costs. Prints markdown tables; every figure is computed here.

    .venv/bin/python scripts/memory_plan.py

The GPU measurement (one H200, 2026-12-04, rlhfkit at c2cc971; GRPO on a random Llama in
Qwen2.5-0.5B's shape, 386.5M parameters, 32 prompts x 8 = 256 completions of 256 tokens, bf16,
mini-batch 128, two updates): generation 4.08 s, reference 0.35 s, forward + backward 0.83 s
per step, peak 75.8 GiB. The prompt length is not recorded with it: PROMPT_TOKENS is assumed.
"""

from dataclasses import dataclass

from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.distributed import FrozenModels
from rlhfkit.runtime.memory_model import GIB, ModelShape, Sharding, estimate_memory

# the GPU benchmark's measured step (see the module docstring)
BENCH = ModelShape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=32000)
BENCH_TOKENS = 256 * 256  # completion tokens per step
BENCH_SECONDS = {"generation": 4.08, "reference": 0.35, "train": 0.83}
BENCH_PEAK_GIB = 75.8
PROMPT_TOKENS = 32  # assumed: the measurement does not record it
H200_BANDWIDTH = 4.8e12  # bytes/s
H100_BANDWIDTH = 3.35e12  # bytes/s, the 80 GB part

QWEN_7B = ModelShape(  # Qwen2.5-7B's config
    hidden=3584,
    layers=28,
    heads=28,
    kv_heads=4,
    intermediate=18944,
    vocab=152064,
    tied_embeddings=False,
    attention_bias=True,
)
LLAMA_70B = ModelShape(  # Llama-3.1-70B's config
    hidden=8192,
    layers=80,
    heads=64,
    kv_heads=8,
    intermediate=28672,
    vocab=128256,
    tied_embeddings=False,
)


def gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def bench_prediction() -> None:
    """The measured step: one process, bf16 autocast, a mini-batch of 128 rows in one pass."""
    rows, new = 128, 256
    prompts = rows // 8  # a group's prompt runs once
    tokens = rows * new + prompts * PROMPT_TOKENS
    common = dict(
        precision=Precision.BF16,
        micro_batch=1,
        seq_len=tokens,
        scored_len=rows * new,
        reference=True,
        sample_rows=256,
        sample_positions=PROMPT_TOKENS + new,
    )
    then = estimate_memory(BENCH, chunked_head=False, **common)  # c2cc971: logits kept
    now = estimate_memory(BENCH, chunked_head=True, **common)
    print(f"### GPU benchmark step ({BENCH.parameters() / 1e6:.1f}M parameters)\n")
    print("| term | c2cc971 (logits kept) GiB | chunked head GiB |")
    print("|---|---|---|")
    for name in ("weights", "gradients", "optimizer", "gathered", "frozen"):
        print(f"| {name} | {gib(getattr(then, name))} | {gib(getattr(now, name))} |")
    print(
        f"| activations ({then.activations_per_token / 1024:.0f} KiB/token x {tokens} tokens) "
        f"| {gib(then.activations)} | {gib(now.activations)} |"
    )
    print(f"| logits | {gib(then.logits)} | {gib(now.logits)} |")
    print(f"| training peak | {gib(then.training)} | {gib(now.training)} |")
    print(f"| sampling peak | {gib(then.sampling)} | {gib(now.sampling)} |")
    print(f"| measured peak | {BENCH_PEAK_GIB} | - |\n")


@dataclass(frozen=True)
class Plan:
    name: str
    shape: ModelShape
    world_size: int
    sharding: Sharding
    micro_batch: int
    checkpointing: bool
    offload: bool
    frozen_bytes: int
    frozen_models: FrozenModels
    sample_rows: int


PROMPT, RESPONSE = 512, 1024  # tokens per row in the large runs
STEP, LAYER = Sharding.FSDP_STEP, Sharding.FSDP_LAYER
WHOLE, SHARDED = FrozenModels.REPLICATED, FrozenModels.SHARDED
PLANS = [
    Plan("7B, rlhfkit, frozen_models=replicated", QWEN_7B, 8, STEP, 4, True, False, 4, WHOLE, 64),
    Plan("7B, rlhfkit, frozen_models=sharded", QWEN_7B, 8, STEP, 4, True, False, 4, SHARDED, 64),
    Plan("7B", QWEN_7B, 8, LAYER, 4, True, False, 2, SHARDED, 64),
    Plan("7B, no checkpointing", QWEN_7B, 8, LAYER, 1, False, False, 2, SHARDED, 64),
    Plan("70B", LLAMA_70B, 8, LAYER, 1, True, False, 2, SHARDED, 16),
    Plan("70B, offload", LLAMA_70B, 8, LAYER, 2, True, True, 2, SHARDED, 16),
    Plan("70B, offload, 4 nodes", LLAMA_70B, 32, LAYER, 2, True, True, 2, SHARDED, 16),
]


def large_runs() -> None:
    print(f"### GRPO plans: {PROMPT} prompt + {RESPONSE} response tokens per row, bf16\n")
    print(
        "| plan | P | N | micro-batch | ckpt | offload | reference | training GiB "
        "| sampling GiB | scoring GiB | host GiB/rank | fits 80 GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for plan in PLANS:
        est = estimate_memory(
            plan.shape,
            precision=Precision.BF16,
            micro_batch=plan.micro_batch,
            seq_len=PROMPT + RESPONSE,
            world_size=plan.world_size,
            sharding=plan.sharding,
            checkpointing=plan.checkpointing,
            reference=True,
            frozen_bytes=plan.frozen_bytes,
            frozen_models=plan.frozen_models,
            sample_rows=plan.sample_rows,
            sample_positions=PROMPT + RESPONSE,
            offload=plan.offload,
        )
        reference = ("fp32" if plan.frozen_bytes == 4 else "bf16") + (
            " sharded" if plan.frozen_models is SHARDED else " whole"
        )
        fits = "yes" if est.peak <= 80e9 else "no"
        print(
            f"| {plan.name} | {plan.shape.parameters() / 1e9:.1f}B | {plan.world_size} "
            f"| {plan.micro_batch} | {'on' if plan.checkpointing else 'off'} "
            f"| {'yes' if plan.offload else 'no'} | {reference} | {gib(est.training)} "
            f"| {gib(est.sampling)} | {gib(est.scoring)} | {gib(est.host)} | {fits} |"
        )
    print()


def step_times() -> None:
    """Per token and parameter, the measured seconds of each phase, scaled to P and T."""
    bench_p = BENCH.parameters()
    per = {k: v / (BENCH_TOKENS * bench_p) for k, v in BENCH_SECONDS.items()}
    print("### Step time, scaled from the GPU benchmark's per-token costs\n")
    print(
        "| model | GPUs | completions x tokens | train s (x4/3 recompute) | reference s "
        "| generation s, scaled | generation s, bandwidth floor |"
    )
    print("|---|---|---|---|---|---|---|")
    for shape, gpus in ((QWEN_7B, 8), (LLAMA_70B, 8), (LLAMA_70B, 32)):
        completions = 512  # 64 prompts x 8
        tokens = completions * RESPONSE
        p = shape.parameters()
        train = per["train"] * p * tokens / gpus * 4 / 3
        reference = per["reference"] * p * tokens / gpus
        generation = per["generation"] * p * tokens / gpus
        # every decode step reads the bf16 weights once and each row's cache (at mid-length)
        rows = completions / gpus
        cache = 2 * shape.layers * shape.kv_dim * rows * (PROMPT + RESPONSE / 2) * 2
        floor = RESPONSE * (2 * p + cache) / H100_BANDWIDTH
        print(
            f"| {p / 1e9:.1f}B | {gpus} | {completions} x {RESPONSE} | {train:.0f} "
            f"| {reference:.0f} | {generation:.0f} | {floor:.0f} |"
        )
    print()


def main() -> None:
    bench_prediction()
    large_runs()
    step_times()


if __name__ == "__main__":
    main()
