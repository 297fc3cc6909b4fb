"""The frame splitter: lossless, chunking-independent, and exact about frames."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trioheart.proxy.frames import FrameSplitter, Piece, PieceKind

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

cuts = st.lists(st.integers(0, 1 << 20), max_size=20)


def split(data: bytes, pieces_at: list[int], *, response: bool = True) -> list[Piece]:
    splitter = FrameSplitter(response=response)
    if not response:
        splitter.set_verdict(True)
    out: list[Piece] = []
    for chunk in chunked(data, pieces_at):
        out += splitter.feed(chunk)
    return out + splitter.flush()


def labels(pieces: list[Piece]) -> list[PieceKind]:
    return [piece.kind for piece in pieces for _ in piece.data]


@given(frames=frame_streams(big=True), cuts=cuts, mask=st.booleans())
@settings(max_examples=150, deadline=None)
def test_pieces_are_the_input_labelled_alike_however_it_is_cut(
    frames: list[Frame], cuts: list[int], mask: bool
) -> None:
    data = RESPONSE_HEAD + b"".join(encode(f, mask=mask) for f in frames)
    whole = split(data, [])
    cut = split(data, cuts)
    assert b"".join(p.data for p in cut) == data
    assert labels(cut) == labels(whole)
    expected = [PieceKind.HTTP] * len(RESPONSE_HEAD)
    for frame in frames:
        expected += [PieceKind(frame.kind)] * len(encode(frame, mask=mask))
    assert labels(whole) == expected


@settings(deadline=None)
@given(frames=frame_streams(), cuts=cuts)
def test_frame_and_message_boundaries(frames: list[Frame], cuts: list[int]) -> None:
    data = RESPONSE_HEAD + b"".join(encode(f, mask=False) for f in frames)
    pieces = [p for p in split(data, cuts) if p.kind is not PieceKind.HTTP]
    assert sum(p.frame_start for p in pieces) == len(frames)
    assert sum(p.frame_end for p in pieces) == len(frames)
    messages = sum(1 for f in frames if f.kind == "data" and f.opcode != 0)
    assert sum(p.message_start for p in pieces) == messages
    assert sum(p.message_end for p in pieces) == messages


@settings(deadline=None)
@given(frames=frame_streams(), cuts=cuts, kind=st.sampled_from([PieceKind.PING, PieceKind.PONG]))
def test_dropping_control_frames_leaves_a_valid_stream(
    frames: list[Frame], cuts: list[int], kind: PieceKind
) -> None:
    data = b"".join(encode(f, mask=True) for f in frames)
    kept = b"".join(p.data for p in split(REQUEST_HEAD + data, cuts, response=False))
    assert kept.startswith(REQUEST_HEAD)
    filtered = b"".join(
        p.data
        for p in split(REQUEST_HEAD + data, cuts, response=False)
        if p.kind is not kind and p.kind is not PieceKind.HTTP
    )
    assert decode(filtered, client=False) == normalize([f for f in frames if f.kind != kind.value])


@settings(deadline=None)
@given(junk=st.binary(max_size=400), cuts=cuts, response=st.booleans())
def test_garbage_passes_through_unchanged(junk: bytes, cuts: list[int], response: bool) -> None:
    data = (RESPONSE_HEAD if response else REQUEST_HEAD) + junk
    assert b"".join(p.data for p in split(data, cuts, response=response)) == data


def test_a_refused_upgrade_is_opaque() -> None:
    splitter = FrameSplitter(response=True)
    body = encode(Frame(9, b"not a frame, a body"), mask=False)
    pieces = splitter.feed(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 21\r\n\r\n" + body)
    assert splitter.verdict is False
    assert [p.kind for p in pieces] == [PieceKind.HTTP, PieceKind.OPAQUE]


def test_the_request_side_waits_for_the_verdict() -> None:
    ping = encode(Frame(9, b"x"), mask=True)
    early = FrameSplitter(response=False)
    assert [p.kind for p in early.feed(REQUEST_HEAD)] == [PieceKind.HTTP]
    assert early.mode == "await_verdict"
    assert [p.kind for p in early.feed(ping)] == [PieceKind.OPAQUE]  # no frames before the 101
    late = FrameSplitter(response=False)
    late.feed(REQUEST_HEAD)
    late.set_verdict(True)
    assert [p.kind for p in late.feed(ping)] == [PieceKind.PING]


def test_a_head_split_across_chunks_is_found() -> None:
    splitter = FrameSplitter(response=True)
    for byte in RESPONSE_HEAD:
        splitter.feed(bytes([byte]))
    assert splitter.verdict is True
    assert [p.kind for p in splitter.feed(encode(Frame(10, b""), mask=False))] == [PieceKind.PONG]


def test_an_endless_head_turns_opaque_within_the_limit() -> None:
    splitter = FrameSplitter(response=True, max_head=100)
    splitter.feed(b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * 30)
    assert splitter.mode == "opaque"


def test_an_incomplete_header_is_held_then_released() -> None:
    splitter = FrameSplitter(response=True)
    splitter.feed(RESPONSE_HEAD)
    frame = encode(Frame(2, b"z" * 300), mask=False)  # 4-byte header
    assert splitter.feed(frame[:3]) == []
    assert splitter.held == 3
    pieces = splitter.feed(frame[3:])
    assert b"".join(p.data for p in pieces) == frame
    assert pieces[0].frame_start
    assert pieces[-1].frame_end


def test_invalid_frames_turn_the_direction_opaque() -> None:
    for bad in (
        bytes([0x83, 0x00]),  # reserved opcode
        bytes([0x09, 0x00]),  # fragmented ping
        bytes([0x89, 126, 0, 200]),  # ping longer than 125
        bytes([0x80, 0x00]),  # continuation outside a message
    ):
        splitter = FrameSplitter(response=True)
        splitter.feed(RESPONSE_HEAD)
        pieces = splitter.feed(bad + b"rest")
        assert [p.kind for p in pieces] == [PieceKind.OPAQUE]
        assert b"".join(p.data for p in pieces) == bad + b"rest"
