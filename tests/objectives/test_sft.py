import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.objectives.sft import sft_loss

# Two rows of six tokens: row 0 has a 3-token prompt, 2 response tokens, 1 padding;
# row 1 has a 2-token prompt and 4 response tokens. True = a response token.
INPUT_IDS = torch.tensor([[5, 6, 7, 1, 2, 0], [8, 9, 3, 4, 1, 2]])
RESPONSE_MASK = torch.tensor(
    [[False, False, False, True, True, False], [False, False, True, True, True, True]]
)
VOCAB = 10
NUM_TARGETS = 6  # response tokens at positions >= 1


def naive_sft_loss(logits, input_ids, response_mask):
    """Per-token cross-entropy of every next token, averaged over the counted ones."""
    losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).reshape(input_ids.shape[0], -1)
    mask = response_mask[:, 1:]
    return losses[mask].sum() / mask.sum()


def test_uniform_logits_cost_log_vocab_per_counted_token():
    logits = torch.zeros(2, 6, VOCAB)
    assert sft_loss(logits, INPUT_IDS, RESPONSE_MASK, NUM_TARGETS).item() == pytest.approx(
        math.log(VOCAB)
    )
    # denominator 1: the plain sum over the 6 counted tokens
    assert sft_loss(logits, INPUT_IDS, RESPONSE_MASK, 1.0).item() == pytest.approx(
        NUM_TARGETS * math.log(VOCAB)
    )


def test_equals_naive_cross_entropy_on_random_logits():
    logits = torch.randn(2, 6, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    got = sft_loss(logits, INPUT_IDS, RESPONSE_MASK, NUM_TARGETS)
    assert torch.allclose(got, naive_sft_loss(logits, INPUT_IDS, RESPONSE_MASK), atol=1e-6)


def test_prompt_and_padding_positions_do_not_count():
    logits = torch.zeros(2, 6, VOCAB)
    base = sft_loss(logits, INPUT_IDS, RESPONSE_MASK, NUM_TARGETS)
    # logits at position t predict token t + 1: positions whose next token is prompt or padding
    not_counted = ~RESPONSE_MASK[:, 1:]
    perturbed = logits.clone()
    perturbed[:, :-1][not_counted] = torch.randn(int(not_counted.sum()), VOCAB) * 10
    perturbed[:, -1] = 50.0  # the last position predicts nothing
    assert torch.allclose(sft_loss(perturbed, INPUT_IDS, RESPONSE_MASK, NUM_TARGETS), base)
    # while a counted position does change the loss
    counted = logits.clone()
    counted[0, 3, 2] = 5.0  # position 3 predicts token 4 (id 2), a response token
    assert sft_loss(counted, INPUT_IDS, RESPONSE_MASK, NUM_TARGETS) < base


def test_split_batch_with_global_denominator_equals_whole_batch():
    """Gradient accumulation: micro-batch losses divided by the whole batch's token count add
    up to the whole-batch loss, and so do their gradients."""
    logits = (
        torch.randn(2, 6, VOCAB, generator=torch.Generator().manual_seed(1)) * 2
    ).requires_grad_()
    whole = sft_loss(logits, INPUT_IDS, RESPONSE_MASK, NUM_TARGETS)
    (whole_grad,) = torch.autograd.grad(whole, logits)
    parts = sum(
        sft_loss(logits[i : i + 1], INPUT_IDS[i : i + 1], RESPONSE_MASK[i : i + 1], NUM_TARGETS)
        for i in range(2)
    )
    (parts_grad,) = torch.autograd.grad(parts, logits)
    assert torch.allclose(parts, whole, atol=1e-6)
    assert torch.allclose(parts_grad, whole_grad, atol=1e-7)
    # the per-micro-batch token mean (2 and 4 tokens) weighs the rows differently
    local_means = (
        sum(
            sft_loss(
                logits[i : i + 1],
                INPUT_IDS[i : i + 1],
                RESPONSE_MASK[i : i + 1],
                RESPONSE_MASK[i, 1:].sum(),
            )
            for i in range(2)
        )
        / 2
    )
    assert not torch.allclose(local_means, whole, atol=1e-3)
