"""One WebSocket connection, run in its own nursery.

Tasks: the connection's own task (the handler runs in it, inside the
nursery body) and one reader task. The reader is also the heartbeat: it
waits for bytes under a cancel scope whose deadline is the detector's
:meth:`~trioheart.LivenessDetector.wake_at`, so a ping costs no task of
its own and a missed pong is a deadline, not a flag someone polls.

The reader never waits on the application: complete messages go into a
bounded inbox, and a full inbox closes the connection as
``slow_consumer``. Writes are atomic with respect to cancellation (a
shielded scope with its own deadline), so a frame is never cut in half;
a write that cannot finish within ``send_timeout`` closes the connection
as ``slow_consumer`` and aborts it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import trio
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from ..detector import Action, DetectorConfig, DetectorStatistics, LivenessDetector
from ..errors import ConnectionClosed
from ..log import get_logger
from ..reasons import CloseReason
from .sockopts import apply_keepalive, read_tcp_info

if TYPE_CHECKING:
    from ..config import ConnectionConfig
    from ..keepalive import AppliedKeepalive
    from ..policy import Resolution
    from ..prometheus import Metrics
    from ..tcpinfo import TcpInfo

__all__ = ["Connection"]

_log = get_logger("trioheart.connection")
_ids = itertools.count(1)

# wsproto reports a frame it could not parse as a CloseConnection it
# *would* send; these are the codes it uses, and what they mean to us.
_PARSE_FAILURES: Final = {
    1002: CloseReason.PROTOCOL_ERROR,
    1007: CloseReason.INVALID_DATA,
    1009: CloseReason.MESSAGE_TOO_BIG,
}
# Reasons after which nothing more is written: the transport is gone, or a
# write was cut short, and the socket is aborted (RST) rather than closed.
_ABORTIVE: Final = frozenset(
    {
        CloseReason.TCP_TIMEOUT,
        CloseReason.CONNECTION_RESET,
        CloseReason.HANDSHAKE_TIMEOUT,
    }
)
# Reasons for which we wait for the peer's answer to our close frame.
_HANDSHAKE_CLOSE: Final = frozenset(
    {CloseReason.APP_CLOSED, CloseReason.SERVER_SHUTDOWN, CloseReason.INTERNAL_ERROR}
)
_APP_PING_MAX: Final = 256


def _reason_for_transport_error(exc: BaseException) -> tuple[CloseReason, str]:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    code = getattr(cause, "errno", None)
    if code == errno.ETIMEDOUT:
        return CloseReason.TCP_TIMEOUT, "the kernel gave up (ETIMEDOUT)"
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    return CloseReason.CONNECTION_RESET, name or str(cause) or type(cause).__name__


@final
class Connection:
    """A WebSocket connection that trioheart keeps alive.

    The handler passed to :func:`~trioheart.serve` receives one. It is
    not created directly.

    Receiving and sending raise :exc:`~trioheart.ConnectionClosed` once
    the connection has ended, and :attr:`close_reason` says why. When the
    connection ends for any reason, the handler and every task started in
    :attr:`nursery` are cancelled: put clean-up in ``finally`` blocks.
    """

    __slots__ = (
        "_app_detector",
        "_app_ping_end",
        "_close_at",
        "_close_code",
        "_close_detail",
        "_close_reason",
        "_close_text",
        "_closed_event",
        "_config",
        "_detector",
        "_handler_scope",
        "_inbox",
        "_inbox_bytes",
        "_inbox_lot",
        "_initial_data",
        "_metrics",
        "_nursery",
        "_on_cancel",
        "_partial",
        "_partial_size",
        "_peer_close_code",
        "_peer_close_text",
        "_pending",
        "_ping_end",
        "_pong_lot",
        "_proto",
        "_read_scope",
        "_sent_bytes",
        "_stream",
        "_write_broken",
        "_write_scope",
        "_writer_lot",
        "_writing",
        "_writing_bytes",
        "closed_at",
        "conn_id",
        "headers",
        "keepalive",
        "opened_at",
        "path",
        "policy",
        "query",
        "remote",
        "shutdown_text",
        "tcp_info",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        proto: WSProtoConnection,
        config: ConnectionConfig,
        *,
        path: str,
        query: Mapping[str, str],
        headers: Sequence[tuple[str, str]],
        keepalive: AppliedKeepalive | None,
        metrics: Metrics | None,
        conn_id: str | None = None,
        initial_data: bytes = b"",
        on_cancel: CloseReason = CloseReason.SERVER_SHUTDOWN,
    ) -> None:
        now = trio.current_time()
        #: A process-unique id, the ``conn_id`` of every log event.
        self.conn_id: str = conn_id if conn_id is not None else f"c{next(_ids)}"
        #: The request path, without the query string.
        self.path: str = path
        #: The query parameters (first value of each).
        self.query: Mapping[str, str] = query
        #: The handshake request's headers, names lower-cased.
        self.headers: Sequence[tuple[str, str]] = headers
        #: What the kernel applied for keepalive and user timeout, read back.
        self.keepalive: AppliedKeepalive | None = keepalive
        #: The policy resolution in force (rule and revision), when the server
        #: runs with a :class:`~trioheart.PolicyStore`; ``None`` otherwise.
        self.policy: Resolution | None = None
        #: ``TCP_INFO`` read just before the socket was closed, if available.
        self.tcp_info: TcpInfo | None = None
        #: When the connection opened, on the Trio clock.
        self.opened_at: float = now
        #: When the connection closed, on the Trio clock, or ``None``.
        self.closed_at: float | None = None
        try:
            peer = stream.socket.getpeername()
        except OSError:
            peer = None
        #: The peer's address, as the socket reports it.
        self.remote: Any = peer
        self._stream = stream
        self._proto = proto
        self._config = config
        self._metrics = metrics
        self._detector = LivenessDetector(config.heartbeat, now=now)
        self._app_detector: LivenessDetector | None = None
        if config.app_heartbeat_interval is not None:
            self._app_detector = LivenessDetector(_app_bounds(config), now=now)
        self._initial_data = initial_data
        # Made with the first queued message and dropped once drained (None
        # means empty), like _closed_event made only for a waiter: an idle
        # connection is most of a chat server's, and an empty deque alone
        # is 760 bytes (see docs/explanation/cost.rst).
        self._inbox: deque[str | bytes] | None = None
        self._inbox_bytes = 0
        self._inbox_lot = trio.lowlevel.ParkingLot()
        self._partial: list[str | bytes] = []
        self._partial_size = 0
        self._pending = bytearray()
        self._writing = False
        self._write_broken = False
        # Where our byte stream stands: bytes the socket took, bytes in the
        # write under way, and the stream offset just past each detector's
        # latest ping. A ping whose end was not sent yet cannot be answered.
        self._sent_bytes = 0
        self._writing_bytes = 0
        self._ping_end = 0
        self._app_ping_end = 0
        self._write_scope: trio.CancelScope | None = None
        self._close_reason: CloseReason | None = None
        self._close_code = 0
        self._close_detail = ""
        self._close_text = ""
        #: The close frame text used for ``server_shutdown`` (the server sets
        #: it to carry a retry window), or ``None`` for the reason's name.
        self.shutdown_text: str | None = None
        self._peer_close_code: int | None = None
        self._peer_close_text: str | None = None
        # Why we close when cancelled from outside: the server going away,
        # or (for a client) the application leaving.
        self._on_cancel = on_cancel
        self._close_at = float("inf")
        self._closed_event: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._handler_scope: trio.CancelScope | None = None
        self._read_scope: trio.CancelScope | None = None
        self._writer_lot: trio.lowlevel.ParkingLot | None = None
        self._pong_lot: trio.lowlevel.ParkingLot | None = None

    # ------------------------------------------------------------------
    # Public API

    @property
    def nursery(self) -> trio.Nursery:
        """The connection's nursery: tasks started here end with the connection."""
        if self._nursery is None:
            raise RuntimeError("the connection is not running")
        return self._nursery

    @property
    def closed(self) -> bool:
        """Whether the connection has started closing (or has closed)."""
        return self._close_reason is not None

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the connection closed, or ``None`` while it is open."""
        return self._close_reason

    @property
    def close_code(self) -> int | None:
        """The close code sent, received (for ``peer_closed``) or reported (1006)."""
        return self._close_code if self._close_reason is not None else None

    @property
    def peer_close_code(self) -> int | None:
        """The code of the close frame the peer sent, if it sent one."""
        return self._peer_close_code

    @property
    def peer_close_text(self) -> str | None:
        """The reason text of the close frame the peer sent, if it sent one.

        A trioheart server going away puts its retry window here
        (``server_shutdown; retry=A..B``, see
        :meth:`RetryWindow.from_close_text <trioheart.backoff.RetryWindow.from_close_text>`).
        """
        return self._peer_close_text

    def liveness(self) -> DetectorStatistics:
        """The heartbeat's current view: RTT samples, window, interval, health."""
        return self._detector.statistics()

    async def receive(self) -> str | bytes:
        """Wait for the next message: :class:`str` for text, :class:`bytes` for binary.

        Raises:
          ConnectionClosed: once the connection has ended and every message
            that arrived before has been received.

        On cancellation no message is lost: one that was not returned stays
        queued.
        """
        inbox = self._inbox
        while not inbox:
            if self._close_reason is not None:
                raise self._closed_error()
            await self._inbox_lot.park()
            inbox = self._inbox
        message = inbox.popleft()
        if not inbox:
            self._inbox = None
        self._inbox_bytes -= len(message)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return message

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: str | bytes) -> None:
        """Send one message, text for :class:`str` and binary for :class:`bytes`.

        Returns once the frame is written to the socket, or queued behind
        another write in progress. Always a checkpoint. A write that blocks
        longer than ``send_timeout``, or a queue over ``max_send_buffer``,
        closes the connection as ``slow_consumer``. The write itself is not
        interrupted by cancellation, so a frame is never cut in half; it is
        bounded by ``send_timeout``.

        Raises:
          ConnectionClosed: if the connection has ended.
        """
        self._queue_message(message)
        if self._writing:
            await trio.lowlevel.checkpoint()
        else:
            await self._flush()

    def send_nowait(self, message: str | bytes) -> None:
        """Queue one message without waiting, for fan-out to many connections.

        A writer task is started in the connection's nursery if none is
        running; it ends when the queue is empty. Never blocks; a queue over
        ``max_send_buffer`` closes this connection as ``slow_consumer``
        instead of growing, and leaves every other connection alone.

        Raises:
          ConnectionClosed: if the connection has ended.
        """
        self._queue_message(message)
        if not self._writing and self._nursery is not None:
            self._writing = True  # claimed now, so a burst starts one writer
            self._nursery.start_soon(self._flush, True)

    async def aclose(self, reason: CloseReason = CloseReason.APP_CLOSED) -> None:
        """Close the connection with *reason* and wait until it is closed.

        Sends a close frame, waits up to ``close_timeout`` for the peer's,
        then closes the socket. Called from the handler, this also ends the
        handler (it is cancelled), like any other close.
        """
        self.close(reason)
        await self._wait_finished()

    def close(
        self,
        reason: CloseReason = CloseReason.APP_CLOSED,
        detail: str = "",
        *,
        text: str | None = None,
    ) -> None:
        """Start closing with *reason*, without waiting. The first reason wins.

        Args:
          reason: Why; its :attr:`~trioheart.CloseReason.code` is the close code.
          detail: Said in the ``connection.closed`` event, not on the wire.
          text: The close frame's reason text (at most 123 bytes); defaults
            to the reason's name. A text that starts with the name keeps
            :meth:`CloseReason.from_close_frame` working, e.g. the drain hint
            ``"server_shutdown; retry=2.0..10.0"``.
        """
        if text is not None and len(text.encode()) > 123:
            raise ValueError(f"text must be at most 123 bytes in UTF-8; got {len(text.encode())}")
        self._begin_close(reason, detail=detail, text=text)

    def apply_policy(self, resolution: Resolution, config: ConnectionConfig) -> bool:
        """Run under *config* from now on, as chosen by *resolution*.

        The heartbeat takes the new interval and window bounds at its next
        beat; the socket's keepalive options are set again if they changed
        (the kernel takes them on a live socket). Logs ``policy.applied``
        when the policy itself changed.

        Returns:
          Whether the policy changed (a new revision that resolves to the
          same policy only updates :attr:`policy`).
        """
        previous = self.policy
        self.policy = resolution
        if previous is not None and previous.policy == resolution.policy:
            return False
        now = trio.current_time()
        old = self._config
        self._config = config
        self._detector.reconfigure(config.heartbeat, now=now)
        if config.app_heartbeat_interval is None:
            self._app_detector = None
        elif self._app_detector is None:
            self._app_detector = LivenessDetector(_app_bounds(config), now=now)
        else:
            self._app_detector.reconfigure(_app_bounds(config), now=now)
        if config.keepalive != old.keepalive and self._close_reason is None:
            # If the socket is already gone, the reader will say why.
            with contextlib.suppress(OSError):
                self.keepalive = apply_keepalive(self._stream.socket, config.keepalive)
        if self._read_scope is not None:
            self._read_scope.deadline = min(self._read_scope.deadline, self._wake_at())
        _log.info(
            "policy.applied",
            conn_id=self.conn_id,
            rule=resolution.rule,
            revision=resolution.revision,
            ping_interval=config.heartbeat.ping_interval,
            max_window=config.heartbeat.ping_timeout,
        )
        return True

    def on_local_stall(self, at: float, lag: float) -> None:
        """Report that this process stalled for *lag* seconds up to *at*.

        The heartbeat extends the deadlines that ran during the stall instead
        of blaming the peer. Never blocks, never checkpoints: the server
        calls it from its stall monitor, inside Trio's scheduler.
        """
        self._detector.on_local_stall(at, lag)
        if self._app_detector is not None:
            self._app_detector.on_local_stall(at, lag)

    async def wait_pong(self) -> float:
        """Wait for the next pong that answers the heartbeat's ping; return its RTT.

        Raises:
          ConnectionClosed: if the connection ends first.
        """
        if self._close_reason is not None:
            raise self._closed_error()
        if self._pong_lot is None:
            self._pong_lot = trio.lowlevel.ParkingLot()
        await self._pong_lot.park()
        if self._close_reason is not None:
            raise self._closed_error()
        rtt = self._detector.statistics().last_rtt
        assert rtt is not None
        return rtt

    async def wait_closed(self) -> CloseReason:
        """Wait until the connection has fully closed; return why."""
        await self._wait_finished()
        assert self._close_reason is not None
        return self._close_reason

    async def _wait_finished(self) -> None:
        """Wait until the socket is closed and ``connection.closed`` logged. A checkpoint."""
        if self.closed_at is not None:
            await trio.lowlevel.checkpoint()
            return
        if self._closed_event is None:
            self._closed_event = trio.Event()
        await self._closed_event.wait()

    # ------------------------------------------------------------------
    # Running

    async def run(self, handler: Callable[[Connection], Awaitable[object]]) -> None:
        """Run *handler* and the reader in the connection's nursery until closed.

        Never raises for anything the peer or the handler did: every ending
        becomes a close reason. Cancellation from outside (server shutdown)
        closes the connection with ``server_shutdown``, bounded by
        ``close_timeout``.
        """
        self._log_opened()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader, name=f"trioheart.reader[{self.conn_id}]")
                with trio.CancelScope() as self._handler_scope:
                    try:
                        await handler(self)
                    except ConnectionClosed:
                        pass
                    except Exception as exc:
                        _log.exception("handler.failed", conn_id=self.conn_id)
                        self._begin_close(CloseReason.INTERNAL_ERROR, detail=type(exc).__name__)
                    else:
                        self._begin_close(CloseReason.APP_CLOSED)
        except* Exception as group:  # a bug in trioheart: contain it to this connection
            _log.error("connection.failed", conn_id=self.conn_id, error=repr(group.exceptions))
            self._begin_close(CloseReason.INTERNAL_ERROR, detail="internal error")
        finally:
            self._nursery = None
            # Only a cancellation from outside leaves no reason: the server
            # is going away (or, for a client, the application is leaving).
            self._begin_close(self._on_cancel)
            with trio.CancelScope(shield=True):
                await self._finish()

    def _begin_close(
        self,
        reason: CloseReason,
        *,
        code: int | None = None,
        detail: str = "",
        text: str | None = None,
    ) -> None:
        """Record the first reason, queue the close frame, and wake who must know."""
        if self._close_reason is not None:
            return
        if text is None and reason is CloseReason.SERVER_SHUTDOWN:
            text = self.shutdown_text
        self._close_text = text if text is not None else reason.value
        self._close_reason = reason
        self._close_code = code if code is not None else reason.code
        self._close_detail = detail
        now = trio.current_time()
        if reason in _HANDSHAKE_CLOSE:
            self._close_at = now + self._config.close_timeout
        else:
            self._close_at = now
        if self._read_scope is not None:
            self._read_scope.deadline = min(self._read_scope.deadline, self._close_at)
        if self._write_scope is not None:
            # A write in progress may finish its frame, but a closing
            # connection waits for it no longer than close_timeout, not the
            # whole send_timeout.
            self._write_scope.deadline = min(
                self._write_scope.deadline, now + self._config.close_timeout
            )
        if reason.sends_close_frame or reason is CloseReason.PEER_CLOSED:
            self._queue_close_frame(reason)
            if self._pending and not self._writing and self._nursery is not None:
                self._writing = True
                self._nursery.start_soon(self._flush, True)
        if self._handler_scope is not None:
            self._handler_scope.deadline = min(self._handler_scope.deadline, self._app_grace(now))
        self._inbox_lot.unpark_all()
        if self._pong_lot is not None:
            self._pong_lot.unpark_all()

    def _app_grace(self, now: float) -> float:
        """Until when the application may run after the close began.

        Messages that arrived before the close are not dropped: with any
        still queued, the handler keeps ``close_timeout`` to receive them;
        with none, it is cancelled at once.
        """
        return now + self._config.close_timeout if self._inbox else now

    def _queue_close_frame(self, reason: CloseReason) -> None:
        if self._write_broken:
            return
        try:
            if reason is CloseReason.PEER_CLOSED:
                if self._proto.state is ConnectionState.REMOTE_CLOSING:
                    self._pending += self._proto.send(
                        CloseConnection(code=self._peer_close_code or 1000)
                    )
            elif self._proto.state is ConnectionState.OPEN:
                self._pending += self._proto.send(
                    CloseConnection(code=self._close_code, reason=self._close_text)
                )
        except LocalProtocolError:  # pragma: no cover - state checked above
            pass

    async def _finish(self) -> None:
        """Flush what is left (close frame included), close the socket, log. Bounded."""
        if self._close_reason is None:  # pragma: no cover - every path sets one
            self._close_reason = CloseReason.INTERNAL_ERROR
            self._close_code = 1011
        reason = self._close_reason
        deadline = trio.current_time() + self._config.close_timeout
        if self._pending and not self._write_broken and reason not in _ABORTIVE:
            with trio.move_on_at(deadline):
                while self._writing:  # a writer task is finishing its frame
                    if self._write_scope is not None:
                        self._write_scope.deadline = min(self._write_scope.deadline, deadline)
                    self._writer_lot = trio.lowlevel.ParkingLot()
                    await self._writer_lot.park()
                await self._flush(deadline=deadline)
        self.tcp_info = read_tcp_info(self._stream.socket)
        abort = reason in _ABORTIVE or self._write_broken or bool(self._pending)
        if abort or reason in {CloseReason.PONG_TIMEOUT, CloseReason.HEARTBEAT_TIMEOUT}:
            # Do not let the kernel keep retrying to a peer we gave up on.
            with contextlib.suppress(OSError):
                self._stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
        await trio.aclose_forcefully(self._stream)
        self._pending = bytearray()
        self._inbox = None
        self._inbox_bytes = 0
        self.closed_at = trio.current_time()
        if self._closed_event is not None:
            self._closed_event.set()
        self._log_closed()

    # ------------------------------------------------------------------
    # Reading, and the heartbeat

    def _wake_at(self) -> float:
        wake = self._detector.wake_at()
        if self._app_detector is not None:
            wake = min(wake, self._app_detector.wake_at())
        return min(wake, self._close_at)

    async def _reader(self) -> None:
        try:
            await self._read_loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason, detail = _reason_for_transport_error(exc)
            self._begin_close(reason, detail=detail)
        except trio.Cancelled:
            # Cancelled from outside before any reason: the server is going
            # away (or the client's application is leaving), as run() says.
            self._begin_close(self._on_cancel)
            raise
        finally:
            # Whatever ended the reading ends the connection: the handler and
            # any task it started in our nursery.
            if self._close_reason is None:  # pragma: no cover - every exit sets one
                self._begin_close(CloseReason.INTERNAL_ERROR, detail="reader ended")
            if self._nursery is not None:
                scope = self._nursery.cancel_scope
                scope.deadline = min(scope.deadline, self._app_grace(trio.current_time()))

    async def _read_loop(self) -> None:
        stream = self._stream
        size = self._config.receive_buffer_size
        detector = self._detector
        if self._initial_data:  # frames that came in the same packet as the handshake
            data, self._initial_data = self._initial_data, b""
            if self._on_bytes(data, trio.current_time()):
                return
        while True:
            with trio.move_on_at(self._wake_at()) as scope:
                self._read_scope = scope
                data = await stream.receive_some(size)
            self._read_scope = None
            now = trio.current_time()
            if scope.cancelled_caught:
                if now >= self._close_at:
                    return  # the close handshake ran out of time
                if await self._on_timer(now):
                    return
                continue
            if not data:
                if self._close_reason is None:
                    self._begin_close(CloseReason.CONNECTION_RESET, detail="EOF without close")
                return
            detector.on_activity(now)
            if self._on_bytes(data, now):
                return
            if self._pending and not self._writing:
                await self._flush()

    async def _on_timer(self, now: float) -> bool:
        """The reader's deadline passed: ping or convict. True means stop reading."""
        if self._close_reason is not None:
            return False
        action = self._detector.poll(now)
        if action is Action.CONVICT:
            self._convict(CloseReason.PONG_TIMEOUT, self._detector)
            return True
        if action is Action.SEND_PING:
            ping_id = self._detector.on_ping_sent(now)
            self._pending += self._proto.send(Ping(payload=ping_id.to_bytes(8, "big")))
            self._ping_end = self._stream_end()
            if self._metrics is not None:
                self._metrics.pings_sent.inc()
                self._metrics.pong_window.observe(self._detector.window)
        app = self._app_detector
        if app is not None:
            app_action = app.poll(now)
            if app_action is Action.CONVICT:
                self._convict(CloseReason.HEARTBEAT_TIMEOUT, app)
                return True
            if app_action is Action.SEND_PING:
                app_id = app.on_ping_sent(now)
                self._pending += self._proto.send(
                    TextMessage(data=f'{{"type":"ping","id":{app_id}}}')
                )
                self._app_ping_end = self._stream_end()
        if self._pending and not self._writing:
            await self._flush()
        return self._close_reason is not None

    def _stream_end(self) -> int:
        """The offset in our outbound byte stream just past what is queued now."""
        return self._sent_bytes + self._writing_bytes + len(self._pending)

    def _convict(self, reason: CloseReason, detector: LivenessDetector) -> None:
        ping_end = self._ping_end if detector is self._detector else self._app_ping_end
        if self._sent_bytes < ping_end:
            # Our ping is stuck behind a write the peer does not read: the
            # peer is alive at L4 but does not consume. (A write merely
            # queued, or under way, after the ping went out says nothing.)
            reason = CloseReason.SLOW_CONSUMER
        _log.info(
            "heartbeat.missed",
            conn_id=self.conn_id,
            reason=reason.value,
            window_s=round(detector.window, 6),
        )
        if self._metrics is not None:
            self._metrics.heartbeat_misses.inc()
        self._begin_close(reason, detail=f"no answer within {detector.window:.3f} s")

    def _on_bytes(self, data: bytes, now: float) -> bool:
        """Feed bytes to wsproto and act on the events. True means stop reading."""
        proto = self._proto
        proto.receive_data(data)
        for event in proto.events():
            if isinstance(event, Message):
                if self._on_message(event, now):
                    return True
            elif isinstance(event, Ping):
                if proto.state is ConnectionState.OPEN:
                    self._pending += proto.send(event.response())
                    if self._send_buffer_overrun():
                        return True
            elif isinstance(event, Pong):
                self._on_pong(event.payload, now)
            elif isinstance(event, CloseConnection):
                return self._on_close_event(event)
        return False

    def _on_close_event(self, event: CloseConnection) -> bool:
        state = self._proto.state
        if state is ConnectionState.OPEN:
            # Not from the peer: wsproto could not parse what it sent.
            reason = _PARSE_FAILURES.get(int(event.code), CloseReason.PROTOCOL_ERROR)
            self._begin_close(reason, detail=event.reason or "")
            return True
        if state is ConnectionState.REMOTE_CLOSING:
            self._peer_close_code = int(event.code)
            self._peer_close_text = event.reason or ""
            self._begin_close(
                CloseReason.PEER_CLOSED, code=int(event.code), detail=event.reason or ""
            )
            return True
        # CLOSED: the peer answered our close frame.
        self._peer_close_code = int(event.code)
        self._peer_close_text = event.reason or ""
        return True

    def _on_pong(self, payload: bytes | bytearray, now: float) -> None:
        if len(payload) != 8:
            return
        rtt = self._detector.on_pong(now, int.from_bytes(payload, "big"))
        if rtt is None:
            return
        if self._metrics is not None:
            self._metrics.pongs_received.inc()
            self._metrics.rtt.observe(rtt)
        if self._pong_lot is not None:
            self._pong_lot.unpark_all()

    def _on_message(self, event: Message[Any], now: float) -> bool:
        size = len(event.data)
        self._partial_size += size
        if self._partial_size > self._config.max_message_size:
            self._begin_close(
                CloseReason.MESSAGE_TOO_BIG,
                detail=f"over max_message_size={self._config.max_message_size}",
            )
            return True
        if not event.message_finished:
            self._partial.append(event.data)
            return False
        message: str | bytes
        if self._partial:
            self._partial.append(event.data)
            if isinstance(event, TextMessage):
                message = "".join(self._partial)  # type: ignore[arg-type]
            else:
                message = b"".join(self._partial)  # type: ignore[arg-type]
            self._partial.clear()
        else:
            message = event.data if isinstance(event, TextMessage) else bytes(event.data)
        self._partial_size = 0
        if isinstance(event, TextMessage) and self._on_app_heartbeat(message, now):  # type: ignore[arg-type]
            return self._send_buffer_overrun()
        inbox = self._inbox
        if (
            inbox is not None and len(inbox) >= self._config.max_queued_messages
        ) or self._inbox_bytes + len(message) > self._config.max_queued_bytes:
            self._begin_close(
                CloseReason.SLOW_CONSUMER, detail="the application did not receive in time"
            )
            return True
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(message)
        self._inbox_bytes += len(message)
        self._inbox_lot.unpark()
        if self._app_detector is not None:
            self._app_detector.on_activity(now)
        return False

    def _send_buffer_overrun(self) -> bool:
        """Close as ``slow_consumer`` if replies (pongs) overran the send buffer.

        Replies pile up while a write is blocked (the peer sends but does
        not read); without this bound a ping flood would grow them without
        limit. True means stop reading.
        """
        if len(self._pending) <= self._config.max_send_buffer:
            return False
        self._begin_close(
            CloseReason.SLOW_CONSUMER,
            detail=f"replies over max_send_buffer={self._config.max_send_buffer}",
        )
        return True

    def _on_app_heartbeat(self, text: str, now: float) -> bool:
        """Answer or account an app-level heartbeat. True if *text* was one."""
        if len(text) > _APP_PING_MAX or not text.startswith("{") or '"p' not in text:
            return False
        try:
            body = json.loads(text)
        except ValueError:
            return False
        if not isinstance(body, dict):
            return False
        kind = body.get("type")
        if kind == "ping":
            reply: dict[str, object] = {"type": "pong"}
            if "id" in body:
                reply["id"] = body["id"]
            try:
                answer = json.dumps(reply, separators=(",", ":"), allow_nan=False)
            except ValueError:  # an id holding NaN or Infinity, which JSON does not have
                answer = '{"type":"pong"}'
            if self._proto.state is ConnectionState.OPEN:
                self._pending += self._proto.send(TextMessage(data=answer))
            return True
        if kind == "pong" and self._app_detector is not None:
            ping_id = body.get("id")
            self._app_detector.on_activity(now)
            if isinstance(ping_id, int) and not isinstance(ping_id, bool):
                self._app_detector.on_pong(now, ping_id)
            return True
        return False

    # ------------------------------------------------------------------
    # Writing

    def _queue_message(self, message: str | bytes) -> None:
        if self._close_reason is not None:
            raise self._closed_error()
        if not isinstance(message, str | bytes | bytearray):
            raise TypeError(f"message must be str or bytes; got {type(message).__name__}")
        event: Message[Any] = (
            TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        )
        self._pending += self._proto.send(event)
        if len(self._pending) > self._config.max_send_buffer:
            self._begin_close(
                CloseReason.SLOW_CONSUMER,
                detail=f"over max_send_buffer={self._config.max_send_buffer}",
            )
            raise self._closed_error()

    async def _flush(self, claimed: bool = False, *, deadline: float | None = None) -> None:
        """Write everything pending. Shielded per write and bounded by ``send_timeout``."""
        if self._writing and not claimed:
            return
        self._writing = True
        try:
            while self._pending and not self._write_broken:
                data = bytes(self._pending)
                self._pending.clear()
                self._writing_bytes = len(data)
                limit = trio.current_time() + self._config.send_timeout
                with trio.CancelScope(
                    shield=True, deadline=limit if deadline is None else min(limit, deadline)
                ) as scope:
                    self._write_scope = scope
                    try:
                        await self._stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        self._write_broken = True
                        reason, detail = _reason_for_transport_error(exc)
                        self._begin_close(reason, detail=detail)
                    else:
                        self._sent_bytes += len(data)
                    finally:
                        self._write_scope = None
                        self._writing_bytes = 0
                if scope.cancelled_caught:
                    self._write_broken = True
                    self._begin_close(
                        CloseReason.SLOW_CONSUMER,
                        detail=f"a write blocked for {self._config.send_timeout} s",
                    )
        finally:
            self._writing = False
            if self._writer_lot is not None:
                self._writer_lot.unpark_all()

    # ------------------------------------------------------------------
    # Events

    def _closed_error(self) -> ConnectionClosed:
        assert self._close_reason is not None
        return ConnectionClosed(self._close_reason, self._close_code, self._close_detail)

    def _log_opened(self) -> None:
        if self._metrics is not None:
            self._metrics.connections_open.inc()
        _log.info(
            "connection.opened",
            conn_id=self.conn_id,
            path=self.path,
            remote=_format_address(self.remote),
        )

    def _log_closed(self) -> None:
        reason = self._close_reason
        assert reason is not None
        assert self.closed_at is not None
        duration = self.closed_at - self.opened_at
        stats = self._detector.statistics()
        if self._metrics is not None:
            self._metrics.connection_closed(reason.value, duration)
        fields: dict[str, object] = {
            "conn_id": self.conn_id,
            "reason": reason.value,
            "code": self._close_code,
            "duration_s": round(duration, 6),
            "rtt_s": {
                "last": stats.last_rtt,
                "p50": stats.rtt_p50,
                "p99": stats.rtt_p99,
                "samples": stats.pongs_received,
            },
            "pings_sent": stats.pings_sent,
        }
        if self._close_detail:
            fields["detail"] = self._close_detail
        if self._peer_close_code is not None:
            fields["peer_code"] = self._peer_close_code
        if self.tcp_info is not None:
            fields["tcp"] = self.tcp_info.as_dict()
        _log.info("connection.closed", **fields)


def _app_bounds(config: ConnectionConfig) -> DetectorConfig:
    """The app-level heartbeat's bounds: its own interval, the heartbeat's window."""
    assert config.app_heartbeat_interval is not None
    hb = config.heartbeat
    return DetectorConfig(
        ping_interval=config.app_heartbeat_interval,
        ping_timeout=hb.ping_timeout,
        min_window=hb.min_window,
    )


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
