"""The fast paths under FSDP2: a sharded model's weights are shards between passes, which the
chunked LM head and the fused decoding step must not read as whole weights; gathered around a
frozen model's passes (`gathered`) they are whole, and the chunked head reads them."""

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from rlhfkit.rollout import forward
from rlhfkit.rollout.architecture import linear_head, supports_fast_decode
from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.distributed import (
    FrozenModels,
    current_ranks,
    device_mesh,
    gather_parameters,
    gathered,
    place_frozen,
    shard_model,
)
from tests.distributed.ranks import run_on_ranks


def small_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            tie_word_embeddings=False,
        )
    )


def fast_paths_before_and_after_sharding() -> tuple[bool, bool, bool, bool]:
    model = small_llama()
    before = (linear_head(model) is not None, supports_fast_decode(model, 8))
    sharded = shard_model(model, device_mesh(torch.device("cpu"), current_ranks()), Precision.FP32)
    return (*before, linear_head(sharded) is not None, supports_fast_decode(sharded, 8))


def test_a_sharded_model_takes_the_plain_paths():
    head, decode, sharded_head, sharded_decode = run_on_ranks(
        2, fast_paths_before_and_after_sharding
    )
    assert head and decode  # the same model, whole, takes both fast paths
    assert not sharded_head and not sharded_decode


def frozen_model_gathered_around_its_passes() -> dict:
    """A sharded frozen model read inside `gathered`, rank 0 making three passes and rank 1
    one (a collective in a pass would hang them); what each phase saw, on rank 0."""
    forward.CHUNKED_HEAD_MIN_LOGITS = 0  # this spawned process only: every pass chunked
    model = small_llama().eval().requires_grad_(False)
    ids = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        whole = forward.response_logprobs(model, ids, mask, 4).logprobs
    mesh = device_mesh(torch.device("cpu"), current_ranks())
    frozen = place_frozen(model, FrozenModels.SHARDED, mesh, Precision.FP32)
    facts = {"sharded": linear_head(frozen) is None}
    with gathered(frozen), torch.inference_mode():
        facts["whole_inside"] = linear_head(frozen) is not None
        for _ in range(3 if dist.get_rank() == 0 else 1):
            logprobs = forward.response_logprobs(frozen, ids, mask, 4).logprobs
    facts["difference"] = float((logprobs - whole).abs().max())
    facts["sharded_after"] = linear_head(frozen) is None
    gather_parameters(frozen)  # found gathered (as the policy in its step): left gathered
    with gathered(frozen):
        pass
    facts["kept_gathered"] = linear_head(frozen) is not None
    return facts


def test_a_sharded_frozen_model_is_whole_only_inside_gathered():
    facts = run_on_ranks(2, frozen_model_gathered_around_its_passes)
    assert facts["sharded"] and facts["whole_inside"] and facts["sharded_after"]
    assert facts["difference"] < 1e-6  # the chunked head on the gathered weights
    assert facts["kept_gathered"]
