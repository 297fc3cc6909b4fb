"""Bytes a (bad) client sends: upgrade requests and WebSocket frames, built independently.

Everything here is deterministic in its arguments (mask keys are passed in,
never drawn from os.urandom), so a fuzz input reproduces exactly. The frame
encoder is written from RFC 6455, not taken from the code under test, and it
can break every rule on purpose: unmasked frames, reserved bits, reserved
opcodes, over-long length encodings, lengths that lie.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterable, Sequence

import attrs

UPGRADE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Host", "127.0.0.1"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
)

#: Opcodes: continuation, text, binary, close, ping, pong, and reserved ones.
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(
    target: str = "/ws",
    headers: Iterable[tuple[str, str]] = UPGRADE_HEADERS,
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
) -> bytes:
    """A WebSocket upgrade request (valid with the defaults)."""
    lines = [f"{method} {target} {version}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def websocket_key(seed: int) -> str:
    """A valid Sec-WebSocket-Key (16 bytes in base64), derived from *seed*."""
    return base64.b64encode(random.Random(seed).randbytes(16)).decode()


@attrs.frozen(kw_only=True)
class Frame:
    """One frame as a client could send it, rules broken or not."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0  # the three reserved bits, 0..7
    mask: bytes | None = b"\x00\x00\x00\x00"  # None: unmasked (a protocol error from a client)
    #: 7, 16 or 64: the length encoding to use (over-long ones are errors); None: minimal.
    length_form: int | None = None
    #: Announce this length instead of the real one (a lie), if not None.
    announced: int | None = None

    def encode(self) -> bytes:
        first = (0x80 if self.fin else 0) | (self.rsv & 7) << 4 | (self.opcode & 0xF)
        size = len(self.payload) if self.announced is None else self.announced
        form = self.length_form
        if form is None:
            form = 7 if size < 126 else 16 if size < 1 << 16 else 64
        mask_bit = 0x80 if self.mask is not None else 0
        if form == 7:
            head = bytes([first, mask_bit | (size & 0x7F)])
        elif form == 16:
            head = bytes([first, mask_bit | 126]) + (size & 0xFFFF).to_bytes(2, "big")
        else:
            head = bytes([first, mask_bit | 127]) + (size & (2**64 - 1)).to_bytes(8, "big")
        if self.mask is None:
            return head + self.payload
        key = (self.mask + b"\x00\x00\x00\x00")[:4]
        return head + key + xor_mask(self.payload, key)


def xor_mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 section 5.3 masking (its own inverse)."""
    if not payload:
        return b""
    stream = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
        len(payload), "big"
    )


def encode_frames(frames: Iterable[Frame]) -> bytes:
    return b"".join(frame.encode() for frame in frames)


def text_frame(text: str | bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """One masked, final text frame carrying *text* (bytes are sent as they are)."""
    payload = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return Frame(opcode=TEXT, payload=payload, mask=mask).encode()


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    if code is None:
        return reason
    return (code & 0xFFFF).to_bytes(2, "big") + reason


def split(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """*data* cut into chunks of the given sizes (cycled; each at least 1 byte)."""
    if not data:
        return []
    if not sizes:
        return [data]
    chunks, at, i = [], 0, 0
    while at < len(data):
        size = max(1, sizes[i % len(sizes)])
        chunks.append(data[at : at + size])
        at += size
        i += 1
    return chunks
