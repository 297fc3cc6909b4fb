"""SlidingQuantiles: exact order statistics of the last *size* samples."""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioheart.estimator import SlidingQuantiles

samples = st.lists(st.floats(min_value=0.0, max_value=1e4), min_size=1, max_size=300)
levels = st.floats(min_value=0.0, max_value=1.0)


def _reference(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


@given(values=samples, size=st.integers(min_value=2, max_value=70), q=levels)
def test_quantile_is_the_order_statistic_of_the_last_samples(
    values: list[float], size: int, q: float
) -> None:
    est = SlidingQuantiles(size)
    for value in values:
        est.add(value)
    kept = values[-size:]
    assert len(est) == len(kept) <= size
    assert est.values() == kept
    assert est.quantile(q) == _reference(kept, q)
    # Never below the empirical q-quantile: at least a fraction q of the
    # kept samples are at or below the answer.
    assert sum(v <= est.quantile(q) for v in kept) >= q * len(kept)


def test_a_trimmed_mean_of_equal_samples_is_that_sample() -> None:
    """Found by hypothesis: 0.025 three times summed and divided rounds above 0.025."""
    est = SlidingQuantiles(8)
    for _ in range(3):
        est.add(0.025)
    assert est.mean_up_to(0.99) == 0.025
    assert est.summary(0.99)[4] == 0.025


@given(values=samples, size=st.integers(min_value=2, max_value=70), q=levels)
def test_summary_agrees_with_quantile_and_trimmed_mean(
    values: list[float], size: int, q: float
) -> None:
    est = SlidingQuantiles(size)
    for value in values:
        est.add(value)
    q25, q50, q75, qq, mean = est.summary(q)
    assert (q25, q50, q75, qq) == (
        est.quantile(0.25),
        est.quantile(0.5),
        est.quantile(0.75),
        est.quantile(q),
    )
    kept = sorted(values[-size:])
    count = min(len(kept), max(1, math.ceil(q * len(kept))))
    assert mean == pytest.approx(sum(kept[:count]) / count)
    assert est.mean_up_to(q) == pytest.approx(mean)
    assert kept[0] <= mean <= qq


def test_empty_estimator_answers_nan() -> None:
    est = SlidingQuantiles(8)
    assert math.isnan(est.quantile(0.5))
    assert math.isnan(est.mean_up_to(0.5))
    assert all(math.isnan(v) for v in est.summary(0.9))


def test_nan_sample_is_refused_and_changes_nothing() -> None:
    est = SlidingQuantiles(4)
    est.add(1.0)
    with pytest.raises(ValueError, match="NaN"):
        est.add(math.nan)
    assert est.values() == [1.0]


@pytest.mark.parametrize("size", [0, 1, 4097, 2.5, True, "8"])
def test_size_out_of_range_is_refused(size: object) -> None:
    with pytest.raises(ValueError, match="size must be an integer"):
        SlidingQuantiles(size)  # type: ignore[arg-type]


def test_memory_stays_bounded() -> None:
    est = SlidingQuantiles(64)
    for i in range(64):
        est.add(float(i))
    full = sys.getsizeof(est._ring) + sys.getsizeof(est._sorted)
    for i in range(10_000):
        est.add(float(i % 97))
    assert sys.getsizeof(est._ring) + sys.getsizeof(est._sorted) == full
    assert len(est) == 64
