"""The data plane of one proxied connection, sans-IO.

:class:`LinkEngine` decides what happens to every byte of one connection,
in both directions, given the toxics in force; the Trio shell
(:mod:`trioheart.proxy._proxy`) only moves bytes between sockets and the
engine and sleeps when told to. Like h11's ``Connection`` it does no I/O and
has no clock: ``now`` is passed in, and randomness comes from the
``random.Random`` it is given, so a test can replay it exactly.

For each direction the shell

* asks :meth:`~LinkEngine.read_size` how much it may read (``0``: wait, the
  buffer is full, which is how backpressure reaches the sender),
* hands what it read to :meth:`~LinkEngine.receive` (or
  :meth:`~LinkEngine.receive_eof`, :meth:`~LinkEngine.receive_error`),
* asks :meth:`~LinkEngine.next_output` what to write (:class:`Send`,
  :class:`SendEof`, :class:`Close`, or :class:`Wait` until a time or a
  change), and reports a finished write with :meth:`~LinkEngine.sent`.

Connection-wide timers (the ``timeout`` and ``reset_peer`` toxics) come out
of :meth:`~LinkEngine.poll`, due at :meth:`~LinkEngine.wake_at`.

Ordering. Bytes wait in four FIFO *lanes*: pings, pongs, data frames and
everything else (HTTP, opaque bytes, close frames, the EOF). A byte's
release time never precedes that of an earlier byte in its lane, nor that
of an earlier "everything else" byte, and an "everything else" byte waits
for every earlier byte. So only a frame-aware delay can reorder anything,
and then only whole frames of different lanes: once the first byte of a
frame is written, nothing else is written until its last byte is.

Memory. At most ``buffer_limit`` bytes wait per direction (plus one read
while the writer waits for the rest of a frame it started); dropped bytes
are never stored.

This module never imports trio.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias, TypeVar, final

import attrs

from .frames import FrameSplitter, Piece, PieceKind
from .nat import NatMapping
from .toxics import (
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
    ToxicAttributes,
    WsDelay,
    WsDrop,
)

__all__ = [
    "Close",
    "DirectionStatistics",
    "LinkEngine",
    "Output",
    "Send",
    "SendEof",
    "ToxicRecord",
    "Wait",
]

#: A bandwidth-limited write carries at most this many seconds' worth of bytes.
PACE_QUANTUM: Final = 0.05

_A = TypeVar("_A", bound=ToxicAttributes)


@final
@attrs.frozen
class ToxicRecord:
    """A toxic as the proxy holds it: when it was last set, and a version."""

    #: The toxic.
    toxic: Toxic
    #: When it was added or last updated (the start of a :class:`Stall`).
    changed_at: float
    #: Bumped on every update, so connections notice the change.
    version: int


@final
@attrs.frozen
class Send:
    """Write these bytes to the destination."""

    data: bytes


@final
@attrs.frozen
class SendEof:
    """Half-close the destination (TCP FIN); this direction is done."""


@final
@attrs.frozen
class Close:
    """Close the whole connection: a FIN to both peers, or a RST if *reset*."""

    #: Send RST (``SO_LINGER`` 0) instead of FIN.
    reset: bool
    #: The toxic type that asked for it.
    cause: str


@final
@attrs.frozen
class Wait:
    """Nothing to do until *until* (a time), or until something changes (``None``)."""

    until: float | None


#: What :meth:`LinkEngine.next_output` answers.
Output: TypeAlias = Send | SendEof | Close | Wait


@final
@attrs.frozen
class DirectionStatistics:
    """Byte counts of one direction of one connection."""

    #: Bytes read from the source.
    received: int
    #: Bytes written to the destination.
    sent: int
    #: Bytes discarded by a toxic.
    dropped: int
    #: Bytes waiting in the buffer now.
    buffered: int


class _Lane(enum.IntEnum):
    OTHER = 0
    PING = 1
    PONG = 2
    DATA = 3


_LANE_OF: Final[dict[PieceKind, _Lane]] = {
    PieceKind.HTTP: _Lane.OTHER,
    PieceKind.OPAQUE: _Lane.OTHER,
    PieceKind.CLOSE: _Lane.OTHER,
    PieceKind.PING: _Lane.PING,
    PieceKind.PONG: _Lane.PONG,
    PieceKind.DATA: _Lane.DATA,
}
_FRAME_OF: Final[dict[_Lane, FrameKind]] = {
    _Lane.PING: FrameKind.PING,
    _Lane.PONG: FrameKind.PONG,
    _Lane.DATA: FrameKind.DATA,
}


class _Marker(enum.Enum):
    EOF = "eof"
    CLOSE = "close"


class _Eof(enum.Enum):
    OPEN = "open"  # not read yet
    QUEUED = "queued"
    HELD = "held"  # by a blackhole, until it goes
    DROPPED = "dropped"  # by a forgotten NAT mapping, or the connection is closing
    SENT = "sent"


@attrs.define(slots=True, eq=False)
class _Item:
    release_at: float
    seq: int
    data: bytes
    frame_end: bool
    marker: _Marker | None = None
    offset: int = 0


@attrs.define(slots=True, eq=False)
class _Attached:
    """A toxic as one connection sees it."""

    record: ToxicRecord
    active: bool
    attached_at: float
    nat: NatMapping | None
    counted: dict[Stream, int] = attrs.Factory(dict)


@attrs.define(slots=True, eq=False)
class _Pipe:
    direction: Stream
    splitter: FrameSplitter
    lanes: tuple[deque[_Item], ...] = attrs.Factory(lambda: tuple(deque() for _ in _Lane))
    lane_last: list[float] = attrs.Factory(lambda: [-math.inf] * len(_Lane))
    buffered: int = 0
    input_ended: bool = False
    eof: _Eof = _Eof.OPEN
    current_lane: _Lane | None = None
    in_flight: bool = False
    pace_at: float = -math.inf
    slice_at: float = -math.inf
    drop_frame: bool = False
    drop_message: bool = False
    received: int = 0
    sent: int = 0
    dropped: int = 0

    def empty(self) -> bool:
        return not any(self.lanes)


@final
class LinkEngine:
    """Decides what happens to every byte of one proxied connection.

    Args:
      now: When the connection opened.
      rng: The source of every random draw (toxicity, jitter, slice sizes).
      buffer_limit: The most bytes that may wait per direction.
      read_size: The most bytes read at once.
    """

    __slots__ = ("_attached", "_buffer_limit", "_pipes", "_read_size", "_rng", "_seq")

    def __init__(
        self,
        *,
        now: float,
        rng: random.Random,
        buffer_limit: int = 1 << 20,
        read_size: int = 1 << 16,
    ) -> None:
        del now  # kept in the signature: every state change takes the time
        self._rng = rng
        self._buffer_limit = buffer_limit
        self._read_size = read_size
        self._seq = 0
        self._attached: dict[str, _Attached] = {}
        self._pipes = {
            Stream.UPSTREAM: _Pipe(Stream.UPSTREAM, FrameSplitter(response=False)),
            Stream.DOWNSTREAM: _Pipe(Stream.DOWNSTREAM, FrameSplitter(response=True)),
        }

    # -- toxics -----------------------------------------------------------

    def set_toxics(self, records: Iterable[ToxicRecord], now: float) -> None:
        """Take the proxy's current toxics, in order.

        A toxic new to this connection, or updated since, draws its toxicity
        now and starts its timers now; counters (``limit_data``) and NAT
        mappings survive an update.
        """
        attached: dict[str, _Attached] = {}
        for record in records:
            old = self._attached.get(record.toxic.name)
            if old is not None and old.record == record:
                attached[record.toxic.name] = old
                continue
            active = self._rng.random() < record.toxic.toxicity
            attributes = record.toxic.attributes
            nat = None
            counted: dict[Stream, int] = {}
            if old is not None and old.record.toxic.type == record.toxic.type:
                nat, counted = old.nat, old.counted
            if isinstance(attributes, NatIdle):
                if nat is None:
                    nat = NatMapping(idle_timeout=attributes.timeout, now=now)
                else:
                    nat.reconfigure(idle_timeout=attributes.timeout)
            attached[record.toxic.name] = _Attached(record, active, now, nat, counted)
        self._attached = attached
        for pipe in self._pipes.values():
            if pipe.eof is _Eof.HELD and not self._active(pipe.direction, Blackhole):
                self._queue_eof(pipe, now)

    def _active(self, direction: Stream | None, cls: type[_A]) -> list[tuple[_Attached, _A]]:
        found: list[tuple[_Attached, _A]] = []
        for attached in self._attached.values():
            toxic = attached.record.toxic
            attributes = toxic.attributes
            if (
                attached.active
                and isinstance(attributes, cls)
                and (direction is None or toxic.applies_to(direction))
            ):
                found.append((attached, attributes))
        return found

    def _nat_passes(self, now: float) -> bool:
        passes = True
        for attached, _ in self._active(None, NatIdle):
            assert attached.nat is not None
            passes = attached.nat.on_packet(now) and passes
        return passes

    # -- input ------------------------------------------------------------

    def read_size(self, direction: Stream) -> int:
        """How many bytes the shell may read from *direction*'s source now.

        ``0`` means: do not read; wait for a change (the buffer is full, or
        the input is over).
        """
        pipe = self._pipes[direction]
        if pipe.input_ended:
            return 0
        room = self._buffer_limit - pipe.buffered
        if room > 0:
            return min(self._read_size, room)
        if pipe.current_lane is not None and not pipe.lanes[pipe.current_lane]:
            return self._read_size  # the writer waits for the rest of a frame it started
        return 0

    def receive(self, direction: Stream, data: bytes, now: float) -> None:
        """Bytes arrived from *direction*'s source at *now*."""
        pipe = self._pipes[direction]
        pipe.received += len(data)
        if pipe.input_ended:
            pipe.dropped += len(data)
            return
        pieces = pipe.splitter.feed(data)
        self._share_verdict()
        self._enqueue(pipe, pieces, now, passes=self._nat_passes(now))

    def receive_eof(self, direction: Stream, now: float) -> None:
        """*direction*'s source closed its side (EOF) at *now*."""
        pipe = self._pipes[direction]
        if pipe.input_ended:
            return
        passes = self._nat_passes(now)
        self._enqueue(pipe, pipe.splitter.flush(), now, passes=passes)
        if pipe.input_ended:  # a limit_data toxic closes the connection anyway
            return
        pipe.input_ended = True
        if not passes:
            pipe.eof = _Eof.DROPPED
        elif self._active(direction, Blackhole):
            pipe.eof = _Eof.HELD
        else:
            self._queue_eof(pipe, now)

    def receive_error(self, direction: Stream, now: float) -> bool:
        """*direction*'s source broke (a reset) at *now*.

        Returns:
          ``True`` if a toxic swallows the reset (a forgotten NAT mapping, a
          blackhole): the other peer must not learn of it. ``False`` if the
          shell should reset the connection.
        """
        pipe = self._pipes[direction]
        pipe.input_ended = True
        if not self._nat_passes(now) or self._active(direction, Blackhole):
            pipe.eof = _Eof.DROPPED
            return True
        return False

    def _share_verdict(self) -> None:
        verdict = self._pipes[Stream.DOWNSTREAM].splitter.verdict
        if verdict is not None:
            self._pipes[Stream.UPSTREAM].splitter.set_verdict(verdict)

    def _enqueue(self, pipe: _Pipe, pieces: Sequence[Piece], now: float, *, passes: bool) -> None:
        direction = pipe.direction
        if not pieces:
            return
        black = (
            not passes
            or bool(self._active(direction, Blackhole))
            or bool(self._active(direction, Timeout))
        )
        delay = 0.0
        for _, latency in self._active(direction, Latency):
            jitter = self._rng.uniform(-latency.jitter, latency.jitter) if latency.jitter else 0.0
            delay += max(0.0, latency.latency + jitter)
        drops = self._active(direction, WsDrop)
        delays = self._active(direction, WsDelay)
        limits = self._active(direction, LimitData)
        for piece in pieces:
            lane = _LANE_OF[piece.kind]
            frame = _FRAME_OF.get(lane)
            ws_dropped = False
            if frame is FrameKind.DATA:
                if piece.message_start:
                    pipe.drop_message = self._draw(drops, frame)
                ws_dropped = pipe.drop_message
            elif frame is not None:
                if piece.frame_start:
                    pipe.drop_frame = self._draw(drops, frame)
                ws_dropped = pipe.drop_frame
            if ws_dropped or black:
                pipe.dropped += len(piece.data)
                if not ws_dropped and pipe.current_lane is lane:
                    pipe.current_lane = None  # the rest of that frame is gone for good
                continue
            data, frame_end, close = piece.data, piece.frame_end, False
            for attached, limit in limits:
                left = max(0, limit.bytes - attached.counted.get(direction, 0))
                if left <= len(data):
                    close = True
                    if left < len(data):
                        data, frame_end = data[:left], False
            for attached, _ in limits:
                attached.counted[direction] = attached.counted.get(direction, 0) + len(data)
            pipe.dropped += len(piece.data) - len(data)
            release = now + delay
            if frame is not None:
                release += sum(d.delay for _, d in delays if frame in d.frames)
            if data:
                self._push(pipe, lane, _Item(release, 0, data, frame_end))
            if close:
                self._push(pipe, _Lane.OTHER, _Item(now + delay, 0, b"", True, _Marker.CLOSE))
                pipe.input_ended = True
                pipe.eof = _Eof.DROPPED
                return

    def _draw(self, drops: list[tuple[_Attached, WsDrop]], frame: FrameKind) -> bool:
        dropped = False
        for _, drop in drops:
            if frame in drop.frames and self._rng.random() < drop.probability:
                dropped = True
        return dropped

    def _push(self, pipe: _Pipe, lane: _Lane, item: _Item) -> None:
        last = pipe.lane_last
        if lane is _Lane.OTHER:
            item.release_at = max(item.release_at, *last)
        else:
            item.release_at = max(item.release_at, last[lane], last[_Lane.OTHER])
        last[lane] = item.release_at
        self._seq += 1
        item.seq = self._seq
        pipe.lanes[lane].append(item)
        pipe.buffered += len(item.data)

    def _queue_eof(self, pipe: _Pipe, now: float) -> None:
        delay = sum(slow.delay for _, slow in self._active(pipe.direction, SlowClose))
        pipe.eof = _Eof.QUEUED
        self._push(pipe, _Lane.OTHER, _Item(now + delay, 0, b"", True, _Marker.EOF))

    # -- output -----------------------------------------------------------

    def next_output(self, direction: Stream, now: float) -> Output:
        """What to write to *direction*'s destination at *now*.

        A :class:`Send` or :class:`SendEof` is taken off the buffer at once;
        report its completion with :meth:`sent`.
        """
        pipe = self._pipes[direction]
        stalled_until = self._stalled_until(direction, now)
        if stalled_until is not None:
            return Wait(None if stalled_until == math.inf else stalled_until)
        picked = self._pick(pipe)
        if picked is None:
            return Wait(None)
        lane, item = picked
        if item.release_at > now:
            return Wait(item.release_at)
        if item.marker is _Marker.CLOSE:
            pipe.lanes[lane].popleft()
            return Close(reset=False, cause=LimitData.type)
        if item.marker is _Marker.EOF:
            pipe.lanes[lane].popleft()
            pipe.eof = _Eof.SENT
            pipe.in_flight = True
            return SendEof()
        rates = [bandwidth.rate for _, bandwidth in self._active(direction, Bandwidth)]
        slicers = self._active(direction, Slicer)
        if rates and pipe.pace_at > now:
            return Wait(pipe.pace_at)
        if slicers and pipe.slice_at > now:
            return Wait(pipe.slice_at)
        size = len(item.data) - item.offset
        if rates:
            size = min(size, max(1, int(min(rates) * PACE_QUANTUM)))
        if slicers:
            slicer = slicers[-1][1]
            variation = self._rng.randint(-slicer.size_variation, slicer.size_variation)
            size = min(size, slicer.average_size + variation)
        data = item.data[item.offset : item.offset + size]
        item.offset += size
        done = item.offset >= len(item.data)
        if done:
            pipe.lanes[lane].popleft()
        pipe.current_lane = None if done and item.frame_end else lane
        pipe.buffered -= size
        pipe.sent += size
        pipe.in_flight = True
        if rates:
            pipe.pace_at = max(pipe.pace_at, now) + size / min(rates)
        if slicers:
            pipe.slice_at = now + slicers[-1][1].delay
        return Send(data)

    def sent(self, direction: Stream) -> None:
        """The shell finished writing what :meth:`next_output` gave it."""
        self._pipes[direction].in_flight = False

    def _stalled_until(self, direction: Stream, now: float) -> float | None:
        until = None
        for attached, stall in self._active(direction, Stall):
            end = (
                math.inf if stall.duration is None else attached.record.changed_at + stall.duration
            )
            if now < end:
                until = end if until is None else max(until, end)
        return until

    def _pick(self, pipe: _Pipe) -> tuple[_Lane, _Item] | None:
        if pipe.current_lane is not None:
            queue = pipe.lanes[pipe.current_lane]
            if queue:
                return pipe.current_lane, queue[0]
            if not pipe.input_ended:
                return None  # the rest of the frame has not arrived yet
            pipe.current_lane = None
        best: tuple[_Lane, _Item] | None = None
        for lane in _Lane:
            queue = pipe.lanes[lane]
            if queue and (
                best is None
                or (queue[0].release_at, queue[0].seq) < (best[1].release_at, best[1].seq)
            ):
                best = lane, queue[0]
        return best

    # -- connection-wide --------------------------------------------------

    def _deadlines(self) -> list[tuple[float, Close]]:
        found = []
        for attached, timeout in self._active(None, Timeout):
            if timeout.timeout > 0:
                found.append((attached.attached_at + timeout.timeout, Close(False, Timeout.type)))
        for attached, reset in self._active(None, ResetPeer):
            found.append((attached.attached_at + reset.timeout, Close(True, ResetPeer.type)))
        return found

    def poll(self, now: float) -> Close | None:
        """A connection-wide timer that is due at *now*, if any."""
        due = [(at, close) for at, close in self._deadlines() if at <= now]
        return min(due, key=lambda pair: pair[0])[1] if due else None

    def wake_at(self) -> float | None:
        """When :meth:`poll` must be called next, or ``None`` for never."""
        deadlines = [at for at, _ in self._deadlines()]
        return min(deadlines) if deadlines else None

    @property
    def finished(self) -> bool:
        """Both sources ended and everything deliverable was delivered.

        A close held by a blackhole or dropped by a forgotten NAT mapping
        does not keep the connection open once both peers closed their side.
        """
        return all(
            pipe.input_ended and pipe.empty() and not pipe.in_flight
            for pipe in self._pipes.values()
        )

    def statistics(self, direction: Stream) -> DirectionStatistics:
        """The byte counts of *direction*."""
        pipe = self._pipes[direction]
        return DirectionStatistics(
            received=pipe.received, sent=pipe.sent, dropped=pipe.dropped, buffered=pipe.buffered
        )

    @property
    def websocket(self) -> bool | None:
        """Whether the connection upgraded to WebSocket (``None``: not known yet)."""
        return self._pipes[Stream.DOWNSTREAM].splitter.verdict
