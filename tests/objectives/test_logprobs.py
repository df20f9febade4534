import math

import pytest
import torch

from rlhfkit.objectives.logprobs import (
    entropy_from_logits,
    sequence_logprobs,
    shift_for_next_token,
    token_logprobs,
    token_logprobs_and_entropy,
)


def naive_token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_logprobs_equals_naive_log_softmax_gather(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, 17, generator=generator) * 4
    token_ids = torch.randint(0, 17, (3, 5), generator=generator)
    got = token_logprobs(logits, token_ids)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    assert torch.allclose(got, naive_token_logprobs(logits, token_ids), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_are_computed_in_float32(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 4, 300, generator=generator) * 3).to(dtype)
    token_ids = torch.randint(0, 300, (2, 4), generator=generator)
    got = token_logprobs(logits, token_ids)
    assert got.dtype == torch.float32
    # the reference is the same (rounded) logits, cast up before the softmax
    assert torch.allclose(got, naive_token_logprobs(logits, token_ids), atol=1e-6, rtol=0)


def test_float64_logits_keep_their_precision():
    logits = torch.randn(1, 2, 5, dtype=torch.float64)
    assert token_logprobs(logits, torch.zeros(1, 2, dtype=torch.long)).dtype == torch.float64


def test_two_token_hand_example():
    # position 0: logits (0, 0, ln 2) -> p = (1/4, 1/4, 1/2);
    # position 1: logits (1, 1, 1) -> 1/3 each
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)], [1.0, 1.0, 1.0]]])
    got = token_logprobs(logits, torch.tensor([[2, 0]]))
    assert torch.allclose(got, torch.tensor([[math.log(0.5), math.log(1 / 3)]]), atol=1e-7)
    got = token_logprobs(logits, torch.tensor([[0, 1]]))
    assert torch.allclose(got, torch.tensor([[math.log(0.25), math.log(1 / 3)]]), atol=1e-7)


def test_shift_for_next_token_aligns_logits_at_t_with_token_t_plus_1():
    batch, seq, vocab = 2, 5, 7
    logits = (
        torch.arange(batch * seq, dtype=torch.float)
        .reshape(batch, seq, 1)
        .expand(batch, seq, vocab)
    )
    input_ids = torch.arange(batch * seq).reshape(batch, seq)
    mask = torch.tensor([[False, False, True, True, False], [False, True, True, True, True]])
    shifted_logits, targets, target_mask = shift_for_next_token(logits, input_ids, mask)
    assert shifted_logits.shape == (batch, seq - 1, vocab)
    assert targets.shape == target_mask.shape == (batch, seq - 1)
    # the logits made at position t (value t here) predict the token at t + 1
    assert torch.equal(shifted_logits[..., 0].long() + 1, targets)
    assert torch.equal(targets, input_ids[:, 1:])
    assert torch.equal(target_mask, mask[:, 1:])


def test_sequence_logprobs_hand_example():
    # tokens (x, 2, 0): position 0 predicts 2 with p = 1/2, position 1 predicts 0 with p = 1/3
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)], [1.0, 1.0, 1.0], [5.0, 0.0, 0.0]]]).repeat(
        2, 1, 1
    )
    input_ids = torch.tensor([[1, 2, 0], [1, 2, 0]])
    # row 0: both tokens are response; row 1: only the last (the 2 is prompt)
    response_mask = torch.tensor([[False, True, True], [False, False, True]])
    got = sequence_logprobs(logits, input_ids, response_mask)
    assert torch.allclose(
        got, torch.tensor([math.log(0.5) + math.log(1 / 3), math.log(1 / 3)]), atol=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_sequence_logprobs_equals_a_loop_over_response_tokens(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, 11, generator=generator) * 3
    input_ids = torch.randint(0, 11, (3, 6), generator=generator)
    response_mask = torch.tensor(
        [[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool
    )
    expected = torch.zeros(3)
    for row in range(3):
        for t in range(1, 6):
            if response_mask[row, t]:
                expected[row] += logits[row, t - 1].log_softmax(-1)[input_ids[row, t]]
    got = sequence_logprobs(logits, input_ids, response_mask)
    assert torch.allclose(got, expected, atol=1e-5) and got[2].item() == 0.0


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def test_entropy_hand_values():
    # uniform over 4 -> ln 4; (1/4, 1/4, 1/2) -> 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2
    # the -1e4 token has (numerically) zero probability and adds nothing
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0), -1e4]]])
    assert torch.allclose(
        entropy_from_logits(logits), torch.tensor([[math.log(4.0), 1.5 * math.log(2.0)]]), atol=1e-6
    )
    # one dominant logit: nearly deterministic
    assert entropy_from_logits(torch.tensor([[[50.0, 0.0, 0.0]]])).item() == pytest.approx(
        0.0, abs=1e-12
    )


def test_masked_logits_give_the_entropy_of_the_tokens_left():
    inf = float("inf")
    # softmax([0, 0, -inf]) = (1/2, 1/2, 0) -> ln 2; (1/3, 2/3, 0, 0) -> ln 3 - (2/3) ln 2
    logits = torch.tensor([[[0.0, 0.0, -inf, -inf], [0.0, math.log(2.0), -inf, -inf]]])
    want = torch.tensor([[math.log(2.0), math.log(3.0) - 2.0 / 3.0 * math.log(2.0)]])
    assert torch.allclose(entropy_from_logits(logits), want, atol=1e-6)
    assert torch.allclose(entropy_from_logits(logits.bfloat16()), want, atol=1e-2)
    # a gradient through masked logits is finite too (0 on the masked tokens)
    logits.requires_grad_(True)
    entropy_from_logits(logits).sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[0, 1, 2:] == 0).all()


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_masked_logits_equal_the_naive_entropy_of_the_top_k(k):
    generator = torch.Generator().manual_seed(k)
    logits = torch.randn(2, 4, 17, generator=generator) * 3
    top = logits.topk(k, dim=-1)
    masked = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
    got = entropy_from_logits(masked)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, naive_entropy(top.values), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_equals_naive_softmax_times_log_softmax(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, 17, generator=generator) * 4
    got = entropy_from_logits(logits)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    assert torch.allclose(got, naive_entropy(logits), atol=1e-5, rtol=0)
    assert (got >= -1e-6).all() and (got <= math.log(17) + 1e-5).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_entropy_of_half_precision_logits_is_computed_in_float32(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 4, 300, generator=generator) * 3).to(dtype)
    got = entropy_from_logits(logits)
    assert got.dtype == torch.float32
    assert torch.allclose(got, naive_entropy(logits), atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_head_logprobs_equal_the_plain_log_softmax_with_the_same_gradients(chunk):
    from rlhfkit.objectives.logprobs import entropy_from_logits, head_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    logprobs, entropy = head_logprobs(
        hidden, weight, targets, temperature=1.3, with_entropy=True, chunk=chunk
    )
    logits = hidden @ weight.T / 1.3
    naive = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs, naive, atol=1e-12)
    assert torch.allclose(entropy, entropy_from_logits(logits.detach()), atol=1e-12)
    upstream = torch.randn(37, dtype=torch.float64)
    got = torch.autograd.grad((logprobs * upstream).sum(), (hidden, weight))
    want = torch.autograd.grad((naive * upstream).sum(), (hidden, weight))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12)


def test_head_logprobs_hand_value_and_no_entropy_when_not_asked():
    from rlhfkit.objectives.logprobs import head_logprobs

    # logits [0, ln 3] for the one row: p(token 1) = 3 / 4
    hidden = torch.tensor([[1.0]])
    weight = torch.tensor([[0.0], [math.log(3.0)]])
    logprobs, entropy = head_logprobs(hidden, weight, torch.tensor([1]))
    assert torch.allclose(logprobs, torch.tensor([math.log(0.75)])) and entropy is None


def test_head_logprobs_with_a_masked_logit():
    from rlhfkit.objectives.logprobs import head_logprobs

    # 1e20 * -1e20 overflows float32 to -inf: logits [0, 0, -inf], entropy ln 2, p(token 0) = 1/2
    hidden = torch.tensor([[1e20]], requires_grad=True)
    weight = torch.tensor([[0.0], [0.0], [-1e20]])
    logprobs, entropy = head_logprobs(hidden, weight, torch.tensor([0]), with_entropy=True)
    assert torch.allclose(entropy, torch.tensor([math.log(2.0)]))
    assert torch.allclose(logprobs, torch.tensor([-math.log(2.0)]))
    logprobs.sum().backward()
    assert torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("masked", [False, True])
def test_logprobs_and_entropy_from_one_log_softmax_equal_the_two_apart(masked):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 33, generator=generator) * 3
    if masked:  # top-k style: -inf outside each row's 4 largest
        top = logits.topk(4, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
        token_ids = top.indices[..., 1]
    else:
        token_ids = torch.randint(0, 33, (2, 5), generator=generator)
    together = logits.clone().requires_grad_(True)
    apart = logits.clone().requires_grad_(True)
    logprobs, entropy = token_logprobs_and_entropy(together, token_ids)
    want = token_logprobs(apart, token_ids)
    assert torch.allclose(logprobs, want, atol=1e-6, rtol=0)
    assert torch.allclose(
        entropy, naive_entropy(logits.masked_fill(logits.isinf(), -1e9)), atol=1e-5
    )
    assert not entropy.requires_grad  # a metric
    weights = torch.linspace(0.5, 1.5, 10).view(2, 5)
    (logprobs * weights).sum().backward()
    (want * weights).sum().backward()
    assert torch.isfinite(together.grad).all()
    assert torch.allclose(together.grad, apart.grad, atol=1e-6, rtol=0)
