import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.masked import masked_mean, masked_sum

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
