import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.advantages import (
    discounted_returns,
    gae,
    kl_shaped_rewards,
    penalise_unfinished,
    reinforce_pp_advantages,
)

NAN = float("nan")


def naive_gae_row(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> list[float]:
    """A_t = sum_l (gamma lam)^l delta_{t+l} over one episode, V after the end = 0."""
    n = len(rewards)
    next_values = values[1:] + [0.0]
    deltas = [rewards[t] + gamma * next_values[t] - values[t] for t in range(n)]
    return [sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, n)) for t in range(n)]


def naive_gae(rewards, values, mask, gamma, lam):
    """Per row: the counted tokens form one episode; everything else is 0."""
    advantages = torch.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        counted = mask[row].nonzero().squeeze(1)
        episode = naive_gae_row(
            rewards[row, counted].tolist(), values[row, counted].tolist(), gamma, lam
        )
        advantages[row, counted] = torch.tensor(episode, dtype=rewards.dtype)
    return advantages


def right_padded_batch(seed: int, rows: int, cols: int):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    values = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    lengths = torch.randint(0, cols + 1, (rows,), generator=generator)
    mask = torch.arange(cols) < lengths.unsqueeze(1)
    # padding holds garbage that must never be read
    rewards, values = rewards.masked_fill(~mask, NAN), values.masked_fill(~mask, NAN)
    return rewards, values, mask


def test_gae_three_token_hand_example_and_a_padded_row():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, NAN]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 1.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: deltas (0 + .9*.6 - .5, 0 + .9*.7 - .6, 1 + 0 - .7) = (.04, .03, .3), gamma*lam = .72
    # A_2 = .3, A_1 = .03 + .72*.3 = .246, A_0 = .04 + .72*.246 = .21712
    # row 1 ends at t=1 (V_2 = 0): delta_1 = 2 - 1 = 1, delta_0 = 1 + .9*1 - .5 = 1.4,
    # A_0 = 1.4 + .72
    expected = torch.tensor([[0.21712, 0.246, 0.3], [2.12, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(advantages, expected)
    assert torch.allclose(
        returns, torch.tensor([[0.71712, 0.846, 1.0], [2.62, 2.0, 0.0]], dtype=torch.float64)
    )


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(1, 7),
    st.floats(0.5, 1.0),
    st.floats(0.0, 1.0),
)
def test_gae_equals_naive_per_row_episodes_with_padding(seed, rows, cols, gamma, lam):
    rewards, values, mask = right_padded_batch(seed, rows, cols)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(advantages, naive_gae(rewards, values, mask, gamma, lam))
    assert torch.allclose(returns, torch.where(mask, advantages + values, 0.0))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 1.0), st.floats(0.0, 1.0))
def test_gae_skips_masked_positions_inside_a_row(seed, gamma, lam):
    # a False in the middle (e.g. tokens the policy did not produce) is skipped, not a terminal
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(1, 6, generator=generator, dtype=torch.float64)
    values = torch.randn(1, 6, generator=generator, dtype=torch.float64)
    mask = torch.rand(1, 6, generator=generator) < 0.6
    advantages, _ = gae(
        rewards.masked_fill(~mask, NAN), values.masked_fill(~mask, NAN), mask, gamma, lam
    )
    assert torch.allclose(advantages, naive_gae(rewards, values, mask, gamma, lam))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 7), st.floats(0.5, 1.0))
def test_gae_with_lambda_one_is_discounted_return_minus_value(seed, rows, cols, gamma):
    rewards, values, mask = right_padded_batch(seed, rows, cols)
    advantages, returns = gae(rewards, values, mask, gamma, lam=1.0)
    expected = torch.zeros_like(rewards)
    for row in range(rows):
        length = int(mask[row].sum())
        for t in range(length):
            discounted = sum(gamma ** (k - t) * rewards[row, k] for k in range(t, length))
            expected[row, t] = discounted - values[row, t]
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, discounted_returns(rewards, mask, gamma))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 7), st.floats(0.5, 1.0))
def test_gae_with_lambda_zero_is_the_one_step_td_error(seed, rows, cols, gamma):
    rewards, values, mask = right_padded_batch(seed, rows, cols)
    advantages, _ = gae(rewards, values, mask, gamma, lam=0.0)
    # V_{t+1}: the next column where it is still part of the response, else 0 (terminal)
    next_values = torch.cat([values[:, 1:], torch.zeros(rows, 1, dtype=values.dtype)], dim=1)
    next_mask = torch.cat([mask[:, 1:], torch.zeros(rows, 1, dtype=torch.bool)], dim=1)
    td_error = rewards + gamma * torch.where(next_mask, next_values, 0.0) - values
    assert torch.allclose(advantages, torch.where(mask, td_error, 0.0))


def test_gae_gradient_reaches_the_values():
    values = torch.tensor([[0.5, 0.6]], requires_grad=True)
    advantages, _ = gae(
        torch.tensor([[0.0, 1.0]]), values, torch.ones(1, 2, dtype=torch.bool), 1.0, 1.0
    )
    advantages.sum().backward()
    # lam = gamma = 1: A_t = sum of rewards from t - V_t, so dA/dV_t = -1 for each own value
    assert torch.allclose(values.grad, torch.tensor([[-1.0, -1.0]]))


def test_gae_of_empty_responses_is_empty():
    empty = torch.zeros(3, 0)
    advantages, returns = gae(empty, empty, empty.bool(), 1.0, 0.95)
    assert advantages.shape == returns.shape == (3, 0)


def test_discounted_returns_hand_values():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [2.0, 4.0, NAN]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    expected = torch.tensor([[1.75, 1.5, 1.0], [4.0, 4.0, 0.0]])
    assert torch.allclose(discounted_returns(rewards, mask, gamma=0.5), expected)


def test_kl_shaped_rewards_hand_values():
    outcome = torch.tensor([2.0, 5.0, 7.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.2, -0.25 + 5.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(kl_shaped_rewards(outcome, kl, mask, kl_coef=0.5), expected)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 7), st.floats(0.0, 1.0))
def test_kl_shaped_rewards_sum_to_outcome_minus_total_kl(seed, rows, cols, kl_coef):
    generator = torch.Generator().manual_seed(seed)
    _, _, mask = right_padded_batch(seed, rows, cols)
    outcome = torch.randn(rows, generator=generator, dtype=torch.float64)
    kl = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    rewards = kl_shaped_rewards(outcome, kl, mask, kl_coef)
    has_tokens = mask.any(dim=1)
    expected = torch.where(has_tokens, outcome, 0.0) - kl_coef * torch.where(mask, kl, 0.0).sum(1)
    assert torch.allclose(rewards.sum(1), expected)
    assert torch.equal(rewards[~mask], torch.zeros_like(rewards[~mask]))


def test_reinforce_pp_hand_example():
    rewards = torch.tensor([[0.0, 1.0], [3.0, NAN]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    advantages, returns = reinforce_pp_advantages(rewards, mask, gamma=1.0, unbiased=False, eps=0.0)
    # returns-to-go (1, 1, 3): mean 5/3, population variance (4/9 + 4/9 + 16/9) / 3 = 8/9
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0], [3.0, 0.0]], dtype=torch.float64))
    std = (8 / 9) ** 0.5
    expected = torch.tensor([[-2 / 3 / std, -2 / 3 / std], [4 / 3 / std, 0.0]], dtype=torch.float64)
    assert torch.allclose(advantages, expected)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 5),
    st.integers(1, 7),
    st.floats(0.5, 1.0),
    st.booleans(),
)
def test_reinforce_pp_whitens_returns_over_the_whole_batch(seed, rows, cols, gamma, unbiased):
    rewards, _, mask = right_padded_batch(seed, rows, cols)
    # full rows with returns (0, ...) and (1, 0, ...): the returns are never all equal
    mask[:2] = True
    rewards[:2] = 0.0
    rewards[1, 0] = 1.0
    advantages, returns = reinforce_pp_advantages(rewards, mask, gamma, unbiased, eps=0.0)
    assert torch.allclose(returns, discounted_returns(rewards, mask, gamma))
    selected = returns[mask]
    expected = (selected - selected.mean()) / selected.std(correction=int(unbiased))
    assert torch.allclose(advantages[mask], expected)
    assert advantages[mask].mean().abs().item() == pytest.approx(0.0, abs=1e-9)


def test_penalise_unfinished_lowers_only_the_cut_responses():
    rewards = torch.tensor([1.0, 0.5, -1.0])
    finished = torch.tensor([True, False, False])
    got = penalise_unfinished(rewards, finished, 0.25)
    assert torch.allclose(got, torch.tensor([1.0, 0.25, -1.25]))
    assert penalise_unfinished(rewards, finished, 0.0) is rewards
