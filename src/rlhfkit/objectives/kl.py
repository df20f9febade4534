"""Per-token estimators of KL(pi_theta || pi_ref) from the log-probabilities of sampled tokens.

With tokens sampled from pi_theta and log_ratio = logprobs - ref_logprobs (Schulman, "Approximating
KL divergence", 2020):
    k1 = log_ratio                            unbiased, can be negative, high variance
    k2 = 0.5 * log_ratio^2                    biased, >= 0, low variance near pi_theta = pi_ref
    k3 = exp(-log_ratio) - (-log_ratio) - 1   unbiased, >= 0, low variance
InstructGPT puts k1 into the per-token reward (seed 001); GRPO (DeepSeekMath) adds k3 to the loss.
An optional clamp bounds each token's estimate to [-clamp, clamp] (OpenRLHF and veRL clamp at 10):
one token the reference finds very unlikely then cannot dominate the penalty or its gradient.
"""

from enum import Enum

import torch

from rlhfkit.objectives.masked import masked_sum


class KLEstimator(str, Enum):
    K1 = "k1"
    """log(pi / pi_ref): unbiased, can be negative."""
    K2 = "k2"
    """0.5 * log(pi / pi_ref)^2: biased, never negative."""
    K3 = "k3"
    """pi_ref / pi - log(pi_ref / pi) - 1: unbiased and never negative (GRPO)."""


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(y_t) - log pi_ref(y_t); E_pi[k1] = KL(pi || pi_ref)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi(y_t) - log pi_ref(y_t))^2; E_pi[k2] = KL + O(log_ratio^3)."""
    return 0.5 * (logprobs - ref_logprobs).pow(2)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(d) - d - 1 with d = log pi_ref(y_t) - log pi(y_t); E_pi[k3] = KL(pi || pi_ref).

    E_pi[exp(d) - 1] = sum_y pi_ref(y) - 1 = 0, so k3 is k1 plus a zero-mean control variate;
    exp(d) >= 1 + d makes every sample non-negative.
    """
    neg_log_ratio = ref_logprobs - logprobs
    # expm1 keeps precision when the two policies are close (d near 0), the usual case
    return torch.expm1(neg_log_ratio) - neg_log_ratio


_KL_ESTIMATORS = {KLEstimator.K1: kl_k1, KLEstimator.K2: kl_k2, KLEstimator.K3: kl_k3}


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator, clamp: float = 0.0
) -> torch.Tensor:
    """Per-token KL estimate of the chosen kind; masking and reduction are left to the caller.

    Args:
        logprobs: (batch, response_len) log pi_theta of the sampled tokens.
        ref_logprobs: (batch, response_len) log pi_ref of the same tokens.
        estimator: k1, k2 or k3 (see the module docstring).
        clamp: > 0 clamps every estimate to [-clamp, clamp] (no gradient beyond it); 0 = none.
    Returns:
        (batch, response_len) per-token estimates, padding included (reduce with a response_mask).
    """
    per_token = _KL_ESTIMATORS[KLEstimator(estimator)](logprobs, ref_logprobs)
    return per_token.clamp(-clamp, clamp) if clamp > 0 else per_token


def adaptive_kl_coef(
    coef: float, observed_kl: float, target: float, horizon: int, batch_size: int
) -> float:
    """The next KL coefficient of the adaptive controller (Ziegler et al. 2019, "Fine-Tuning
    Language Models from Human Preferences"), a proportional controller on log(beta):

        error = clip(observed_kl / target - 1, -0.2, 0.2)
        beta <- beta * (1 + error * batch_size / horizon)

    Args:
        coef: the current beta; observed_kl: mean KL per sequence (nats) of the last batch;
        target: the KL the controller steers to; horizon: samples over which to close the gap;
        batch_size: samples in the last batch.
    """
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * batch_size / horizon)


def sequence_kl(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    estimator: KLEstimator,
    clamp: float = 0.0,
) -> torch.Tensor:
    """KL(pi || pi_ref) of each sampled response: the per-token estimates summed over its tokens.

    For responses sampled from pi (at temperature 1), the mean over responses of the k1 or k3
    sum is an unbiased estimate of the sequence-level KL(pi(.|x) || pi_ref(.|x)), because the
    sequence KL is the expected sum of the per-token log-ratios (chain rule of KL).

    Args:
        logprobs, ref_logprobs: (batch, response_len) log-probs of the sampled tokens.
        response_mask: (batch, response_len) bool, True = a response token (padding False).
        estimator: k1, k2 or k3 (k2 is biased; named so that reports say which was used).
        clamp: the per-token clamp of `kl_penalty` (0 = none).
    Returns:
        (batch,) summed estimates; divide their sum by response_mask.sum() for nats per token.
    """
    return masked_sum(kl_penalty(logprobs, ref_logprobs, estimator, clamp), response_mask, dim=-1)


def sampler_mismatch(
    logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """How far the training forward's log-probs are from the sampler's for the same tokens and
    weights: (mean |delta| over response tokens, largest exp(|delta|)). Both should be ~0 and ~1;
    a different precision, kernel or cache path in the sampler shows up here before it biases
    the importance ratios (TRL #4772).

    Naive equivalent: d = (logprobs - sampler_logprobs)[mask]; (d.abs().mean(), d.abs().exp().max())
    """
    gap = (logprobs.detach() - sampler_logprobs).abs() * response_mask
    tokens = response_mask.sum().clamp(min=1)
    return gap.sum() / tokens, gap.max().exp()
