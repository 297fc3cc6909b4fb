"""The demo chat server, written only on trioheart's public API.

Rooms live in a :class:`~trioheart.broker.Broker`: the embedded one by
default, Redis with ``--redis`` (then several demo processes share the
rooms, and a client can resume on any of them). A client connects to
``/ws?room=NAME&name=NAME`` (add ``resume=1`` and send the ``resume``
request first to continue a session), gets ``hello`` (or ``resumed`` and
what it missed), sends ``{"type": "chat", "text": "..."}``, and every
client in the room, the sender included, receives
``{"type": "chat", "room", "from", "text", "seq"}`` with a per-room ``seq``
that increases by one. Anything else gets an ``{"type": "error", ...}``
frame and the connection stays open.

Pages: the chat at ``/`` (with the browser client, ``/static/trioheart-client.js``),
the live connection health at ``/health`` (its data at ``/health.json``,
with ``?limit=N`` for at most N connection rows, and a ``process`` block:
the live Trio task count, the RSS and the interpreter's allocated blocks)
and Prometheus metrics at ``/metrics``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Final, final

import trio

import trioheart
from trioheart import Connection, HttpRequest, HttpResponse, Metrics
from trioheart.backoff import RetryWindow
from trioheart.broker import Broker, BrokerUnavailable
from trioheart.resume import LogLimits, ResumeServer

__all__ = ["ChatApp", "open_broker", "process_health", "rss_bytes", "run_demo"]

_NAME: Final = re.compile(r"^[\w .@-]{1,32}$")
_ROOM: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_STATIC: Final = re.compile(r"^[A-Za-z0-9_-]+\.(?:html|js|css|png|svg)$")
_CONTENT_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "png": "image/png",
    "svg": "image/svg+xml",
}
MAX_TEXT: Final = 2000
#: The most connections ``/health.json`` lists (``?limit=N`` lists fewer).
HEALTH_ROWS: Final = 500
#: When clients should come back after the demo shuts down: spread over 0.5-5 s.
SHUTDOWN_RETRY: Final = RetryWindow(earliest=0.5, latest=5.0)


def _error(message: str) -> str:
    return json.dumps({"type": "error", "error": message}, separators=(",", ":"))


@final
class ChatApp:
    """The chat rooms (on a broker), the WebSocket handler and the HTTP pages."""

    def __init__(self, metrics: Metrics | None, broker: Broker) -> None:
        self.metrics = metrics
        self.broker = broker
        #: The server, once it runs (for ``/health``).
        self.server: trioheart.Server | None = None

    async def handle(self, conn: Connection) -> None:
        """Serve one chat client until it leaves."""
        room = conn.query.get("room", "lobby") or "lobby"
        name = conn.query.get("name", "") or f"guest-{conn.conn_id}"
        if not _ROOM.match(room) or not _NAME.match(name):
            await conn.send(_error("room must match [A-Za-z0-9_-]{1,64}, name [\\w .@-]{1,32}"))
            return
        joined = await trioheart.join_room(
            conn, self.broker, room, identity=name, metrics=self.metrics
        )
        if joined is None:
            return
        try:
            async for message in conn:
                problem = self._on_message(room, name, message)
                if problem is not None:
                    await conn.send(_error(problem))
        finally:
            self.broker.leave(room, conn)

    def _on_message(self, room: str, name: str, message: str | bytes) -> str | None:
        """Publish a chat line; return what is wrong with anything else."""
        if isinstance(message, bytes):
            return "binary messages are not understood here"
        try:
            body = json.loads(message)
        except (ValueError, RecursionError):
            return "not JSON"
        if not isinstance(body, dict):
            return "a message must be a JSON object"
        kind = body.get("type")
        if kind != "chat":
            return f"unknown message type {kind!r}"
        text = body.get("text")
        if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
            return f"text must be a non-empty string of at most {MAX_TEXT} characters"
        try:
            self.broker.publish_nowait(
                room, {"type": "chat", "room": room, "from": name, "text": text}
            )
        except BrokerUnavailable as exc:
            return f"the room is unavailable, try again: {exc}"
        except trioheart.ConfigError as exc:
            return str(exc)
        return None

    async def http(self, request: HttpRequest) -> HttpResponse | None:
        """The chat page, the health page and its data, static files, the metrics."""
        path = request.path
        if path == "/":
            return _static("chat.html")
        if path == "/health":
            return _static("health.html")
        if path == "/health.json":
            if self.server is None:
                return HttpResponse.text(503, "starting\n")
            snapshot = self.server.health_snapshot(limit=_limit(request.query.get("limit")))
            snapshot["broker"] = _broker_health(self.broker)
            snapshot["process"] = process_health()
            return HttpResponse(
                body=json.dumps(snapshot, separators=(",", ":")).encode(),
                content_type="application/json",
                headers=[("Cache-Control", "no-store")],
            )
        if path.startswith("/static/"):
            return _static(path.removeprefix("/static/"))
        if path == "/metrics" and self.metrics is not None:
            return HttpResponse(
                body=self.metrics.render(), content_type=trioheart.prometheus.CONTENT_TYPE
            )
        return None


def _static(name: str) -> HttpResponse | None:
    if not _STATIC.match(name):
        return None
    resource = importlib.resources.files(__package__).joinpath("static", name)
    if not resource.is_file():
        return None
    return HttpResponse(
        body=resource.read_bytes(), content_type=_CONTENT_TYPES[name.rsplit(".", 1)[1]]
    )


def _limit(value: str | None) -> int:
    """``?limit=N`` of ``/health.json``: 0 to 500 connections listed (500 by default)."""
    try:
        return min(max(int(value), 0), HEALTH_ROWS) if value is not None else HEALTH_ROWS
    except ValueError:
        return HEALTH_ROWS


def rss_bytes() -> int | None:
    """This process's resident set size, from ``/proc/self/statm`` (``None`` off Linux)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def process_health() -> dict[str, object]:
    """The ``process`` block of ``/health.json``: live Trio tasks and memory.

    ``tasks_living`` is :func:`trio.lowlevel.current_statistics`'s count of
    every task in this Trio run (the server's, the broker's, each
    connection's, and the one answering this request), a counter Trio keeps
    anyway, so reading it costs nothing. Once every client has left, it
    returns to what it was before the first one came; a count that stays
    higher is a leaked task. ``rss_bytes`` is the resident set size (Linux),
    which CPython seldom gives back after a peak; ``allocated_blocks``
    (:func:`sys.getallocatedblocks`, also a kept counter) is the memory
    blocks the interpreter holds now, which does come back down when the
    objects are freed.
    """
    return {
        "tasks_living": trio.lowlevel.current_statistics().tasks_living,
        "rss_bytes": rss_bytes(),
        "allocated_blocks": sys.getallocatedblocks(),
    }


def _broker_health(broker: Broker) -> dict[str, object]:
    stats = broker.statistics()
    return {
        "kind": stats.kind,
        "up": stats.up,
        "outages": stats.outages,
        "rooms": stats.rooms,
        "outbox_messages": stats.outbox_messages,
    }


@contextlib.asynccontextmanager
async def open_broker(
    *,
    redis: str | None = None,
    resume_key: bytes | None = None,
    limits: LogLimits | None = None,
    wait_up: float = 10.0,
) -> AsyncIterator[Broker]:
    """The demo's rooms: embedded, or on Redis at *redis* (``redis://host:port``).

    Nodes that share a Redis must share *resume_key* (at least 16 bytes),
    or a client cannot resume on another node; ``None`` makes a random key.

    Raises:
      BrokerUnavailable: if Redis does not answer within *wait_up* seconds.
    """
    resume = ResumeServer(key=resume_key)
    if redis is None:
        yield trioheart.EmbeddedBroker(resume_server=resume, limits=limits)
        return
    async with trioheart.open_redis_broker(redis, resume_server=resume, limits=limits) as broker:
        with trio.move_on_after(wait_up) as scope:
            await broker.wait_up()
        if scope.cancelled_caught:
            raise BrokerUnavailable(f"Redis at {redis} did not answer within {wait_up} s")
        yield broker


async def run_demo(
    *,
    host: str,
    port: int,
    config: trioheart.ConnectionConfig,
    redis: str | None = None,
    resume_key: bytes | None = None,
    limits: LogLimits | None = None,
    policy_file: str | None = None,
    etcd: str | None = None,
    etcd_prefix: str = "/trioheart/policy/",
    announce: bool = True,
    task_status: trio.TaskStatus[trioheart.Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the demo until SIGINT or SIGTERM, then shut down gracefully.

    On shutdown every client is told (in the close frame) to come back
    within :data:`SHUTDOWN_RETRY`, so their reconnects spread out instead
    of arriving at once.

    Args:
      host, port: Where to listen (port 0 picks one; see the server's ``port``).
      config: How each connection runs.
      redis: Keep the rooms in Redis at this URL instead of in this process.
      resume_key: The key that signs resume tokens; nodes on one Redis
        must share it. Random if ``None``.
      limits: Each room log's bounds.
      policy_file: Heartbeat policies from this TOML file, reloaded when it
        changes (:class:`~trioheart.TomlFileSource`).
      etcd: Heartbeat policies from etcd at this URL, under *etcd_prefix*
        (:class:`~trioheart.EtcdSource`), watched.
      etcd_prefix: The etcd key prefix of the policies.
      announce: Print the URLs on standard error once listening.
      task_status: Receives the :class:`~trioheart.Server` once it listens.

    Raises:
      BrokerUnavailable: if *redis* does not answer at start.
      ConfigError: if *policy_file* is not a valid policy file at start.
    """
    import signal

    metrics = Metrics()
    log = trioheart.log.get_logger("trioheart.demo")
    # Listen for signals before announcing, so a Ctrl-C right after the
    # banner still shuts down gracefully.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            open_broker(redis=redis, resume_key=resume_key, limits=limits) as broker,
            trio.open_nursery() as nursery,
        ):
            app = ChatApp(metrics, broker)
            metrics.track_broker(broker)
            policies = await _start_policies(nursery, policy_file, etcd, etcd_prefix)
            server: trioheart.Server = await nursery.start(
                lambda task_status: trioheart.serve(
                    app.handle,
                    host,
                    port,
                    config=config,
                    http_handler=app.http,
                    websocket_paths=["/ws"],
                    metrics=metrics,
                    retry_window=SHUTDOWN_RETRY,
                    policies=policies,
                    task_status=task_status,
                )
            )
            app.server = server
            base = f"{host}:{server.port}" if ":" not in host else f"[{host}]:{server.port}"
            urls = {
                "chat": f"http://{base}/",
                "health": f"http://{base}/health",
                "websocket": f"ws://{base}/ws?room=lobby&name=you",
                "metrics": f"http://{base}/metrics",
            }
            log.info("demo.started", broker=broker.statistics().kind, **urls)
            if announce:
                print(
                    "trioheart demo"
                    + (f" (rooms on Redis at {redis})" if redis else "")
                    + "\n"
                    + "".join(f"  {name:<10} {url}\n" for name, url in urls.items())
                    + "Ctrl-C stops it.",
                    file=sys.stderr,
                    flush=True,
                )
            task_status.started(server)
            async for signum in signals:
                log.info("demo.stopping", signal=signal.Signals(signum).name)
                await server.aclose()
                break
            nursery.cancel_scope.cancel()


async def _start_policies(
    nursery: trio.Nursery, policy_file: str | None, etcd: str | None, prefix: str
) -> trioheart.PolicyStore | None:
    """A policy store fed by the file or etcd, started in *nursery*; ``None`` without either."""
    if policy_file is None and etcd is None:
        return None
    store = trioheart.PolicyStore()
    if policy_file is not None:
        await nursery.start(trioheart.TomlFileSource(policy_file, store).run)
        if store.statistics().revision == 0:  # the file was read and rejected
            problems = "; ".join(store.statistics().last_rejected)
            raise trioheart.ConfigError(f"--policy {policy_file}: {problems}")
    if etcd is not None:
        await nursery.start(trioheart.EtcdSource(store, endpoint=etcd, prefix=prefix).run)
    return store
