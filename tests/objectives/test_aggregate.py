import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.objectives.aggregate import LossAggregation, aggregate_loss, loss_denominator
from rlhfkit.objectives.masked import masked_mean

LOSSES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")]])
MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_hand_values():
    # counted: row 0 -> 1, 2; row 1 -> 4
    assert aggregate_loss(LOSSES, MASK, LossAggregation.TOKEN_MEAN, 3).item() == pytest.approx(
        7 / 3
    )
    assert aggregate_loss(LOSSES, MASK, LossAggregation.SEQUENCE_MEAN, 2).item() == pytest.approx(
        (1.5 + 4.0) / 2
    )
    assert aggregate_loss(
        LOSSES, MASK, LossAggregation.CONSTANT_LENGTH, 2 * 4
    ).item() == pytest.approx(7 / 8)
    assert aggregate_loss(LOSSES, MASK, "token_mean", 3).item() == pytest.approx(7 / 3)


def test_local_denominators():
    assert loss_denominator(MASK, LossAggregation.TOKEN_MEAN).item() == 3
    assert loss_denominator(MASK, LossAggregation.SEQUENCE_MEAN).item() == 2
    assert loss_denominator(MASK, LossAggregation.CONSTANT_LENGTH, max_len=4).item() == 8
    # an empty response still counts as a sequence (its mean adds 0)
    assert (
        loss_denominator(torch.zeros(5, 3, dtype=torch.bool), LossAggregation.SEQUENCE_MEAN).item()
        == 5
    )
    with pytest.raises(ValueError, match="max_len"):
        loss_denominator(MASK, LossAggregation.CONSTANT_LENGTH)


def test_long_sequences_weigh_differently_per_aggregation():
    # row 0 has one token of loss 1, row 1 four tokens of loss 0
    losses = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    results = {
        aggregation: aggregate_loss(
            losses, mask, aggregation, loss_denominator(mask, aggregation, 4)
        ).item()
        for aggregation in LossAggregation
    }
    assert results == pytest.approx(
        {
            LossAggregation.TOKEN_MEAN: 1 / 5,
            LossAggregation.SEQUENCE_MEAN: 1 / 2,
            LossAggregation.CONSTANT_LENGTH: 1 / 8,
        }
    )


def random_batch(seed: int, rows: int, cols: int):
    generator = torch.Generator().manual_seed(seed)
    losses = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    mask = torch.rand(rows, cols, generator=generator) < 0.7
    return losses, mask


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 8),
    st.integers(1, 6),
    st.data(),
    st.sampled_from(list(LossAggregation)),
)
def test_halves_with_the_global_denominator_sum_to_the_whole(seed, rows, cols, data, aggregation):
    losses, mask = random_batch(seed, rows, cols)
    split = data.draw(st.integers(1, rows - 1))
    denominator = loss_denominator(mask, aggregation, max_len=cols).clamp(min=1)
    parts = [(losses[:split], mask[:split]), (losses[split:], mask[split:])]
    # the global denominator is the sum of the parts' denominators
    part_denominators = [
        loss_denominator(part_mask, aggregation, max_len=cols) for _, part_mask in parts
    ]
    assert sum(part_denominators) == loss_denominator(mask, aggregation, max_len=cols)
    whole = aggregate_loss(losses, mask, aggregation, denominator)
    halves = sum(
        aggregate_loss(part, part_mask, aggregation, denominator) for part, part_mask in parts
    )
    assert torch.allclose(halves, whole)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 6))
def test_with_their_own_denominators_the_forms_are_the_usual_means(seed, rows, cols):
    losses, mask = random_batch(seed, rows, cols)
    mask[0, 0] = True

    def aggregate(aggregation):
        return aggregate_loss(
            losses, mask, aggregation, loss_denominator(mask, aggregation, max_len=cols)
        )

    assert torch.allclose(aggregate(LossAggregation.TOKEN_MEAN), masked_mean(losses, mask))
    assert torch.allclose(
        aggregate(LossAggregation.SEQUENCE_MEAN), masked_mean(losses, mask, dim=1).mean()
    )
    assert torch.allclose(
        aggregate(LossAggregation.CONSTANT_LENGTH), torch.where(mask, losses, 0.0).mean()
    )
