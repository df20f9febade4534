from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.aggregate import LossAggregation
from rlhfkit.objectives.selection import (
    Selection,
    best_of_k,
    binary_coefficients,
    rft_loss,
    select_responses,
    top_fraction,
)
from rlhfkit.objectives.sft import sft_loss

# three prompts, three responses each; prompt 1 has a tie for its best, prompt 2 is all wrong
REWARDS = torch.tensor([0.2, 0.9, 0.1, 1.0, 0.0, 1.0, 0.0, 0.3, 0.3])


def test_best_of_k_hand_values():
    got = best_of_k(REWARDS, 3)
    assert got.tolist() == [False, True, False, True, False, False, False, True, False]
    assert best_of_k(REWARDS, 9).tolist() == [False] * 3 + [True] + [False] * 5
    assert best_of_k(REWARDS, 1).all()  # best of one: every sample is its prompt's best
    with pytest.raises(ValueError, match="9 responses cannot be split into groups of 2"):
        best_of_k(REWARDS, 2)


def test_top_fraction_hand_values():
    # 9 * 0.34 = 3.06 -> 3 kept: the two 1.0s and the 0.9
    assert top_fraction(REWARDS, 0.34).nonzero().squeeze(1).tolist() == [1, 3, 5]
    # 9 * 0.5 = 4.5 -> 4: at the cut the two 0.3s tie and the earlier one is kept
    assert top_fraction(REWARDS, 0.5).nonzero().squeeze(1).tolist() == [1, 3, 5, 7]
    assert top_fraction(REWARDS, 0.01).nonzero().squeeze(1).tolist() == [3]  # at least one
    assert top_fraction(REWARDS, 1.0).all()
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            top_fraction(REWARDS, bad)


def test_top_fraction_keeps_at_least_one_and_rounds_half_to_even_as_documented():
    ten = torch.arange(10.0)
    kept = {f: int(top_fraction(ten, f).sum()) for f in (0.25, 0.35, 0.45, 0.01)}
    # 2.5 -> 2, 3.5 -> 4, 4.5 -> 4 (Python's round), 0.1 -> 1 (never none)
    assert kept == {0.25: 2, 0.35: 4, 0.45: 4, 0.01: 1}
    # docs/raft.md says the same, not a bare round(f * n)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "raft.md").read_text()
    assert "keep the max(1, round(f * n)) highest rewards" in doc
    assert "f * n = 2.5 keeps 2, 3.5 keeps 4" in doc


def test_threshold_drops_selected_but_wrong_responses():
    best = select_responses(REWARDS, Selection.BEST_OF_K, 3, 1.0, correct=REWARDS > 0.5)
    # prompt 2's best (0.3) is wrong: it contributes nothing
    assert best.nonzero().squeeze(1).tolist() == [1, 3]
    # keep_fraction 1 with a threshold: every correct sample (rejection-sampling fine-tuning)
    every_correct = select_responses(REWARDS, "top_fraction", 3, 1.0, correct=REWARDS > 0.5)
    assert every_correct.nonzero().squeeze(1).tolist() == [1, 3, 5]
    assert torch.equal(
        select_responses(REWARDS, Selection.BEST_OF_K, 3, 1.0, None), best_of_k(REWARDS, 3)
    )


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 6))
def test_best_of_k_keeps_each_groups_maximum(seed, prompts, group_size):
    rewards = torch.randint(
        0, 3, (prompts * group_size,), generator=torch.Generator().manual_seed(seed)
    ).float()
    kept = best_of_k(rewards, group_size)
    grouped, kept_grouped = rewards.reshape(prompts, group_size), kept.reshape(prompts, group_size)
    assert kept_grouped.sum(dim=1).tolist() == [1] * prompts
    assert torch.equal(grouped[kept_grouped], grouped.max(dim=1).values)
    # the kept mean is never below the sampled mean
    assert rewards[kept].mean() >= rewards.mean() - 1e-6


def test_binary_coefficients_hand_values():
    correct = torch.tensor([1.0, 0.0, 0.5, 0.7]) > 0.5  # 0.5 is not above 0.5
    assert binary_coefficients(correct).tolist() == [1.0, -1.0, -1.0, 1.0]
    assert binary_coefficients(correct, wrong=0.0).tolist() == [1.0, 0.0, 0.0, 1.0]
    # no group normalisation: the coefficient of a response ignores the other responses
    assert binary_coefficients(torch.ones(4, dtype=torch.bool)).tolist() == [1.0] * 4


def test_rft_loss_hand_values():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    coefficients = torch.tensor([1.0, -1.0])
    # row 0: -(+1)(-1 - 2) = 3 over 2 tokens; row 1: -(-1)(-1.5) = -1.5 over 3 tokens
    assert rft_loss(
        logprobs, coefficients, mask, LossAggregation.TOKEN_MEAN, 5
    ).item() == pytest.approx(1.5 / 5)
    assert rft_loss(
        logprobs, coefficients, mask, LossAggregation.SEQUENCE_MEAN, 2
    ).item() == pytest.approx((1.5 - 0.5) / 2)
    assert (
        rft_loss(logprobs, torch.tensor([0.0, 0.0]), mask, LossAggregation.TOKEN_MEAN, 5).item()
        == 0.0
    )


def test_rft_loss_gradient_raises_correct_and_lowers_incorrect_logprobs():
    logprobs = torch.full((2, 2), -1.0, requires_grad=True)
    mask = torch.ones(2, 2, dtype=torch.bool)
    rft_loss(logprobs, torch.tensor([1.0, -1.0]), mask, LossAggregation.TOKEN_MEAN, 4).backward()
    # gradient descent moves against the gradient: up for the correct row, down for the wrong one
    assert logprobs.grad.tolist() == [[-0.25, -0.25], [0.25, 0.25]]


def test_rft_loss_with_unit_coefficients_is_the_sft_loss():
    vocab, prompt_len = 7, 3
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, vocab, generator=generator)
    input_ids = torch.randint(0, vocab, (2, 6), generator=generator)
    response_mask = torch.tensor([[True, True, False], [True, True, True]])
    full_mask = torch.cat([torch.zeros(2, prompt_len, dtype=torch.bool), response_mask], dim=1)
    # logits at position t score token t + 1: the response's log-probs come from positions 2..4
    logprobs = (
        logits[:, prompt_len - 1 : -1]
        .log_softmax(-1)
        .gather(-1, input_ids[:, prompt_len:, None])
        .squeeze(-1)
    )
    got = rft_loss(logprobs, torch.ones(2), response_mask, LossAggregation.TOKEN_MEAN, 5)
    assert got.item() == pytest.approx(sft_loss(logits, input_ids, full_mask, 5).item())
