import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.train.schedule import is_due, linear_warmup, warmup_cosine


def lr(step, total=100, warmup=10, min_ratio=0.1):
    return warmup_cosine(step, total_steps=total, warmup_steps=warmup, min_ratio=min_ratio)


def test_hand_values():
    assert lr(0) == pytest.approx(1 / 10)  # first step of a 10-step warm-up
    assert lr(4) == pytest.approx(5 / 10)
    assert lr(9) == pytest.approx(1.0)  # end of warm-up
    assert lr(10) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr(55) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay: cos(pi/2) = 0
    assert lr(10 + 45 // 2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))
    assert lr(100) == pytest.approx(0.1)  # the end: min_ratio
    assert lr(1000) == pytest.approx(0.1)  # past the end it stays there


def test_linear_warmup_hand_values_and_the_cosine_warmup_is_the_same():
    assert [linear_warmup(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert linear_warmup(0, 0) == 1.0 and linear_warmup(7, 1) == 1.0
    assert all(lr(step) == linear_warmup(step, 10) for step in range(10))


def test_no_warmup_starts_at_the_peak():
    assert lr(0, warmup=0) == pytest.approx(1.0)
    assert lr(50, warmup=0, min_ratio=0.0) == pytest.approx(0.5)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 200), st.integers(0, 50), st.floats(0.0, 1.0))
def test_rises_then_falls_within_min_ratio_and_one(total, warmup, min_ratio):
    values = [
        lr(s, total=total, warmup=warmup, min_ratio=min_ratio) for s in range(total + warmup + 5)
    ]
    peak = min(warmup, len(values) - 1)
    assert all(0.0 < v <= 1.0 + 1e-12 for v in values[:peak])
    assert all(min_ratio - 1e-12 <= v <= 1.0 + 1e-12 for v in values[peak:])
    assert all(a <= b + 1e-12 for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a >= b - 1e-12 for a, b in zip(values[peak:], values[peak + 1 :]))


def test_periodic_work_is_due_on_multiples_and_at_the_end_only_when_asked():
    due = [done for done in range(1, 11) if is_due(done, 4, 10, at_end=True)]
    assert due == [4, 8, 10]
    assert [done for done in range(1, 11) if is_due(done, 4, 10, at_end=False)] == [4, 8]
    # every = 0: never on the way (no division by zero), the end as asked
    assert [done for done in range(1, 11) if is_due(done, 0, 10, at_end=True)] == [10]
    assert not any(is_due(done, 0, 10, at_end=False) for done in range(1, 11))
