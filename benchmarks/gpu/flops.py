"""The benchmark's model shapes and the FLOP count that its utilisation (MFU) is taken from."""

from rlhfkit.runtime.memory_model import ModelShape

# Qwen2.5-0.5B's decoder as a Llama (no q/k/v biases) with a 32,000-token vocabulary: 386.5M
# parameters, tied embeddings
QWEN_05B = ModelShape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=32000)
# the CPU smoke test's model: the same code paths in a few seconds
TINY = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=4096)
# bf16 dense matrix-product rate measured on one H200 (8192^3, random data): the MFU denominator
H200_BF16_FLOPS = 790e12


def matmul_params(shape: ModelShape, *, lm_head: bool = True) -> int:
    """N: weights that enter a matrix product per token: every decoder projection and the LM
    head (the tied embedding counted once, as the head), or a hidden -> 1 score head."""
    h = shape.hidden
    per_layer = 2 * h * h + 2 * h * shape.kv_dim + 3 * h * shape.intermediate
    return shape.layers * per_layer + (shape.vocab * h if lm_head else h)


def flops_per_step(workload: str, shape: ModelShape, tokens: float) -> float:
    """The full FLOP count of one step: 2 per weight per token for a forward pass, 6 for a
    forward and backward pass (attention's score products, about 3% here, left out).

    `tokens`: the step's tokens, for SFT, RM and DPO the non-padding tokens of every training
    sequence; for GRPO and PPO every sampled sequence's prompt and response tokens.
    GRPO: sampling forward 2N + training 6N + frozen reference 2N. PPO: the same for the
    policy, plus the critic's rollout forward, the reward model's forward and the critic's
    training pass (2 + 2 + 6) N_cls. DPO: the policy's training pass and the reference's
    forward. As the shared CPU benchmark counts them (its README, "FLOP estimate").
    """
    n, n_cls = matmul_params(shape), matmul_params(shape, lm_head=False)
    per_token = {
        "sft": 6 * n,
        "rm": 6 * n_cls,
        "dpo": 8 * n,
        "grpo": 10 * n,
        "ppo": 10 * n + 10 * n_cls,
    }[workload]
    return per_token * tokens
