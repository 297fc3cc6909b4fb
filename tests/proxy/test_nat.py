"""The NAT mapping: forgets after an idle gap, and never remembers again."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioheart import ConfigError
from trioheart.proxy.nat import NatMapping

gaps = st.lists(st.floats(min_value=0, max_value=100), max_size=50)


@settings(deadline=None)
@given(timeout=st.floats(min_value=0.001, max_value=60), gaps=gaps)
def test_packets_pass_until_the_first_idle_gap_then_never(
    timeout: float, gaps: list[float]
) -> None:
    mapping = NatMapping(idle_timeout=timeout, now=0.0)
    now, alive = 0.0, True
    for gap in gaps:
        now += gap
        alive = alive and gap < timeout
        assert mapping.on_packet(now) is alive
        assert mapping.is_forgotten(now) is not alive
    if not alive:
        assert mapping.forgotten_at is not None
        assert mapping.forgotten_at <= now


def test_forgotten_at_is_the_expiry() -> None:
    mapping = NatMapping(idle_timeout=60, now=0)
    assert mapping.on_packet(59.9)
    assert mapping.expires_at == pytest.approx(119.9)
    assert not mapping.on_packet(500)
    assert mapping.forgotten_at == pytest.approx(119.9)


def test_a_shorter_timeout_applies_at_once_and_a_forgotten_mapping_stays_so() -> None:
    mapping = NatMapping(idle_timeout=60, now=0)
    mapping.reconfigure(idle_timeout=5)
    assert mapping.is_forgotten(10)
    assert not mapping.on_packet(10)
    mapping.reconfigure(idle_timeout=1000)
    assert not mapping.on_packet(11)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_timeouts(bad: float) -> None:
    with pytest.raises(ConfigError, match="idle_timeout must be a positive"):
        NatMapping(idle_timeout=bad, now=0)
