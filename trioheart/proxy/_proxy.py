"""The Trio shell of the proxy: sockets, tasks and timers around the engine.

Each accepted connection runs in its own nursery, owned by the connection's
handler task: four pumps (a reader and a writer per direction) and the
handler itself, which enforces connection-wide timers. When the connection
ends, for whatever reason, the nursery is cancelled and both sockets are
closed before the handler returns, so no task outlives its connection.
"""

from __future__ import annotations

import math
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Final, NoReturn, final

import attrs
import trio

from ..errors import ConfigError
from ._addr import Address, format_address, numeric_host, parse_address
from ._engine import Close, LinkEngine, Send, SendEof, Wait
from ._registry import ProxyError, ToxicRegistry
from .toxics import Stream, Toxic, ToxicAttributes, toxic_to_json

__all__ = ["Proxy", "ProxyStatistics", "open_proxy"]

_LISTEN_BACKLOG: Final = 128
_DOWN: Final = "down"


@final
@attrs.frozen
class ProxyStatistics:
    """A snapshot of a proxy, as returned by :meth:`Proxy.statistics`."""

    #: Whether the proxy accepts connections (``False``: the ``down`` state).
    enabled: bool
    #: Connections open now.
    connections_open: int
    #: Connections accepted since the proxy started.
    connections_accepted: int
    #: Connections made to the upstream server since the proxy started: one
    #: per accepted connection, except those whose upstream was unreachable
    #: or that ended (e.g. the proxy went down) before the connect returned.
    upstream_connections: int
    #: Bytes written to the upstream server (client to server).
    upstream_bytes_sent: int
    #: Bytes written to clients (server to client).
    downstream_bytes_sent: int
    #: Bytes toxics discarded, both directions.
    bytes_dropped: int
    #: Bytes held by the proxy now (delayed or stalled), all connections.
    bytes_buffered: int

    def to_json(self) -> dict[str, object]:
        """The snapshot as a JSON-ready dict."""
        return attrs.asdict(self)


class _Connection:
    """One proxied connection, as the shell sees it."""

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.engine: LinkEngine | None = None
        self.cancel_scope = trio.CancelScope()
        self.close: Close | None = None
        self._changed = trio.Event()

    def notify(self) -> None:
        """Wake every task of this connection that waits for a change."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, until: float | None) -> None:
        """Wait for :meth:`notify`, or until *until* (``None``: no deadline)."""
        with trio.move_on_at(math.inf if until is None else until):
            await self._changed.wait()

    def abort(self, close: Close) -> None:
        """End the connection now; the first reason given wins."""
        if self.close is None:
            self.close = close
        self.cancel_scope.cancel()


def _listening_socket(address: Address) -> trio.SocketListener:
    """A bound, listening socket, made synchronously (numeric hosts only)."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _set_reset_on_close(stream: trio.SocketStream) -> None:
    with suppress(OSError, trio.ClosedResourceError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@final
class Proxy:
    """A TCP proxy that applies toxics to the connections through it.

    Create it, then run it with :meth:`run` in a nursery (or use
    :func:`open_proxy`). Toxics can be added, changed and removed at any
    time, from any task in the same Trio run; every open connection sees
    the change at once. These methods are synchronous and never block.

    Args:
      upstream: The server to forward to, ``(host, port)`` or ``"host:port"``.
      listen: Where to accept clients; the default picks a free port on
        127.0.0.1 (read it back from :attr:`listen_address`). A numeric IP
        address or ``localhost``.
      buffer_limit: The most bytes held per direction of a connection (by
        ``latency``, ``stall`` and the like); beyond it the proxy stops
        reading that direction, so the sender feels backpressure.
      read_size: The most bytes read from a socket at once.
      connect_timeout: Seconds allowed to connect to the upstream server;
        a client whose upstream connection fails is reset.
      seed: Seeds every random draw (toxicity, jitter, slice sizes), for
        repeatable runs.

    Raises:
      ConfigError: naming the argument, for a bad value.
    """

    def __init__(
        self,
        *,
        upstream: str | Address,
        listen: str | Address = ("127.0.0.1", 0),
        buffer_limit: int = 1 << 20,
        read_size: int = 1 << 16,
        connect_timeout: float = 10.0,
        seed: int | None = None,
    ) -> None:
        self._upstream = parse_address(upstream, field="upstream")
        host, port = parse_address(listen, field="listen")
        self._listen: Address = (numeric_host(host, field="listen"), port)
        for name, value in (("buffer_limit", buffer_limit), ("read_size", read_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer of bytes; got {value!r}")
        if not isinstance(connect_timeout, int | float) or not 0 < connect_timeout < math.inf:
            raise ConfigError(
                "connect_timeout must be a positive, finite number of seconds; "
                f"got {connect_timeout!r}"
            )
        self._buffer_limit = buffer_limit
        self._read_size = read_size
        self._connect_timeout = connect_timeout
        self._rng = random.Random(seed)
        self._registry = ToxicRegistry()
        self._connections: set[_Connection] = set()
        self._enabled = True
        self._nursery: trio.Nursery | None = None
        self._listener: trio.SocketListener | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._accepted = 0
        self._upstream_connections = 0
        self._totals = {Stream.UPSTREAM: 0, Stream.DOWNSTREAM: 0}
        self._dropped = 0
        self.control_address: Address | None = None

    # -- addresses and state ------------------------------------------------

    @property
    def listen_address(self) -> Address:
        """The ``(host, port)`` clients connect to (the real port once running)."""
        return self._listen

    @property
    def upstream_address(self) -> Address:
        """The ``(host, port)`` of the server behind the proxy."""
        return self._upstream

    @property
    def enabled(self) -> bool:
        """Whether the proxy accepts connections. See :meth:`set_enabled`."""
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Take the proxy down (Toxiproxy's ``down``) or bring it back.

        Down, it stops listening (clients get *connection refused*) and
        closes every open connection (a FIN to both peers). Back up, it
        listens again on the same address and port.

        Raises:
          ProxyError: if it cannot listen again (the port was taken
            meanwhile); it stays down.
        """
        if enabled == self._enabled:
            return
        if not enabled:
            self._enabled = False
            self._stop_accepting()
            for conn in list(self._connections):
                conn.abort(Close(reset=False, cause=_DOWN))
            return
        if self._nursery is not None:
            self._start_accepting(self._nursery)
        self._enabled = True

    def describe(self) -> dict[str, object]:
        """The proxy as the control API shows it (``GET /proxy``)."""
        return {
            "listen": format_address(self._listen),
            "upstream": format_address(self._upstream),
            "control": None
            if self.control_address is None
            else format_address(self.control_address),
            "enabled": self._enabled,
            "toxics": [toxic_to_json(toxic) for toxic in self.toxics],
            "statistics": self.statistics().to_json(),
        }

    def statistics(self) -> ProxyStatistics:
        """Counters and the connections open now."""
        totals = dict(self._totals)
        dropped = self._dropped
        buffered = 0
        for conn in self._connections:
            if conn.engine is not None:
                for direction in totals:
                    stats = conn.engine.statistics(direction)
                    totals[direction] += stats.sent
                    dropped += stats.dropped
                    buffered += stats.buffered
        return ProxyStatistics(
            enabled=self._enabled,
            connections_open=len(self._connections),
            connections_accepted=self._accepted,
            upstream_connections=self._upstream_connections,
            upstream_bytes_sent=totals[Stream.UPSTREAM],
            downstream_bytes_sent=totals[Stream.DOWNSTREAM],
            bytes_dropped=dropped,
            bytes_buffered=buffered,
        )

    # -- toxics -------------------------------------------------------------

    @property
    def toxics(self) -> tuple[Toxic, ...]:
        """The toxics in force, in the order they were added."""
        return self._registry.toxics

    def get_toxic(self, name: str) -> Toxic:
        """The toxic called *name*.

        Raises:
          ToxicNotFound: if there is none.
        """
        return self._registry.get(name)

    def add_toxic(
        self,
        toxic: Toxic | ToxicAttributes,
        *,
        stream: Stream | str | None = None,
        toxicity: float | None = None,
        name: str | None = None,
    ) -> Toxic:
        """Add a toxic; it applies to open connections at once, and to new ones.

        Args:
          toxic: A :class:`Toxic`, or just its attributes (e.g.
            ``Latency(latency=0.1)``), completed by the other arguments.
          stream: The direction, when *toxic* is only attributes.
          toxicity: The per-connection probability, when *toxic* is only attributes.
          name: The name, when *toxic* is only attributes.

        Returns:
          The toxic as added (with its defaults filled in).

        Raises:
          ConfigError: for a bad value.
          ToxicExists: if the name is taken. Nothing changes on error.
        """
        if not isinstance(toxic, Toxic):
            kwargs: dict[str, object] = {"attributes": toxic}
            if stream is not None:
                kwargs["stream"] = stream
            if toxicity is not None:
                kwargs["toxicity"] = toxicity
            if name is not None:
                kwargs["name"] = name
            toxic = Toxic(**kwargs)  # type: ignore[arg-type]
        elif (stream, toxicity, name) != (None, None, None):
            raise ConfigError("pass stream, toxicity and name inside the Toxic, not beside it")
        added = self._registry.add(toxic, now=trio.current_time())
        self._toxics_changed()
        return added

    def update_toxic(
        self,
        name: str,
        *,
        attributes: ToxicAttributes | None = None,
        toxicity: float | None = None,
    ) -> Toxic:
        """Change a toxic's attributes (same type) and/or toxicity, live.

        Every connection draws its toxicity again and restarts the toxic's
        timers (``timeout``, ``reset_peer``, ``stall``); ``limit_data``
        counts and ``nat_idle`` mappings carry on.

        Raises:
          ToxicNotFound: if there is none.
          ConfigError: for a bad value. Nothing changes on error.
        """
        changed = self._registry.update(
            name, now=trio.current_time(), attributes=attributes, toxicity=toxicity
        )
        self._toxics_changed()
        return changed

    def remove_toxic(self, name: str) -> None:
        """Remove a toxic; open connections stop feeling it at once.

        Raises:
          ToxicNotFound: if there is none.
        """
        self._registry.remove(name)
        self._toxics_changed()

    @contextmanager
    def toxic(
        self,
        toxic: Toxic | ToxicAttributes,
        *,
        stream: Stream | str | None = None,
        toxicity: float | None = None,
        name: str | None = None,
    ) -> Iterator[Toxic]:
        """Add a toxic for the duration of a ``with`` block.

        Entering adds it (as :meth:`add_toxic`), leaving removes it if it is
        still there. Both halves are synchronous.
        """
        added = self.add_toxic(toxic, stream=stream, toxicity=toxicity, name=name)
        try:
            yield added
        finally:
            if added.name in {t.name for t in self.toxics}:
                self.remove_toxic(added.name)

    def reset(self) -> None:
        """Remove every toxic and bring the proxy up (Toxiproxy's ``/reset``).

        Raises:
          ProxyError: if it cannot listen again.
        """
        self._registry.clear()
        self._toxics_changed()
        self.set_enabled(True)

    def _toxics_changed(self) -> None:
        records = self._registry.records
        now = trio.current_time()
        for conn in self._connections:
            if conn.engine is not None:
                conn.engine.set_toxics(records, now)
                conn.notify()

    # -- serving ------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Listen and proxy until cancelled.

        ``await nursery.start(proxy.run)`` returns once the proxy listens,
        with :attr:`listen_address` holding the real port. On cancellation
        every connection is closed and every task of the proxy has exited
        before this returns.

        Raises:
          ProxyError: if it cannot listen.
          RuntimeError: if it is already running.
        """
        if self._nursery is not None:
            raise RuntimeError("this proxy is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._enabled:
                    self._start_accepting(nursery)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._stop_accepting()
            self._nursery = None
        raise AssertionError("unreachable")  # pragma: no cover

    def _bind(self) -> trio.SocketListener:
        if self._listener is None:
            try:
                listener = _listening_socket(self._listen)
            except OSError as exc:
                raise ProxyError(
                    f"cannot listen on {format_address(self._listen)}: {exc.strerror or exc}"
                ) from exc
            self._listen = listener.socket.getsockname()[:2]
            self._listener = listener
        return self._listener

    def _start_accepting(self, nursery: trio.Nursery) -> None:
        listener = self._bind()
        self._accept_scope = trio.CancelScope()
        nursery.start_soon(self._accept_loop, listener, self._accept_scope, nursery)

    def _stop_accepting(self) -> None:
        if self._accept_scope is not None:
            self._accept_scope.cancel()
            self._accept_scope = None
        if self._listener is not None:
            self._listener.socket.close()
            self._listener = None

    async def _accept_loop(
        self, listener: trio.SocketListener, scope: trio.CancelScope, nursery: trio.Nursery
    ) -> None:
        with scope:
            while True:
                try:
                    stream = await listener.accept()
                except trio.ClosedResourceError:
                    return
                except OSError:  # out of descriptors: back off a little
                    await trio.sleep(0.05)
                    continue
                self._accepted += 1
                nursery.start_soon(
                    self._handle, stream, self._accepted, name=f"proxy-conn-{self._accepted}"
                )

    async def _handle(self, client: trio.SocketStream, conn_id: int) -> None:
        conn = _Connection(conn_id)
        self._connections.add(conn)
        server: trio.SocketStream | None = None
        try:
            with conn.cancel_scope:
                with trio.move_on_after(self._connect_timeout):
                    with suppress(OSError):
                        server = await trio.open_tcp_stream(*self._upstream)
                if server is None:
                    conn.close = Close(reset=True, cause="upstream_unreachable")
                    return
                self._upstream_connections += 1
                now = trio.current_time()
                engine = LinkEngine(
                    now=now,
                    rng=random.Random(self._rng.getrandbits(64)),
                    buffer_limit=self._buffer_limit,
                    read_size=self._read_size,
                )
                engine.set_toxics(self._registry.records, now)
                conn.engine = engine
                async with trio.open_nursery() as nursery:
                    for direction, source, dest in (
                        (Stream.UPSTREAM, client, server),
                        (Stream.DOWNSTREAM, server, client),
                    ):
                        nursery.start_soon(self._pump_in, conn, engine, direction, source)
                        nursery.start_soon(self._pump_out, conn, engine, direction, dest)
                    await self._supervise(conn, engine)
                    nursery.cancel_scope.cancel()
        finally:
            for stream in (client, server):
                if stream is not None:
                    if conn.close is not None and conn.close.reset:
                        _set_reset_on_close(stream)
                    await trio.aclose_forcefully(stream)
            self._connections.discard(conn)
            if conn.engine is not None:
                for direction in self._totals:
                    stats = conn.engine.statistics(direction)
                    self._totals[direction] += stats.sent
                    self._dropped += stats.dropped

    async def _supervise(self, conn: _Connection, engine: LinkEngine) -> None:
        while True:
            close = engine.poll(trio.current_time())
            if close is not None:
                conn.close = close
                return
            if engine.finished:
                return
            await conn.wait_changed(engine.wake_at())

    async def _pump_in(
        self,
        conn: _Connection,
        engine: LinkEngine,
        direction: Stream,
        source: trio.SocketStream,
    ) -> None:
        while True:
            size = engine.read_size(direction)
            if size == 0:
                await conn.wait_changed(None)
                continue
            try:
                data = await source.receive_some(size)
            except trio.BrokenResourceError:
                if engine.receive_error(direction, trio.current_time()):
                    conn.notify()
                    return
                conn.abort(Close(reset=True, cause="peer_reset"))
                return
            if not data:
                engine.receive_eof(direction, trio.current_time())
                conn.notify()
                return
            engine.receive(direction, data, trio.current_time())
            conn.notify()

    async def _pump_out(
        self,
        conn: _Connection,
        engine: LinkEngine,
        direction: Stream,
        dest: trio.SocketStream,
    ) -> None:
        while True:
            output = engine.next_output(direction, trio.current_time())
            if isinstance(output, Wait):
                await conn.wait_changed(output.until)
            elif isinstance(output, Send):
                try:
                    await dest.send_all(output.data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.abort(Close(reset=True, cause="peer_reset"))
                    return
                engine.sent(direction)
                conn.notify()
            elif isinstance(output, SendEof):
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await dest.send_eof()
                engine.sent(direction)
                conn.notify()
                return
            else:
                conn.abort(output)
                return


@asynccontextmanager
async def open_proxy(
    *,
    upstream: str | Address,
    listen: str | Address = ("127.0.0.1", 0),
    control: str | Address | None = None,
    buffer_limit: int = 1 << 20,
    read_size: int = 1 << 16,
    connect_timeout: float = 10.0,
    seed: int | None = None,
) -> AsyncIterator[Proxy]:
    """Run a :class:`Proxy` (and optionally its control API) for a ``with`` block.

    ``async with open_proxy(upstream=...) as proxy:`` blocks until the proxy
    listens; leaving the block closes every connection and waits for every
    task of the proxy to exit. Arguments are those of :class:`Proxy`, plus:

    Args:
      control: Where to serve the HTTP control API (a loopback address;
        port 0 picks one, see :attr:`Proxy.control_address`), or ``None``.

    Raises:
      ConfigError: for a bad argument.
      ProxyError: if the proxy or the control API cannot listen.
    """
    from ._control import _control_listener, _serve_control_on

    proxy = Proxy(
        upstream=upstream,
        listen=listen,
        buffer_limit=buffer_limit,
        read_size=read_size,
        connect_timeout=connect_timeout,
        seed=seed,
    )
    # Bind before any task starts, so a bad address raises plainly.
    control_listener = None if control is None else _control_listener(control)
    try:
        proxy._bind()
    except BaseException:
        if control_listener is not None:
            control_listener.socket.close()
        raise
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            if control_listener is not None:
                await nursery.start(_serve_control_on, proxy, control_listener)
            try:
                yield proxy
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One failure (usually the body's own) comes out as itself, not wrapped.
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found
