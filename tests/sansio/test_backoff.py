"""Backoff with jitter and the drain hint: bounds, monotone caps, seeded determinism."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioheart import CloseReason, ConfigError
from trioheart.backoff import (
    DECORRELATED_MULTIPLIER,
    MAX_RETRY_WINDOW,
    Backoff,
    Jitter,
    Retrier,
    RetryWindow,
)

seconds = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)


@st.composite
def policies(draw: st.DrawFn) -> Backoff:
    base = draw(seconds)
    cap = draw(st.floats(min_value=base, max_value=base * 1e4))
    factor = draw(st.floats(min_value=1.0, max_value=10.0))
    return Backoff(base=base, cap=cap, factor=factor, jitter=draw(st.sampled_from(Jitter)))


@settings(max_examples=200)
@given(policy=policies(), attempt=st.integers(0, 10**6))
def test_ceiling_is_the_capped_curve_and_never_overflows(policy: Backoff, attempt: int) -> None:
    v = policy.ceiling(attempt)
    assert policy.base <= v <= policy.cap
    try:
        raw = policy.base * policy.factor**attempt
    except OverflowError:
        raw = math.inf
    assert v == pytest.approx(min(policy.cap, raw), rel=1e-9)


@settings(max_examples=200)
@given(policy=policies(), attempts=st.lists(st.integers(0, 2000), min_size=2, max_size=10))
def test_ceiling_is_monotone_in_the_attempt(policy: Backoff, attempts: list[int]) -> None:
    attempts.sort()
    ceilings = [policy.ceiling(n) for n in attempts]
    assert ceilings == sorted(ceilings)


@settings(max_examples=200)
@given(policy=policies(), attempt=st.integers(0, 200), seed=st.integers(0, 2**32))
def test_each_jitter_stays_in_its_interval(policy: Backoff, attempt: int, seed: int) -> None:
    rng = random.Random(seed)
    v = policy.ceiling(attempt)
    for _ in range(5):
        d = policy.delay(attempt, rng, previous=v)
        assert 0.0 <= d <= policy.cap
        if policy.jitter is Jitter.NONE:
            assert d == v
        elif policy.jitter is Jitter.FULL:
            assert 0.0 <= d <= v
        elif policy.jitter is Jitter.EQUAL:
            assert v / 2 <= d <= v
        else:
            assert policy.base <= d <= min(policy.cap, DECORRELATED_MULTIPLIER * v)


@settings(max_examples=100)
@given(policy=policies(), seed=st.integers(0, 2**32))
def test_delays_are_deterministic_under_a_seed(policy: Backoff, seed: int) -> None:
    def run() -> list[float | None]:
        retrier = policy.retrier(rng=random.Random(seed), now=0.0)
        return [retrier.next_delay(now=float(i)) for i in range(12)]

    assert run() == run()


def test_full_jitter_covers_zero_to_v_uniformly() -> None:
    policy = Backoff(base=1.0, cap=8.0, jitter=Jitter.FULL)
    rng = random.Random(1)
    draws = [policy.delay(3, rng) for _ in range(20_000)]  # v = 8
    assert min(draws) >= 0.0
    assert max(draws) <= 8.0
    counts = [0] * 8
    for d in draws:
        counts[min(7, int(d))] += 1
    assert all(2200 < c < 2800 for c in counts), counts  # 2500 each, seed fixed
    assert policy.delay(3, random.Random(7)) == policy.delay(3, random.Random(7))


def test_no_jitter_doubles_up_to_the_cap() -> None:
    policy = Backoff(base=0.5, cap=5.0, factor=2.0, jitter="none")  # type: ignore[arg-type]
    retrier = policy.retrier(rng=random.Random(0), now=0.0)
    assert [retrier.next_delay(now=0.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert retrier.attempts == 6


def test_max_attempts_gives_up_after_exactly_that_many() -> None:
    retrier = Backoff(max_attempts=3).retrier(rng=random.Random(0), now=0.0)
    delays = [retrier.next_delay(now=0.0) for _ in range(5)]
    assert [d is not None for d in delays] == [True, True, True, False, False]


@settings(max_examples=100)
@given(policy=policies(), deadline=seconds, seed=st.integers(0, 2**32))
def test_no_retry_starts_after_the_deadline(policy: Backoff, deadline: float, seed: int) -> None:
    policy = Backoff(
        base=policy.base,
        cap=policy.cap,
        factor=policy.factor,
        jitter=policy.jitter,
        deadline=deadline,
    )
    retrier = policy.retrier(rng=random.Random(seed), now=100.0)
    now = 100.0
    for _ in range(200):
        delay = retrier.next_delay(now=now)
        if delay is None:
            break
        now += delay
        assert now <= 100.0 + deadline
    assert retrier.give_up_at == 100.0 + deadline


def test_a_drain_window_replaces_the_curve() -> None:
    retrier = Backoff(base=100.0, cap=100.0).retrier(rng=random.Random(3), now=0.0)
    window = RetryWindow(earliest=1.0, latest=2.0)
    assert 1.0 <= (retrier.next_delay(now=0.0, window=window) or -1) <= 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base": 0}, r"^base must be a positive, finite number of seconds; got 0$"),
        ({"base": math.nan}, r"^base must be .*; got nan$"),
        ({"cap": math.inf}, r"^cap must be .*; got inf$"),
        ({"base": True}, r"^base must be a finite number of seconds; got True$"),
        ({"base": 2.0, "cap": 1.0}, r"^cap must not be below base; got cap=1.0 < base=2.0$"),
        ({"factor": 0.5}, r"^factor must be a finite number >= 1; got 0.5$"),
        ({"factor": math.nan}, r"^factor must be .*; got nan$"),
        ({"max_attempts": 0}, r"^max_attempts must be a positive integer or None; got 0$"),
        ({"max_attempts": 2.5}, r"^max_attempts must be .*; got 2.5$"),
        ({"deadline": -1.0}, r"^deadline must be .*; got -1.0$"),
        (
            {"jitter": "some"},
            r"^jitter must be one of none, equal, full, decorrelated; got 'some'$",
        ),
    ],
)
def test_bad_policies_name_the_field_and_value(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_bad_attempts_and_times_are_refused() -> None:
    policy = Backoff()
    with pytest.raises(ConfigError, match=r"^attempt must be"):
        policy.ceiling(-1)
    with pytest.raises(ConfigError, match=r"^now must be"):
        Retrier(policy, rng=random.Random(0), now=math.nan)


# -- RetryWindow ------------------------------------------------------------------


windows = st.builds(
    lambda a, width: RetryWindow(earliest=a, latest=min(MAX_RETRY_WINDOW, a + width)),
    st.floats(0, 600, allow_nan=False),
    st.floats(0, 3000, allow_nan=False),
)


@given(window=windows, reason=st.sampled_from(list(CloseReason)))
def test_the_close_text_round_trips_and_fits_a_close_frame(
    window: RetryWindow, reason: CloseReason
) -> None:
    text = window.close_text(reason)
    assert len(text.encode()) <= 123
    assert RetryWindow.from_close_text(text) == window
    assert text.startswith(f"{reason.value}; retry=")
    if reason.sends_close_frame:
        assert CloseReason.from_close_frame(reason.code, text) is reason


@given(window=windows)
def test_the_drain_message_round_trips(window: RetryWindow) -> None:
    assert RetryWindow.from_message(window.message()) == window


@pytest.mark.parametrize(
    "text",
    [
        "server_shutdown",
        "server_shutdown; retry=",
        "server_shutdown; retry=5",
        "server_shutdown; retry=5..1",
        "server_shutdown; retry=nan..1",
        "server_shutdown; retry=-1..1",
        "server_shutdown; retry=0..1e9",
        "server_shutdown; retry=a..b",
        "retry=1..2",
    ],
)
def test_bad_or_missing_windows_in_close_text_are_ignored(text: str) -> None:
    assert RetryWindow.from_close_text(text) is None


@pytest.mark.parametrize(
    "message",
    [
        {"type": "chat", "retry": [1, 2]},
        {"type": "drain"},
        {"type": "drain", "retry": [1]},
        {"type": "drain", "retry": "1..2"},
        {"type": "drain", "retry": [2, 1]},
        {"type": "drain", "retry": [True, 2]},
    ],
)
def test_bad_drain_messages_are_ignored(message: dict[str, object]) -> None:
    assert RetryWindow.from_message(message) is None


@given(window=windows, seed=st.integers(0, 2**32))
def test_choices_stay_in_the_window(window: RetryWindow, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        assert window.earliest <= window.choose(rng) <= window.latest


def test_choices_spread_uniformly_over_the_window() -> None:
    window = RetryWindow(earliest=10.0, latest=20.0)
    rng = random.Random(4)
    counts = [0] * 10
    for _ in range(10_000):
        counts[min(9, int(window.choose(rng) - 10.0))] += 1
    assert all(850 < c < 1150 for c in counts), counts


def test_spread_sizes_the_window_for_a_target_rate() -> None:
    window = RetryWindow.spread(clients=2000, rate=500.0, earliest=0.5)
    assert (window.earliest, window.latest) == (0.5, 4.5)
    with pytest.raises(ConfigError, match=r"^latest must be at most 3600"):
        RetryWindow.spread(clients=10**7, rate=1.0)
    with pytest.raises(ConfigError, match=r"^rate must be a positive"):
        RetryWindow.spread(clients=1, rate=0.0)
    with pytest.raises(ConfigError, match=r"^clients must be"):
        RetryWindow.spread(clients=-1, rate=1.0)


@pytest.mark.parametrize(
    ("earliest", "latest", "match"),
    [
        (-1.0, 1.0, "^earliest must be a non-negative"),
        (math.nan, 1.0, "^earliest must be"),
        (2.0, 1.0, "^latest must not be before earliest"),
        (0.0, math.inf, "^latest must be"),
    ],
)
def test_bad_windows_are_refused(earliest: float, latest: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RetryWindow(earliest=earliest, latest=latest)
