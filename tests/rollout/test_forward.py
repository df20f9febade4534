from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.reward import RewardModel
from rlhfkit.rollout.forward import response_logprobs, response_values
from tests.rollout.conftest import generate_samples, lora_with_weights


def test_response_logprobs_of_the_training_pass_equal_the_sampling_logprobs(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rollout = generate_samples(model, tokenizer, temperature=1.3)
    out = response_logprobs(
        model,
        rollout.input_ids,
        rollout.attention_mask,
        rollout.response_ids.shape[1],
        temperature=1.3,
        with_entropy=True,
    )
    assert out.logprobs.requires_grad
    diff = (out.logprobs.detach() - rollout.logprobs)[rollout.response_mask].abs().max()
    assert diff < 1e-5
    assert (out.entropy[rollout.response_mask] > 0).all()
    assert (out.entropy <= torch.log(torch.tensor(300.0)) + 1e-4).all()  # at most log(vocab)


def _logprobs_and_grads(model, rollout, **kwargs):
    out = response_logprobs(
        model, rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1], **kwargs
    )
    # a loss that weighs every response token differently, so every gradient path counts
    weights = (
        torch.linspace(0.5, 1.5, out.logprobs.numel()).view_as(out.logprobs) * rollout.response_mask
    )
    (out.logprobs * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


def test_prompts_shared_by_a_group_run_once_with_the_same_logprobs_and_gradients(
    model_and_tokenizer,
):
    model, tokenizer = model_and_tokenizer
    rollout = generate_samples(model, tokenizer, num_samples=4, temperature=1.0, max_new_tokens=16)
    model.train()
    try:
        plain, plain_grads = _logprobs_and_grads(model, rollout, temperature=1.3, with_entropy=True)
        shared, shared_grads = _logprobs_and_grads(
            model, rollout, temperature=1.3, with_entropy=True, group_size=4
        )
    finally:
        model.eval()
    mask = rollout.response_mask
    assert (plain.logprobs.detach() - shared.logprobs.detach())[mask].abs().max() < 1e-5
    assert (plain.entropy - shared.entropy)[mask].abs().max() < 1e-5
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, shared_grads[name], rtol=1e-4, atol=1e-6), name


def test_rows_that_do_not_share_their_group_prompt_take_the_plain_path(
    model_and_tokenizer, monkeypatch
):
    from rlhfkit.rollout import forward

    model, tokenizer = model_and_tokenizer
    rollout = generate_samples(model, tokenizer, num_samples=2, max_new_tokens=8)
    groups = []
    original = forward._response_states
    monkeypatch.setattr(
        forward, "_response_states", lambda *a, **k: groups.append(a[4]) or original(*a, **k)
    )
    with torch.no_grad():
        # 3 prompts x 2 samples: groups of 3 rows would mix two prompts
        out = response_logprobs(
            model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.response_ids.shape[1],
            group_size=3,
        )
        plain = response_logprobs(
            model, rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1]
        )
    assert groups == [1, 1]
    assert torch.equal(out.logprobs, plain.logprobs)


@pytest.mark.parametrize("adapters", [False, True])
@pytest.mark.parametrize("chunked_head", [True, False])
def test_the_linear_head_and_the_models_own_logits_agree(
    model_and_tokenizer, tiny_model_dir, monkeypatch, adapters, chunked_head
):
    """Models with a linear head run their decoder and apply the head to its hidden states, to
    large logits chunk by chunk (`head_logprobs`), a LoRA model too (its adapters live in the
    decoder); any other model (here the same one, told apart by hand) goes through its own
    logits: the same values, entropies and gradients."""
    from rlhfkit.rollout import forward

    model, tokenizer = model_and_tokenizer
    if adapters:
        model = lora_with_weights(load_causal_lm(tiny_model_dir))
    rollout = generate_samples(model, tokenizer, num_samples=4, temperature=1.0, max_new_tokens=16)
    model.train()
    try:
        if chunked_head:  # the tiny rollout's logits are small
            monkeypatch.setattr(forward, "CHUNKED_HEAD_MIN_LOGITS", 0)
        chunked, chunked_grads = _logprobs_and_grads(
            model, rollout, temperature=0.9, with_entropy=True, group_size=4
        )
        monkeypatch.setattr(forward, "linear_head", lambda model: None)
        logits, logits_grads = _logprobs_and_grads(
            model, rollout, temperature=0.9, with_entropy=True, group_size=4
        )
    finally:
        model.eval()
    mask = rollout.response_mask
    assert (chunked.logprobs.detach() - logits.logprobs.detach())[mask].abs().max() < 1e-5
    assert (chunked.entropy - logits.entropy)[mask].abs().max() < 1e-5
    assert logits_grads.keys() == chunked_grads.keys()
    assert adapters == all("lora" in name for name in logits_grads)
    for name, grad in logits_grads.items():
        assert torch.allclose(grad, chunked_grads[name], rtol=1e-4, atol=1e-6), name


def test_under_bf16_autocast_the_chunked_head_agrees_with_the_full_logits(
    model_and_tokenizer, monkeypatch
):
    """The chunked head also serves autocast runs (it used to fall back to the full logits
    there): bf16 matmuls, float32 reductions, to bf16 tolerance of the full-logits path."""
    from rlhfkit.rollout import forward

    model, tokenizer = model_and_tokenizer
    rollout = generate_samples(model, tokenizer, num_samples=4, temperature=1.0, max_new_tokens=16)
    calls = []
    real = forward.head_logprobs

    def counting(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    model.train()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            monkeypatch.setattr(forward, "head_logprobs", counting)
            monkeypatch.setattr(forward, "CHUNKED_HEAD_MIN_LOGITS", 0)
            chunked, chunked_grads = _logprobs_and_grads(model, rollout, temperature=0.9)
            monkeypatch.setattr(forward, "linear_head", lambda model: None)
            logits, logits_grads = _logprobs_and_grads(model, rollout, temperature=0.9)
    finally:
        model.eval()
    assert calls == [torch.bfloat16]  # the chunked path ran, in bf16
    mask = rollout.response_mask
    assert (chunked.logprobs.detach() - logits.logprobs.detach())[mask].abs().max() < 5e-2
    for name, grad in logits_grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (grad - chunked_grads[name]).abs().max() / scale < 5e-2, name


class ColumnBackbone(nn.Module):
    """Hidden state = the column index: the critic's value at a position is its index."""

    def forward(self, input_ids, attention_mask, position_ids):
        columns = torch.arange(input_ids.shape[1], dtype=torch.float).expand(input_ids.shape)
        return SimpleNamespace(last_hidden_state=columns.unsqueeze(-1))


class ColumnCritic(nn.Module):
    """A one-head classifier (the shape `RewardModel` wraps) whose head is the identity."""

    base_model_prefix = "body"

    def __init__(self):
        super().__init__()
        self.body = ColumnBackbone()
        self.score = nn.Linear(1, 1)
        with torch.no_grad():
            self.score.weight.fill_(1.0)
            self.score.bias.zero_()
        self.config = SimpleNamespace(num_labels=1, pad_token_id=0)


def test_response_values_read_the_critic_at_the_position_that_predicts_each_token():
    critic = RewardModel(ColumnCritic())
    # 3 prompt columns (the second row left-padded), 3 response columns (its last one padding)
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 6, 7, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    values = response_values(critic, input_ids, mask, response_len=3)
    # V(s_t) for response token t (column 3 + t) is read at column 2 + t: the prompt's last
    # token gives V(s_0), and the last response token predicts nothing, so it is never read
    expected = torch.tensor([[2.0, 3.0, 4.0], [2.0, 3.0, 4.0]])
    assert values.dtype == torch.float32
    assert torch.allclose(values, expected, atol=1e-6)
