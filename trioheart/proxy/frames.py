"""Split one direction of a proxied connection into labelled pieces, sans-IO.

A WebSocket connection starts as HTTP: the client sends a request head, the
server answers ``101 Switching Protocols``, and from then on both directions
carry RFC 6455 frames. :class:`FrameSplitter` follows one direction through
that: it takes bytes as they arrive (:meth:`~FrameSplitter.feed`) and returns
:class:`Piece` objects that say which kind of frame each byte belongs to and
where frames and messages begin and end, so a toxic can drop or delay whole
pings, pongs or data messages without corrupting the stream.

It never buffers a frame: a piece is whatever part of a frame arrived, and
only an incomplete frame header (at most 14 bytes) is held back until it is
complete. It never changes a byte either: the pieces, concatenated, are the
input. Anything that is not a valid WebSocket stream (a refused upgrade,
plain HTTP, a frame no endpoint may send) turns the rest of the direction
*opaque*: passed through, never matched by a frame toxic.

This module never imports trio.
"""

from __future__ import annotations

import enum
from typing import Final, final

import attrs

__all__ = ["FrameSplitter", "Piece", "PieceKind"]


class PieceKind(enum.Enum):
    """What a :class:`Piece`'s bytes are."""

    #: Part of the HTTP request or response head before the upgrade.
    HTTP = "http"
    #: Bytes that are not (or no longer) a WebSocket frame stream.
    OPAQUE = "opaque"
    #: Part of a ping frame.
    PING = "ping"
    #: Part of a pong frame.
    PONG = "pong"
    #: Part of a close frame.
    CLOSE = "close"
    #: Part of a data frame (text, binary or continuation).
    DATA = "data"


@final
@attrs.frozen
class Piece:
    """A run of bytes of one kind, as it arrived.

    For :attr:`PieceKind.HTTP` and :attr:`PieceKind.OPAQUE` pieces,
    *frame_start* and *frame_end* are both true: they may be cut anywhere.
    """

    #: What the bytes are.
    kind: PieceKind
    #: The bytes, exactly as received.
    data: bytes
    #: The piece starts a frame (it holds the frame's whole header).
    frame_start: bool
    #: The piece ends a frame.
    frame_end: bool
    #: A data piece that starts a message (text or binary opcode).
    message_start: bool = False
    #: A data piece that ends a message (the end of a FIN frame).
    message_end: bool = False


class _Mode(enum.Enum):
    HEAD = "head"
    AWAIT_VERDICT = "await_verdict"
    FRAMES = "frames"
    OPAQUE = "opaque"


_OPCODES: Final[dict[int, PieceKind]] = {
    0x0: PieceKind.DATA,
    0x1: PieceKind.DATA,
    0x2: PieceKind.DATA,
    0x8: PieceKind.CLOSE,
    0x9: PieceKind.PING,
    0xA: PieceKind.PONG,
}
_HEAD_END: Final = b"\r\n\r\n"


@final
class FrameSplitter:
    """Labels the bytes of one direction: the HTTP head, then WebSocket frames.

    Args:
      response: ``True`` for the server-to-client direction (it carries the
        ``101`` response, and decides whether the upgrade happened), ``False``
        for the client-to-server direction, which waits for that verdict
        (:meth:`set_verdict`) before it reads frames.
      max_head: The longest HTTP head accepted; a longer one turns the
        direction opaque.
    """

    __slots__ = (
        "_checked",
        "_fin",
        "_head",
        "_header",
        "_in_message",
        "_kind",
        "_max_head",
        "_message_start",
        "_mode",
        "_remaining",
        "_response",
        "_verdict",
    )

    def __init__(self, *, response: bool, max_head: int = 65536) -> None:
        self._response = response
        self._max_head = max_head
        self._mode = _Mode.HEAD
        self._head = bytearray()
        self._verdict: bool | None = None
        self._header = bytearray()
        self._checked = False
        self._remaining = 0
        self._kind = PieceKind.OPAQUE
        self._fin = True
        self._message_start = False
        self._in_message = False

    @property
    def mode(self) -> str:
        """``"head"``, ``"await_verdict"``, ``"frames"`` or ``"opaque"``."""
        return self._mode.value

    @property
    def verdict(self) -> bool | None:
        """Whether the upgrade happened: ``None`` until known.

        The response side knows it once it has seen the whole response head;
        the request side once :meth:`set_verdict` was called.
        """
        return self._verdict

    @property
    def held(self) -> int:
        """How many bytes are held back (an incomplete frame header)."""
        return len(self._header)

    def set_verdict(self, upgraded: bool) -> None:
        """Tell the request side whether the server accepted the upgrade."""
        if self._verdict is None:
            self._verdict = upgraded
            if self._mode is _Mode.AWAIT_VERDICT:
                self._mode = _Mode.FRAMES if upgraded else _Mode.OPAQUE

    def feed(self, data: bytes) -> list[Piece]:
        """Label *data*, the next bytes of this direction.

        Returns:
          The pieces of *data* (plus any header bytes held from before), in
          order; their bytes, concatenated, are those bytes minus whatever
          incomplete frame header is now held.
        """
        out: list[Piece] = []
        view = memoryview(data)
        index = 0
        while index < len(view):
            if self._mode is _Mode.HEAD:
                index = self._feed_head(view, index, out)
            elif self._mode is _Mode.AWAIT_VERDICT:
                # Nothing may follow the request head before the 101 arrives.
                self._mode = _Mode.OPAQUE
                self._verdict = False
            elif self._mode is _Mode.FRAMES:
                index = self._feed_frames(view, index, out)
            else:
                out.append(_opaque(bytes(view[index:])))
                index = len(view)
        return out

    def flush(self) -> list[Piece]:
        """The input ended: hand back any held header bytes, as opaque."""
        if not self._header:
            return []
        held = bytes(self._header)
        self._header.clear()
        self._mode = _Mode.OPAQUE
        return [_opaque(held)]

    def _feed_head(self, view: memoryview, index: int, out: list[Piece]) -> int:
        # Look for the blank line across chunk boundaries: keep the head so far.
        start = len(self._head)
        room = self._max_head - start
        chunk = bytes(view[index : index + room])
        self._head += chunk
        end = self._head.find(_HEAD_END, max(0, start - 3))
        if end < 0:
            out.append(Piece(PieceKind.HTTP, chunk, frame_start=True, frame_end=True))
            if len(self._head) >= self._max_head:
                self._mode = _Mode.OPAQUE
                self._verdict = False
            return index + len(chunk)
        used = end + len(_HEAD_END) - start
        out.append(Piece(PieceKind.HTTP, chunk[:used], frame_start=True, frame_end=True))
        head = bytes(self._head[: end + len(_HEAD_END)])
        self._head = bytearray()
        if self._response:
            parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
            upgraded = len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1] == b"101"
            self._verdict = upgraded
            self._mode = _Mode.FRAMES if upgraded else _Mode.OPAQUE
        elif self._verdict is None:
            self._mode = _Mode.AWAIT_VERDICT
        else:
            self._mode = _Mode.FRAMES if self._verdict else _Mode.OPAQUE
        return index + used

    def _feed_frames(self, view: memoryview, index: int, out: list[Piece]) -> int:
        if self._remaining:
            take = min(self._remaining, len(view) - index)
            self._remaining -= take
            out.append(self._piece(bytes(view[index : index + take]), frame_start=False))
            return index + take
        # Collect the header: 2 bytes, then the extended length and the mask.
        while len(self._header) < 2 and index < len(view):
            self._header.append(view[index])
            index += 1
        if len(self._header) < 2:
            return index
        need = _header_length(self._header[0], self._header[1])
        if not self._checked:
            if not self._check_start():
                return self._go_opaque(view, index, out)
            self._checked = True
        take = min(need - len(self._header), len(view) - index)
        self._header += view[index : index + take]
        index += take
        if len(self._header) < need:
            return index
        length = _payload_length(self._header)
        if length >= 1 << 63:
            return self._go_opaque(view, index, out)
        header = bytes(self._header)
        self._header.clear()
        self._checked = False
        take = min(length, len(view) - index)
        self._remaining = length - take
        out.append(self._piece(header + bytes(view[index : index + take]), frame_start=True))
        return index + take

    def _check_start(self) -> bool:
        """Validate the first two header bytes and take the frame's kind."""
        first, second = self._header[0], self._header[1]
        fin, opcode = bool(first & 0x80), first & 0x0F
        kind = _OPCODES.get(opcode)
        if kind is None:
            return False
        if opcode >= 0x8:
            if not fin or second & 0x7F > 125:
                return False
        elif (opcode == 0x0) != self._in_message:
            return False  # a continuation outside a message, or a new message inside one
        self._kind, self._fin = kind, fin
        self._message_start = opcode in (0x1, 0x2)
        if kind is PieceKind.DATA:
            self._in_message = not fin
        return True

    def _piece(self, data: bytes, *, frame_start: bool) -> Piece:
        frame_end = self._remaining == 0
        data_kind = self._kind is PieceKind.DATA
        return Piece(
            self._kind,
            data,
            frame_start=frame_start,
            frame_end=frame_end,
            message_start=data_kind and frame_start and self._message_start,
            message_end=data_kind and frame_end and self._fin,
        )

    def _go_opaque(self, view: memoryview, index: int, out: list[Piece]) -> int:
        self._mode = _Mode.OPAQUE
        held = bytes(self._header)
        self._header.clear()
        out.append(_opaque(held + bytes(view[index:])))
        return len(view)


def _opaque(data: bytes) -> Piece:
    return Piece(PieceKind.OPAQUE, data, frame_start=True, frame_end=True)


def _header_length(first: int, second: int) -> int:
    size = 2 + {126: 2, 127: 8}.get(second & 0x7F, 0)
    return size + (4 if second & 0x80 else 0)


def _payload_length(header: bytearray) -> int:
    short = header[1] & 0x7F
    if short == 126:
        return int.from_bytes(header[2:4], "big")
    if short == 127:
        return int.from_bytes(header[2:10], "big")
    return short
