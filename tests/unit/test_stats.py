"""Nearest-rank percentiles."""

from schemas.stats import nearest_rank, percentile


def test_nearest_rank_returns_observed_values():
    values = list(range(1, 101))  # 1..100
    assert nearest_rank(values, [50, 90, 99, 99.9, 100]) == [50, 90, 99, 100, 100]
    assert nearest_rank(reversed(values), [1]) == [1]
    assert nearest_rank(range(1, 1001), [99.9]) == [999]


def test_empty_input():
    assert nearest_rank([], [50]) == []
    assert percentile([], 99) is None
    assert percentile([7.5], 99) == 7.5
