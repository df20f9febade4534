"""Per-token advantages from per-token rewards: GAE (PPO) and REINFORCE++.

Every function takes (batch, response_len) tensors with response_mask True = the token counts.
Positions where the mask is False are skipped: the token after t is the next counted one, and
after the last counted token the episode has ended (V = 0). With right padding that is the
usual terminal at the end of the response. Group baselines (GRPO, RLOO, process supervision)
live in `group_advantages.py`.
"""

import torch

from rlhfkit.objectives.masked import masked_whiten


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, seed 002).

        delta_t = r_t + gamma * V_{t+1} - V_t            (V after the last counted token = 0)
        A_t     = sum_l (gamma * lam)^l * delta_{t+l}  = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                             (the value target)
    lam = 0 gives the one-step TD error, lam = 1 the discounted return minus V_t.

    Args:
        rewards: (batch, response_len) per-token rewards, e.g. from `kl_shaped_rewards`.
        values: (batch, response_len) V(s_t) from the critic at rollout time.
        response_mask: (batch, response_len) bool, True = the token counts; values and rewards
            at False positions are never read.
        gamma: discount; lam: GAE lambda.
    Returns:
        advantages, returns: (batch, response_len) each, 0 where the mask is False.

    Naive equivalent: for each row, take the counted tokens as one episode and evaluate the
    sum over l directly (quadratic in length); here one reverse pass over time, vectorised
    over the batch, carries V_{t+1} and A_{t+1} backwards.
    """
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    next_value = rewards.new_zeros(rewards.shape[0])
    next_advantage = rewards.new_zeros(rewards.shape[0])
    reversed_advantages = []
    for t in reversed(range(rewards.shape[1])):
        counts = response_mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        reversed_advantages.append(torch.where(counts, advantage, zero))
        # a skipped position passes its successor's value and advantage through unchanged
        next_value = torch.where(counts, values[:, t], next_value)
        next_advantage = torch.where(counts, advantage, next_advantage)
    # (batch, response_len); a batch of empty responses has nothing to stack
    advantages = (
        torch.stack(reversed_advantages[::-1], dim=1)
        if reversed_advantages
        else torch.zeros_like(rewards)
    )
    returns = torch.where(response_mask, advantages + values, zero)
    return advantages, returns


def discounted_returns(
    rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k over the counted tokens; 0 where the mask is False.

    Args:
        rewards: (batch, response_len); response_mask: (batch, response_len) bool, True = counts.
    Returns:
        (batch, response_len) returns.

    GAE with lam = 1 and V = 0 is exactly this sum, so the recursion is not written twice.
    """
    return gae(rewards, torch.zeros_like(rewards), response_mask, gamma, 1.0)[1]


def kl_shaped_rewards(
    outcome_rewards: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards of InstructGPT (seed 001): a KL penalty on every token, the outcome at
    the end.

        r_t = -kl_coef * kl_t + [t is the last counted token] * outcome_reward

    Args:
        outcome_rewards: (batch,) one scalar reward per response (reward model or verifier).
        kl: (batch, response_len) per-token KL estimate (`kl_penalty`, usually k1).
        response_mask: (batch, response_len) bool, True = the token counts.
        kl_coef: beta.
    Returns:
        (batch, response_len) rewards, 0 where the mask is False. A row with no counted token
        gets no outcome reward.
    """
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    # index of the last True per row (argmax of position among counted tokens)
    last = torch.where(response_mask, positions, -1).argmax(dim=1, keepdim=True)
    is_last = torch.zeros_like(response_mask).scatter(1, last, True) & response_mask
    rewards = -kl_coef * kl + torch.where(is_last, outcome_rewards.unsqueeze(1).to(kl.dtype), 0.0)
    return torch.where(
        response_mask, rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    )


def kl_shaped_sequence_rewards(
    rewards: torch.Tensor, sequence_kl: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """One reward per response, the KL penalty on the whole sequence (RLOO, Ahmadian et al. 2024):

        R_i = r_i - kl_coef * KL_i,   KL_i = sum_t kl_t over the response's tokens (`sequence_kl`)

    Args:
        rewards: (batch,) one score per response; sequence_kl: (batch,) summed per-token estimates.
        kl_coef: beta.
    Returns:
        (batch,) shaped rewards.
    """
    return rewards - kl_coef * sequence_kl


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    unbiased: bool,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu et al. 2025, arXiv:2501.03262; the `reinforce` estimator of OpenRLHF).

    No critic: the advantage of a token is its discounted return-to-go, whitened over every
    counted token of the global batch (not per prompt), which is its baseline and scale:
        G_t = sum_{k >= t} gamma^(k-t) r_k,     A_t = (G_t - mean(G)) / sqrt(var(G) + eps)

    Args:
        rewards: (batch, response_len) per-token rewards, usually `kl_shaped_rewards(...)`.
        response_mask: (batch, response_len) bool, True = the token counts.
        gamma: discount (1.0 in the paper).
        unbiased: variance convention of the whitening, see `masked_var`.
        eps: added to the variance.
    Returns:
        advantages, returns: (batch, response_len) each, 0 where the mask is False. Pass the whole
        rollout batch: whitening a micro-batch alone would use different statistics.
    """
    returns = discounted_returns(rewards, response_mask, gamma)
    return masked_whiten(returns, response_mask, unbiased, eps=eps), returns


def penalise_unfinished(
    rewards: torch.Tensor, finished: torch.Tensor, penalty: float
) -> torch.Tensor:
    """r_i - penalty for each response cut at the length limit before its stop token (TRL's
    missing_eos_penalty); a finished response keeps its reward.

    Args:
        rewards: (batch,) one reward per response; finished: (batch,) bool, True = it stopped.
        penalty: >= 0; 0 returns `rewards` itself.
    """
    if not penalty:
        return rewards
    return rewards - penalty * (~finished.to(rewards.device)).to(rewards.dtype)
