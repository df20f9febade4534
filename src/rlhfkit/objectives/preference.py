"""Direct preference losses on sequence log-probs: DPO (and its conservative form), IPO, and
Plackett-Luce for K-way rankings.

DPO (Rafailov et al. 2023; seeds 001, 003) reads the policy as a reward model through the
implicit reward r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)). With the log-ratio difference

    h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))

the per-pair losses are
    sigmoid (DPO):  -log sigmoid(beta h)
    conservative:   -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
                    (Mitchell 2023, cDPO: each label is wrong with probability eps)
    IPO:            (h - 1 / (2 beta))^2   (Azar et al. 2023, eq. 17, beta = tau)
and a ranking y_1 > ... > y_K has the Plackett-Luce loss (DPO paper, appendix A.3)
    -log P(order) = sum_i [logsumexp_{j >= i} r(x, y_j) - r(x, y_i)]
which is the sigmoid loss when K = 2. Log-probs are sums over response tokens in every variant,
IPO included (TRL length-normalises them for IPO; the IPO paper does not).
"""

from enum import Enum

import torch
import torch.nn.functional as F

from rlhfkit.objectives.masked import masked_sum


class DPOLoss(str, Enum):
    SIGMOID = "sigmoid"
    """-log sigmoid(beta h) (DPO); label smoothing eps > 0 gives conservative DPO."""
    IPO = "ipo"
    """(h - 1/(2 beta))^2: pulls h to a finite target instead of pushing it to infinity."""
    PLACKETT_LUCE = "plackett_luce"
    """Listwise: -log P(whole ranking) under Plackett-Luce; for K = 2 it equals sigmoid."""


def implicit_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, beta: float
) -> torch.Tensor:
    """r = beta * (log pi(y|x) - log pi_ref(y|x)), elementwise on sequence log-probs."""
    return beta * (logprobs - ref_logprobs)


def logratio_difference(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
) -> torch.Tensor:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), elementwise."""
    return (chosen_logprobs - ref_chosen_logprobs) - (rejected_logprobs - ref_rejected_logprobs)


def sigmoid_losses(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h); eps = 0 is plain DPO.
    `logsigmoid`, not `log(sigmoid)`, which underflows to -inf for a badly ordered pair."""
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
        -beta * h
    )


def ipo_losses(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """(h - 1/(2 beta))^2. Label smoothing is a property of the sigmoid likelihood; IPO has none."""
    if label_smoothing:
        raise ValueError(
            f"label smoothing is defined for the sigmoid loss only, got {label_smoothing} with ipo"
        )
    return (h - 1.0 / (2.0 * beta)).pow(2)


_PAIR_LOSSES = {DPOLoss.SIGMOID: sigmoid_losses, DPOLoss.IPO: ipo_losses}


def dpo_losses(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    *,
    beta: float,
    loss_type: DPOLoss,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair DPO or IPO losses (see the module docstring).

    Args:
        chosen_logprobs, rejected_logprobs: (pairs,) sequence log-probs under the policy.
        ref_chosen_logprobs, ref_rejected_logprobs: (pairs,) the same under the reference.
        beta: strength of the KL constraint (DPO's beta, IPO's tau).
        loss_type: sigmoid or ipo; plackett_luce works on whole rankings
            (`plackett_luce_dpo_losses`).
        label_smoothing: eps in [0, 0.5), the assumed label-noise rate (sigmoid only).
    Returns:
        (pairs,) losses.
    """
    loss_type = DPOLoss(loss_type)
    if loss_type not in _PAIR_LOSSES:
        raise ValueError(
            f"{loss_type.value} ranks whole lists, not pairs: use plackett_luce_dpo_losses"
        )
    h = logratio_difference(
        chosen_logprobs, rejected_logprobs, ref_chosen_logprobs, ref_rejected_logprobs
    )
    return _PAIR_LOSSES[loss_type](h, beta, label_smoothing)


def dpo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    *,
    beta: float,
    loss_type: DPOLoss,
    label_smoothing: float,
    weights: torch.Tensor,
    denominator: float | torch.Tensor,
) -> torch.Tensor:
    """sum_pairs w * dpo_losses(...) / denominator.

    weights: (pairs,) e.g. 1 / C(K,2) for the pairs of a K-way ranking (InstructGPT), 1 for pairs.
    denominator: e.g. the number of prompts in the whole (accumulated) batch.
    """
    losses = dpo_losses(
        chosen_logprobs,
        rejected_logprobs,
        ref_chosen_logprobs,
        ref_rejected_logprobs,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
    )
    return (weights * losses).sum() / denominator


def plackett_luce_nll(
    scores: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """-log P(ranking) under Plackett-Luce with utilities `scores`, one value per group.

    Args:
        scores: (groups, K) utility of each response, in any order along K.
        ranks: (groups, K) long, 0 = best; equal ranks are ties.
        mask: (groups, K) bool, True = a real response; False pads groups with fewer than K.
    Returns:
        (groups,) sum over real i of [logsumexp_{j real, rank_j >= rank_i} s_j - s_i].

    Without ties this is the Plackett-Luce negative log-likelihood of the order, whatever the
    order along K. Ties follow Breslow (1974), the standard for ties in Cox's partial likelihood
    (the same model): a tied response is chosen from every response not ranked strictly better,
    its tied partners included. The tied responses are then symmetric (no spurious order between
    them), and the loss is smallest when their scores are equal; pairwise DPO instead drops tied
    pairs. Naive equivalent for one group sorted best first, without ties or padding:
    `sum(torch.logsumexp(s[i:], 0) - s[i] for i in range(K))`; here every position's choice set
    is one row of a (groups, K, K) mask, so padding and ties need no loop.
    """
    size = scores.shape[-1]
    scores = torch.where(mask, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
    # choice[g, i, j]: response j is still in the choice set when response i is picked
    choice = (ranks.unsqueeze(-2) >= ranks.unsqueeze(-1)) & mask.unsqueeze(-2)
    # the diagonal keeps every set non-empty: a padded row gives lse(s_i) - s_i = 0, never -inf
    # (an all -inf logsumexp would send NaN through the gradient even where masked out)
    choice = choice | torch.eye(size, dtype=torch.bool, device=scores.device)
    candidates = scores.unsqueeze(-2).expand(choice.shape).masked_fill(~choice, float("-inf"))
    return masked_sum(torch.logsumexp(candidates, dim=-1) - scores, mask, dim=-1)


def plackett_luce_dpo_losses(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Per-group listwise DPO: `plackett_luce_nll` of the implicit rewards.

    Args:
        logprobs, ref_logprobs: (groups, K) sequence log-probs under the policy and reference.
        ranks: (groups, K) long, 0 = best; mask: (groups, K) bool, True = a real response.
        beta: the implicit reward's scale.
    Returns:
        (groups,) losses; with K = 2 and ranks (0, 1), the sigmoid DPO loss of the pair.
    """
    return plackett_luce_nll(implicit_rewards(logprobs, ref_logprobs, beta), ranks, mask)


def plackett_luce_dpo_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    denominator: float | torch.Tensor,
) -> torch.Tensor:
    """sum_groups plackett_luce_dpo_losses(...) / denominator (e.g. the number of groups)."""
    return (
        plackett_luce_dpo_losses(logprobs, ref_logprobs, ranks, mask, beta=beta).sum() / denominator
    )


def reward_margins(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """(pairs,) r(x, y_w) - r(x, y_l): how far each pair is ordered the right way."""
    return chosen_rewards - rejected_rewards


TIE_RTOL = 1e-6
"""Relative part of the tie tolerance: ~8 float32 epsilons of the size of what a margin was
computed from. The same log-prob computed along two paths (with and without gradient, another
batch shape, AVX2 or AVX-512 kernels) differs by about one ulp."""
TIE_ATOL = 1e-5
"""Absolute part of the tie tolerance, for margins computed from numbers near 0."""


def pair_outcomes(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    scale: torch.Tensor | None = None,
    rtol: float = TIE_RTOL,
    atol: float = TIE_ATOL,
) -> torch.Tensor:
    """Per pair: 1 if the chosen response has the higher reward, 0.5 for a tie, 0 otherwise.

    A margin m = r_w - r_l is a tie when |m| <= atol + rtol * scale (`torch.isclose`'s rule),
    so float rounding cannot turn a tie into a win or a loss: with the policy equal to its
    reference every DPO margin is 0 up to rounding, and the accuracy must be 0.5 on every CPU.

    Args:
        chosen_rewards, rejected_rewards: (pairs,) or (pairs, heads) rewards.
        scale: same shape, the size of the numbers each margin was computed from; default
            |r_w| + |r_l|. DPO's implicit rewards are small differences of large log-probs, so
            their rounding follows beta * (|log pi(y_w)| + |log pi_ref(y_w)| + the same for y_l).
    Returns:
        outcomes of the same shape. Naive form: `1 if m > tol else 0.5 if m >= -tol else 0`.
    """
    margins = reward_margins(chosen_rewards, rejected_rewards)
    if scale is None:
        scale = chosen_rewards.abs() + rejected_rewards.abs()
    tolerance = atol + rtol * scale
    return ((margins > tolerance).to(margins.dtype) + (margins >= -tolerance).to(margins.dtype)) / 2


def preference_accuracy(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    scale: torch.Tensor | None = None,
    rtol: float = TIE_RTOL,
    atol: float = TIE_ATOL,
) -> torch.Tensor:
    """Scalar share of pairs whose chosen response has the higher reward, a tie counting one
    half, as in reward-model pair accuracy: when the policy equals the reference every
    implicit reward is 0 and the accuracy is chance (0.5), not 0. Ties and `scale`: see
    `pair_outcomes`."""
    outcomes = pair_outcomes(chosen_rewards, rejected_rewards, scale=scale, rtol=rtol, atol=atol)
    return outcomes.mean()


def implicit_reward_scale(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, beta: float
) -> torch.Tensor:
    """beta * (|log pi(y|x)| + |log pi_ref(y|x)|), elementwise: the size that float rounding of
    the implicit reward is proportional to (a pair's scale is the sum over its two responses)."""
    return beta * (logprobs.abs() + ref_logprobs.abs())
