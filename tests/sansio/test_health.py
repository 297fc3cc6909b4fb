"""The health score and the interval it implies: exact formulas and invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioheart.health import STEADY_SCORE, HealthScore, interval_for, score

unit = st.floats(min_value=0.0, max_value=1.0)
anything = st.floats(allow_nan=True, allow_infinity=True)
rtt = st.floats(min_value=0.0, max_value=120.0)


def test_score_formula() -> None:
    # 1 - (0.5 * late + 0.2 * irregularity + 0.15 * spread + 0.15 * level)
    value = score(late=0.2, irregularity=0.5, rtt_p50=0.1, rtt_hi=0.4)
    spread = (0.4 - 0.1) / 0.4
    level = 0.1 / (0.1 + 1.0)
    assert value == pytest.approx(1 - (0.5 * 0.2 + 0.2 * 0.5 + 0.15 * spread + 0.15 * level))


def test_perfect_and_hopeless_paths() -> None:
    assert score(late=0.0, irregularity=0.0, rtt_p50=math.nan, rtt_hi=math.nan) == 1.0
    assert score(late=1.0, irregularity=1.0, rtt_p50=1e9, rtt_hi=1e-9) == pytest.approx(
        0.15, abs=1e-6
    )  # spread is clipped to [0, 1]: a high quantile below the median is no spread


@given(late=anything, irregularity=anything, rtt_p50=anything, rtt_hi=anything)
def test_score_stays_in_unit_interval(
    late: float, irregularity: float, rtt_p50: float, rtt_hi: float
) -> None:
    value = score(late=late, irregularity=irregularity, rtt_p50=rtt_p50, rtt_hi=rtt_hi)
    assert 0.0 <= value <= 1.0


events = st.lists(
    st.one_of(
        st.none(),
        st.tuples(st.booleans(), st.one_of(st.none(), unit)),
        st.tuples(rtt, rtt),
    ),
    max_size=200,
)


@given(events=events)
def test_score_stays_in_unit_interval_and_misses_never_help(
    events: list[tuple[bool, float | None] | tuple[float, float] | None],
) -> None:
    health = HealthScore()
    for event in events:
        if event is None:
            health = health.with_missed_pong()
        elif isinstance(event[0], bool):
            late, irregularity = event
            health = health.with_pong(late=late, irregularity=irregularity)
        else:
            p50, hi = sorted(event)
            health = health.with_rtts(rtt_p50=p50, rtt_hi=hi)
        assert 0.0 <= health.value <= 1.0
        assert health.with_missed_pong().value <= health.value
        assert health.with_pong(late=True).value <= health.with_pong(late=False).value


def test_interval_formula_is_piecewise_linear_through_the_base() -> None:
    kwargs = {"ping_interval": 10.0, "min_interval": 2.0, "max_interval": 30.0}
    assert interval_for(0.0, **kwargs) == 2.0
    assert interval_for(STEADY_SCORE, **kwargs) == pytest.approx(10.0)
    assert interval_for(1.0, **kwargs) == 30.0
    assert interval_for(STEADY_SCORE / 2, **kwargs) == pytest.approx(6.0)
    assert interval_for(0.9, **kwargs) == pytest.approx(20.0)
    assert interval_for(1.0, **kwargs, idle_timeout=40.0) == 20.0


@given(
    health=anything,
    bounds=st.lists(st.floats(min_value=0.01, max_value=1e4), min_size=3, max_size=3),
    idle=st.one_of(st.none(), st.floats(min_value=0.02, max_value=1e5)),
)
def test_interval_stays_within_bounds(
    health: float, bounds: list[float], idle: float | None
) -> None:
    low, base, high = sorted(bounds)
    if idle is not None:
        idle = max(idle, 2 * low)  # as DetectorConfig requires of max_interval
    value = interval_for(
        health, ping_interval=base, min_interval=low, max_interval=high, idle_timeout=idle
    )
    assert low <= value <= high
    if idle is not None:
        assert value <= max(low, idle / 2)


@given(a=unit, b=unit)
def test_a_healthier_connection_is_never_probed_more_often(a: float, b: float) -> None:
    kwargs = {"ping_interval": 5.0, "min_interval": 1.0, "max_interval": 20.0}
    lo, hi = sorted((a, b))
    assert interval_for(lo, **kwargs) <= interval_for(hi, **kwargs)
