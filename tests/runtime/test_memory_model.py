"""The memory model against sizes computed by hand, and against published parameter counts."""

import pytest

from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.distributed import FrozenModels
from rlhfkit.runtime.memory_model import (
    ModelShape,
    Sharding,
    activation_bytes_per_token,
    estimate_memory,
    kv_cache_bytes,
    layer_activation_bytes,
    logits_bytes_per_token,
)

# the demo's tiny model: h 128, 4 layers, 4 heads (no GQA), i 384, vocab 1024, tied
TINY = ModelShape(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=384, vocab=1024)
LLAMA2_7B = ModelShape(
    hidden=4096,
    layers=32,
    heads=32,
    kv_heads=32,
    intermediate=11008,
    vocab=32000,
    tied_embeddings=False,
)
QWEN_05B_CONFIG = {  # Qwen2.5-0.5B's config.json, the fields read
    "model_type": "qwen2",
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}


def test_parameter_counts_match_hand_sums_and_published_counts():
    # layer: q, o 2*128^2 + k, v 2*128*128 + MLP 3*128*384 + norms 2*128 = 213,248
    assert TINY.layer_parameters() == 213_248
    assert TINY.embedding_parameters() == 1024 * 128 + 128
    assert TINY.parameters() == 4 * 213_248 + 131_200 == 984_192
    assert LLAMA2_7B.parameters() == 6_738_415_616  # Llama-2-7B's published count
    qwen = ModelShape.from_config(QWEN_05B_CONFIG)
    assert (qwen.kv_dim, qwen.attention_bias) == (128, True)
    assert qwen.parameters() == 494_032_768  # Qwen2.5-0.5B's published count
    # the GPU benchmark's model: Qwen2.5-0.5B's shape as a Llama (no biases), vocab 32000
    bench = ModelShape.from_config({**QWEN_05B_CONFIG, "model_type": "llama", "vocab_size": 32000})
    assert bench.parameters() == 386_542_464


def test_activations_per_layer_and_token_by_hand():
    # fp32: 2 norms x (3 x 4h + rsqrt 4) + attention q, k, v, out 4 x 4h + lse 4 x 4 + MLP 16i
    assert layer_activation_bytes(TINY, Precision.FP32) == 3080 + 2048 + 16 + 6144 == 11_288
    # bf16: 2 norms x (2 x 4h + 4) + 5 casts x 2h + attention 4 x 2h + lse 16 + MLP 8i
    assert layer_activation_bytes(TINY, Precision.BF16) == 2056 + 1280 + 1024 + 16 + 3072
    # GQA without repetition: k and v at kv_dim (2 heads of 32 = 64) instead of h
    gqa = ModelShape(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=384, vocab=1024)
    unrepeated = layer_activation_bytes(gqa, Precision.FP32, repeated_kv=False)
    assert layer_activation_bytes(gqa, Precision.FP32) - unrepeated == 2 * 4 * (128 - 64)
    # 4 layers + the final norm's input and x * rsqrt (8h) and its rsqrt
    assert activation_bytes_per_token(TINY, Precision.FP32) == 4 * 11_288 + 1028
    # checkpointing: each layer's fp32 input and the final norm
    checkpointed = activation_bytes_per_token(TINY, Precision.FP32, checkpointing=True)
    assert checkpointed == 4 * 4 * 128 + 1028


def test_logits_and_kv_cache_by_hand():
    # logits, the shifted fp32 copy, log-softmax, its gradient
    assert logits_bytes_per_token(TINY, Precision.FP32, chunked=False) == 1024 * (4 + 4 + 4 + 4)
    assert logits_bytes_per_token(TINY, Precision.BF16, chunked=False) == 1024 * 14
    assert logits_bytes_per_token(TINY, Precision.BF16, chunked=True) == 0
    # keys and values, 4 layers x 128 wide, 32 rows x 100 positions, fp32
    assert kv_cache_bytes(TINY, rows=32, positions=100, dtype_bytes=4) == 2 * 4 * 128 * 3200 * 4


def test_one_process_fp32_holds_16_bytes_per_parameter_plus_the_step():
    p = TINY.parameters()
    est = estimate_memory(
        TINY, precision=Precision.FP32, micro_batch=8, seq_len=128, chunked_head=False
    )
    assert (est.weights, est.gradients, est.optimizer) == (4 * p, 4 * p, 8 * p)
    assert est.gathered == est.frozen == est.kv_cache == est.sampling_weights == 0
    assert est.activations == 8 * 128 * (4 * 11_288 + 1028)
    assert est.logits == 8 * 128 * 16 * 1024
    assert est.peak == est.training == 16 * p + est.activations + est.logits
    # checkpointing: the recomputed layer (8 x 128 x 11,288) lives after the logits are gone
    ckpt = estimate_memory(
        TINY,
        precision=Precision.FP32,
        micro_batch=8,
        seq_len=128,
        chunked_head=False,
        checkpointing=True,
    )
    assert ckpt.recompute == 8 * 128 * 11_288
    assert ckpt.training == 16 * p + 8 * 128 * (2048 + 1028) + max(ckpt.logits, ckpt.recompute)


def test_bf16_caches_the_weights_in_bf16_and_samples_from_a_bf16_copy():
    p = TINY.parameters()
    est = estimate_memory(
        TINY,
        precision=Precision.BF16,
        micro_batch=1,
        seq_len=10,
        reference=True,
        sample_rows=4,
        sample_positions=50,
    )
    assert est.gathered == est.sampling_weights == 2 * p
    assert est.frozen == 4 * p  # the fp32 reference, whole
    assert est.kv_cache == 2 * 4 * 128 * 4 * 50 * 2
    assert est.sampling == 12 * p + 4 * p + 2 * p + est.kv_cache


def test_fsdp_shards_the_states_and_the_sharding_mode_sets_the_gathered_copy():
    p = LLAMA2_7B.parameters()
    kwargs = dict(precision=Precision.BF16, micro_batch=1, seq_len=1024, world_size=8)
    step = estimate_memory(LLAMA2_7B, sharding=Sharding.FSDP_STEP, **kwargs)
    assert (step.weights, step.gradients, step.optimizer) == (p // 2, p // 2, p)
    assert step.gathered == 2 * p * 2  # bf16 parameters and unsharded gradients
    layer = estimate_memory(LLAMA2_7B, sharding=Sharding.FSDP_LAYER, **kwargs)
    # two layers in flight and the root's embedding, head and final norm, weights and gradients
    per_layer = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    root = 2 * 32000 * 4096 + 4096
    assert layer.gathered == 2 * (2 * per_layer + root) * 2
    assert layer.sampling_weights == 2 * p  # the sampler gathers the whole model
    # 16 bytes per parameter on one rank is 2 on eight: "a 7B policy needs ~112 GB" / 8
    assert step.weights + step.gradients + step.optimizer == 16 * p // 8


def test_offload_moves_the_sharded_states_to_the_host():
    kwargs = dict(
        precision=Precision.BF16,
        micro_batch=1,
        seq_len=1,
        world_size=8,
        sharding=Sharding.FSDP_LAYER,
    )
    offloaded = estimate_memory(LLAMA2_7B, offload=True, **kwargs)
    kept = estimate_memory(LLAMA2_7B, **kwargs)
    assert offloaded.weights == offloaded.gradients == offloaded.optimizer == 0
    assert offloaded.host == kept.weights + kept.gradients + kept.optimizer
    assert kept.training - offloaded.training == offloaded.host


def test_critic_and_reward_model_have_a_scalar_head_instead_of_the_vocabulary():
    p = TINY.parameters()
    est = estimate_memory(
        TINY,
        precision=Precision.FP32,
        micro_batch=1,
        seq_len=1,
        critic=True,
        reward_model=True,
        reference=True,
    )
    # tied: the embedding stays, a 1-output score head comes instead of none
    assert est.weights == 4 * (p + p + 128)
    assert est.optimizer == 8 * (p + p + 128)
    assert est.frozen == 4 * (p + p + 128)
    untied = estimate_memory(
        LLAMA2_7B, precision=Precision.FP32, micro_batch=1, seq_len=1, critic=True
    )
    q = LLAMA2_7B.parameters()
    assert untied.weights == 4 * (q + q - 32000 * 4096 + 4096)  # the vocabulary head goes


def test_sharded_frozen_models_hold_a_shard_and_are_gathered_around_their_passes():
    p = LLAMA2_7B.parameters()
    kwargs = dict(precision=Precision.BF16, micro_batch=1, seq_len=1024, reference=True)
    fsdp = dict(world_size=8, sharding=Sharding.FSDP_STEP, sample_rows=8, sample_positions=64)
    whole = estimate_memory(LLAMA2_7B, **kwargs, **fsdp)
    sharded = estimate_memory(LLAMA2_7B, frozen_models=FrozenModels.SHARDED, **kwargs, **fsdp)
    assert (whole.frozen, whole.frozen_gathered) == (4 * p, 0)
    assert sharded.frozen == 4 * p // 8
    assert sharded.frozen_gathered == 2 * p  # the whole reference in bf16, for its passes
    assert whole.training - sharded.training == 4 * p - 4 * p // 8
    # its passes hold the gathered policy and the gathered reference, not the sampler's cache
    assert sharded.scoring == sharded.sampling - sharded.kv_cache + 2 * p
    assert sharded.peak == max(sharded.training, sharded.sampling, sharded.scoring)
    assert whole.scoring <= whole.sampling
    per_layer = estimate_memory(
        LLAMA2_7B,
        frozen_models=FrozenModels.SHARDED,
        **kwargs,
        **{**fsdp, "sharding": Sharding.FSDP_LAYER},
    )
    layers = 2 * LLAMA2_7B.layer_parameters() + LLAMA2_7B.embedding_parameters()
    assert per_layer.frozen_gathered == layers * 2
    # one process: the setting changes nothing
    one = dict(precision=Precision.FP32, micro_batch=1, seq_len=1, reference=True)
    assert estimate_memory(TINY, frozen_models=FrozenModels.SHARDED, **one) == estimate_memory(
        TINY, **one
    )


def test_impossible_layouts_are_refused():
    with pytest.raises(ValueError, match="one process"):
        estimate_memory(TINY, precision=Precision.FP32, micro_batch=1, seq_len=1, world_size=2)
    with pytest.raises(ValueError, match="offload"):
        estimate_memory(TINY, precision=Precision.FP32, micro_batch=1, seq_len=1, offload=True)
