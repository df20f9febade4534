"""The fast paths under FSDP2: a sharded model's weights are shards between passes, which the
chunked LM head and the fused decoding step must not read as whole weights."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhfkit.rollout.architecture import linear_head, supports_fast_decode
from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.distributed import current_ranks, device_mesh, shard_model
from tests.distributed.ranks import run_on_ranks


def fast_paths_before_and_after_sharding() -> tuple[bool, bool, bool, bool]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            tie_word_embeddings=False,
        )
    )
    before = (linear_head(model) is not None, supports_fast_decode(model, 8))
    sharded = shard_model(model, device_mesh(torch.device("cpu"), current_ranks()), Precision.FP32)
    return (*before, linear_head(sharded) is not None, supports_fast_decode(sharded, 8))


def test_a_sharded_model_takes_the_plain_paths():
    head, decode, sharded_head, sharded_decode = run_on_ranks(
        2, fast_paths_before_and_after_sharding
    )
    assert head and decode  # the same model, whole, takes both fast paths
    assert not sharded_head and not sharded_decode
