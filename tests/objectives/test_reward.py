import math

import pytest
import torch

from rlhfkit.objectives.reward import bradley_terry_loss, process_reward_loss, reward_centering_loss


def naive_bradley_terry(chosen, rejected, weights, denominator, margins=None):
    diff = chosen - rejected
    if margins is not None:
        diff = diff - margins
    return (weights * -torch.log(torch.sigmoid(diff))).sum() / denominator


def bt(chosen, rejected, weights=None, denominator=1.0, margins=None):
    chosen, rejected = torch.tensor(chosen), torch.tensor(rejected)
    weights = torch.ones_like(chosen) if weights is None else torch.tensor(weights)
    margins = None if margins is None else torch.tensor(margins)
    return bradley_terry_loss(chosen, rejected, weights, denominator, margins).item()


def test_hand_values():
    assert bt([1.0], [0.0]) == pytest.approx(0.3132617, abs=1e-7)  # log(1 + e^-1)
    assert bt([0.0], [1.0]) == pytest.approx(1.3132617, abs=1e-7)  # log(1 + e^1)
    assert bt([2.0], [2.0]) == pytest.approx(math.log(2.0), abs=1e-7)


def test_margin_is_subtracted_from_the_difference():
    # r_w - r_l - m = 1 - 0.5
    assert bt([1.0], [0.0], margins=[0.5]) == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-7)
    assert bt([1.0], [0.0], margins=[1.0]) == pytest.approx(math.log(2.0), abs=1e-7)
    assert bt([1.0], [0.0], margins=[0.0]) == pytest.approx(bt([1.0], [0.0]))


def test_weights_and_denominator():
    got = bt([1.0, 0.0], [0.0, 1.0], weights=[0.5, 2.0], denominator=4.0)
    assert got == pytest.approx((0.5 * 0.3132617 + 2.0 * 1.3132617) / 4.0, abs=1e-6)
    # a zero weight removes the pair
    assert bt([1.0, 0.0], [0.0, 1.0], weights=[1.0, 0.0]) == pytest.approx(0.3132617, abs=1e-7)


def test_two_dimensional_heads_with_margins_broadcast_over_heads():
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = (
        torch.randn(5, 3, generator=generator),
        torch.randn(5, 3, generator=generator),
    )
    weights = torch.rand(5, 3, generator=generator)
    margins = torch.rand(5, generator=generator)
    got = bradley_terry_loss(chosen, rejected, weights, 7.0, margins)
    per_head = sum(
        bradley_terry_loss(chosen[:, h], rejected[:, h], weights[:, h], 7.0, margins)
        for h in range(3)
    )
    assert torch.allclose(got, per_head, atol=1e-6)
    assert torch.allclose(
        got, naive_bradley_terry(chosen, rejected, weights, 7.0, margins[:, None]), atol=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_naive_minus_log_sigmoid(seed):
    generator = torch.Generator().manual_seed(seed)
    chosen, rejected = (
        torch.randn(20, generator=generator) * 3,
        torch.randn(20, generator=generator) * 3,
    )
    weights, margins = torch.rand(20, generator=generator), torch.rand(20, generator=generator)
    got = bradley_terry_loss(chosen, rejected, weights, 20, margins)
    assert torch.allclose(
        got, naive_bradley_terry(chosen, rejected, weights, 20, margins), atol=1e-6
    )


@pytest.mark.parametrize("diff", [-100.0, -1000.0])
def test_numerically_stable_for_very_wrong_pairs(diff):
    chosen = torch.tensor([diff], requires_grad=True)
    loss = bradley_terry_loss(chosen, torch.tensor([0.0]), torch.ones(1), 1.0)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(-diff, rel=1e-6)
    assert chosen.grad.item() == pytest.approx(-1.0)  # d/dx -log sigmoid(x) = -sigmoid(-x)


def test_reward_centering_loss():
    rewards = torch.tensor([1.0, 2.0, -3.0])
    assert reward_centering_loss(rewards, 3).item() == pytest.approx(14.0 / 3)
    assert reward_centering_loss(rewards.reshape(3, 1), 1.0).item() == pytest.approx(14.0)
    assert reward_centering_loss(torch.zeros(4, 2), 8).item() == 0.0


def test_process_reward_loss_hand_values_with_padded_steps():
    step_logits = torch.tensor([[0.0, math.log(3.0), 5.0], [-math.log(3.0), 9.0, -9.0]])
    step_labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    step_mask = torch.tensor([[True, True, True], [True, False, False]])  # row 1: one real step
    # BCE: -log sigmoid(0) = log 2; -log sigmoid(ln 3) = log 4/3;
    # -log(1 - sigmoid(5)) = log(1 + e^5); -log(1 - sigmoid(-ln 3)) = log 4/3.
    # The two padded steps (loss ~9 each) must not count.
    expected = (math.log(2.0) + 2 * math.log(4.0 / 3.0) + math.log1p(math.exp(5.0))) / 4
    assert process_reward_loss(step_logits, step_labels, step_mask, 4).item() == pytest.approx(
        expected, abs=1e-6
    )
    all_real = process_reward_loss(step_logits, step_labels, torch.ones_like(step_mask), 6).item()
    assert all_real > expected + 1.0
