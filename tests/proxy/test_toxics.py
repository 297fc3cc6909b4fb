"""Toxic values: validated at construction, one JSON form, clear errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioheart import ConfigError
from trioheart.proxy import (
    Bandwidth,
    Blackhole,
    FrameKind,
    Latency,
    LimitData,
    NatIdle,
    ResetPeer,
    Slicer,
    SlowClose,
    Stall,
    Stream,
    Timeout,
    Toxic,
    WsDelay,
    WsDrop,
)
from trioheart.proxy.toxics import TOXIC_TYPES, toxic_from_json, toxic_to_json, updated_toxic

seconds = st.floats(min_value=0, max_value=1e6)
positive = st.floats(min_value=1e-6, max_value=1e6)
frames = st.sets(st.sampled_from(list(FrameKind)), min_size=1)

attributes = st.one_of(
    st.builds(Latency, latency=seconds, jitter=seconds),
    st.builds(Bandwidth, rate=positive),
    st.builds(SlowClose, delay=seconds),
    st.builds(Timeout, timeout=seconds),
    st.builds(ResetPeer, timeout=seconds),
    st.integers(1, 10_000).flatmap(
        lambda avg: st.builds(
            Slicer, average_size=st.just(avg), size_variation=st.integers(0, avg - 1), delay=seconds
        )
    ),
    st.builds(LimitData, bytes=st.integers(0, 1 << 40)),
    st.builds(Blackhole),
    st.builds(NatIdle, timeout=positive),
    st.builds(Stall, duration=st.none() | seconds),
    st.builds(WsDrop, frames=frames, probability=st.floats(0, 1)),
    st.builds(WsDelay, frames=frames, delay=seconds),
)


@st.composite
def toxics(draw: st.DrawFn) -> Toxic:
    attrs_ = draw(attributes)
    stream = Stream.BOTH if isinstance(attrs_, NatIdle) else draw(st.sampled_from(list(Stream)))
    return Toxic(
        attributes=attrs_,
        stream=stream,
        toxicity=draw(st.floats(0, 1)),
        name=draw(st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)),
    )


def test_every_toxiproxy_toxic_and_ours_exist() -> None:
    toxiproxy = {"latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer"}
    ours = {"limit_data", "blackhole", "nat_idle", "stall", "ws_drop", "ws_delay"}
    assert set(TOXIC_TYPES) == toxiproxy | ours


@settings(deadline=None)
@given(toxic=toxics())
def test_json_round_trips(toxic: Toxic) -> None:
    assert toxic_from_json(toxic_to_json(toxic)) == toxic


def test_defaults_follow_toxiproxy() -> None:
    toxic = Toxic(attributes=Latency(latency=0.1))
    assert (toxic.stream, toxic.toxicity, toxic.name) == (
        Stream.DOWNSTREAM,
        1.0,
        "latency_downstream",
    )
    nat = Toxic(attributes=NatIdle(timeout=60))
    assert (nat.stream, nat.name) == (Stream.BOTH, "nat_idle_both")


bad_seconds = st.one_of(
    st.floats(max_value=-1e-9),
    st.just(math.nan),
    st.just(math.inf),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@pytest.mark.parametrize(
    ("cls", "field", "others"),
    [
        (Latency, "latency", {}),
        (Latency, "jitter", {}),
        (SlowClose, "delay", {}),
        (Timeout, "timeout", {}),
        (ResetPeer, "timeout", {}),
        (Slicer, "delay", {"average_size": 10}),
        (WsDelay, "delay", {"frames": "ping"}),
        (NatIdle, "timeout", {}),
        (Bandwidth, "rate", {}),
    ],
)
@settings(deadline=None)
@given(value=bad_seconds)
def test_bad_durations_name_the_field_and_value(
    cls: type, field: str, others: dict[str, object], value: object
) -> None:
    if value is None and cls is Stall:
        return
    with pytest.raises(ConfigError) as info:
        cls(**others, **{field: value})
    assert field in str(info.value)
    assert repr(value) in str(info.value)


def test_zero_is_not_a_nat_timeout_or_rate() -> None:
    with pytest.raises(ConfigError, match="timeout must be a positive"):
        NatIdle(timeout=0)
    with pytest.raises(ConfigError, match=r"rate must be a positive.*bytes per second"):
        Bandwidth(rate=0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Slicer(average_size=10, size_variation=10), "size_variation must be smaller"),
        (lambda: Slicer(average_size=0), "average_size must be an integer >= 1"),
        (lambda: LimitData(bytes=-1), "bytes must be an integer >= 0"),
        (lambda: LimitData(bytes=1.5), "bytes must be an integer"),
        (lambda: WsDrop(frames=[]), "frames must name at least one"),
        (lambda: WsDrop(frames="close"), "frames must be 'ping', 'pong', 'data'"),
        (lambda: WsDrop(frames="pong", probability=1.5), "probability must be a number in"),
        (lambda: Toxic(attributes=Latency(), toxicity=-0.1), "toxicity must be a number in"),
        (lambda: Toxic(attributes=Latency(), stream="sideways"), "stream must be 'upstream'"),
        (lambda: Toxic(attributes=Latency(), name="a/b"), "name must be 1 to 64"),
        (lambda: Toxic(attributes=Latency(), name=""), "name must be 1 to 64"),
        (lambda: Toxic(attributes=NatIdle(timeout=1), stream="upstream"), "must be 'both'"),
        (lambda: Toxic(attributes="latency"), "attributes must be one of"),  # type: ignore[arg-type]
    ],
)
def test_bad_values_are_config_errors(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="latency"):
        Latency(latency=-1)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "a toxic must be a JSON object"),
        ({}, "type must be one of"),
        ({"type": "lag"}, "type must be one of"),
        ({"type": "latency", "colour": 1}, "unknown field 'colour'"),
        ({"type": "latency", "attributes": {"latncy": 1}}, "unknown attribute 'latncy'"),
        ({"type": "latency", "attributes": [1]}, "attributes must be a JSON object"),
        ({"type": "bandwidth"}, "attribute 'rate' is required"),
        ({"type": "latency", "attributes": {"latency": "1"}}, "latency must be"),
        ({"type": "blackhole", "attributes": {"x": 1}}, "takes no attributes"),
    ],
)
def test_json_errors(obj: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        toxic_from_json(obj)


def test_update_merges_attributes_and_keeps_identity() -> None:
    toxic = Toxic(attributes=Latency(latency=1, jitter=0.5), stream="upstream", name="lag")
    changed = updated_toxic(toxic, {"attributes": {"jitter": 0.1}, "toxicity": 0.5})
    assert changed == Toxic(
        attributes=Latency(latency=1, jitter=0.1), stream="upstream", name="lag", toxicity=0.5
    )
    assert updated_toxic(toxic, {"name": "lag", "type": "latency"}) == toxic


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "stall"}, "type cannot be changed"),
        ({"stream": "downstream"}, "stream cannot be changed"),
        ({"name": "other"}, "name cannot be changed"),
        ({"attributes": {"latency": -1}}, "latency must be"),
        ({"toxicity": 2}, "toxicity must be"),
        ({"enabled": False}, "unknown field 'enabled'"),
        ("x", "an update must be a JSON object"),
    ],
)
def test_bad_updates_are_rejected_whole(changes: object, message: str) -> None:
    toxic = Toxic(attributes=Latency(latency=1), stream="upstream", name="lag")
    with pytest.raises(ConfigError, match=message):
        updated_toxic(toxic, changes)
