import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.aggregate import LossAggregation
from rlhfkit.objectives.policy import RatioLevel, log_ratio, ppo_policy_loss, value_loss

TOKEN_MEAN = LossAggregation.TOKEN_MEAN


def policy(
    ratios, advantages, mask=None, clip_low=0.2, clip_high=0.2, dual_clip=None, denominator=None
):
    """ppo_policy_loss from ratios: old log-probs 0, new log-probs log(ratio)."""
    logprobs = torch.log(torch.tensor([ratios], dtype=torch.float64)).requires_grad_(True)
    advantages = torch.tensor([advantages], dtype=torch.float64)
    mask = torch.ones_like(advantages, dtype=torch.bool) if mask is None else torch.tensor([mask])
    denominator = mask.sum() if denominator is None else denominator
    result = ppo_policy_loss(
        logprobs,
        torch.zeros_like(logprobs),
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        aggregation=TOKEN_MEAN,
        denominator=denominator,
    )
    return result, logprobs


def test_ratio_one_gives_minus_the_advantage():
    result, _ = policy([1.0, 1.0], [2.0, -3.0])
    assert result.loss.item() == pytest.approx((-2.0 + 3.0) / 2)
    assert result.clip_fraction.item() == 0.0


def test_hand_values_in_the_four_clipping_cases():
    # (ratio, A): (1.5, +1) clipped to 1.2 -> -1.2; (1.5, -1) -> min(-1.5, -1.2) = -1.5 -> 1.5;
    # (0.5, +1) -> min(0.5, 0.8) = 0.5 -> -0.5; (0.5, -1) clipped to 0.8 -> min(-0.5, -0.8) -> 0.8
    result, logprobs = policy([1.5, 1.5, 0.5, 0.5], [1.0, -1.0, 1.0, -1.0])
    assert result.loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert result.clip_fraction.item() == pytest.approx(0.5)
    result.loss.backward()
    # clipped tokens get no gradient; otherwise d(-ratio * A)/d logprob = -ratio * A, / 4 tokens
    assert torch.allclose(
        logprobs.grad, torch.tensor([[0.0, 1.5 / 4, -0.5 / 4, 0.0]], dtype=torch.float64)
    )


def test_clip_low_and_clip_high_are_separate():
    loose_high, _ = policy([1.25, 0.75], [1.0, -1.0], clip_low=0.2, clip_high=0.28)
    # 1.25 < 1.28: not clipped (-1.25); 0.75 < 0.8: clipped to 0.8, loss 0.8
    assert loose_high.loss.item() == pytest.approx((-1.25 + 0.8) / 2)
    tight_high, _ = policy([1.25, 0.75], [1.0, -1.0], clip_low=0.3, clip_high=0.2)
    # 1.25 clipped to 1.2 (-1.2); 0.75 > 0.7: not clipped, loss 0.75
    assert tight_high.loss.item() == pytest.approx((-1.2 + 0.75) / 2)


def test_dual_clip_caps_only_negative_advantages():
    # ratio 5, A = -1: PPO loss 5, capped at -c * A = 3. ratio 1.5, A = -1: 1.5 < 3, unchanged.
    # ratio 5, A = +1: clipped to 1.2 -> -1.2, dual clip does not apply to positive advantages
    result, logprobs = policy([5.0, 1.5, 5.0], [-1.0, -1.0, 1.0], dual_clip=3.0)
    assert result.loss.item() == pytest.approx((3.0 + 1.5 - 1.2) / 3)
    without, _ = policy([5.0, 1.5, 5.0], [-1.0, -1.0, 1.0])
    assert without.loss.item() == pytest.approx((5.0 + 1.5 - 1.2) / 3)
    result.loss.backward()
    assert logprobs.grad[0, 0].item() == 0.0  # the capped token no longer pushes


@pytest.mark.parametrize("dual_clip", [1.0, 0.5])
def test_dual_clip_must_exceed_one(dual_clip):
    with pytest.raises(ValueError, match="dual_clip"):
        policy([1.0], [1.0], dual_clip=dual_clip)


def test_padding_is_ignored_even_when_not_finite():
    result, _ = policy([1.5, math.inf], [1.0, math.nan], mask=[True, False])
    assert result.loss.item() == pytest.approx(-1.2)
    assert result.clip_fraction.item() == 1.0


def naive_policy_loss(logprobs, old, advantages, mask, clip_low, clip_high, dual_clip, denominator):
    total = 0.0
    for row in range(logprobs.shape[0]):
        for t in range(logprobs.shape[1]):
            if not mask[row, t]:
                continue
            ratio = math.exp(logprobs[row, t] - old[row, t])
            a = advantages[row, t].item()
            loss = -min(ratio * a, min(max(ratio, 1 - clip_low), 1 + clip_high) * a)
            if dual_clip is not None and a < 0:
                loss = min(loss, -dual_clip * a)
            total += loss
    return total / denominator


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(1, 6),
    st.floats(0.05, 0.5),
    st.floats(0.05, 0.5),
    st.one_of(st.none(), st.floats(1.5, 5.0)),
)
def test_equals_naive_per_token_loop(seed, rows, cols, clip_low, clip_high, dual_clip):
    generator = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(rows, cols, generator=generator, dtype=torch.float64) * 3
    old = logprobs + torch.randn(rows, cols, generator=generator, dtype=torch.float64) * 0.5
    advantages = torch.randn(rows, cols, generator=generator, dtype=torch.float64) * 2
    mask = torch.rand(rows, cols, generator=generator) < 0.7
    got = ppo_policy_loss(
        logprobs,
        old,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        aggregation=TOKEN_MEAN,
        denominator=7.0,
    )
    expected = naive_policy_loss(
        logprobs, old, advantages, mask, clip_low, clip_high, dual_clip, 7.0
    )
    assert got.loss.item() == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= got.clip_fraction.item() <= 1.0


def value(values, old_values, returns, clip_range):
    as_tensor = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    mask = torch.ones(1, len(values), dtype=torch.bool)
    return value_loss(
        as_tensor(values),
        as_tensor(old_values),
        as_tensor(returns),
        mask,
        clip_range,
        TOKEN_MEAN,
        len(values),
    ).item()


def test_value_loss_hand_values():
    # V = 1.5 from V_old = 1, R = 2, e = 0.2: unclipped (0.5)^2 = 0.25;
    # clipped V = 1.2, (0.8)^2 = 0.64
    assert value([1.5], [1.0], [2.0], 0.2) == pytest.approx(0.5 * 0.64)
    # V = 2.5: unclipped 0.25, clipped 1.2 -> 0.64: the step past the target is not rewarded
    assert value([2.5], [1.0], [2.0], 0.2) == pytest.approx(0.5 * 0.64)
    # inside the clip range both terms agree
    assert value([1.1], [1.0], [2.0], 0.2) == pytest.approx(0.5 * 0.81)
    # V lands on R = 0.7 but by a step larger than e: the clipped V = 0.8 still counts, 0.1^2
    assert value([0.7], [1.0], [0.7], 0.2) == pytest.approx(0.5 * 0.01)
    # V = 0.5 overshoots R = 0.8: clipped V = 0.8 would hide the error; the max keeps 0.3^2
    assert value([0.5], [1.0], [0.8], 0.2) == pytest.approx(0.5 * 0.09)
    assert value([1.5], [1.0], [2.0], None) == pytest.approx(0.5 * 0.25)
    assert value([1.5, 1.1], [1.0, 1.0], [2.0, 2.0], None) == pytest.approx(0.5 * (0.25 + 0.81) / 2)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 6), st.floats(0.01, 1.0))
def test_clipped_value_loss_is_never_below_the_unclipped_one(seed, rows, cols, clip_range):
    generator = torch.Generator().manual_seed(seed)
    values, old_values, returns = torch.randn(
        3, rows, cols, generator=generator, dtype=torch.float64
    )
    mask = torch.rand(rows, cols, generator=generator) < 0.7
    clipped = value_loss(values, old_values, returns, mask, clip_range, TOKEN_MEAN, 1.0)
    unclipped = value_loss(values, old_values, returns, mask, None, TOKEN_MEAN, 1.0)
    assert clipped.item() >= unclipped.item() - 1e-12
    # with V_old = V nothing is clipped
    assert torch.allclose(
        value_loss(values, values, returns, mask, clip_range, TOKEN_MEAN, 1.0), unclipped
    )


def test_sequence_ratio_is_gspo_hand_values():
    # response 1: log ratios 0.1, 0.3 (+ a padded 5.0) -> s = exp(0.2) = 1.2214 > 1.2, A = +1:
    #   clipped, -1.2, no gradient.
    # response 2: log ratios -0.1, 0.0, -0.2 -> s = exp(-0.1) = 0.904837 inside [0.8, 1.2],
    #   A = -1: -min(-0.904837, -0.904837) = 0.904837; d/d logprob_t = s / 3 tokens / 2 rows.
    logprobs = torch.tensor(
        [[0.1, 0.3, 5.0], [-0.1, 0.0, -0.2]], dtype=torch.float64, requires_grad=True
    )
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    result = ppo_policy_loss(
        logprobs,
        torch.zeros_like(logprobs),
        advantages,
        mask,
        clip_low=0.2,
        clip_high=0.2,
        aggregation=LossAggregation.SEQUENCE_MEAN,
        denominator=2,
        ratio_level=RatioLevel.SEQUENCE,
    )
    s2 = math.exp(-0.1)
    assert result.loss.item() == pytest.approx((-1.2 + s2) / 2)
    assert result.clip_fraction.item() == pytest.approx(2 / 5)  # response 1's two tokens
    result.loss.backward()
    expected = torch.tensor([[0.0, 0.0, 0.0], [s2 / 6] * 3], dtype=torch.float64)
    assert torch.allclose(logprobs.grad, expected)


def test_sequence_ratio_equals_the_token_ratio_on_one_token_responses():
    logprobs = torch.tensor([[0.3], [-0.4], [0.05]], dtype=torch.float64)
    advantages = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    mask = torch.ones_like(advantages, dtype=torch.bool)
    losses = [
        ppo_policy_loss(
            logprobs,
            torch.zeros_like(logprobs),
            advantages,
            mask,
            clip_low=0.2,
            clip_high=0.2,
            aggregation=TOKEN_MEAN,
            denominator=3,
            ratio_level=level,
        ).loss
        for level in (RatioLevel.TOKEN, RatioLevel.SEQUENCE)
    ]
    assert losses[0].item() == pytest.approx(losses[1].item())


def test_sequence_log_ratio_is_the_masked_mean_on_every_token():
    logprobs = torch.tensor([[1.0, 2.0, 9.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    ratios = log_ratio(logprobs, torch.zeros_like(logprobs), mask, RatioLevel.SEQUENCE)
    assert torch.equal(ratios, torch.tensor([[1.5, 1.5, 1.5], [0.0, 0.0, 0.0]]))
