import pytest

from rlhfkit.eval.overoptimisation import gold_peak, moving_average


def test_moving_average_hand_values():
    assert moving_average([3.0, 1.0, 2.0, 6.0], window=2) == [3.0, 2.0, 1.5, 4.0]
    assert moving_average([1.0, 2.0], window=5) == [1.0, 1.5]


def test_gold_that_peaks_while_the_proxy_climbs_is_marked_at_its_peak():
    proxy = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    gold = [0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0, -1.0]
    assert gold_peak(proxy, gold, window=1) == 3
    # smoothing over 3 steps moves the peak to where the trailing mean is highest
    assert gold_peak(proxy, gold, window=3) == 4


def test_no_mark_when_gold_keeps_rising_or_the_proxy_falls_too():
    rising = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert gold_peak(rising, rising, window=1) is None
    both_fall = [0.0, 1.0, 2.0, 1.0, 0.0, -1.0]
    assert gold_peak(both_fall, both_fall, window=1) is None


def test_a_dip_smaller_than_min_drop_is_noise():
    proxy = [0.0, 1.0, 2.0, 3.0, 4.0]
    gold = [0.0, 5.0, 10.0, 9.8, 9.85]  # ends 1.5% of its range below the peak
    assert gold_peak(proxy, gold, window=1, min_drop=0.1) is None
    assert gold_peak(proxy, gold, window=1, min_drop=0.01) == 2


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="3 proxy values against 2 gold"):
        gold_peak([0.0, 1.0, 2.0], [0.0, 1.0])
