"""A tiny causal LM, prompt batches and the near-tie comparison of two decoding paths, shared by
the rollout tests."""

import pytest
import torch

from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.lora import add_lora
from rlhfkit.rollout.engine import generate, positions_from_mask

PROMPTS = [
    "Q: Ann has 3 apples, gets 4 more. How many?\nA:",
    "User: How do I sleep better?\nAssistant:",
    "Q: 7 + 2?\nA:",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir).eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.padding_side = "left"
    return model, tokenizer


def prompt_batch(tokenizer):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"].bool()


def generate_samples(model, tokenizer, seed=0, **kwargs):
    ids, mask = prompt_batch(tokenizer)
    options = dict(
        num_samples=3,
        max_new_tokens=24,
        stop_ids=[tokenizer.eos_token_id, 5],
        pad_token_id=tokenizer.pad_token_id,
        temperature=0.8,
    )
    options.update(kwargs)
    return generate(model, ids, mask, generator=torch.Generator().manual_seed(seed), **options)


# Two computation paths (the fused decode step and the module tree, a compacted batch and a full
# one, this engine and `model.generate`) give logits that differ in the last bits, and which bits
# depends on the CPU's vector width. A token drawn from such logits is the same on both paths
# except where the draw sits on a near-tie, which either path may break its own way. So the ids
# are compared up to their first difference, which must be a near-tie, and every token of each
# path must be what its own teacher-forced forward pass chooses, or a near-tie of that choice.
NEAR_TIE = 1e-4
"""A near-tie: greedy, two logits within NEAR_TIE * max(1, max |logit|); sampled, a CDF edge
within NEAR_TIE of the drawn uniform (the paths' logits agree to about 1e-6 on the tiny model)."""


def seeded_uniforms(seed: int, batch: int, steps: int) -> torch.Tensor:
    """(steps, batch) the uniforms `generate` draws with `torch.Generator().manual_seed(seed)`:
    one per row of the whole batch at every step."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(batch, generator=generator) for _ in range(steps)])


def teacher_forced_logits(model, prompt_ids, prompt_mask, response_ids, lengths) -> torch.Tensor:
    """(batch, response_len, vocab) float32 logits that choose each response token, from one
    forward pass over prompt + response without a cache (`lengths`: response tokens per row)."""
    response_mask = torch.arange(response_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    mask = torch.cat([prompt_mask.bool(), response_mask], dim=1)
    with torch.no_grad():
        logits = model(
            input_ids=torch.cat([prompt_ids, response_ids], dim=1),
            attention_mask=mask.long(),
            position_ids=positions_from_mask(mask),
        ).logits
    # position t predicts token t+1: the response's logits start at the prompt's last token
    return logits[:, prompt_ids.shape[1] - 1 : -1].float()


def rollout_logits(model, rollout) -> torch.Tensor:
    """`teacher_forced_logits` of an `engine.Rollout`'s own prompts and responses."""
    return teacher_forced_logits(
        model,
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.response_ids,
        rollout.response_lengths,
    )


def acceptable_tokens(logits, uniforms=None, temperature=1.0) -> torch.Tensor:
    """(..., vocab) bool: the tokens a draw from `logits` (..., vocab) may return when the logits
    it saw differ from these in the last bits. Greedy (`uniforms` None): the argmax and every
    token within a near-tie of it. Sampled by inverting the CDF of softmax(logits / temperature)
    at `uniforms` (...,), as `engine._choose` without top-k / top-p: the token whose CDF interval
    holds the draw, and a neighbour whose interval edge lies within NEAR_TIE of it."""
    if uniforms is None:
        top = logits.max(dim=-1, keepdim=True).values
        scale = logits.abs().max(dim=-1, keepdim=True).values.clamp(min=1.0)
        return logits >= top - NEAR_TIE * scale
    probs = (logits / temperature).softmax(dim=-1)
    upper = probs.cumsum(dim=-1)
    target = (uniforms * upper[..., -1]).unsqueeze(-1)
    return (upper - probs - NEAR_TIE <= target) & (target < upper + NEAR_TIE)


def assert_paths_agree(model, prompt_ids, prompt_mask, paths, uniforms=None, temperature=1.0):
    """Two paths' responses to the same prompts are the same tokens up to near-ties.

    Args:
        prompt_ids, prompt_mask: (batch, prompt_len) the left-padded prompts of every row.
        paths: {name: (response_ids (batch, width), lengths (batch,), logprobs (batch, width) or
            None)} for exactly two paths; logprobs are those of softmax(logits / temperature).
        uniforms: (steps, batch) the draws of a sampled generation (`seeded_uniforms`);
            None = greedy.
    Per row, the ids are equal up to the first position where they differ, the two tokens there
    are both acceptable under the shared prefix's logits (a near-tie), the log-probs agree to
    1e-5 before it, and without a difference the lengths are equal. Each path's every token is
    acceptable under its own teacher-forced logits, and its log-probs equal theirs to 1e-5.
    """
    checked = {}
    for name, (ids, lengths, logprobs) in paths.items():
        reference = teacher_forced_logits(model, prompt_ids, prompt_mask, ids, lengths)
        draws = None if uniforms is None else uniforms[: ids.shape[1]].T
        ok = acceptable_tokens(reference, draws, temperature).gather(-1, ids.unsqueeze(-1))[..., 0]
        for row, length in enumerate(lengths.tolist()):
            bad = (~ok[row, :length]).nonzero().flatten().tolist()
            assert not bad, f"{name}: row {row} step {bad[0]}: not the reference's choice"
        if logprobs is not None:
            fresh = (reference / temperature).log_softmax(dim=-1).gather(-1, ids.unsqueeze(-1))
            counted = torch.arange(ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
            diff = (fresh[..., 0] - logprobs)[counted].abs().max()
            assert diff < 1e-5, f"{name}: log-probs off the reference by {diff}"
        checked[name] = (ids, lengths, logprobs, reference, draws)
    (ids_a, len_a, lp_a, reference, draws), (ids_b, len_b, lp_b, _, _) = checked.values()
    for row in range(ids_a.shape[0]):
        shared = min(int(len_a[row]), int(len_b[row]))
        differ = (ids_a[row, :shared] != ids_b[row, :shared]).nonzero().flatten().tolist()
        if not differ:
            assert len_a[row] == len_b[row], f"row {row}: same tokens, other lengths"
        first = differ[0] if differ else shared
        if lp_a is not None and lp_b is not None:
            assert torch.allclose(lp_a[row, :first], lp_b[row, :first], atol=1e-5)
        if differ:
            step = reference[row, first]
            tied = acceptable_tokens(
                step, None if draws is None else draws[row, first], temperature
            )
            tokens = (int(ids_a[row, first]), int(ids_b[row, first]))
            assert tied[list(tokens)].all(), f"row {row} step {first}: {tokens} are no near-tie"


def tiny_family_model(config_class, model_class, **settings):
    """A randomly initialised 2-layer model of any transformers family (4 query heads on 2
    key/value heads), in eval mode."""
    torch.manual_seed(0)
    sizes = dict(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        max_position_embeddings=128,
    )
    return model_class(config_class(**{**sizes, **settings})).eval()


def lora_with_weights(model):
    """LoRA adapters whose B is not zero (fresh ones are), so they change every output."""
    lora = add_lora(model, r=4, alpha=8)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return lora.eval()
