import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.preference import (
    DPOLoss,
    dpo_loss,
    dpo_losses,
    implicit_reward_scale,
    implicit_rewards,
    pair_outcomes,
    plackett_luce_dpo_loss,
    plackett_luce_dpo_losses,
    plackett_luce_nll,
    preference_accuracy,
    reward_margins,
)

LN2 = math.log(2.0)
logprob = st.floats(-60.0, 0.0)


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def pair_loss(w, lo, ref_w, ref_l, beta=0.1, loss_type=DPOLoss.SIGMOID, eps=0.0) -> float:
    return dpo_losses(
        t(w), t(lo), t(ref_w), t(ref_l), beta=beta, loss_type=loss_type, label_smoothing=eps
    ).item()


def naive_dpo(w, lo, ref_w, ref_l, beta):
    """The DPO paper's equation as written."""
    return -torch.log(torch.sigmoid(beta * (w - ref_w) - beta * (lo - ref_l)))


def naive_plackett_luce(scores: list[float], ranks: list[int]) -> float:
    """Position by position over responses sorted best first; a tied response's choice set is
    everything not ranked strictly better (Breslow)."""
    total = 0.0
    for i, rank in enumerate(ranks):
        choice = [s for s, r in zip(scores, ranks) if r >= rank]
        total += math.log(sum(math.exp(s) for s in choice)) - scores[i]
    return total


def pl(scores, ranks, mask=None) -> float:
    scores = torch.tensor([scores], dtype=torch.float64)
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else torch.tensor([mask])
    return plackett_luce_nll(scores, torch.tensor([ranks]), mask).item()


# --- pairwise: hand values ---------------------------------------------------------------------


def test_sigmoid_hand_value():
    # beta = 0.1; log-ratios: chosen -10 - (-12) = 2, rejected -15 - (-14) = -1, so h = 3 and
    # the loss is -log sigmoid(0.3) = log(1 + e^-0.3) = 0.5543552
    assert pair_loss(-10.0, -15.0, -12.0, -14.0) == pytest.approx(0.5543552, abs=1e-7)


def test_label_smoothing_hand_value():
    # 0.9 * log(1 + e^-0.3) + 0.1 * log(1 + e^0.3) = log(1 + e^-0.3) + 0.1 * 0.3 = 0.5843552
    assert pair_loss(-10.0, -15.0, -12.0, -14.0, eps=0.1) == pytest.approx(0.5843552, abs=1e-7)


def test_ipo_hand_values():
    # h = 3; target 1 / (2 beta): beta 0.1 -> (3 - 5)^2 = 4; beta 0.25 -> (3 - 2)^2 = 1;
    # beta 1/6 -> 0
    assert pair_loss(-10.0, -15.0, -12.0, -14.0, beta=0.1, loss_type=DPOLoss.IPO) == pytest.approx(
        4.0
    )
    assert pair_loss(-10.0, -15.0, -12.0, -14.0, beta=0.25, loss_type="ipo") == pytest.approx(1.0)
    assert pair_loss(
        -10.0, -15.0, -12.0, -14.0, beta=1 / 6, loss_type=DPOLoss.IPO
    ) == pytest.approx(0.0, abs=1e-12)


def test_policy_equal_to_reference():
    # h = 0: sigmoid gives log 2; IPO gives (1 / (2 beta))^2
    assert pair_loss(-7.0, -9.0, -7.0, -9.0) == pytest.approx(LN2)
    assert pair_loss(-7.0, -9.0, -7.0, -9.0, eps=0.3) == pytest.approx(LN2)
    assert pair_loss(-7.0, -9.0, -7.0, -9.0, beta=0.1, loss_type=DPOLoss.IPO) == pytest.approx(25.0)


def test_implicit_rewards_margins_and_accuracy():
    rewards = implicit_rewards(t(-10.0, -15.0), t(-12.0, -14.0), 0.1)
    assert torch.allclose(rewards, t(0.2, -0.1))
    assert torch.allclose(reward_margins(t(0.2, 0.0, -1.0), t(-0.1, 0.0, 1.0)), t(0.3, 0.0, -2.0))
    # right, tie (one half), wrong
    assert preference_accuracy(t(0.2, 0.0, -1.0), t(-0.1, 0.0, 1.0)).item() == pytest.approx(0.5)
    assert preference_accuracy(t(1.0, 2.0), t(0.0, 1.0)).item() == 1.0


def test_a_margin_within_the_tie_tolerance_is_a_tie():
    # tolerance = 1e-5 + 1e-6 * (|r_w| + |r_l|): 1e-5 for rewards near 0, 1e-5 + 2e-6 at (1, 1)
    chosen = t(1.0, 0.0, 8e-6, -8e-6, 1.0 + 1.1e-5, 1.0 + 1.3e-5, 0.2)
    rejected = t(0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.3)
    assert pair_outcomes(chosen, rejected).tolist() == [1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 0.0]
    assert preference_accuracy(chosen, rejected).item() == pytest.approx(4.0 / 7.0)


def test_rounding_of_equal_policy_and_reference_log_probs_is_a_tie():
    # the same sequence log-prob from two paths, one float32 ulp apart (2.4e-4 at 3000 nats):
    # the implicit reward margins are +-2.4e-5, past the absolute tolerance alone
    logprobs = torch.tensor([-3000.0, -3000.0], dtype=torch.float32)
    ref = torch.nextafter(logprobs, torch.tensor([-4000.0, 0.0]))
    rewards = implicit_rewards(logprobs, ref, beta=0.1)
    assert rewards.tolist() == pytest.approx([2.44140625e-5, -2.44140625e-5])
    # scale per pair: 0.1 * (3000 + 3000) for each response, 1200 in all -> tolerance 1.21e-3
    scale = implicit_reward_scale(logprobs, ref, 0.1)
    assert scale.tolist() == pytest.approx([600.0, 600.0])
    assert preference_accuracy(rewards[:1], rewards[1:], scale=scale[:1] + scale[1:]).item() == 0.5
    assert preference_accuracy(rewards[1:], rewards[:1], scale=scale[:1] + scale[1:]).item() == 0.5
    # without the log-probs' scale the noise would decide: a win one way, a loss the other
    assert preference_accuracy(rewards[:1], rewards[1:]).item() == 1.0
    assert preference_accuracy(rewards[1:], rewards[:1]).item() == 0.0


@given(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0), st.floats(0.0, 1e3))
def test_pair_outcomes_equal_the_naive_rule(chosen, rejected, scale):
    tolerance = 1e-5 + 1e-6 * scale
    margin = chosen - rejected
    naive = 1.0 if margin > tolerance else 0.5 if margin >= -tolerance else 0.0
    assert pair_outcomes(t(chosen), t(rejected), scale=t(scale)).item() == naive


def test_weights_and_denominator():
    chosen, rejected, ref_chosen, ref_rejected = (
        t(-10.0, -5.0),
        t(-15.0, -5.0),
        t(-12.0, -5.0),
        t(-14.0, -5.0),
    )
    got = dpo_loss(
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        beta=0.1,
        loss_type=DPOLoss.SIGMOID,
        label_smoothing=0.0,
        weights=t(0.5, 2.0),
        denominator=4.0,
    )
    assert got.item() == pytest.approx((0.5 * 0.5543552 + 2.0 * LN2) / 4.0, abs=1e-7)


def test_unsupported_variants_raise():
    with pytest.raises(ValueError, match="sigmoid loss only"):
        pair_loss(-1.0, -2.0, -1.0, -2.0, loss_type=DPOLoss.IPO, eps=0.1)
    with pytest.raises(ValueError, match="plackett_luce_dpo_losses"):
        pair_loss(-1.0, -2.0, -1.0, -2.0, loss_type=DPOLoss.PLACKETT_LUCE)
    with pytest.raises(ValueError):
        pair_loss(-1.0, -2.0, -1.0, -2.0, loss_type="hinge")


# --- pairwise: naive form, properties, gradients -----------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_label_smoothing_zero_equals_the_naive_dpo_equation(seed):
    generator = torch.Generator().manual_seed(seed)
    w, lo, ref_w, ref_l = (
        -torch.rand(32, generator=generator, dtype=torch.float64) * 40 for _ in range(4)
    )
    got = dpo_losses(w, lo, ref_w, ref_l, beta=0.1, loss_type=DPOLoss.SIGMOID, label_smoothing=0.0)
    assert torch.allclose(got, naive_dpo(w, lo, ref_w, ref_l, 0.1), atol=1e-12)
    assert torch.equal(got, dpo_losses(w, lo, ref_w, ref_l, beta=0.1, loss_type=DPOLoss.SIGMOID))


@settings(max_examples=100, deadline=None)
@given(logprob, logprob, logprob, logprob, st.floats(0.01, 1.0), st.floats(0.0, 0.49))
def test_label_smoothing_mixes_the_loss_of_both_labels(w, lo, ref_w, ref_l, beta, eps):
    smoothed = pair_loss(w, lo, ref_w, ref_l, beta, eps=eps)
    forward, flipped = pair_loss(w, lo, ref_w, ref_l, beta), pair_loss(lo, w, ref_l, ref_w, beta)
    assert smoothed == pytest.approx((1 - eps) * forward + eps * flipped, rel=1e-9, abs=1e-9)
    # -log sigmoid(-x) + log sigmoid(x) = x: flipping a label costs exactly beta * h
    assert flipped - forward == pytest.approx(
        beta * ((w - ref_w) - (lo - ref_l)), rel=1e-9, abs=1e-9
    )
    assert forward >= 0.0 and smoothed >= 0.0


@pytest.mark.parametrize("loss_type", [DPOLoss.SIGMOID, DPOLoss.IPO])
def test_gradients_raise_the_chosen_and_lower_the_rejected(loss_type):
    # h = 3 is below IPO's target 1 / (2 * 0.1) = 5, so both losses push h up
    chosen, rejected = t(-10.0).requires_grad_(), t(-15.0).requires_grad_()
    dpo_losses(chosen, rejected, t(-12.0), t(-14.0), beta=0.1, loss_type=loss_type).sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()
    assert chosen.grad.item() == pytest.approx(-rejected.grad.item())


def test_ipo_pulls_back_a_margin_past_its_target():
    # h = 8 > 5: unlike DPO, IPO lowers the chosen response's log-prob again
    chosen, rejected = t(-4.0).requires_grad_(), t(-15.0).requires_grad_()
    dpo_losses(
        chosen, rejected, t(-9.0), t(-12.0), beta=0.1, loss_type=DPOLoss.IPO
    ).sum().backward()
    assert chosen.grad.item() > 0 > rejected.grad.item()
    assert chosen.grad.item() == pytest.approx(2 * (8.0 - 5.0))


@pytest.mark.parametrize("h", [-1e3, -1e5])
def test_sigmoid_is_stable_for_very_wrong_pairs(h):
    chosen = torch.tensor([h], requires_grad=True)
    loss = dpo_losses(
        chosen, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1, loss_type=DPOLoss.SIGMOID
    )
    loss.backward()
    assert loss.item() == pytest.approx(-0.1 * h, rel=1e-6)
    assert chosen.grad.item() == pytest.approx(-0.1)  # beta * -sigmoid(-beta h), saturated


# --- Plackett-Luce ----------------------------------------------------------------------------


def test_plackett_luce_hand_value():
    # scores (1, 0, -1), best first: [lse(1, 0, -1) - 1] + [lse(0, -1) - 0] + 0
    #   = log(1 + e^-1 + e^-2) + log(1 + e^-1) = 0.4076060 + 0.3132617 = 0.7208677
    assert pl([1.0, 0.0, -1.0], [0, 1, 2]) == pytest.approx(0.7208677, abs=1e-7)
    # the same through the implicit rewards: beta = 0.1, log-ratios (10, 0, -10)
    logprobs, ref_logprobs = t(-5.0, -20.0, -30.0)[None], t(-15.0, -20.0, -20.0)[None]
    ranks, mask = torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool)
    got = plackett_luce_dpo_losses(logprobs, ref_logprobs, ranks, mask, beta=0.1)
    assert got.item() == pytest.approx(0.7208677, abs=1e-7)


def test_plackett_luce_tie_hand_value():
    # ranks (0, 1, 1): the two tied responses each choose from {0, -1}
    #   0.4076060 + [lse(0, -1) - 0] + [lse(0, -1) + 1]
    #   = 0.4076060 + 0.3132617 + 1.3132617 = 2.0341293
    assert pl([1.0, 0.0, -1.0], [0, 1, 1]) == pytest.approx(2.0341293, abs=1e-7)
    # a tie is symmetric: swapping the tied scores changes nothing
    assert pl([1.0, -1.0, 0.0], [0, 1, 1]) == pytest.approx(2.0341293, abs=1e-7)


def test_plackett_luce_with_policy_equal_to_reference_is_log_k_factorial():
    logprobs = -torch.rand(2, 4, dtype=torch.float64) * 30
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    got = plackett_luce_dpo_losses(
        logprobs, logprobs.clone(), torch.arange(4).expand(2, 4), mask, beta=0.1
    )
    assert torch.allclose(got, t(math.log(24.0), math.log(6.0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plackett_luce_equals_the_naive_loop_with_ties_and_padding(seed):
    generator = torch.Generator().manual_seed(seed)
    rows = [
        ([0, 1, 2, 3, 4], 5),
        ([0, 0, 1, 2], 4),
        ([0, 1, 1, 1, 2], 5),
        ([0, 1], 2),
        ([3, 3, 3], 3),
    ]
    scores = torch.randn(len(rows), 5, generator=generator, dtype=torch.float64) * 3
    ranks = torch.zeros(len(rows), 5, dtype=torch.long)
    mask = torch.zeros(len(rows), 5, dtype=torch.bool)
    for g, (row_ranks, size) in enumerate(rows):
        ranks[g, :size], mask[g, :size] = torch.tensor(row_ranks), True
    got = plackett_luce_nll(scores, ranks, mask)
    expected = [
        naive_plackett_luce(scores[g, :size].tolist(), row_ranks)
        for g, (row_ranks, size) in enumerate(rows)
    ]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-10)


@settings(max_examples=100, deadline=None)
@given(logprob, logprob, logprob, logprob, st.floats(0.01, 1.0))
def test_plackett_luce_with_two_responses_is_pairwise_dpo(w, lo, ref_w, ref_l, beta):
    listwise = plackett_luce_dpo_losses(
        t(w, lo)[None],
        t(ref_w, ref_l)[None],
        torch.tensor([[0, 1]]),
        torch.ones(1, 2, dtype=torch.bool),
        beta=beta,
    )
    assert listwise.item() == pytest.approx(
        pair_loss(w, lo, ref_w, ref_l, beta), rel=1e-9, abs=1e-12
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20.0, 20.0), min_size=2, max_size=5), st.randoms(use_true_random=False))
def test_plackett_luce_order_probabilities_sum_to_one(scores, rng):
    # exp(-loss) is P(order), a distribution over the K! orders
    order_probability = 0.0
    for order in itertools.permutations(range(len(scores))):
        ranks = [order.index(i) for i in range(len(scores))]
        order_probability += math.exp(-pl(scores, ranks))
    assert order_probability == pytest.approx(1.0, rel=1e-9)
    # and the loss does not depend on where the responses sit along K
    ranks = list(range(len(scores)))
    shuffled = list(range(len(scores)))
    rng.shuffle(shuffled)
    assert pl([scores[i] for i in shuffled], [ranks[i] for i in shuffled]) == pytest.approx(
        pl(scores, ranks), abs=1e-9
    )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-20.0, 20.0), min_size=2, max_size=5),
    st.floats(-100.0, 100.0),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=3),
)
def test_plackett_luce_ignores_a_shift_and_padding(scores, shift, padding):
    ranks = list(range(len(scores)))
    base = pl(scores, ranks)
    assert pl([s + shift for s in scores], ranks) == pytest.approx(base, abs=1e-8)
    padded = pl(
        scores + padding, ranks + [0] * len(padding), [True] * len(scores) + [False] * len(padding)
    )
    assert padded == pytest.approx(base, abs=1e-12)


def test_plackett_luce_gradients():
    scores = t(0.5, 0.0, 0.2, 9.0, 0.0).requires_grad_()  # the last two are padding
    mask = torch.tensor([[True, True, True, False, False]])
    plackett_luce_nll(scores[None], torch.tensor([[0, 1, 2, 0, 0]]), mask).sum().backward()
    grad = scores.grad
    assert grad[0] < 0 < grad[2]  # the best is pushed up, the worst down
    assert grad.sum().item() == pytest.approx(0.0, abs=1e-12)  # a common shift changes nothing
    assert torch.equal(
        grad[3:], torch.zeros(2, dtype=torch.float64)
    )  # padding gets no gradient, no NaN


def test_plackett_luce_loss_denominator():
    logprobs, ref_logprobs = (
        t(-5.0, -20.0, -30.0)[None].repeat(2, 1),
        t(-15.0, -20.0, -20.0)[None].repeat(2, 1),
    )
    ranks, mask = torch.tensor([[0, 1, 2]] * 2), torch.ones(2, 3, dtype=torch.bool)
    got = plackett_luce_dpo_loss(logprobs, ref_logprobs, ranks, mask, beta=0.1, denominator=4)
    assert got.item() == pytest.approx(2 * 0.7208677 / 4, abs=1e-7)
