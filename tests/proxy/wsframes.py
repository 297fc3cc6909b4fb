"""Helpers to build and check WebSocket byte streams in tests (not a fixture module)."""

from __future__ import annotations

import functools
import itertools
import operator
import os
from dataclasses import dataclass

from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

RESPONSE_HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: x\r\n\r\n"
)
REQUEST_HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True

    @property
    def kind(self) -> str:
        return {0: "data", 1: "data", 2: "data", 8: "close", 9: "ping", 10: "pong"}[self.opcode]


def encode(frame: Frame, *, mask: bool) -> bytes:
    """An independent RFC 6455 encoder (not the code under test)."""
    first = (0x80 if frame.fin else 0) | frame.opcode
    size = len(frame.payload)
    if size < 126:
        head = bytes([first, (0x80 if mask else 0) | size])
    elif size < 1 << 16:
        head = bytes([first, (0x80 if mask else 0) | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, (0x80 if mask else 0) | 127]) + size.to_bytes(8, "big")
    if not mask:
        return head + frame.payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(frame.payload))
    return head + key + masked


def encode_all(frames: list[Frame], *, mask: bool) -> bytes:
    return b"".join(encode(frame, mask=mask) for frame in frames)


def decode(data: bytes, *, client: bool) -> list[Frame]:
    """Decode with wsproto's frame parser; raises on an invalid stream.

    *client* is the side that receives (a client receives unmasked frames).
    """
    protocol = FrameProtocol(client=client, extensions=[])
    protocol.receive_bytes(data)
    out = []
    for frame in protocol.received_frames():
        payload = frame.payload
        if isinstance(payload, tuple):  # close: (code, reason)
            code, reason = payload
            payload = int(code).to_bytes(2, "big") + reason.encode()
        elif isinstance(payload, str):
            payload = payload.encode()
        out.append(Frame(int(frame.opcode), bytes(payload), frame.message_finished))
    return out


def _control(opcode: int) -> st.SearchStrategy[list[Frame]]:
    return st.binary(max_size=125).map(lambda payload: [Frame(opcode, payload)])


@st.composite
def _message(draw: st.DrawFn) -> list[Frame]:
    """A data message, maybe fragmented, with control frames between fragments."""
    opcode = draw(st.sampled_from([Opcode.BINARY, Opcode.TEXT]))
    parts = draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
    frames: list[Frame] = []
    for index, part in enumerate(parts):
        if opcode == Opcode.TEXT:
            part = part.hex().encode()  # valid UTF-8 in every fragment
        frames.append(Frame(int(opcode) if index == 0 else 0, part, index == len(parts) - 1))
        if index < len(parts) - 1 and draw(st.booleans()):
            frames += draw(st.one_of(_control(9), _control(10)))
    return frames


def frame_streams(*, big: bool = False) -> st.SearchStrategy[list[Frame]]:
    """Valid sequences of frames (no close frame)."""
    items = [_control(9), _control(10), _message()]
    if big:
        items.append(st.integers(126, 70_000).map(lambda n: [Frame(2, b"b" * n)]))
    return st.lists(st.one_of(*items), max_size=12).map(
        lambda lists: functools.reduce(operator.iadd, lists, [])
    )


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """*data* cut at the given offsets (taken modulo its length)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def normalize(frames: list[Frame]) -> list[Frame]:
    """Frames as wsproto reports them: a continuation carries its message's opcode."""
    out, current = [], 0
    for frame in frames:
        if frame.opcode in (1, 2):
            current = frame.opcode
        out.append(Frame(current, frame.payload, frame.fin) if frame.opcode == 0 else frame)
    return out
