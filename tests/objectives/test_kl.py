import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.kl import (
    KLEstimator,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
    sampler_mismatch,
    sequence_kl,
)

LN2 = math.log(2.0)
# policy puts 1/2 then 1/4 on the two sampled tokens, the reference the reverse
LOGPROBS = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64)
REF_LOGPROBS = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64)


def exact_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum()


def test_hand_values():
    assert torch.allclose(
        kl_k1(LOGPROBS, REF_LOGPROBS), torch.tensor([[LN2, -LN2]], dtype=torch.float64)
    )
    assert torch.allclose(
        kl_k2(LOGPROBS, REF_LOGPROBS), torch.full((1, 2), 0.5 * LN2**2, dtype=torch.float64)
    )
    # d = ref - logp = (-ln 2, ln 2): e^d - d - 1 = (1/2 + ln 2 - 1, 2 - ln 2 - 1)
    expected_k3 = torch.tensor([[LN2 - 0.5, 1.0 - LN2]], dtype=torch.float64)
    assert torch.allclose(kl_k3(LOGPROBS, REF_LOGPROBS), expected_k3)


@pytest.mark.parametrize("estimator", list(KLEstimator))
def test_identical_policies_give_zero(estimator):
    logprobs = torch.log(torch.tensor([[0.1, 0.7, 0.2]]))
    assert torch.equal(kl_penalty(logprobs, logprobs.clone(), estimator), torch.zeros(1, 3))


def test_kl_penalty_picks_the_named_estimator():
    for estimator, function in [("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)]:
        expected = function(LOGPROBS, REF_LOGPROBS)
        assert torch.equal(kl_penalty(LOGPROBS, REF_LOGPROBS, KLEstimator(estimator)), expected)
        assert torch.equal(kl_penalty(LOGPROBS, REF_LOGPROBS, estimator), expected)
    with pytest.raises(ValueError):
        kl_penalty(LOGPROBS, REF_LOGPROBS, "k4")


@settings(max_examples=200, deadline=None)
@given(st.floats(-30.0, 0.0), st.floats(-30.0, 0.0))
def test_k2_and_k3_are_never_negative(logprob, ref_logprob):
    logprobs = torch.tensor([logprob], dtype=torch.float64)
    ref_logprobs = torch.tensor([ref_logprob], dtype=torch.float64)
    assert kl_k3(logprobs, ref_logprobs).item() >= 0.0
    assert kl_k2(logprobs, ref_logprobs).item() >= 0.0


def test_k3_keeps_precision_for_nearly_equal_policies():
    # k3 ~ d^2 / 2 = 5e-9 here; exp(d) - 1 in float32 would be off by about the float32 step
    # near 1 (1e-7), larger than the answer itself
    logprobs, ref_logprobs = torch.tensor([-1.0]), torch.tensor([-1.0001])
    exact = kl_k3(logprobs.double(), ref_logprobs.double()).item()
    assert kl_k3(logprobs, ref_logprobs).item() == pytest.approx(exact, rel=1e-2)
    d = ref_logprobs - logprobs
    assert (torch.exp(d) - d - 1).item() != pytest.approx(exact, rel=0.5)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_k1_and_k3_expectations_under_the_policy_are_exactly_the_kl(vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(vocab, generator=generator, dtype=torch.float64) * 2, 0)
    q = torch.softmax(torch.randn(vocab, generator=generator, dtype=torch.float64) * 2, 0)
    for estimator in (KLEstimator.K1, KLEstimator.K3):
        expectation = (p * kl_penalty(p.log(), q.log(), estimator)).sum()
        assert torch.allclose(expectation, exact_kl(p, q), atol=1e-10)


def test_monte_carlo_means_match_the_exact_kl():
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.35, 0.35, 0.2, 0.1], dtype=torch.float64)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=generator)
    logprobs, ref_logprobs = p.log()[samples].unsqueeze(0), q.log()[samples].unsqueeze(0)
    kl = exact_kl(p, q).item()
    estimates = {
        estimator: kl_penalty(logprobs, ref_logprobs, estimator) for estimator in KLEstimator
    }
    for estimator in (KLEstimator.K1, KLEstimator.K3):
        standard_error = estimates[estimator].std().item() / math.sqrt(samples.numel())
        assert abs(estimates[estimator].mean().item() - kl) < 4 * standard_error
    # k2 is biased, but only at third order in the log-ratio: close for nearby policies
    assert estimates[KLEstimator.K2].mean().item() == pytest.approx(kl, rel=0.1)
    # the reason to prefer k3 over k1: same mean, much smaller spread
    assert estimates[KLEstimator.K3].std() < 0.5 * estimates[KLEstimator.K1].std()


def test_k2_is_biased_for_distant_policies():
    # why k2 is not the default: with q far from p its expectation is far from the KL
    p = torch.tensor([0.9, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.9], dtype=torch.float64)
    k2_expectation = (p * kl_k2(p.log(), q.log())).sum()
    assert abs(k2_expectation - exact_kl(p, q)) > 0.2


def test_adaptive_kl_coef_hand_values():
    from rlhfkit.objectives.kl import adaptive_kl_coef

    # KL at 1.5x the target: error clipped to 0.2, beta grows by 0.2 * 64 / 1000
    assert adaptive_kl_coef(0.1, 9.0, 6.0, 1000, 64) == pytest.approx(0.1 * (1 + 0.2 * 0.064))
    # KL at half the target: error -0.2 (clipped from -0.5), beta shrinks
    assert adaptive_kl_coef(0.1, 3.0, 6.0, 1000, 64) == pytest.approx(0.1 * (1 - 0.2 * 0.064))
    # within the clip: error 0.1
    assert adaptive_kl_coef(0.1, 6.6, 6.0, 100, 50) == pytest.approx(0.1 * 1.05)
    assert adaptive_kl_coef(0.1, 6.0, 6.0, 100, 50) == pytest.approx(0.1)


def test_sequence_kl_sums_each_rows_unmasked_tokens():
    logprobs = torch.tensor([[LN2, 0.0, 5.0], [0.0, 0.0, 0.0]], dtype=torch.float64) - 2.0
    ref_logprobs = torch.zeros(2, 3, dtype=torch.float64) - 2.0
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = sequence_kl(logprobs, ref_logprobs, mask, KLEstimator.K1)
    assert torch.allclose(got, torch.tensor([LN2, 0.0], dtype=torch.float64))  # the 5.0 is padding
    # k3 with d = -ln 2 on the first token: 1/2 + ln 2 - 1; the zero log-ratio adds 0
    got = sequence_kl(logprobs, ref_logprobs, mask, KLEstimator.K3)
    assert torch.allclose(got, torch.tensor([LN2 - 0.5, 0.0], dtype=torch.float64))


def test_sequence_kl_estimates_the_exact_kl_of_a_two_step_process():
    # pi and pi_ref over sequences of two binary tokens, independent per step: the exact
    # sequence KL is the sum of the per-step KLs; the mean k1 and k3 over samples approach it
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.8, 0.3], dtype=torch.float64)  # P(token 1) at step 1, 2 under pi
    q = torch.tensor([0.5, 0.6], dtype=torch.float64)  # under pi_ref
    exact = sum(
        exact_kl(torch.stack([p[t], 1 - p[t]]), torch.stack([q[t], 1 - q[t]])) for t in range(2)
    )
    tokens = (torch.rand(200_000, 2, generator=g, dtype=torch.float64) < p).double()
    logprobs = tokens * p.log() + (1 - tokens) * (1 - p).log()
    ref_logprobs = tokens * q.log() + (1 - tokens) * (1 - q).log()
    mask = torch.ones(200_000, 2, dtype=torch.bool)
    for estimator in (KLEstimator.K1, KLEstimator.K3):
        assert abs(sequence_kl(logprobs, ref_logprobs, mask, estimator).mean() - exact) < 0.01


def test_clamp_bounds_each_token_estimate_by_hand():
    # log-ratios 12, -11 and 0.5: k1 clamped at 10 gives 10, -10, 0.5; k3 of d = -12 is
    # e^-12 + 12 - 1 = 11.000006..., clamped to 10; 0 leaves every estimate as it is
    logprobs = torch.tensor([[0.0, -11.0, -0.5]], dtype=torch.float64)
    ref_logprobs = torch.tensor([[-12.0, 0.0, -1.0]], dtype=torch.float64)
    k1 = kl_penalty(logprobs, ref_logprobs, KLEstimator.K1, clamp=10.0)
    assert torch.equal(k1, torch.tensor([[10.0, -10.0, 0.5]], dtype=torch.float64))
    assert kl_penalty(logprobs, ref_logprobs, KLEstimator.K3, clamp=10.0)[0, 0].item() == 10.0
    unclamped = kl_penalty(logprobs, ref_logprobs, KLEstimator.K1, clamp=0.0)
    assert torch.equal(unclamped, logprobs - ref_logprobs)
    mask = torch.tensor([[True, True, False]])
    assert sequence_kl(logprobs, ref_logprobs, mask, KLEstimator.K1, clamp=10.0).tolist() == [0.0]
    assert sequence_kl(logprobs, ref_logprobs, mask, KLEstimator.K1).tolist() == [1.0]


def test_clamped_tokens_pass_no_gradient():
    logprobs = torch.tensor([[0.0, -0.5]], requires_grad=True)
    ref_logprobs = torch.tensor([[-12.0, -1.0]])
    kl_penalty(logprobs, ref_logprobs, KLEstimator.K1, clamp=10.0).sum().backward()
    assert logprobs.grad.tolist() == [[0.0, 1.0]]


def test_sampler_mismatch_hand_values_and_naive_form():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -9.0]])
    sampler = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -0.75, -0.1]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    gap, ratio = sampler_mismatch(logprobs, sampler, mask)
    # |delta| on the counted tokens: 0.5, 0, 0, 0.5 (the masked 2.0 and 8.9 do not count)
    assert gap.item() == pytest.approx(0.25)
    assert ratio.item() == pytest.approx(math.exp(0.5))
    d = (logprobs - sampler)[mask]
    assert gap.item() == pytest.approx(d.abs().mean().item())
    assert ratio.item() == pytest.approx(d.abs().exp().max().item())


def test_k3_gradient_in_the_logprob_is_one_minus_the_probability_ratio():
    # d k3 / d log pi = 1 - pi_ref / pi (seed 003's GRPO KL coefficient); LOGPROBS against
    # REF_LOGPROBS have pi_ref / pi = 1/2 then 2, so 1/2 then -1; equal policies give 0
    logprobs = torch.cat([LOGPROBS, torch.tensor([[-0.7]], dtype=torch.float64)], dim=1)
    ref_logprobs = torch.cat([REF_LOGPROBS, torch.tensor([[-0.7]], dtype=torch.float64)], dim=1)
    expected = torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64)
    for estimate in (kl_k3, lambda a, b: kl_penalty(a, b, KLEstimator.K3)):
        current = logprobs.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(estimate(current, ref_logprobs).sum(), current)
        assert torch.allclose(grad, expected, atol=1e-12)


def test_k3_gradient_matches_its_closed_form_on_random_log_probs():
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(4, 16, generator=generator, dtype=torch.float64) * 6
    ref_logprobs = -torch.rand(4, 16, generator=generator, dtype=torch.float64) * 6
    current = logprobs.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_k3(current, ref_logprobs).sum(), current)
    naive = 1.0 - ref_logprobs.exp() / logprobs.exp()
    assert torch.allclose(grad, naive, rtol=1e-9, atol=1e-12)
