"""Serving: accept, tune the socket, handshake, run each connection in its nursery."""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, final

import attrs
import h11
import trio
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionType
from wsproto.utilities import generate_accept_token

from ..backoff import RetryWindow
from ..config import ConnectionConfig
from ..http import HttpRequest, HttpResponse, websocket_key_problem
from ..limits import Admission, ServerLimits
from ..log import get_logger
from ..policy import ConnectionAttributes, PolicyCensus, Resolution
from ..reasons import CloseReason
from .connection import Connection, _ids
from .policy_sources import PolicyStore
from .sockopts import apply_keepalive
from .stalls import DEFAULT_THRESHOLD, StallMonitor, monitor_stalls

__all__ = [
    "AttributesOf",
    "Handler",
    "HttpHandler",
    "Server",
    "ServerStatistics",
    "attributes_from_request",
    "serve",
    "serve_listeners",
]

Handler = Callable[[Connection], Awaitable[object]]
HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse | None]]
AttributesOf = Callable[[HttpRequest], ConnectionAttributes]


def attributes_from_request(request: HttpRequest) -> ConnectionAttributes:
    """The default way to tell a policy who a connection is.

    Query parameters win over headers: ``client_id`` (or ``name``) /
    ``X-Client-Id`` is the rollout key, ``group`` / ``X-Client-Group``,
    ``region`` / ``X-Client-Region`` and ``version`` / ``X-Client-Version``
    are matched by the rules. Without a key the server uses the connection
    id (so such a client's rollout bucket changes on every reconnect).
    """

    def pick(query: str, header: str) -> str | None:
        return request.query.get(query) or request.header(header) or None

    return ConnectionAttributes(
        key=pick("client_id", "x-client-id") or request.query.get("name") or "",
        group=pick("group", "x-client-group"),
        region=pick("region", "x-client-region"),
        client_version=pick("version", "x-client-version"),
    )


_log = get_logger("trioheart.server")
_READ: Final = 4096
_LINGER_SECONDS: Final = 1.0
_LINGER_BYTES: Final = 256 * 1024
_RECENT_CLOSES: Final = 50
# Refusals that wrote an HTTP response, which a lingering close protects.
_ANSWERED: Final = frozenset(
    {
        CloseReason.HANDSHAKE_FAILED,
        CloseReason.CONNECTION_LIMIT,
        CloseReason.ADDRESS_LIMIT,
        CloseReason.RATE_LIMITED,
        CloseReason.ORIGIN_REFUSED,
        CloseReason.AUTH_REFUSED,
    }
)


@final
@attrs.frozen
class ServerStatistics:
    """A snapshot of a server, as returned by :meth:`Server.statistics`."""

    #: WebSocket connections open now.
    connections_open: int
    #: WebSocket handshakes accepted since the server started.
    connections_accepted: int
    #: Closed connections (and failed handshakes) by reason.
    closed: dict[str, int]
    #: Open connections per policy revision (empty without policies).
    policy_revisions: dict[int, int] = attrs.field(factory=dict)


@final
class Server:
    """A running trioheart server, as :func:`serve` hands it to ``task_status``.

    Use it to find the port, look at the open connections, and shut down
    gracefully with :meth:`aclose`.
    """

    def __init__(
        self,
        handler: Handler,
        listeners: Sequence[trio.SocketListener],
        config: ConnectionConfig,
        *,
        http_handler: HttpHandler | None,
        authorize: HttpHandler | None,
        websocket_paths: frozenset[str] | None,
        metrics: Any,
        drain_timeout: float,
        retry_window: RetryWindow | None = None,
        policies: PolicyStore | None = None,
        attributes: AttributesOf | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self._handler = handler
        #: What the server admits.
        self.limits = limits if limits is not None else ServerLimits()
        self._admission = Admission(self.limits, now=trio.current_time())
        #: The live policies, if the server runs with them.
        self.policies = policies
        self._attributes_of = attributes if attributes is not None else attributes_from_request
        self._attributes: dict[Connection, ConnectionAttributes] = {}
        #: Connections per (policy revision, rule).
        self.policy_census = PolicyCensus()
        #: The reconnect window announced when the server shuts down.
        self.retry_window = retry_window
        #: The listeners accepting connections.
        self.listeners = list(listeners)
        self.config = config
        self._http_handler = http_handler
        self._authorize = authorize
        self._websocket_paths = websocket_paths
        self.metrics = metrics
        self.drain_timeout = drain_timeout
        self._connections: set[Connection] = set()
        self._accepted = 0
        self._closed: collections.Counter[str] = collections.Counter()
        self._accept_scope: trio.CancelScope | None = None
        self._connections_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._recent: collections.deque[dict[str, object]] = collections.deque(
            maxlen=_RECENT_CLOSES
        )
        #: The event-loop stall monitor, while the server runs.
        self.stalls: StallMonitor | None = None
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def port(self) -> int:
        """The port of the first listener."""
        port: int = self.listeners[0].socket.getsockname()[1]
        return port

    @property
    def connections(self) -> frozenset[Connection]:
        """The WebSocket connections open now."""
        return frozenset(self._connections)

    def statistics(self) -> ServerStatistics:
        """Counts of open, accepted and closed connections."""
        revisions: dict[int, int] = {}
        for (revision, _rule), count in self.policy_census.counts().items():
            revisions[revision] = revisions.get(revision, 0) + count
        return ServerStatistics(
            connections_open=len(self._connections),
            connections_accepted=self._accepted,
            closed=dict(self._closed),
            policy_revisions=revisions,
        )

    def health_snapshot(self, *, limit: int = 500) -> dict[str, object]:
        """What a health page shows, as plain JSON-ready data.

        Args:
          limit: The most connections listed; the least healthy come first.
            ``0`` lists none and skips the walk over the connections, for a
            cheap poll of the totals.

        Returns:
          ``open`` (count), ``closed`` (totals by reason), ``recent_closes``
          (the last few, newest last), ``stalls`` (count, total and max
          seconds), and ``connections``: for each, its id, path, age, RTT
          (last, p50, p99), pong window, interval, health score and policy.
        """
        now = trio.current_time()
        rows = []
        for conn in self._connections if limit > 0 else ():
            stats = conn.liveness()
            rows.append(
                {
                    "conn_id": conn.conn_id,
                    "path": conn.path,
                    "age_s": round(now - conn.opened_at, 3),
                    "rtt_last_s": stats.last_rtt,
                    "rtt_p50_s": stats.rtt_p50,
                    "rtt_p99_s": stats.rtt_p99,
                    "window_s": round(stats.window, 4),
                    "interval_s": round(stats.interval, 4),
                    "health": round(stats.health, 4),
                    "policy": None
                    if conn.policy is None
                    else {"rule": conn.policy.rule, "revision": conn.policy.revision},
                }
            )
        rows.sort(key=lambda row: (row["health"], row["conn_id"]))
        stalls = self.stalls.statistics() if self.stalls is not None else None
        return {
            "open": len(self._connections),
            "closed": dict(self._closed),
            "recent_closes": list(self._recent),
            "stalls": None
            if stalls is None
            else {"count": stalls.count, "total_s": stalls.total, "max_s": stalls.max},
            "connections": rows[:limit],
        }

    async def wait_until(self, predicate: Callable[[ServerStatistics], bool]) -> None:
        """Wait until *predicate* holds for :meth:`statistics`.

        Checked now and again each time a connection opens or closes, and
        after a new policy set has been applied, e.g.
        ``await server.wait_until(lambda s: s.connections_open == 0)``.
        """
        while not predicate(self.statistics()):
            await self._changed.park()

    async def aclose(
        self, *, drain_timeout: float | None = None, retry_window: RetryWindow | None = None
    ) -> None:
        """Stop accepting and close every connection with ``server_shutdown`` (1001).

        Each connection gets a close frame and up to ``close_timeout`` for
        the peer's answer; after *drain_timeout* (the server's default if
        ``None``) whatever is left is cancelled. Returns when every
        connection's task has ended.

        Args:
          drain_timeout: The bound on the whole shutdown.
          retry_window: When clients should come back; sent in each close
            frame's text (``server_shutdown; retry=A..B``) so clients spread
            their reconnects over it instead of storming back at once.
            Defaults to the server's :attr:`retry_window`.
        """
        timeout = self.drain_timeout if drain_timeout is None else drain_timeout
        window = retry_window if retry_window is not None else self.retry_window
        if window is not None:
            for conn in self._connections:
                conn.shutdown_text = window.close_text()
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for conn in list(self._connections):
            conn.close(CloseReason.SERVER_SHUTDOWN)
        if self._connections_scope is not None:
            self._connections_scope.deadline = min(
                self._connections_scope.deadline, trio.current_time() + timeout
            )
        await self._stopped.wait()

    # ------------------------------------------------------------------

    def _count_close(
        self, reason: CloseReason, lifetime: float | None, conn_id: str = "", code: int = 1006
    ) -> None:
        self._closed[reason.value] += 1
        self._recent.append(
            {
                "conn_id": conn_id,
                "reason": reason.value,
                "code": code,
                "duration_s": None if lifetime is None else round(lifetime, 3),
                "at": time.time(),
            }
        )
        self._changed.unpark_all()
        if lifetime is None and self.metrics is not None:
            self.metrics.connection_closed(reason.value, None)

    def _on_stall(self, at: float, lag: float) -> None:
        """Tell every connection's heartbeat that we, not its peer, were stalled.

        Called from inside Trio's scheduler: no Trio calls here. One server
        subscription rather than one per connection keeps connections small;
        stalls are rare, so the walk over connections is cheap enough.
        """
        for conn in self._connections:
            conn.on_local_stall(at, lag)
        if self.metrics is not None:
            self.metrics.loop_stalled(lag)

    async def _follow_policies(self, store: PolicyStore) -> None:
        """Apply each new policy set to the open connections it changes."""
        async for policy_set in store.subscribe():
            for done, conn in enumerate(list(self._connections)):
                attributes = self._attributes.get(conn)
                old = conn.policy
                if attributes is None or old is None or old.revision >= policy_set.revision:
                    continue
                new = policy_set.resolve(attributes)
                conn.apply_policy(new, new.policy.connection_config(self.config))
                self.policy_census.move(old, new)
                if done % 1000 == 999:
                    await trio.lowlevel.checkpoint()
            self._changed.unpark_all()

    def _resolve(self, attributes: ConnectionAttributes) -> tuple[Resolution, ConnectionConfig]:
        assert self.policies is not None
        resolution = self.policies.current.resolve(attributes)
        return resolution, resolution.policy.connection_config(self.config)

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        conn_id = f"c{next(_ids)}"
        try:
            address = str(stream.socket.getpeername()[0])
        except OSError:
            address = "?"
        refusal = self._admission.admit(address, now=trio.current_time())
        if refusal is not None:
            await self._refuse_at_admission(stream, conn_id, refusal)
            return
        try:
            await self._handle_admitted(stream, conn_id)
        finally:
            self._admission.release(address)

    async def _refuse_at_admission(
        self, stream: trio.SocketStream, conn_id: str, reason: CloseReason
    ) -> None:
        status = 503 if reason is CloseReason.CONNECTION_LIMIT else 429
        retry_after = max(1, math.ceil(self._admission.retry_after()))
        body = f"{reason.value}\n".encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nRetry-After: {retry_after}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        with trio.move_on_after(self.config.handshake_timeout):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(head.encode() + body)
        await self._fail(stream, conn_id, reason, f"HTTP {status}")

    async def _handle_admitted(self, stream: trio.SocketStream, conn_id: str) -> None:
        config = self.config
        if self.policies is not None:
            # Who the client is is known only after the handshake; until then
            # the socket gets what a client nobody knows would get.
            config = self._resolve(ConnectionAttributes(key=conn_id))[1]
        try:
            applied = apply_keepalive(stream.socket, config.keepalive)
        except OSError as exc:  # the peer is already gone
            await self._fail(stream, conn_id, CloseReason.CONNECTION_RESET, str(exc))
            return
        _log.debug("socket.tuned", conn_id=conn_id, **applied.as_dict())
        if self.metrics is not None:
            self.metrics.socket_tuned(applied)
        opened = await self._handshake(stream, conn_id)
        if opened is None:
            return
        proto, request, trailing = opened
        resolution: Resolution | None = None
        attributes: ConnectionAttributes | None = None
        if self.policies is not None:
            attributes = self._attributes_of(request)
            if not attributes.key:
                attributes = attrs.evolve(attributes, key=conn_id)
            before = config
            resolution, config = self._resolve(attributes)
            if config.keepalive != before.keepalive:
                try:
                    applied = apply_keepalive(stream.socket, config.keepalive)
                except OSError as exc:
                    await self._fail(stream, conn_id, CloseReason.CONNECTION_RESET, str(exc))
                    return
        conn = Connection(
            stream,
            proto,
            config,
            path=request.path,
            query=request.query,
            headers=request.headers,
            keepalive=applied,
            metrics=self.metrics,
            conn_id=conn_id,
            initial_data=trailing,
        )
        if self.retry_window is not None:
            conn.shutdown_text = self.retry_window.close_text()
        if resolution is not None and attributes is not None:
            conn.policy = resolution
            self._attributes[conn] = attributes
            self.policy_census.add(resolution)
            _log.info(
                "policy.applied",
                conn_id=conn_id,
                rule=resolution.rule,
                revision=resolution.revision,
                ping_interval=config.heartbeat.ping_interval,
                max_window=config.heartbeat.ping_timeout,
            )
        self._accepted += 1
        self._connections.add(conn)
        self._changed.unpark_all()
        try:
            await conn.run(self._handler)
        finally:
            self._connections.discard(conn)
            if self._attributes.pop(conn, None) is not None and conn.policy is not None:
                self.policy_census.remove(conn.policy)
            assert conn.close_reason is not None
            self._count_close(
                conn.close_reason,
                (conn.closed_at or 0) - conn.opened_at,
                conn.conn_id,
                conn.close_code or conn.close_reason.code,
            )

    async def _fail(
        self, stream: trio.SocketStream, conn_id: str, reason: CloseReason, detail: str
    ) -> None:
        self._count_close(reason, None, conn_id, reason.code)
        _log.info(
            "connection.closed",
            conn_id=conn_id,
            reason=reason.value,
            code=reason.code,
            detail=detail,
            duration_s=0.0,
        )
        if reason in _ANSWERED:
            await _lingering_close(stream)
        else:
            await trio.aclose_forcefully(stream)

    async def _handshake(
        self, stream: trio.SocketStream, conn_id: str
    ) -> tuple[WSProtoConnection, HttpRequest, bytes] | None:
        """Read the request; serve plain HTTP, or accept the WebSocket upgrade."""
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_request_size)
        with trio.move_on_after(self.config.handshake_timeout) as scope:
            try:
                request = await self._read_request(h, stream)
            except h11.RemoteProtocolError as exc:
                await self._reject(h, stream, exc.error_status_hint, f"bad request: {exc}")
                await self._fail(stream, conn_id, CloseReason.HANDSHAKE_FAILED, str(exc))
                return None
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._fail(stream, conn_id, CloseReason.CONNECTION_RESET, str(exc))
                return None
            if request is None:
                await self._fail(
                    stream, conn_id, CloseReason.CONNECTION_RESET, "closed before a request"
                )
                return None
            is_upgrade = "websocket" in request.header_tokens("upgrade")
            if not is_upgrade or (
                self._websocket_paths is not None and request.path not in self._websocket_paths
            ):
                if is_upgrade:
                    await self._reject(h, stream, 404, "no WebSocket here")
                    await self._fail(stream, conn_id, CloseReason.HANDSHAKE_FAILED, "not found")
                else:
                    await self._serve_http(h, stream, request)
                return None
            problem = websocket_key_problem(request)
            if problem is not None:
                await self._reject(h, stream, 400, problem)
                await self._fail(stream, conn_id, CloseReason.HANDSHAKE_FAILED, problem)
                return None
            origin = request.header("origin")
            if self._admission.check_origin(origin) is not None:
                await self._reject(h, stream, 403, f"origin {origin!r} is not allowed")
                await self._fail(stream, conn_id, CloseReason.ORIGIN_REFUSED, f"origin {origin!r}")
                return None
            if self._authorize is not None:
                refusal = await self._authorize(request)
                if refusal is not None:
                    await self._send_response(h, stream, refusal)
                    await self._fail(
                        stream,
                        conn_id,
                        CloseReason.AUTH_REFUSED,
                        f"refused with {refusal.status}",
                    )
                    return None
            key = request.header("sec-websocket-key")
            assert key is not None
            accept = h11.InformationalResponse(
                status_code=101,
                headers=[
                    (b"Upgrade", b"websocket"),
                    (b"Connection", b"Upgrade"),
                    (b"Sec-WebSocket-Accept", generate_accept_token(key.strip().encode())),
                ],
            )
            try:
                await stream.send_all(h.send(accept) or b"")
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._fail(stream, conn_id, CloseReason.CONNECTION_RESET, str(exc))
                return None
            trailing, _closed = h.trailing_data
            return WSProtoConnection(ConnectionType.SERVER), request, bytes(trailing)
        assert scope.cancelled_caught
        await self._fail(
            stream,
            conn_id,
            CloseReason.HANDSHAKE_TIMEOUT,
            f"no complete handshake within {self.config.handshake_timeout} s",
        )
        return None

    async def _read_request(
        self, h: h11.Connection, stream: trio.SocketStream
    ) -> HttpRequest | None:
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                h.receive_data(await stream.receive_some(_READ))
                continue
            if isinstance(event, h11.Request):
                headers = [
                    (name.decode("latin-1").lower(), value.decode("latin-1"))
                    for name, value in event.headers
                ]
                return HttpRequest.from_target(
                    event.method.decode("latin-1"), event.target.decode("latin-1"), headers
                )
            if isinstance(event, h11.ConnectionClosed):
                return None
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}", 400)

    async def _serve_http(
        self, h: h11.Connection, stream: trio.SocketStream, request: HttpRequest
    ) -> None:
        response: HttpResponse | None = None
        if self._http_handler is not None:
            try:
                response = await self._http_handler(request)
            except Exception:
                _log.exception("http.failed", path=request.path)
                response = HttpResponse.text(500, "internal error\n")
        if response is None:
            response = HttpResponse.text(404, "not found\n")
        await self._send_response(h, stream, response)
        await _lingering_close(stream)

    async def _reject(
        self, h: h11.Connection, stream: trio.SocketStream, status: int, text: str
    ) -> None:
        await self._send_response(h, stream, HttpResponse.text(status, text + "\n"))

    async def _send_response(
        self, h: h11.Connection, stream: trio.SocketStream, response: HttpResponse
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Connection", "close"),
            *response.headers,
        ]
        if response.status == 426:
            headers.append(("Sec-WebSocket-Version", "13"))
        try:
            if h.their_state is h11.ERROR or h.our_state is not h11.SEND_RESPONSE:
                # h11 will not speak any more; write a minimal response by hand.
                data = _raw_response(response, headers)
            else:
                data = h.send(h11.Response(status_code=response.status, headers=headers)) or b""
                data += h.send(h11.Data(data=response.body)) or b""
                data += h.send(h11.EndOfMessage()) or b""
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass


async def _lingering_close(stream: trio.SocketStream) -> None:
    """Close after a response without losing it to a RST.

    Closing a socket with unread bytes makes the kernel send RST, which can
    destroy the response before the client reads it. So: half-close, then
    read and discard what the client still sends, bounded in time and bytes.

    Shielded from the caller's deadline, which it bounds by itself: the
    response is out and its close counted (or, for plain HTTP, not counted)
    already, so the handshake deadline expiring during the linger must not
    make it a second close, ``handshake_timeout``.
    """
    with trio.CancelScope(shield=True):
        with trio.move_on_after(_LINGER_SECONDS):
            try:
                await stream.send_eof()
                discarded = 0
                while discarded < _LINGER_BYTES:
                    chunk = await stream.receive_some(_READ)
                    if not chunk:
                        break
                    discarded += len(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)


def _raw_response(response: HttpResponse, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


_REASONS: Final = {
    400: "Bad Request",
    403: "Forbidden",
    429: "Too Many Requests",
    503: "Service Unavailable",
    404: "Not Found",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
}


async def serve_listeners(
    handler: Handler,
    listeners: Sequence[trio.SocketListener],
    *,
    config: ConnectionConfig | None = None,
    http_handler: HttpHandler | None = None,
    authorize: HttpHandler | None = None,
    websocket_paths: Sequence[str] | None = None,
    metrics: Any = None,
    drain_timeout: float = 5.0,
    retry_window: RetryWindow | None = None,
    policies: PolicyStore | None = None,
    attributes: AttributesOf | None = None,
    limits: ServerLimits | None = None,
    stall_threshold: float = DEFAULT_THRESHOLD,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSocket connections on listeners the caller made.

    Each accepted socket gets its keepalive settings before anything is
    read from it, then the opening handshake (bounded by
    ``handshake_timeout``), then runs in its own nursery with *handler*.
    Plain HTTP requests on the same listeners go to *http_handler*.

    Args:
      handler: ``async def handler(conn: Connection)``, run once per
        connection. When it returns, the connection closes as
        ``app_closed``; if it raises, as ``internal_error`` (logged).
      listeners: :class:`trio.SocketListener` objects.
      config: How each connection runs; :class:`ConnectionConfig` defaults
        if ``None``.
      http_handler: ``async def (request) -> HttpResponse | None`` for
        requests that are not WebSocket upgrades; ``None`` answers 404.
      authorize: ``async def (request) -> HttpResponse | None`` called for
        each valid WebSocket handshake before it is accepted; return a
        response to refuse the connection.
      websocket_paths: Paths on which WebSocket upgrades are accepted
        (every path if ``None``).
      metrics: A :class:`~trioheart.prometheus.Metrics`, or ``None``.
      drain_timeout: The default bound of :meth:`Server.aclose`.
      retry_window: When clients should reconnect after a shutdown
        (:class:`~trioheart.backoff.RetryWindow`), announced in the close
        frames of ``server_shutdown``.
      policies: Live heartbeat policies (:class:`~trioheart.PolicyStore`).
        Each connection runs the policy its attributes resolve to, with
        *config* for everything a policy does not set; a new policy set
        reaches open connections without a reconnect.
      attributes: How to tell who a connection is from its handshake
        request; :func:`attributes_from_request` by default.
      limits: What the server admits (:class:`~trioheart.ServerLimits`):
        connections in all and per address, the handshake rate, allowed
        origins. Each refusal is a named close reason and counted.
      stall_threshold: The shortest event-loop stall reported; a stall
        extends the deadlines of every connection's heartbeat that were
        running during it (the peer is not blamed for our pause), logs
        ``loop.stalled`` and counts it in ``trioheart_loop_stalls_total``.
      task_status: Receives the :class:`Server` once it is accepting.

    Returns when :meth:`Server.aclose` has closed every connection. On
    cancellation, every connection is closed with ``server_shutdown``,
    each bounded by ``close_timeout``, before the cancellation propagates.
    """
    server = Server(
        handler,
        listeners,
        config if config is not None else ConnectionConfig(),
        http_handler=http_handler,
        authorize=authorize,
        websocket_paths=frozenset(websocket_paths) if websocket_paths is not None else None,
        metrics=metrics,
        drain_timeout=drain_timeout,
        retry_window=retry_window,
        policies=policies,
        attributes=attributes,
        limits=limits,
    )
    try:
        with (
            monitor_stalls(threshold=stall_threshold) as stalls,
            stalls.subscribe(server._on_stall),
        ):
            server.stalls = stalls
            await _serve_until_closed(server, metrics, task_status)
    finally:
        server._stopped.set()
        _log.info("server.stopped", closed=dict(server._closed))


async def _serve_until_closed(
    server: Server, metrics: Any, task_status: trio.TaskStatus[Server]
) -> None:
    async with trio.open_nursery() as connections:
        server._connections_scope = connections.cancel_scope
        async with trio.open_nursery() as accepting:
            server._accept_scope = accepting.cancel_scope
            if server.policies is not None:
                accepting.start_soon(server._follow_policies, server.policies)
            if metrics is not None:
                metrics.track_server(server)
            await accepting.start(
                functools.partial(
                    trio.serve_listeners,
                    server._handle_stream,
                    server.listeners,
                    handler_nursery=connections,
                )
            )
            _log.info(
                "server.started",
                addresses=[_address(listener) for listener in server.listeners],
            )
            task_status.started(server)


async def serve(
    handler: Handler,
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    config: ConnectionConfig | None = None,
    http_handler: HttpHandler | None = None,
    authorize: HttpHandler | None = None,
    websocket_paths: Sequence[str] | None = None,
    metrics: Any = None,
    drain_timeout: float = 5.0,
    retry_window: RetryWindow | None = None,
    policies: PolicyStore | None = None,
    attributes: AttributesOf | None = None,
    limits: ServerLimits | None = None,
    stall_threshold: float = DEFAULT_THRESHOLD,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSocket connections on *host* and *port*.

    The same as :func:`serve_listeners` on ``trio.open_tcp_listeners(port,
    host=host)``; port 0 picks a free port (see :attr:`Server.port`).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    await serve_listeners(
        handler,
        listeners,
        config=config,
        http_handler=http_handler,
        authorize=authorize,
        websocket_paths=websocket_paths,
        metrics=metrics,
        drain_timeout=drain_timeout,
        retry_window=retry_window,
        policies=policies,
        attributes=attributes,
        limits=limits,
        stall_threshold=stall_threshold,
        task_status=task_status,
    )


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
