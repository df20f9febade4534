import math

import pytest
import torch

from rlhfkit.objectives.preference import DPOLoss
from rlhfkit.train.dpo_losses import batch_loss_fn


def two_pairs() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Two groups of two responses (chosen first); chosen lengths 2 and 4 tokens."""
    logprobs = torch.tensor([-2.0, -3.0, -8.0, -6.0])
    ref_logprobs = torch.tensor([-2.5, -2.5, -7.0, -7.0])
    response_mask = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool
    )
    batch = {
        "winners": torch.tensor([0, 2]),
        "losers": torch.tensor([1, 3]),
        "pair_weights": torch.tensor([1.0, 1.0]),
        "best": torch.tensor([0, 2]),
        "response_mask": response_mask,
    }
    return logprobs, ref_logprobs, batch


def test_the_nll_term_adds_the_best_responses_per_token_nll():
    logprobs, ref_logprobs, batch = two_pairs()
    plain = batch_loss_fn(DPOLoss.SIGMOID, beta=0.5, label_smoothing=0.0)
    with_nll = batch_loss_fn(DPOLoss.SIGMOID, beta=0.5, label_smoothing=0.0, nll_weight=2.0)
    # margins h: (-2 + 2.5) - (-3 + 2.5) = 1 and (-8 + 7) - (-6 + 7) = -2
    dpo = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(1.0)))) / 2
    nll = (2.0 / 2 + 8.0 / 4) / 2  # per-token NLL of each group's best, mean over the 2 groups
    assert plain(logprobs, ref_logprobs, batch, 2).item() == pytest.approx(dpo, rel=1e-6)
    assert with_nll(logprobs, ref_logprobs, batch, 2).item() == pytest.approx(
        dpo + 2.0 * nll, rel=1e-6
    )


def test_the_nll_term_pulls_only_the_best_responses_up():
    logprobs, ref_logprobs, batch = two_pairs()
    logprobs.requires_grad_(True)
    nll_only = batch_loss_fn(DPOLoss.SIGMOID, beta=0.5, label_smoothing=0.0, nll_weight=1.0)
    plain = batch_loss_fn(DPOLoss.SIGMOID, beta=0.5, label_smoothing=0.0)
    (grad_with,) = torch.autograd.grad(nll_only(logprobs, ref_logprobs, batch, 2), logprobs)
    (grad_plain,) = torch.autograd.grad(plain(logprobs, ref_logprobs, batch, 2), logprobs)
    # d/d logprob of -logprob / (length * groups): -1/4 and -1/8 on the best, 0 elsewhere
    expected = torch.tensor([-0.25, 0.0, -0.125, 0.0])
    assert torch.allclose(grad_with - grad_plain, expected, atol=1e-6)
