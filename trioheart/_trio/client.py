"""The Trio client: one connection (:func:`connect`), or a self-healing one (:func:`open_resuming`).

A client connection is the same :class:`~trioheart.Connection` the server
runs: its socket is tuned before the handshake, its reader is also its
heartbeat (it pings the server and convicts a silent one as
``pong_timeout``), its queues are bounded, and it ends with one
:class:`~trioheart.CloseReason`.

:class:`ResumingClient` adds what a chat client needs on top: reconnect with
exponential backoff and full jitter (:class:`~trioheart.backoff.Backoff`),
the server's drain window honoured, and resume by sequence number
(:class:`~trioheart.resume.ResumeClient`), so the application sees every
room message exactly once and in order, or a :class:`Reset` telling it to
resync. Every task it starts lives in the nursery of the ``async with``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import random
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final, TypeAlias, final
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionType
from wsproto.utilities import generate_accept_token

from ..backoff import Backoff, Retrier, RetryWindow
from ..config import ConnectionConfig
from ..errors import ConfigError, ConnectionClosed, HandshakeError, TrioheartError
from ..log import get_logger
from ..reasons import CloseReason
from ..resume import (
    RESUME_QUERY_PARAM,
    ClientState,
    GapDetected,
    MessageReceived,
    RefuseReason,
    ResetReason,
    ResumeClient,
    ResumeProtocolError,
    ResyncRequired,
    SessionResumed,
    SessionStarted,
)
from .connection import Connection
from .sockopts import apply_keepalive

__all__ = [
    "ClientEvent",
    "ClientStatistics",
    "Connected",
    "Disconnected",
    "HandshakeRejected",
    "Message",
    "NotConnected",
    "ReconnectFailed",
    "Reset",
    "ResumingClient",
    "connect",
    "open_resuming",
]

_log = get_logger("trioheart.client")
_READ: Final = 4096
_MAX_RESPONSE_BODY: Final = 64 * 1024
# HTTP statuses worth retrying: the server is busy or briefly unable.
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


class HandshakeRejected(HandshakeError):
    """The server answered the opening handshake with an HTTP status, not 101.

    Attributes:
      status: The HTTP status code, e.g. 429 or 503.
      retry_after: Seconds from the ``Retry-After`` header, if it had one.
      body: The start of the response body (at most 64 KiB).
    """

    def __init__(self, status: int, *, retry_after: float | None, body: bytes) -> None:
        self.status = status
        self.retry_after = retry_after
        self.body = body
        text = body[:200].decode("utf-8", "replace").strip()
        super().__init__(f"server refused the handshake with HTTP {status}: {text!r}")


class NotConnected(TrioheartError):
    """:meth:`ResumingClient.send` found no live connection (it is reconnecting)."""


class ReconnectFailed(TrioheartError):
    """The reconnect policy gave up (``max_attempts`` or ``deadline``), or a retry is pointless.

    Raised from the event iteration of :class:`ResumingClient`; ``__cause__``
    is the last failure, when there was an exception.
    """


# --------------------------------------------------------------------------
# One connection


@final
@attrs.frozen
class _Target:
    host: str
    port: int
    resource: str
    path: str
    query: Mapping[str, str]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


def _parse_url(url: str) -> _Target:
    if not isinstance(url, str):
        raise ConfigError(f"url must be a str; got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"url is not a valid URL: {url!r} ({exc})") from None
    if parts.scheme == "wss":
        raise ConfigError(
            f"url {url!r}: wss:// is not supported; terminate TLS in front of the server"
        )
    if parts.scheme != "ws":
        raise ConfigError(f"url must start with ws://; got {url!r}")
    if not parts.hostname:
        raise ConfigError(f"url has no host: {url!r}")
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(name, value)
    return _Target(
        host=parts.hostname,
        port=port if port is not None else 80,
        resource=resource,
        path=parts.path or "/",
        query=query,
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date, which we do not parse
    return seconds if 0 <= seconds < math.inf else None


async def _handshake(
    stream: trio.SocketStream,
    target: _Target,
    headers: Sequence[tuple[str, str]],
) -> tuple[list[tuple[str, str]], bytes]:
    """Send the upgrade request and read the answer; the caller bounds it in time."""
    key = base64.b64encode(secrets.token_bytes(16))
    h = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target.resource,
        headers=[
            ("Host", target.host_header),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key.decode("ascii")),
            ("Sec-WebSocket-Version", "13"),
            *headers,
        ],
    )
    await stream.send_all(h.send(request) or b"")
    h.send(h11.EndOfMessage())
    status: int | None = None
    response_headers: list[tuple[str, str]] = []
    body = b""
    while True:
        try:
            event = h.next_event()
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"the server's answer is not HTTP: {exc}") from exc
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ)
            if not data and status is None:
                raise HandshakeError("the server closed the connection during the handshake")
            h.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse | h11.Response):
            status = event.status_code
            response_headers = [
                (name.decode("latin-1").lower(), value.decode("latin-1"))
                for name, value in event.headers
            ]
            if status == 101:
                break
            continue
        if isinstance(event, h11.Data):
            body = (body + bytes(event.data))[:_MAX_RESPONSE_BODY]
            continue
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
            break
    assert status is not None
    found = dict(response_headers)
    if status != 101:
        raise HandshakeRejected(
            status, retry_after=_retry_after(found.get("retry-after")), body=body
        )
    expected = generate_accept_token(key).decode("ascii")
    if found.get("sec-websocket-accept") != expected:
        raise HandshakeError("the server's Sec-WebSocket-Accept does not match our key")
    if found.get("upgrade", "").lower() != "websocket":
        raise HandshakeError("the server's 101 lacks 'Upgrade: websocket'")
    trailing, _closed = h.trailing_data
    return response_headers, bytes(trailing)


@contextlib.asynccontextmanager
async def connect(
    url: str,
    *,
    config: ConnectionConfig | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[Connection]:
    """Open one client connection to *url* (``ws://host:port/path?query``).

    The socket gets ``config.keepalive`` before the handshake (read back in
    :attr:`Connection.keepalive <trioheart.Connection.keepalive>`), the
    TCP connect and the handshake together are bounded by
    ``config.handshake_timeout``, and the connection
    then runs its reader and heartbeat in a nursery of this context manager:
    it pings the server every interval and closes as ``pong_timeout`` when
    a pong (or anything else) does not come back within the window.

    Entering connects and blocks until the handshake is done; exiting
    closes the connection (``app_closed``, a close frame and up to
    ``close_timeout`` for the server's) and blocks until it is closed. If
    the connection ends first, :meth:`~trioheart.Connection.receive` and
    :meth:`~trioheart.Connection.send` raise
    :exc:`~trioheart.ConnectionClosed`; the body is not cancelled.

    Args:
      url: The server's WebSocket URL; only ``ws://`` is supported.
      config: How the connection runs (:class:`~trioheart.ConnectionConfig`).
      headers: Extra request headers, e.g. ``[("Origin", "https://chat")]``.

    Raises:
      ConfigError: for a bad *url*.
      HandshakeRejected: if the server answered with an HTTP status.
      HandshakeError: if the handshake failed or took longer than allowed.
      OSError: if the TCP connection could not be made.
    """
    config = config if config is not None else ConnectionConfig()
    target = _parse_url(url)
    # One bound for the TCP connect and the HTTP upgrade together: a server
    # that drops SYNs would otherwise hold a try for the kernel's ~2 minutes.
    deadline = trio.current_time() + config.handshake_timeout
    with trio.move_on_at(deadline) as connecting:
        stream = await trio.open_tcp_stream(target.host, target.port)
    if connecting.cancelled_caught:
        raise HandshakeError(f"no TCP connection within {config.handshake_timeout} s")
    try:
        applied = apply_keepalive(stream.socket, config.keepalive)
        with trio.move_on_at(deadline) as scope:
            response_headers, trailing = await _handshake(stream, target, headers)
        if scope.cancelled_caught:
            raise HandshakeError(f"no answer to the handshake within {config.handshake_timeout} s")
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise HandshakeError(f"the connection broke during the handshake: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    conn = Connection(
        stream,
        WSProtoConnection(ConnectionType.CLIENT),
        config,
        path=target.path,
        query=target.query,
        headers=response_headers,
        keepalive=applied,
        metrics=None,
        initial_data=trailing,
        on_cancel=CloseReason.APP_CLOSED,
    )
    body_done = trio.Event()

    async def hold(_conn: Connection) -> None:
        await body_done.wait()

    async with _body_outside_nursery() as outcome, trio.open_nursery() as nursery:
        nursery.start_soon(conn.run, hold, name=f"trioheart.client[{conn.conn_id}]")
        try:
            yield conn
        except BaseException as exc:
            outcome.keep(exc)
        finally:
            body_done.set()


@final
class _BodyOutcome:
    """An exception from a context manager's body, kept out of a nursery."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def keep(self, exc: BaseException) -> None:
        if isinstance(exc, GeneratorExit):
            raise exc
        self.error = exc


@contextlib.asynccontextmanager
async def _body_outside_nursery() -> AsyncIterator[_BodyOutcome]:
    """Re-raise the body's exception as itself once the nursery inside has closed.

    A nursery wraps an exception raised in its body in an
    :exc:`ExceptionGroup`; for a context manager that yields inside a
    nursery, that would turn the caller's own ``ValueError`` into a group.
    The body's exception is kept instead, the nursery closes normally (its
    tasks finish their bounded close), and the exception is raised here.
    """
    outcome = _BodyOutcome()
    yield outcome
    if outcome.error is not None:
        raise outcome.error


# --------------------------------------------------------------------------
# Events of the resuming client


@final
@attrs.frozen(kw_only=True)
class Connected:
    """A connection is live in the room.

    After a :class:`Disconnected`, ``resumed`` says whether the session
    continued: then the *replayed* messages it missed follow, in order,
    before live ones. A fresh session (``resumed=False``) after a
    disconnect is always preceded by a :class:`Reset`.
    """

    #: Whether the session was resumed (False for a fresh session).
    resumed: bool
    #: How many missed messages the server replays (0 for a fresh session).
    replayed: int
    #: The room's sequence number where this connection picks up.
    seq: int
    #: The session id and epoch (of the room log instance).
    session: str
    epoch: str
    #: Connections opened so far, this one included.
    connection: int


@final
@attrs.frozen(kw_only=True)
class Message:
    """A message from the server, delivered once and in order."""

    #: The room's sequence number, or ``None`` for an unsequenced message
    #: (e.g. an error frame).
    seq: int | None
    #: The parsed JSON object (``"seq"`` included), or the raw text or bytes
    #: of a message that is not a JSON object.
    data: Mapping[str, Any] | str | bytes


@final
@attrs.frozen(kw_only=True)
class Disconnected:
    """The connection ended (or a connect failed); the next try starts in :attr:`retry_in`."""

    #: Why the connection ended, or ``None`` if it never opened.
    reason: CloseReason | None
    #: What failed, for a human.
    detail: str
    #: Seconds until the next try (drawn from the backoff, or from the
    #: server's retry window when it announced one).
    retry_in: float
    #: Retries since the last live connection, this one included.
    attempt: int


@final
@attrs.frozen(kw_only=True)
class Reset:
    """The missed messages cannot be replayed: resync the application's state.

    Messages delivered before stay valid; some after them are lost to this
    client. A :class:`Connected` with ``resumed=False`` follows and says
    where the new history starts.
    """

    #: ``trimmed``, ``epoch_changed``, ``token_expired`` (a reset), or
    #: ``malformed``, ``invalid_token``, ``invalid_seq`` (a refusal).
    reason: ResetReason | RefuseReason


#: What iterating a :class:`ResumingClient` yields.
ClientEvent: TypeAlias = Connected | Message | Disconnected | Reset


@final
@attrs.frozen(kw_only=True)
class ClientStatistics:
    """A snapshot of a :class:`ResumingClient`."""

    #: Connections whose handshake succeeded.
    connections: int
    #: Tries that failed before a connection went live.
    failed_attempts: int
    #: Sessions resumed after a reconnect.
    resumes: int
    #: Resets (and refusals) that required a resync.
    resets: int
    #: Sequenced messages delivered.
    delivered: int
    #: Sequenced messages dropped because they were already delivered.
    duplicates: int
    #: Gaps detected (each closed the connection and resumed).
    gaps: int


# --------------------------------------------------------------------------
# The resuming client


def _with_query(url: str, name: str, value: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{name}={value}"


@final
class ResumingClient:
    """A client that stays connected to a trioheart room and never loses a message.

    Made by :func:`open_resuming`. Iterate it for :class:`Connected`,
    :class:`Message`, :class:`Disconnected` and :class:`Reset` events;
    :meth:`send` on the live connection.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        config: ConnectionConfig,
        backoff: Backoff,
        headers: Sequence[tuple[str, str]],
        rng: random.Random,
        max_events: int,
    ) -> None:
        self._urls = list(urls)
        self._config = config
        self._backoff = backoff
        self._headers = list(headers)
        self._rng = rng
        self._protocol = ResumeClient()
        self._send_events, self._events = trio.open_memory_channel[ClientEvent](max_events)
        self._conn: Connection | None = None
        self._live = False
        self._changed = trio.lowlevel.ParkingLot()
        self._connections = 0
        self._failed = 0
        self._url_index = 0
        self._failure: ReconnectFailed | None = None

    # ------------------------------------------------------------------
    # Public API

    @property
    def connection(self) -> Connection | None:
        """The live connection, or ``None`` while (re)connecting."""
        return self._conn if self._live else None

    @property
    def last_seq(self) -> int | None:
        """The sequence number of the last message delivered (or where the session began)."""
        return self._protocol.last_seq

    def statistics(self) -> ClientStatistics:
        """Counters of connections, resumes, resets and deliveries."""
        stats = self._protocol.statistics()
        return ClientStatistics(
            connections=self._connections,
            failed_attempts=self._failed,
            resumes=stats.resumes,
            resets=stats.resyncs,
            delivered=stats.delivered,
            duplicates=stats.duplicates,
            gaps=stats.gaps,
        )

    @property
    def failure(self) -> ReconnectFailed | None:
        """Why the client stopped reconnecting, once it has; ``None`` while it runs."""
        return self._failure

    async def wait_connected(self) -> Connection:
        """Wait until a connection is live in the room, and return it.

        Raises:
          ReconnectFailed: if the client gave up.
        """
        while True:
            if self._failure is not None:
                raise self._failure
            conn = self.connection
            if conn is not None:
                await trio.lowlevel.checkpoint()
                return conn
            await self._changed.park()

    async def send(self, message: Mapping[str, Any] | str) -> None:
        """Send one message on the live connection: a mapping as JSON, a str as is.

        Nothing is queued across a reconnect: a message either went out on
        the connection that was live, or this raises and the caller decides.

        Raises:
          NotConnected: while the client is reconnecting (or the connection
            ended while sending).
        """
        conn = self.connection
        if conn is None:
            raise NotConnected("no live connection; the client is reconnecting")
        text = (
            message
            if isinstance(message, str)
            else json.dumps(message, separators=(",", ":"), allow_nan=False)
        )
        try:
            await conn.send(text)
        except ConnectionClosed as exc:
            raise NotConnected(f"the connection ended while sending: {exc}") from exc

    def __aiter__(self) -> ResumingClient:
        return self

    async def __anext__(self) -> ClientEvent:
        """The next event; raises :exc:`ReconnectFailed` once the client gave up."""
        try:
            return await self._events.receive()
        except trio.EndOfChannel:
            if self._failure is not None:
                raise self._failure from self._failure.__cause__
            raise StopAsyncIteration from None

    # ------------------------------------------------------------------
    # Running

    async def _run(self) -> None:
        """Connect, deliver, and reconnect until cancelled or the policy gives up."""
        try:
            await self._reconnect_loop()
        except ReconnectFailed as exc:
            _log.warning("client.gave_up", error=str(exc))
            self._failure = exc  # before the channel closes: the iteration raises it
            self._conn = None
            self._live = False
            self._changed.unpark_all()  # wait_connected() raises
        finally:
            self._send_events.close()

    async def _reconnect_loop(self) -> None:
        retrier: Retrier | None = None
        while True:
            url = self._urls[self._url_index % len(self._urls)]
            reason, detail, window, failure, fatal = await self._one_connection(url)
            went_live = self._live
            self._live = False
            self._conn = None
            if went_live:
                retrier = None
            else:
                self._failed += 1
            if fatal:
                raise ReconnectFailed(f"not retrying: {detail}") from failure
            now = trio.current_time()
            if retrier is None:
                retrier = self._backoff.retrier(rng=self._rng, now=now)
            delay = retrier.next_delay(now=now, window=window)
            if delay is None:
                raise ReconnectFailed(
                    f"gave up after {retrier.attempts} retries; last: {detail}"
                ) from failure
            if isinstance(failure, HandshakeRejected) and failure.retry_after is not None:
                delay = max(delay, failure.retry_after)
            _log.info(
                "client.disconnected",
                reason=None if reason is None else reason.value,
                detail=detail,
                retry_in_s=round(delay, 3),
                attempt=retrier.attempts,
            )
            await self._send_events.send(
                Disconnected(reason=reason, detail=detail, retry_in=delay, attempt=retrier.attempts)
            )
            self._url_index += 1
            await trio.sleep(delay)

    async def _one_connection(
        self, url: str
    ) -> tuple[CloseReason | None, str, RetryWindow | None, BaseException | None, bool]:
        """Run one connection to its end: (reason, detail, retry window, failure, fatal)."""
        request = self._protocol.start_connection()
        if request is not None:
            url = _with_query(url, RESUME_QUERY_PARAM, "1")
        try:
            async with connect(url, config=self._config, headers=self._headers) as conn:
                self._connections += 1
                self._conn = conn
                if request is not None:
                    await conn.send(request)
                await self._deliver(conn)
                # Leave the block to wait for the close: waiting inside it
                # would keep connect()'s handler alive, and a connection that
                # ended with messages still queued would then linger for its
                # whole close_timeout before the retry could even start.
                conn.close(CloseReason.APP_CLOSED)
        except HandshakeRejected as exc:
            fatal = exc.status not in _RETRY_STATUSES
            return None, str(exc), None, exc, fatal
        except (HandshakeError, OSError) as exc:
            return None, str(exc) or type(exc).__name__, None, exc, False
        except ConnectionClosed:
            pass  # the resume request could not be sent: the close says why
        finally:
            self._protocol.connection_lost()
        reason = conn.close_reason
        window: RetryWindow | None = None
        text = conn.peer_close_text
        if text is not None:
            window = RetryWindow.from_close_text(text)
        detail = f"{reason.value if reason else 'closed'} (code {conn.close_code})"
        if text:
            detail += f": {text}"
        return reason, detail, window, None, False

    async def _deliver(self, conn: Connection) -> None:
        """Feed the server's messages to the resume protocol and hand out events.

        The session must start (``hello``, or ``resumed``, or ``reset`` and
        ``hello``) within ``handshake_timeout`` of the connection opening:
        the heartbeat keeps a connection whose server answers pings but
        never says hello (it was lost on the way, or the server is stuck)
        alive forever, so that bound closes it as ``protocol_error``, and
        the next connection tries again.
        """
        protocol = self._protocol
        send = self._send_events.send
        timeout = self._config.handshake_timeout
        opening_deadline = conn.opened_at + timeout
        while True:
            live = protocol.state is ClientState.LIVE
            with trio.move_on_at(math.inf if live else opening_deadline) as opening:
                try:
                    raw = await conn.receive()  # on cancellation, nothing is lost
                except ConnectionClosed:
                    return
            if opening.cancelled_caught:
                conn.close(CloseReason.PROTOCOL_ERROR, f"no hello within {timeout} s")
                return
            if isinstance(raw, bytes):
                if protocol.state is ClientState.LIVE:
                    await send(Message(seq=None, data=raw))
                continue
            try:
                events = protocol.receive(raw)
            except ResumeProtocolError as exc:
                # Not something a trioheart server sends: a plain message
                # (not JSON) is still the application's; a broken control
                # message ends this connection, and the next one resumes.
                if raw[:1] != "{" and protocol.state is ClientState.LIVE:
                    await send(Message(seq=None, data=raw))
                    continue
                conn.close(CloseReason.PROTOCOL_ERROR, str(exc))
                return
            for event in events:
                if isinstance(event, MessageReceived):
                    await send(Message(seq=event.seq, data=event.message))
                elif isinstance(event, SessionStarted | SessionResumed):
                    resumed = isinstance(event, SessionResumed)
                    self._live = True
                    self._changed.unpark_all()
                    await send(
                        Connected(
                            resumed=resumed,
                            replayed=event.replayed if isinstance(event, SessionResumed) else 0,
                            seq=event.seq,
                            session=event.session,
                            epoch=event.epoch,
                            connection=self._connections,
                        )
                    )
                elif isinstance(event, ResyncRequired):
                    await send(Reset(reason=event.reason))
                elif isinstance(event, GapDetected):
                    # Never over one ordered connection from a correct
                    # server; close and let the resume fill the gap.
                    conn.close(
                        CloseReason.PROTOCOL_ERROR,
                        f"seq gap: expected {event.expected}, got {event.received}",
                    )
                    return
            if protocol.state is ClientState.REFUSED:
                return  # the server closes; the next connection starts afresh


@contextlib.asynccontextmanager
async def open_resuming(
    url: str | Sequence[str],
    *,
    config: ConnectionConfig | None = None,
    backoff: Backoff | None = None,
    headers: Sequence[tuple[str, str]] = (),
    rng: random.Random | None = None,
    max_events: int = 1024,
) -> AsyncIterator[ResumingClient]:
    """Stay connected to a trioheart room, reconnecting and resuming as needed.

    Runs the connection, its heartbeat and the reconnect loop in a nursery
    of this context manager: none outlives the ``async with``. On every
    lost connection (a close frame, a reset, a silent server convicted as
    ``pong_timeout``) it waits a delay from *backoff* (full jitter by
    default) or from the server's retry window, reconnects (rotating
    through *url* when it is a list, e.g. the nodes of a cluster) and
    resumes from the last message delivered.

    Entering blocks only until the client task is started; iterate the
    client for events. Exiting cancels the client and closes its
    connection (``app_closed``), bounded by ``close_timeout``.

    Args:
      url: The room's WebSocket URL (``ws://host:port/ws?room=R&name=N``),
        or several to rotate through.
      config: How each connection runs (:class:`~trioheart.ConnectionConfig`):
        its heartbeat, keepalive and bounds. ``handshake_timeout`` bounds
        the HTTP handshake, and again the wait for the session to start
        (``hello`` or ``resumed``); a connection that misses it is closed
        as ``protocol_error`` and the client reconnects.
      backoff: The reconnect policy; ``Backoff()`` (0.5 s base, 30 s cap,
        full jitter, never give up) by default.
      headers: Extra handshake headers.
      rng: The randomness of the jitter (seed it in tests).
      max_events: Events that may wait for the application. When they are
        not taken, the client stops reading; its own bounded receive queue
        then fills and it reconnects and resumes later, losing nothing.

    Raises:
      ReconnectFailed: from the iteration, when *backoff* gives up, or the
        server refused the handshake with a status a retry cannot fix
        (e.g. 403 or 404).
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ConfigError("url must name at least one server")
    for each in urls:
        _parse_url(each)
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
        raise ConfigError(f"max_events must be a whole number >= 1; got {max_events!r}")
    client = ResumingClient(
        urls,
        config=config if config is not None else ConnectionConfig(),
        backoff=backoff if backoff is not None else Backoff(),
        headers=headers,
        rng=rng if rng is not None else random.Random(),
        max_events=max_events,
    )
    async with _body_outside_nursery() as outcome, trio.open_nursery() as nursery:
        nursery.start_soon(client._run, name="trioheart.resuming_client")
        try:
            yield client
        except BaseException as exc:
            outcome.keep(exc)
        finally:
            nursery.cancel_scope.cancel()
