"""The engine, driven in virtual time: what each toxic does to the bytes, exactly."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioheart.proxy import (
    Bandwidth,
    Blackhole,
    Latency,
    LimitData,
    NatIdle,
    ResetPeer,
    Slicer,
    SlowClose,
    Stall,
    Timeout,
    Toxic,
    WsDelay,
    WsDrop,
)
from trioheart.proxy._engine import Close, LinkEngine
from trioheart.proxy._registry import ToxicRegistry

from .sim import DOWN, EOF, UP, Step, simulate
from .wsframes import (
    REQUEST_HEAD,
    RESPONSE_HEAD,
    Frame,
    chunked,
    decode,
    encode,
    frame_streams,
    normalize,
)

chunks = st.lists(st.binary(min_size=1, max_size=2000), max_size=20)
times = st.floats(min_value=0, max_value=100)


def feed(
    direction: object, parts: list[bytes], *, start: float = 0.0, gap: float = 0.0
) -> list[Step]:
    steps = [Step(start + i * gap, direction, part) for i, part in enumerate(parts)]  # type: ignore[arg-type]
    return [*steps, Step(start + len(parts) * gap, direction, EOF)]  # type: ignore[arg-type]


@settings(deadline=None)
@given(up=chunks, down=chunks)
def test_without_toxics_everything_passes_at_once(up: list[bytes], down: list[bytes]) -> None:
    result = simulate(feed(UP, up) + feed(DOWN, down))
    assert result.data(UP) == b"".join(up)
    assert result.data(DOWN) == b"".join(down)
    assert result.eof_at == {UP: 0.0, DOWN: 0.0}
    assert result.finished


@settings(deadline=None)
@given(
    parts=chunks,
    latency=st.floats(0, 10),
    jitter=st.floats(0, 5),
    gap=st.floats(0, 3),
    seed=st.integers(0, 100),
)
def test_latency_delays_every_byte_and_keeps_order(
    parts: list[bytes], latency: float, jitter: float, gap: float, seed: int
) -> None:
    toxic = Toxic(attributes=Latency(latency=latency, jitter=jitter), stream="upstream")
    result = simulate(feed(UP, parts, gap=gap), [toxic], seed=seed)
    assert result.data(UP) == b"".join(parts)  # same bytes, same order
    arrived = [i * gap for i, part in enumerate(parts) for _ in part]
    left = [at for at, chunk in result.sent[UP] for _ in chunk]
    assert all(
        out >= into + max(0.0, latency - jitter) - 1e-9
        for into, out in zip(arrived, left, strict=False)
    )
    assert all(
        out <= into + latency + jitter + 1e-9 for into, out in zip(arrived, left, strict=False)
    )


@given(parts=st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=30))
@settings(max_examples=50, deadline=None)
def test_a_stall_holds_a_bounded_amount_then_delivers_everything(parts: list[bytes]) -> None:
    limit, read = 4096, 1024
    toxic = Toxic(attributes=Stall(duration=10), stream="upstream")
    result = simulate(feed(UP, parts, gap=0.1), [toxic], buffer_limit=limit, read_size=read)
    assert result.data(UP) == b"".join(parts)
    assert result.sent[UP][0][0] >= 10
    assert result.max_buffered[UP] <= limit


def test_a_stall_until_removed() -> None:
    steps = [*feed(UP, [b"held"]), Step(30, remove="stall_upstream")]
    result = simulate(steps, [Toxic(attributes=Stall(), stream="upstream")])
    assert result.sent[UP] == [(30, b"held")]


@given(frames=frame_streams(big=True), cuts=st.lists(st.integers(0, 1 << 20), max_size=10))
@settings(max_examples=60, deadline=None)
def test_ws_drop_removes_exactly_the_pongs(frames: list[Frame], cuts: list[int]) -> None:
    stream = RESPONSE_HEAD + b"".join(encode(f, mask=False) for f in frames)
    toxic = Toxic(attributes=WsDrop(frames="pong"))
    result = simulate(feed(DOWN, chunked(stream, cuts)), [toxic])
    out = result.data(DOWN)
    assert out.startswith(RESPONSE_HEAD)
    assert decode(out[len(RESPONSE_HEAD) :], client=True) == normalize(
        [f for f in frames if f.kind != "pong"]
    )


def messages(frames: list[Frame]) -> list[list[Frame]]:
    out: list[list[Frame]] = []
    current: list[Frame] = []
    for frame in frames:
        if frame.kind == "data":
            current.append(frame)
            if frame.fin:
                out.append(current)
                current = []
    return out


@given(
    frames=frame_streams(),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=10),
    toggles=st.lists(st.integers(0, 30), max_size=6),
    kind=st.sampled_from(["ping", "pong", "data"]),
    probability=st.sampled_from([0.5, 1.0]),
    seed=st.integers(0, 1000),
)
@settings(max_examples=150, deadline=None)
def test_ws_drop_toggled_live_never_corrupts_the_stream(
    frames: list[Frame],
    cuts: list[int],
    toggles: list[int],
    kind: str,
    probability: float,
    seed: int,
) -> None:
    data = b"".join(encode(f, mask=True) for f in frames)
    parts = chunked(REQUEST_HEAD + data, cuts)
    steps = [Step(float(i), UP, part) for i, part in enumerate(parts)]
    steps.append(Step(float(len(parts)), UP, EOF))
    steps.append(Step(-1.0, DOWN, RESPONSE_HEAD))  # the 101 comes first
    on = False
    for i, at in enumerate(sorted(set(toggles))):
        toxic = Toxic(attributes=WsDrop(frames=kind, probability=probability), name="t")
        steps.append(Step(at - 0.5, add=toxic) if not on else Step(at - 0.5, remove="t"))
        on = not on
        del i
    result = simulate(steps, seed=seed)
    out = result.data(UP)
    assert out.startswith(REQUEST_HEAD)
    got = decode(out[len(REQUEST_HEAD) :], client=False)  # raises if the stream is corrupt
    # Frames of the other kinds are all there; dropped data goes a message at a time.
    assert [f for f in got if f.kind != kind] == normalize([f for f in frames if f.kind != kind])
    if kind == "data":
        whole = [normalize(m) for m in messages(frames)]
        for message in messages(got):
            assert message in whole
    else:
        remaining = [f for f in frames if f.kind == kind]
        for frame in (f for f in got if f.kind == kind):
            assert frame in remaining
            remaining = remaining[remaining.index(frame) + 1 :]


@given(
    frames=frame_streams(big=True),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=10),
    which=st.sampled_from(["ping", "data"]),
    delay=st.floats(0.5, 20),
)
@settings(max_examples=80, deadline=None)
def test_ws_delay_moves_whole_frames_and_keeps_each_kind_in_order(
    frames: list[Frame], cuts: list[int], which: str, delay: float
) -> None:
    stream = RESPONSE_HEAD + b"".join(encode(f, mask=False) for f in frames)
    parts = chunked(stream, cuts)
    steps = [Step(float(i), DOWN, part) for i, part in enumerate(parts)]
    steps += [Step(float(len(parts)), DOWN, EOF), Step(0, UP, EOF)]
    toxic = Toxic(attributes=WsDelay(frames=which, delay=delay))
    result = simulate(steps, [toxic], buffer_limit=512, read_size=256)
    out = result.data(DOWN)
    got = decode(out[len(RESPONSE_HEAD) :], client=True)
    for kind in ("ping", "pong", "data"):
        assert [f for f in got if f.kind == kind] == normalize(
            [f for f in frames if f.kind == kind]
        )
    assert result.finished
    if which == "ping" and any(f.kind == "ping" for f in frames):
        assert result.eof_at[DOWN] >= delay


def test_delayed_pings_are_overtaken_by_data_but_not_by_the_close() -> None:
    ping = encode(Frame(9, b"p"), mask=False)
    data = encode(Frame(2, b"d"), mask=False)
    close = encode(Frame(8, b"\x03\xe8"), mask=False)
    steps = [Step(0, DOWN, RESPONSE_HEAD + ping + data + close), Step(1, DOWN, EOF)]
    result = simulate(steps, [Toxic(attributes=WsDelay(frames="ping", delay=5))])
    assert result.sent[DOWN] == [(0, RESPONSE_HEAD), (0, data), (5, ping), (5, close)]
    assert result.eof_at[DOWN] == 5


@settings(deadline=None)
@given(parts=chunks, limit=st.integers(0, 5000))
def test_limit_data_forwards_exactly_that_many_bytes_then_closes(
    parts: list[bytes], limit: int
) -> None:
    toxic = Toxic(attributes=LimitData(bytes=limit), stream="upstream")
    result = simulate(feed(UP, parts), [toxic])
    total = b"".join(parts)
    assert result.data(UP) == total[:limit]
    if total and len(total) >= limit:  # the close comes with the byte that reaches the limit
        assert result.close == Close(reset=False, cause="limit_data")
    else:
        assert result.close is None
        assert UP in result.eof_at


def test_blackhole_swallows_data_and_holds_the_close_until_removed() -> None:
    steps = [*feed(UP, [b"lost", b"also lost"]), Step(5, remove="blackhole_upstream")]
    result = simulate(steps, [Toxic(attributes=Blackhole(), stream="upstream")])
    assert result.data(UP) == b""
    assert result.eof_at == {UP: 5}


def test_nat_idle_forgets_after_the_gap_in_both_directions() -> None:
    toxic = Toxic(attributes=NatIdle(timeout=60))
    steps = [
        Step(0, UP, b"a"),
        Step(50, DOWN, b"b"),  # refreshes the mapping
        Step(100, UP, b"c"),  # 50 s later: still there
        Step(161, DOWN, b"d"),  # 61 s of silence: forgotten
        Step(162, UP, b"e"),
        Step(163, UP, EOF),
        Step(164, DOWN, EOF),
    ]
    result = simulate(steps, [toxic])
    assert (result.data(UP), result.data(DOWN)) == (b"ac", b"b")
    assert result.eof_at == {}  # no FIN either way
    assert result.finished  # both peers closed their side, so the proxy may let go


@settings(deadline=None)
@given(size=st.integers(1, 50_000), rate=st.floats(2_000, 1_000_000))
def test_bandwidth_takes_size_over_rate(size: int, rate: float) -> None:
    toxic = Toxic(attributes=Bandwidth(rate=rate))
    result = simulate(feed(DOWN, [b"x" * size]), [toxic])
    assert result.data(DOWN) == b"x" * size
    last_start = result.sent[DOWN][-1][0]
    assert last_start <= size / rate + 1e-9
    assert last_start >= size / rate - max(1, int(rate * 0.05)) / rate - 1e-9


@settings(deadline=None)
@given(parts=chunks, average=st.integers(1, 50), seed=st.integers(0, 99))
def test_slicer_writes_small_pieces_with_pauses(
    parts: list[bytes], average: int, seed: int
) -> None:
    variation = average // 2
    toxic = Toxic(attributes=Slicer(average_size=average, size_variation=variation, delay=0.001))
    result = simulate(feed(DOWN, parts), [toxic], seed=seed)
    assert result.data(DOWN) == b"".join(parts)
    assert all(len(chunk) <= average + variation for _, chunk in result.sent[DOWN])
    starts = [at for at, _ in result.sent[DOWN]]
    assert all(b - a >= 0.001 - 1e-12 for a, b in itertools.pairwise(starts))


def test_slow_close_delays_the_fin() -> None:
    result = simulate(feed(DOWN, [b"bye"]), [Toxic(attributes=SlowClose(delay=3))])
    assert result.sent[DOWN] == [(0, b"bye")]
    assert result.eof_at[DOWN] == 3


def test_timeout_drops_data_then_closes() -> None:
    steps = [Step(0, UP, b"dropped"), Step(100, UP, b"never")]
    result = simulate(steps, [Toxic(attributes=Timeout(timeout=2), stream="upstream")])
    assert result.data(UP) == b""
    assert (result.close, result.close_at) == (Close(reset=False, cause="timeout"), 2)


def test_timeout_zero_never_closes() -> None:
    steps = [Step(0, UP, b"dropped"), Step(100, UP, b"dropped too")]
    result = simulate(steps, [Toxic(attributes=Timeout(timeout=0), stream="upstream")])
    assert result.close is None
    assert result.data(UP) == b""


def test_reset_peer_resets_even_an_idle_connection_when_added_live() -> None:
    steps = [Step(10, add=Toxic(attributes=ResetPeer(timeout=1.5))), Step(50, UP, b"x")]
    result = simulate(steps)
    assert (result.close, result.close_at) == (Close(reset=True, cause="reset_peer"), 11.5)


def test_toxicity_is_drawn_once_per_connection() -> None:
    registry = ToxicRegistry()
    registry.add(Toxic(attributes=Blackhole(), toxicity=0.3, stream="upstream"), now=0)
    rng = random.Random(7)
    hit = 0
    for _ in range(1000):
        engine = LinkEngine(now=0, rng=rng)
        engine.set_toxics(registry.records, 0)
        engine.receive(UP, b"x", 0)
        hit += engine.statistics(UP).dropped == 1
        engine.receive(UP, b"y", 1)  # the same connection decides the same way
        assert engine.statistics(UP).dropped in (0, 2)
    assert 240 < hit < 360


@pytest.mark.parametrize("toxicity", [0.0, 1.0])
def test_toxicity_zero_and_one(toxicity: float) -> None:
    toxic = Toxic(attributes=Blackhole(), toxicity=toxicity, stream="upstream")
    result = simulate(feed(UP, [b"data"]), [toxic])
    assert result.data(UP) == (b"data" if toxicity == 0 else b"")
