import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.group_advantages import (
    GroupNorm,
    group_advantages,
    process_advantages,
    rloo_advantages,
)

ROOT2 = math.sqrt(2.0)


def random_rewards(seed: int, prompts: int, group_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(prompts * group_size, generator=generator, dtype=torch.float64) * 3


def test_grpo_and_dr_grpo_hand_values():
    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0])  # two prompts, two responses each
    # group (1, 3): mean 2, population std 1, Bessel std sqrt 2; group (5, 5): 0 / (0 + eps) = 0
    got = group_advantages(rewards, 2, GroupNorm.GRPO, unbiased=False, eps=1e-12)
    assert torch.allclose(got, torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    got = group_advantages(rewards, 2, GroupNorm.GRPO, unbiased=True, eps=1e-12)
    assert torch.allclose(got, torch.tensor([-1 / ROOT2, 1 / ROOT2, 0.0, 0.0]))
    got = group_advantages(rewards, 2, "dr_grpo", unbiased=True, eps=1e-12)
    assert torch.allclose(got, torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    # eps sits on the std: std 1 + eps 1 halves the advantage
    got = group_advantages(rewards, 2, GroupNorm.GRPO, unbiased=False, eps=1.0)
    assert torch.allclose(got, torch.tensor([-0.5, 0.5, 0.0, 0.0]))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(2, 6), st.booleans())
def test_grpo_equals_naive_per_group_normalisation(seed, prompts, group_size, unbiased):
    rewards = random_rewards(seed, prompts, group_size)
    got = group_advantages(rewards, group_size, GroupNorm.GRPO, unbiased, eps=1e-6)
    dr_got = group_advantages(rewards, group_size, GroupNorm.DR_GRPO, unbiased, eps=1e-6)
    for k in range(prompts):
        group = rewards[k * group_size : (k + 1) * group_size]
        std = group.std(correction=int(unbiased))
        assert torch.allclose(
            got[k * group_size : (k + 1) * group_size], (group - group.mean()) / (std + 1e-6)
        )
        assert torch.allclose(dr_got[k * group_size : (k + 1) * group_size], group - group.mean())


def test_bessels_correction_on_a_group_of_two():
    # rewards (1, 0): mean 1/2; Bessel std sqrt(1/2) -> +-1/sqrt 2; population std 1/2 -> +-1
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    got = group_advantages(rewards, 2, GroupNorm.GRPO, unbiased=True, eps=0.0)
    assert got.tolist() == pytest.approx([1 / ROOT2, -1 / ROOT2], abs=1e-12)
    got = group_advantages(rewards, 2, GroupNorm.GRPO, unbiased=False, eps=0.0)
    assert got.tolist() == pytest.approx([1.0, -1.0], abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(2, 6),
    st.floats(0.1, 10.0),
    st.floats(-5.0, 5.0),
)
def test_grpo_is_invariant_to_affine_rescaling_and_dr_grpo_to_shifts(
    seed, prompts, group_size, scale, shift
):
    rewards = random_rewards(seed, prompts, group_size)
    grpo = group_advantages(rewards, group_size, GroupNorm.GRPO, unbiased=True, eps=0.0)
    assert torch.allclose(
        group_advantages(scale * rewards + shift, group_size, GroupNorm.GRPO, True, 0.0), grpo
    )
    dr = group_advantages(rewards, group_size, GroupNorm.DR_GRPO, unbiased=True, eps=0.0)
    assert torch.allclose(
        group_advantages(rewards + shift, group_size, GroupNorm.DR_GRPO, True, 0.0), dr
    )
    # each group's advantages sum to zero
    assert torch.allclose(
        dr.reshape(prompts, group_size).sum(1), torch.zeros(prompts, dtype=dr.dtype)
    )


def test_a_group_of_one_gets_zero_not_nan():
    got = group_advantages(torch.tensor([3.0, -1.0]), 1, GroupNorm.GRPO, unbiased=True, eps=1e-6)
    assert torch.equal(got, torch.zeros(2))


@pytest.mark.parametrize(
    "function",
    [
        lambda rewards, g: group_advantages(rewards, g, GroupNorm.GRPO, True, 1e-6),
        lambda rewards, g: group_advantages(rewards, g, GroupNorm.DR_GRPO, True, 1e-6),
        rloo_advantages,
    ],
)
def test_a_partial_group_is_rejected_naming_both_numbers(function):
    with pytest.raises(ValueError, match="7 responses cannot be split into groups of 3"):
        function(torch.zeros(7), 3)


def test_rloo_hand_values():
    # baselines: mean of the others = (2+3)/2, (1+3)/2, (1+2)/2
    assert torch.allclose(
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 3), torch.tensor([-1.5, 0.0, 1.5])
    )
    assert torch.allclose(
        rloo_advantages(torch.tensor([1.0, 0.0, 4.0, 4.0]), 2), torch.tensor([1.0, -1.0, 0.0, 0.0])
    )
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(2, 6))
def test_rloo_equals_naive_leave_one_out_and_scaled_mean_baseline(seed, prompts, group_size):
    rewards = random_rewards(seed, prompts, group_size)
    got = rloo_advantages(rewards, group_size)
    for i in range(len(rewards)):
        start = i // group_size * group_size
        others = [rewards[j].item() for j in range(start, start + group_size) if j != i]
        assert got[i].item() == pytest.approx(rewards[i].item() - sum(others) / len(others))
    # r_i - mean(others) = G / (G - 1) * (r_i - mean(group))
    dr = group_advantages(rewards, group_size, GroupNorm.DR_GRPO, True, 0.0)
    assert torch.allclose(got, dr * group_size / (group_size - 1))


def test_process_advantages_hand_example():
    # one prompt, G = 2. Response 0: steps ending at tokens 1 and 3 (rewards 1, 0), 4 tokens.
    # Response 1: one step ending at token 2 (reward 1), a padded step, 3 tokens.
    step_rewards = torch.tensor([[1.0, 0.0], [1.0, 99.0]], dtype=torch.float64)
    step_mask = torch.tensor([[True, True], [True, False]])
    step_ends = torch.tensor([[1, 3], [2, -7]])
    response_mask = torch.tensor([[True] * 4 + [False], [True] * 3 + [False] * 2])
    # group steps (1, 0, 1): mean 2/3, population std sqrt(2)/3 -> 1 becomes 1/sqrt2,
    # 0 becomes -sqrt2
    got = process_advantages(
        step_rewards, step_mask, step_ends, response_mask, 2, GroupNorm.GRPO, False, 0.0
    )
    high, low = 1 / ROOT2, -ROOT2
    expected = [[high + low, high + low, low, low, 0.0], [high, high, high, 0.0, 0.0]]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64))
    # Bessel std sqrt(1/3): 1 becomes (1/3) sqrt 3, 0 becomes -(2/3) sqrt 3
    got = process_advantages(
        step_rewards, step_mask, step_ends, response_mask, 2, GroupNorm.GRPO, True, 0.0
    )
    high, low = math.sqrt(3) / 3, -2 * math.sqrt(3) / 3
    expected = [[high + low, high + low, low, low, 0.0], [high, high, high, 0.0, 0.0]]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64))
    # Dr. GRPO: centred only, 1 becomes 1/3 and 0 becomes -2/3, whatever the std convention
    for unbiased in (False, True):
        got = process_advantages(
            step_rewards, step_mask, step_ends, response_mask, 2, GroupNorm.DR_GRPO, unbiased, 0.5
        )
        high, low = 1 / 3, -2 / 3
        expected = [[high + low, high + low, low, low, 0.0], [high, high, high, 0.0, 0.0]]
        assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64))


def random_steps(seed: int, prompts: int, group_size: int, max_steps: int, response_len: int):
    generator = torch.Generator().manual_seed(seed)
    batch = prompts * group_size
    step_rewards = torch.randn(batch, max_steps, generator=generator, dtype=torch.float64)
    step_mask = torch.rand(batch, max_steps, generator=generator) < 0.7
    step_ends = torch.randint(0, response_len, (batch, max_steps), generator=generator)
    lengths = torch.randint(1, response_len + 1, (batch,), generator=generator)
    response_mask = torch.arange(response_len) < lengths.unsqueeze(1)
    return step_rewards, step_mask, step_ends, response_mask


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 6),
)
def test_process_advantages_equal_naive_double_loop(
    seed, prompts, group_size, max_steps, response_len
):
    step_rewards, step_mask, step_ends, response_mask = random_steps(
        seed, prompts, group_size, max_steps, response_len
    )
    got = process_advantages(
        step_rewards, step_mask, step_ends, response_mask, group_size, GroupNorm.GRPO, True, 1e-6
    )
    expected = torch.zeros(response_mask.shape, dtype=torch.float64)
    for k in range(prompts):
        rows = range(k * group_size, (k + 1) * group_size)
        group = torch.cat([step_rewards[i][step_mask[i]] for i in rows])
        mean = group.mean() if len(group) else 0.0
        std = group.std() if len(group) > 1 else 0.0
        for i in rows:
            for t in range(response_len):
                if response_mask[i, t]:
                    for j in range(max_steps):
                        if step_mask[i, j] and step_ends[i, j] >= t:
                            expected[i, t] += (step_rewards[i, j] - mean) / (std + 1e-6)
    assert torch.allclose(got, expected)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 3),
    st.integers(2, 4),
    st.integers(1, 6),
    st.booleans(),
    st.sampled_from(GroupNorm),
)
def test_one_step_ending_at_the_last_token_is_outcome_supervision(
    seed, prompts, group_size, response_len, unbiased, norm
):
    # DeepSeekMath: with a single step per response, process supervision is GRPO on the outcome
    _, _, _, response_mask = random_steps(seed, prompts, group_size, 1, response_len)
    rewards = torch.randn(
        prompts * group_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    last_token = (response_mask.sum(1) - 1).unsqueeze(1)
    step_mask = torch.ones(prompts * group_size, 1, dtype=torch.bool)
    got = process_advantages(
        rewards.unsqueeze(1), step_mask, last_token, response_mask, group_size, norm, unbiased, 1e-6
    )
    outcome = group_advantages(rewards, group_size, norm, unbiased, 1e-6)
    assert torch.allclose(got, torch.where(response_mask, outcome.unsqueeze(1), 0.0))


def test_process_advantages_reject_a_partial_group():
    with pytest.raises(ValueError, match="3 responses cannot be split into groups of 2"):
        process_advantages(
            torch.zeros(3, 1),
            torch.ones(3, 1, dtype=torch.bool),
            torch.zeros(3, 1, dtype=torch.long),
            torch.ones(3, 2, dtype=torch.bool),
            2,
            GroupNorm.GRPO,
            True,
            1e-6,
        )
