"""Critic-free advantages from a group of G responses to the same prompt: GRPO, Dr. GRPO, RLOO,
and GRPO with process supervision.

Rows are grouped contiguously: responses [k*G, (k+1)*G) answer prompt k.
"""

from enum import Enum

import torch

from rlhfkit.objectives.masked import masked_mean, masked_var


class GroupNorm(str, Enum):
    GRPO = "grpo"
    """(r - mean_group) / (std_group + eps) (DeepSeekMath, Shao et al. 2024)."""
    DR_GRPO = "dr_grpo"
    """r - mean_group (Dr. GRPO, Liu et al. 2025): dividing by the std up-weights prompts whose
    answers are all nearly equally good or bad."""


def _check_groups(rows: int, group_size: int) -> int:
    """Number of prompts; a partial group would silently mix two prompts' baselines."""
    if group_size < 1 or rows % group_size != 0:
        raise ValueError(f"{rows} responses cannot be split into groups of {group_size}")
    return rows // group_size


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    return rewards.reshape(_check_groups(rewards.shape[0], group_size), group_size)  # (prompts, G)


def _grpo_norm(grouped: torch.Tensor, unbiased: bool, eps: float) -> torch.Tensor:
    everything = torch.ones_like(grouped, dtype=torch.bool)
    # masked_var, not torch.std: a group of one has std 0 (advantage 0), not NaN
    std = masked_var(grouped, everything, unbiased, dim=1).sqrt()
    return (grouped - grouped.mean(dim=1, keepdim=True)) / (std.unsqueeze(1) + eps)


def _dr_grpo_norm(grouped: torch.Tensor, unbiased: bool, eps: float) -> torch.Tensor:
    return grouped - grouped.mean(dim=1, keepdim=True)


_GROUP_NORMS = {GroupNorm.GRPO: _grpo_norm, GroupNorm.DR_GRPO: _dr_grpo_norm}


def group_advantages(
    rewards: torch.Tensor, group_size: int, norm: GroupNorm, unbiased: bool, eps: float
) -> torch.Tensor:
    """Outcome advantage of each response relative to its group (seed 001/003).

        GRPO:    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)
        Dr.GRPO: A_i = r_i - mean(r_group)

    Args:
        rewards: (num_prompts * group_size,) one scalar per response, groups contiguous.
        group_size: G, responses per prompt.
        norm: GRPO or DR_GRPO (the latter ignores `unbiased` and `eps`).
        unbiased: std with Bessel's correction (n - 1, as `torch.std`, TRL, OpenRLHF and veRL)
            or the population std (n). Rewards [1, 0] get +-0.707 with it, +-1.0 without.
        eps: added to the std, so a group of equal rewards gets advantage 0.
    Returns:
        (num_prompts * group_size,) advantages; every token of response i uses A_i.
    Raises:
        ValueError: the number of rewards is not a multiple of group_size.
    """
    normalised = _GROUP_NORMS[GroupNorm(norm)](_grouped(rewards, group_size), unbiased, eps)
    return normalised.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): the baseline of a response
    is the mean reward of the other G - 1 responses to its prompt, so it is independent of it.

        A_i = r_i - (sum_j r_j - r_i) / (G - 1)

    Args:
        rewards: (num_prompts * group_size,) one scalar per response, groups contiguous.
        group_size: G >= 2.
    Returns:
        (num_prompts * group_size,) advantages.
    Raises:
        ValueError: fewer than two responses per prompt, or a partial group.
    """
    if group_size < 2:
        raise ValueError(
            f"leave-one-out needs at least 2 responses per prompt, got group_size {group_size}"
        )
    grouped = _grouped(rewards, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)


def process_advantages(
    step_rewards: torch.Tensor,
    step_mask: torch.Tensor,
    step_ends: torch.Tensor,
    response_mask: torch.Tensor,
    group_size: int,
    norm: GroupNorm,
    unbiased: bool,
    eps: float,
) -> torch.Tensor:
    """GRPO with process supervision (DeepSeekMath section 4.1.3; seeds 001, 003).

    Every step reward of the group is normalised by the mean and std of all the group's steps
    (Dr. GRPO: by the mean only), then a token's advantage is the sum of the normalised rewards
    of the steps that end at or after it:
        r~_ij = (r_ij - mean(R_group)) / (std(R_group) + eps),   A_it = sum_{j: end(j) >= t} r~_ij
        Dr. GRPO: r~_ij = r_ij - mean(R_group)

    Args:
        step_rewards: (batch, max_steps) reward of each step (e.g. a process reward model).
        step_mask: (batch, max_steps) bool, True = a real step (False = padding).
        step_ends: (batch, max_steps) long, the response-token index of each step's last token;
            read only where step_mask is True.
        response_mask: (batch, response_len) bool, True = the token counts.
        group_size: G, rows per prompt (contiguous); batch = num_prompts * G.
        norm, unbiased, eps: the normalisation, std convention and stabiliser, as in
            `group_advantages`.
    Returns:
        (batch, response_len) advantages, 0 where response_mask is False.

    Naive equivalent: for each token t, loop over the steps j and add r~_ij when end(j) >= t.
    Here the normalised rewards are scattered to their end positions and summed with a
    reversed cumulative sum.
    """
    batch, max_steps = step_rewards.shape
    prompts = _check_groups(batch, group_size)
    # (batch, max_steps) -> (prompts, G * max_steps): one row holds every step of a group
    flat_rewards = step_rewards.reshape(prompts, group_size * max_steps)
    flat_mask = step_mask.reshape(prompts, group_size * max_steps)
    centred = flat_rewards - masked_mean(flat_rewards, flat_mask, dim=1).unsqueeze(1)
    if GroupNorm(norm) == GroupNorm.GRPO:
        std = masked_var(flat_rewards, flat_mask, unbiased, dim=1).sqrt().unsqueeze(1)
        centred = centred / (std + eps)
    normalised = centred.reshape(batch, max_steps)
    zero = torch.zeros((), dtype=normalised.dtype, device=normalised.device)
    normalised = torch.where(step_mask, normalised, zero)
    at_ends = torch.zeros(response_mask.shape, dtype=normalised.dtype, device=normalised.device)
    at_ends = at_ends.scatter_add(1, torch.where(step_mask, step_ends, 0), normalised)
    # reversed cumulative sum: token t collects every step ending at t or later
    advantages = at_ends.flip(1).cumsum(1).flip(1)
    return torch.where(response_mask, advantages, zero)
