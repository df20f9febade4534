import math
import random

import pytest

from rlhfkit.eval.intervals import bootstrap_interval, mean, mean_with_interval
from rlhfkit.eval.win_rate import wilson_interval


def test_a_constant_list_has_a_zero_width_interval_at_the_constant():
    low, high = bootstrap_interval([0.7] * 50)
    assert low == high and low == pytest.approx(0.7, abs=1e-12)


def test_empty_and_single_value_edge_cases():
    # one value: every resample is that value, and a zero-width interval would read as certainty
    for values in ([], [3.5]):
        low, high = bootstrap_interval(values)
        assert math.isnan(low) and math.isnan(high)
    empty = mean_with_interval([])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
    assert empty["low"] is None and empty["high"] is None
    assert mean_with_interval([3.5]) == {"mean": 3.5, "low": None, "high": None, "n": 1}


def test_the_interval_contains_the_sample_mean():
    rng = random.Random(1)
    values = [rng.gauss(2.0, 1.0) for _ in range(200)]
    result = mean_with_interval(values)
    assert result["n"] == 200 and result["mean"] == pytest.approx(sum(values) / 200)
    assert result["low"] < result["mean"] < result["high"]


def test_on_binary_data_the_bootstrap_agrees_with_wilson():
    values = [1.0] * 120 + [0.0] * 280  # n = 400, p = 0.3; half-width about 1.96 * 0.0229 = 0.045
    low, high = bootstrap_interval(values)
    wilson_low, wilson_high = wilson_interval(120, 400)
    assert low == pytest.approx(wilson_low, abs=0.01) and high == pytest.approx(
        wilson_high, abs=0.01
    )
    assert high - low > 0.08  # a real width, not a collapsed interval


def test_the_seed_fixes_the_interval():
    rng = random.Random(2)
    values = [rng.random() for _ in range(30)]
    assert bootstrap_interval(values, seed=5) == bootstrap_interval(values, seed=5)
    assert bootstrap_interval(values, seed=5) != bootstrap_interval(values, seed=6)


def test_the_global_random_state_is_untouched():
    random.seed(123)
    state = random.getstate()
    bootstrap_interval([1.0, 2.0, 4.0, 8.0], num_resamples=50)
    assert random.getstate() == state


def test_a_lower_level_gives_a_narrower_interval_inside_the_wider_one():
    rng = random.Random(3)
    values = [rng.expovariate(1.0) for _ in range(100)]
    narrow, wide = bootstrap_interval(values, level=0.5), bootstrap_interval(values, level=0.95)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_the_bounds_interpolate_between_sorted_replicates():
    # a statistic that ignores its input and counts 10, 9, ..., 0: the sorted replicates are
    # 0..10, so at level 0.9 the bounds sit at positions 0.05 * 10 = 0.5 and 0.95 * 10 = 9.5
    countdown = iter(range(10, -1, -1))
    assert bootstrap_interval(
        [1.0, 2.0], statistic=lambda _: next(countdown), num_resamples=11, level=0.9
    ) == pytest.approx((0.5, 9.5))


def test_other_statistics():
    # each resample of [1, 5] has max 5 with probability 3/4 and 1 with 1/4, so both
    # values fill more than the outer 1% of the replicates
    assert bootstrap_interval([1.0, 5.0], statistic=max, level=0.98) == (1.0, 5.0)
    assert mean([1.0, 2.0, 6.0]) == 3.0


@pytest.mark.parametrize("options", [dict(level=0.0), dict(level=1.0), dict(num_resamples=0)])
def test_invalid_options_are_rejected(options):
    with pytest.raises(ValueError):
        bootstrap_interval([1.0, 2.0], **options)


def test_the_cluster_bootstrap_draws_whole_clusters():
    # each cluster's values all equal its own: drawing clusters is drawing those values, so the
    # interval is the plain bootstrap's over one value per cluster (the same draws, same seed)
    per_cluster = [0.1, 0.9, 0.4, 0.7, 0.2]
    values = [v for v in per_cluster for _ in range(3)]
    clusters = [c for c in range(5) for _ in range(3)]
    clustered = bootstrap_interval(values, clusters=clusters, seed=3)
    assert clustered == pytest.approx(bootstrap_interval(per_cluster, seed=3))
    # ... and wider than the bootstrap that takes the 15 values as independent
    low, high = bootstrap_interval(values, seed=3)
    assert clustered[1] - clustered[0] > 1.5 * (high - low)


def test_one_cluster_has_no_interval_and_clusters_must_match_the_values():
    # one prompt's samples say nothing of how other prompts would score: no (2.0, 2.0)
    low, high = bootstrap_interval([1.0, 3.0], clusters=["a", "a"])
    assert math.isnan(low) and math.isnan(high)
    one_prompt = mean_with_interval([1.0, 3.0], clusters=["a", "a"])
    assert one_prompt == {"mean": 2.0, "low": None, "high": None, "n": 2}
    with pytest.raises(ValueError):
        bootstrap_interval([1.0, 3.0], clusters=["a"])
    assert mean_with_interval([1.0, 3.0], clusters=[0, 1])["n"] == 2
