import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.masked import masked_mean, masked_sum, masked_var, masked_whiten

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[True, False, True], [False, False, True]])


def test_masked_sum_hand_values():
    assert masked_sum(VALUES, MASK).item() == 1.0 + 3.0 + 6.0
    assert torch.equal(masked_sum(VALUES, MASK, dim=1), torch.tensor([4.0, 6.0]))
    assert torch.equal(masked_sum(VALUES, MASK, dim=0), torch.tensor([1.0, 0.0, 9.0]))


def test_masked_mean_hand_values():
    assert masked_mean(VALUES, MASK).item() == pytest.approx(10.0 / 3)
    assert torch.allclose(masked_mean(VALUES, MASK, dim=1), torch.tensor([2.0, 6.0]))
    # column 1 has no True element: 0, not NaN
    assert torch.allclose(masked_mean(VALUES, MASK, dim=0), torch.tensor([1.0, 0.0, 4.5]))


def test_masked_values_do_not_leak_even_when_not_finite():
    # torch.where, not multiplication: inf * 0 would be NaN
    values = torch.tensor([1.0, float("inf"), float("nan")])
    mask = torch.tensor([True, False, False])
    assert masked_sum(values, mask).item() == 1.0
    assert masked_mean(values, mask).item() == 1.0


def test_all_false_mask_gives_zero_not_nan():
    mask = torch.zeros_like(MASK)
    assert masked_sum(VALUES, mask).item() == 0.0
    assert masked_mean(VALUES, mask).item() == 0.0
    assert torch.equal(masked_mean(VALUES, mask, dim=1), torch.zeros(2))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_masked_mean_equals_naive_mean_over_selected_elements(rows, cols, seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    mask = torch.rand(rows, cols, generator=generator) < 0.5
    expected = values[mask].mean() if mask.any() else torch.tensor(0.0, dtype=torch.float64)
    assert torch.allclose(masked_mean(values, mask), expected)
    for row in range(rows):
        selected = values[row][mask[row]]
        naive = selected.mean() if len(selected) else torch.tensor(0.0, dtype=torch.float64)
        assert torch.allclose(masked_mean(values, mask, dim=1)[row], naive)


def test_masked_var_hand_values():
    # selected 1, 3, 6: mean 10/3, squared deviations 49/9 + 1/9 + 64/9 = 114/9
    assert masked_var(VALUES, MASK, unbiased=False).item() == pytest.approx(114 / 27)
    assert masked_var(VALUES, MASK, unbiased=True).item() == pytest.approx(114 / 18)
    # row 0 selects (1, 3); row 1 only 6, whose variance is 0 either way (no NaN for n - 1 = 0)
    assert torch.allclose(masked_var(VALUES, MASK, unbiased=False, dim=1), torch.tensor([1.0, 0.0]))
    assert torch.allclose(masked_var(VALUES, MASK, unbiased=True, dim=1), torch.tensor([2.0, 0.0]))
    assert masked_var(VALUES, torch.zeros_like(MASK), unbiased=True).item() == 0.0


def test_masked_var_ignores_non_finite_padding():
    values = torch.tensor([2.0, 4.0, float("inf"), float("nan")])
    mask = torch.tensor([True, True, False, False])
    assert masked_var(values, mask, unbiased=False).item() == 1.0


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(2, 7), st.integers(0, 2**31 - 1), st.booleans())
def test_masked_var_equals_torch_var_over_selected_elements(rows, cols, seed, unbiased):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols, generator=generator, dtype=torch.float64) * 3 + 1
    mask = torch.rand(rows, cols, generator=generator) < 0.6
    mask[0, :2] = True  # at least two elements, where torch.var is defined for both conventions
    expected = values[mask].var(correction=int(unbiased))
    assert torch.allclose(masked_var(values, mask, unbiased), expected)
    per_row = masked_var(values, mask, unbiased, dim=1)
    for row in range(rows):
        selected = values[row][mask[row]]
        if len(selected) >= 2:
            assert torch.allclose(per_row[row], selected.var(correction=int(unbiased)))


def test_masked_whiten_hand_values():
    values = torch.tensor([0.0, 4.0, 100.0])
    mask = torch.tensor([True, True, False])
    # mean 2; population variance 4, Bessel variance 8; the padded 100 becomes 0
    assert torch.allclose(
        masked_whiten(values, mask, unbiased=False, eps=0.0), torch.tensor([-1.0, 1.0, 0.0])
    )
    half_root2 = 2**-0.5
    got = masked_whiten(values, mask, unbiased=True, eps=0.0)
    assert torch.allclose(got, torch.tensor([-half_root2, half_root2, 0.0]))
    # shift_mean=False rescales around the mean and keeps it
    got = masked_whiten(values, mask, unbiased=False, shift_mean=False, eps=0.0)
    assert torch.allclose(got, torch.tensor([1.0, 3.0, 0.0]))


def test_masked_whiten_of_constant_values_is_zero_thanks_to_eps():
    values, mask = torch.full((2, 3), 5.0), torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(masked_whiten(values, mask, unbiased=True), torch.zeros(2, 3))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(2, 7), st.integers(0, 2**31 - 1), st.booleans())
def test_masked_whiten_gives_zero_mean_unit_variance_on_selected_elements(
    rows, cols, seed, unbiased
):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols, generator=generator, dtype=torch.float64) * 5 - 2
    mask = torch.rand(rows, cols, generator=generator) < 0.6
    mask[0, :2] = True
    values[1:, :][~mask[1:, :]] = float("nan")  # padding is never read
    whitened = masked_whiten(values, mask, unbiased, eps=0.0)
    selected = values[mask]
    expected = (selected - selected.mean()) / selected.std(correction=int(unbiased))
    assert torch.allclose(whitened[mask], expected)
    assert torch.equal(whitened[~mask], torch.zeros_like(whitened[~mask]))
    kept_mean = masked_whiten(values, mask, unbiased, shift_mean=False, eps=0.0)
    assert torch.allclose(kept_mean[mask], expected + selected.mean())
