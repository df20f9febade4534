"""Bytes per rank of a training run: weights, gradients, optimizer state, activations, KV cache.

A planning model for Llama-family decoders (Llama, Qwen2, Mistral: RMSNorm, rotary positions,
SiLU-gated MLP), trained with AdamW on fp32 master weights, in one process or data-parallel under
FSDP2 with full sharding. Plain arithmetic on sizes, no tensors: it says what a run needs
before it runs.

Per trained model of P parameters on N ranks (fp32 master weights, AdamW's two moments):
    weights P * 4 / N,  gradients P * 4 / N,  optimizer state P * 8 / N
plus the unsharded copy the computation reads (`Sharding`), frozen models (reference, reward
model: whole on every rank, or sharded and gathered around their own passes), the activations
saved for the backward (per token, `activation_bytes_per_token`) and, while sampling, the
key/value cache:
    kv cache = 2 * layers * kv_heads * head_dim * rows * positions * bytes

The activation count follows what PyTorch's autograd keeps for one Hugging Face Llama layer
(`layer_activation_bytes`); it leaves out the allocator's caching and fragmentation, kernel
workspaces and the short-lived gradients of the backward, which measured peaks include.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.distributed import FrozenModels

FP32_BYTES = 4
BF16_BYTES = 2
ADAM_BYTES = 2 * FP32_BYTES  # exp_avg and exp_avg_sq, fp32
GIB = 1 << 30


class Sharding(str, Enum):
    NONE = "none"
    """One process, no FSDP: every tensor whole. Under bf16 autocast the bf16 casts of the
    weights are cached (and saved for the backward) through the forward pass: 2 bytes per
    trained parameter."""
    FSDP_STEP = "fsdp_step"
    """FSDP2 as rlhfkit runs it today: the parameters are gathered once per step and kept, and
    the gradients accumulate unsharded until one reduce-scatter (docs/scaling.md, "One
    reduction per step"): the whole model's parameters and gradients in the compute dtype on
    every rank while it trains."""
    FSDP_LAYER = "fsdp_layer"
    """FSDP2's default: each decoder layer is gathered for its forward and backward and
    resharded after; two layers in flight (one prefetched) and the root's embedding and head."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-family decoder (a Hugging Face `config.json`'s fields)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = True
    attention_bias: bool = False
    """q, k and v projections with biases (Qwen2)."""

    @classmethod
    def from_config(cls, config: Mapping) -> "ModelShape":
        """From a Hugging Face config dict (`json.load(open("config.json"))`)."""
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_parameters(self) -> int:
        """q and o (h x h), k and v (h x kv_dim), the gated MLP (3 h i), two RMSNorm weights."""
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_dim
        biases = self.hidden + 2 * self.kv_dim if self.attention_bias else 0
        return attention + biases + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def embedding_parameters(self) -> int:
        """The token embedding, the LM head when untied, the final norm."""
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.vocab * self.hidden + head + self.hidden

    def parameters(self) -> int:
        return self.layers * self.layer_parameters() + self.embedding_parameters()


def compute_bytes(precision: Precision) -> int:
    """Bytes of an activation or a gathered weight: 2 under bf16 autocast, else 4."""
    return BF16_BYTES if precision == Precision.BF16 else FP32_BYTES


def layer_activation_bytes(
    shape: ModelShape, precision: Precision, *, repeated_kv: bool = True
) -> int:
    """Bytes one Hugging Face Llama decoder layer saves for its backward, per token.

    With a = 2 (bf16 autocast) or 4 (fp32); the residual stream and the RMSNorms stay fp32
    because the master weights are fp32 (each RMSNorm also keeps a 4-byte rsqrt):
        2 RMSNorms, input and x * rsqrt each (fp32: also    fp32 24 h, bf16 16 h
            the output, which feeds the next linear)
        bf16 casts of the q, k, v, gate, up inputs          5 a h   (autocast only)
        attention's q, k, v and output; k and v repeated    4 a h   (2 a h + 2 a kv_dim
            to all heads, as Hugging Face does under a               when not repeated)
            padding mask (`repeated_kv`)
        attention's log-sum-exp                             4 heads
        MLP: gate, SiLU(gate), up, their product            4 a i
    fp32: 40 h + 16 i; bf16: 34 h + 8 i (+ 4 heads + 8). No (T x T) attention matrix: SDPA's
    flash or memory-efficient kernels keep only the log-sum-exp.
    """
    a, h = compute_bytes(precision), shape.hidden
    autocast = a < FP32_BYTES
    norms = 2 * ((2 if autocast else 3) * FP32_BYTES * h + FP32_BYTES)
    casts = 5 * a * h if autocast else 0
    kv = h if repeated_kv else shape.kv_dim
    attention = 2 * a * h + 2 * a * kv + FP32_BYTES * shape.heads
    mlp = 4 * a * shape.intermediate
    return norms + casts + attention + mlp


def activation_bytes_per_token(
    shape: ModelShape,
    precision: Precision,
    *,
    checkpointing: bool = False,
    repeated_kv: bool = True,
) -> int:
    """Activation bytes per token of a training forward, kept until its backward.

    Without checkpointing every layer's saved tensors plus the final norm's (its output feeds
    the LM head, whose logits are counted apart: `logits_bytes_per_token`). With
    checkpointing, each layer keeps only its fp32 input; the layer recomputed in the backward
    is counted apart (`MemoryEstimate.recompute`), as it lives after the head's backward.
    """
    per_layer = layer_activation_bytes(shape, precision, repeated_kv=repeated_kv)
    final_norm = 2 * FP32_BYTES * shape.hidden + FP32_BYTES
    if checkpointing:
        return shape.layers * FP32_BYTES * shape.hidden + final_norm
    return shape.layers * per_layer + final_norm


def logits_bytes_per_token(shape: ModelShape, precision: Precision, *, chunked: bool) -> int:
    """LM-head bytes per scored token at the start of the backward, when the head keeps the
    logits: the logits (a bytes), the shifted fp32 copy the cross-entropy reads, its fp32
    log-softmax, and the first gradient of the backward (fp32). fp32: 16 V; bf16: 14 V.
    0 with rlhfkit's chunked head, which recomputes each chunk's logits in the backward."""
    if chunked:
        return 0
    return shape.vocab * (compute_bytes(precision) + 3 * FP32_BYTES)


def kv_cache_bytes(shape: ModelShape, rows: int, positions: int, dtype_bytes: int) -> int:
    """Keys and values of every layer for `rows` sequences of `positions` tokens."""
    return 2 * shape.layers * shape.kv_dim * rows * positions * dtype_bytes


def frozen_model_bytes(
    shape: ModelShape,
    model_params: list[int],
    *,
    frozen_bytes: int,
    frozen_models: FrozenModels,
    world_size: int,
    sharding: Sharding,
    compute: int,
) -> tuple[int, int]:
    """(held, gathered) bytes on one rank of frozen models of `model_params` parameters each:
    `frozen_bytes` per parameter, whole (replicated, or one process) or 1/N of them (sharded);
    gathered: the largest sharded one in the `compute` dtype around its passes, whole as
    rlhfkit gathers (`FSDP_STEP`), two layers and the root with `FSDP_LAYER`; 0 when whole."""
    sharded = sharding != Sharding.NONE and FrozenModels(frozen_models) is FrozenModels.SHARDED
    held = sum(model_params) * frozen_bytes // (world_size if sharded else 1)
    if not sharded or not model_params:
        return held, 0
    per_layer = 2 * shape.layer_parameters() + shape.embedding_parameters()
    return held, (max(model_params) if sharding == Sharding.FSDP_STEP else per_layer) * compute


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one rank. The training, sampling and scoring (the frozen models' passes)
    phases peak at different times; `peak` is the largest."""

    weights: int
    """Trained models' fp32 master weights (sharded under FSDP2, offloaded with `offload`)."""
    gradients: int
    """Trained models' fp32 gradients, sharded like the weights."""
    optimizer: int
    """AdamW's two fp32 moments, sharded like the weights."""
    gathered: int
    """Unsharded copies the training computation reads: gathered parameters and unsharded
    gradients (`Sharding`), or the autocast weight cache of one process."""
    frozen: int
    """Reference and reward model weights (1/N of them on a rank when sharded)."""
    frozen_gathered: int
    """Sharded frozen models: the largest one gathered in the compute dtype around its own
    passes (after sampling, before the update); 0 when they are whole on every rank."""
    activations_per_token: int
    activations: int
    """Saved activations of one micro-batch: micro_batch * seq_len * activations_per_token."""
    logits: int
    """The LM head's logits of one micro-batch (0 with the chunked head)."""
    recompute: int
    """With checkpointing, one layer's activations while it is recomputed in the backward:
    after the head's backward, so the peak takes the larger of the two."""
    kv_cache: int
    """The sampler's key/value cache."""
    sampling_weights: int
    """Weights the sampler reads beyond the master copy: the gathered model under FSDP2, the
    bf16 copy when sampling in bf16."""
    host: int
    """Bytes moved to host memory by `offload` (not counted on the device)."""

    @property
    def training(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.gathered
            + self.frozen
            + self.activations
            + max(self.logits, self.recompute)
        )

    @property
    def sampling(self) -> int:
        """The gradients are freed (`zero_grad(set_to_none=True)`) before sampling."""
        return self.weights + self.optimizer + self.frozen + self.sampling_weights + self.kv_cache

    @property
    def scoring(self) -> int:
        """The reference and reward passes between sampling and the update: the cache freed,
        the sampler's weights counted as still held (rlhfkit keeps the policy gathered from its
        sampling into its step), a sharded frozen model gathered. Never above `sampling` when
        the frozen models are whole."""
        return (
            self.weights
            + self.optimizer
            + self.frozen
            + self.sampling_weights
            + self.frozen_gathered
        )

    @property
    def peak(self) -> int:
        return max(self.training, self.sampling, self.scoring)


def estimate_memory(
    shape: ModelShape,
    *,
    precision: Precision,
    micro_batch: int,
    seq_len: int,
    world_size: int = 1,
    sharding: Sharding = Sharding.NONE,
    checkpointing: bool = False,
    repeated_kv: bool = True,
    chunked_head: bool = True,
    scored_len: int | None = None,
    reference: bool = False,
    reward_model: bool = False,
    critic: bool = False,
    frozen_bytes: int = FP32_BYTES,
    frozen_models: FrozenModels = FrozenModels.REPLICATED,
    sample_rows: int = 0,
    sample_positions: int = 0,
    offload: bool = False,
) -> MemoryEstimate:
    """Bytes per rank of one training step of a policy of `shape`.

    Args:
        precision: fp32, or bf16 autocast over fp32 master weights.
        micro_batch, seq_len: rows and tokens per row of one forward/backward pass on a rank.
        world_size, sharding: ranks and how FSDP2 gathers (`Sharding.NONE` needs 1 rank).
        checkpointing: activation checkpointing of every decoder layer.
        repeated_kv: k and v repeated to all heads in the attention (a padding mask present).
        chunked_head: rlhfkit's chunked LM-head log-probs (no logits kept); False keeps the
            logits of `scored_len` tokens per row (default `seq_len`).
        reference, reward_model: frozen copies of the policy's shape (a reward model's head
            is one output, not the vocabulary), `frozen_bytes` per parameter.
        frozen_models: replicated (whole on every rank), or sharded over the N ranks under
            FSDP2 and gathered in the compute dtype around their own passes, one at a time (as
            the policy's gathering: whole with `FSDP_STEP`, two layers with `FSDP_LAYER`).
        critic: a trained value model of the policy's shape (PPO); it trains after the policy,
            so its activations do not add to the policy's.
        sample_rows, sample_positions: the sampler's batch and its prompt + new tokens, its
            cache in the compute dtype.
        offload: FSDP2's CPU offload of the sharded weights, gradients and optimizer state.
    Returns:
        MemoryEstimate, every field in bytes on one rank.
    """
    if sharding == Sharding.NONE and world_size != 1:
        raise ValueError(f"sharding=none runs one process, not {world_size}")
    if offload and sharding == Sharding.NONE:
        raise ValueError("offload is FSDP2's CPU offload: it needs an FSDP sharding")
    params = shape.parameters()
    head_params = 0 if shape.tied_embeddings else shape.vocab * shape.hidden
    critic_params = params - head_params + shape.hidden if critic else 0
    trained = params + critic_params
    a = compute_bytes(precision)

    sharded = (
        trained * FP32_BYTES // world_size,
        trained * FP32_BYTES // world_size,
        trained * ADAM_BYTES // world_size,
    )
    weights, gradients, optimizer = (0, 0, 0) if offload else sharded

    largest = max(params, critic_params)
    if sharding == Sharding.NONE:
        gathered = params * BF16_BYTES if precision == Precision.BF16 else 0
    elif sharding == Sharding.FSDP_STEP:
        gathered = 2 * largest * a  # parameters and unsharded gradients
    else:
        gathered = 2 * (2 * shape.layer_parameters() + shape.embedding_parameters()) * a

    reward_params = params - head_params + shape.hidden if reward_model else 0
    frozen, frozen_gathered = frozen_model_bytes(
        shape,
        [params] * reference + [reward_params] * reward_model,
        frozen_bytes=frozen_bytes,
        frozen_models=frozen_models,
        world_size=world_size,
        sharding=sharding,
        compute=a,
    )

    per_token = activation_bytes_per_token(
        shape, precision, checkpointing=checkpointing, repeated_kv=repeated_kv
    )
    scored = seq_len if scored_len is None else scored_len
    logits = micro_batch * scored * logits_bytes_per_token(shape, precision, chunked=chunked_head)

    if sharding != Sharding.NONE:
        sampling_weights = params * a
    else:
        sampling_weights = params * BF16_BYTES if precision == Precision.BF16 else 0
    kv = kv_cache_bytes(shape, sample_rows, sample_positions, a)
    return MemoryEstimate(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        gathered=gathered,
        frozen=frozen,
        frozen_gathered=frozen_gathered,
        activations_per_token=per_token,
        activations=micro_batch * seq_len * per_token,
        logits=logits,
        recompute=micro_batch
        * seq_len
        * layer_activation_bytes(shape, precision, repeated_kv=repeated_kv)
        if checkpointing
        else 0,
        kv_cache=kv,
        sampling_weights=sampling_weights,
        host=sum(sharded) if offload else 0,
    )
