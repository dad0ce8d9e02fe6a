"""Prometheus histograms alone: buckets, sums, labels and their text exposition."""

import math

import pytest

from server.histogram import Histogram


def test_observations_fall_into_cumulative_buckets_with_sum_and_count() -> None:
    h = Histogram("x_seconds", "help", buckets=(0.1, 1.0, 5.0), labels=("api",))
    for value in [0.05, 0.1, 0.7, 3.0, 9.0]:  # 0.1 lies in its own bucket: "le" is <=
        h.observe(value, api="chat")
    h.observe(2.0, api="completions")
    assert h.count(api="chat") == 5 and h.count(api="completions") == 1
    assert h.count(api="none") == 0
    assert math.isclose(h.sum(api="chat"), 12.85)
    lines = h.render()
    assert lines[:2] == ["# HELP x_seconds help", "# TYPE x_seconds histogram"]
    assert lines[2:8] == [
        'x_seconds_bucket{api="chat",le="0.1"} 2',
        'x_seconds_bucket{api="chat",le="1.0"} 3',
        'x_seconds_bucket{api="chat",le="5.0"} 4',
        'x_seconds_bucket{api="chat",le="+Inf"} 5',
        'x_seconds_sum{api="chat"} 12.85',
        'x_seconds_count{api="chat"} 5',
    ]
    assert 'x_seconds_bucket{api="completions",le="1.0"} 0' in lines
    assert 'x_seconds_bucket{api="completions",le="5.0"} 1' in lines


def test_without_labels_and_unobserved() -> None:
    h = Histogram("y_seconds", "help", buckets=(1.0,))
    assert h.render() == ["# HELP y_seconds help", "# TYPE y_seconds histogram"]
    h.observe(0.5)
    assert h.render()[2:] == [
        'y_seconds_bucket{le="1.0"} 1', 'y_seconds_bucket{le="+Inf"} 1',
        "y_seconds_sum 0.5", "y_seconds_count 1",
    ]  # fmt: skip


def test_bad_buckets_labels_and_values_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram("z", "h", buckets=(1.0, 1.0))
    with pytest.raises(ValueError, match="finite"):
        Histogram("z", "h", buckets=(1.0, math.inf))
    h = Histogram("z", "h", labels=("api",))
    with pytest.raises(ValueError, match="takes labels"):
        h.observe(1.0)
    with pytest.raises(ValueError, match="NaN"):
        h.observe(math.nan, api="chat")
