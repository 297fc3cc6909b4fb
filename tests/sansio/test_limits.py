from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioheart import CloseReason, ConfigError, ServerLimits
from trioheart.limits import Admission, TokenBucket


@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 100),
    gaps=st.lists(st.floats(0, 10), max_size=200),
)
def test_bucket_never_grants_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    now = 0.0
    bucket = TokenBucket(rate, burst, now=now)
    granted = 0
    for gap in gaps:
        now += gap
        granted += bucket.take(now)
        assert granted <= burst + rate * now + 1e-9


@given(rate=st.floats(0.5, 100), burst=st.integers(1, 50))
def test_a_full_bucket_grants_exactly_burst_at_once(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    assert [bucket.take(0.0) for _ in range(burst + 1)] == [True] * burst + [False]
    assert bucket.take(1.0 / rate + 1e-9)  # one more after one token's time
    assert bucket.retry_after() >= 0


@given(
    cap=st.integers(1, 20),
    per_address=st.integers(1, 20),
    events=st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=300),
)
def test_admission_counts_stay_within_both_caps(
    cap: int, per_address: int, events: list[tuple[bool, str]]
) -> None:
    admission = Admission(
        ServerLimits(max_connections=cap, max_connections_per_address=per_address), now=0
    )
    held: list[str] = []
    for connect, address in events:
        if connect:
            reason = admission.admit(address, now=0)
            if reason is None:
                held.append(address)
            elif len(held) < cap:
                assert reason is CloseReason.ADDRESS_LIMIT
                assert held.count(address) == per_address
            else:
                assert reason is CloseReason.CONNECTION_LIMIT
        elif address in held:
            held.remove(address)
            admission.release(address)
        assert admission.open == len(held) <= cap
        assert all(held.count(a) <= per_address for a in held)


def test_releasing_what_was_not_admitted_is_a_bug() -> None:
    with pytest.raises(ValueError, match="no admitted connection"):
        Admission(ServerLimits(), now=0).release("x")


def test_origins_are_compared_without_case_or_trailing_slash() -> None:
    admission = Admission(ServerLimits(allowed_origins={"https://Chat.example.com/"}), now=0)
    assert admission.check_origin("https://chat.example.com") is None
    assert admission.check_origin(None) is None  # not a browser
    assert admission.check_origin("https://evil.example") is CloseReason.ORIGIN_REFUSED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_connections", 0),
        ("max_connections", -1),
        ("max_connections", 1.5),
        ("max_connections_per_address", True),
        ("handshake_rate", 0),
        ("handshake_rate", math.nan),
        ("handshake_rate", math.inf),
        ("handshake_burst", 0),
        ("allowed_origins", "https://one.example"),
        ("allowed_origins", [" https://padded"]),
    ],
)
def test_bad_limits_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ServerLimits(**{field: value})  # type: ignore[arg-type]
