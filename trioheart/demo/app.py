"""The demo chat server, written only on trioheart's public API.

Rooms are in memory. A client connects to ``/ws?room=NAME&name=NAME``,
sends ``{"type": "chat", "text": "..."}``, and every client in the room,
the sender included, receives ``{"type": "chat", "text", "from", "seq"}``
with a per-room ``seq`` that increases by one. Anything else gets an
``{"type": "error", ...}`` frame and the connection stays open.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Final, final

import attrs
import trio

import trioheart
from trioheart import Connection, HttpRequest, HttpResponse, Metrics

__all__ = ["ChatApp", "run_demo"]

_NAME: Final = re.compile(r"^[\w .@-]{1,32}$")
_ROOM: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TEXT: Final = 2000


@final
@attrs.define(eq=False)
class Room:
    """Members of one room and its sequence counter."""

    name: str
    members: set[Connection] = attrs.field(factory=set)
    seq: int = 0

    def publish(self, sender: str, text: str) -> None:
        self.seq += 1
        frame = json.dumps(
            {"type": "chat", "room": self.name, "from": sender, "text": text, "seq": self.seq},
            separators=(",", ":"),
        )
        for member in list(self.members):
            if member.closed:
                continue
            # Never wait on one member: a slow one closes itself as
            # slow_consumer when its bounded send buffer is full.
            try:
                member.send_nowait(frame)
            except trioheart.ConnectionClosed:
                self.members.discard(member)


def _error(message: str) -> str:
    return json.dumps({"type": "error", "error": message}, separators=(",", ":"))


@final
class ChatApp:
    """The chat rooms, the WebSocket handler and the HTTP pages."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.rooms: dict[str, Room] = {}

    async def handle(self, conn: Connection) -> None:
        """Serve one chat client until it leaves."""
        room_name = conn.query.get("room", "lobby") or "lobby"
        name = conn.query.get("name", "") or f"guest-{conn.conn_id}"
        if not _ROOM.match(room_name) or not _NAME.match(name):
            await conn.send(_error("room must match [A-Za-z0-9_-]{1,64}, name [\\w .@-]{1,32}"))
            return
        room = self.rooms.setdefault(room_name, Room(room_name))
        room.members.add(conn)
        try:
            await conn.send(
                json.dumps(
                    {"type": "welcome", "room": room_name, "name": name, "seq": room.seq},
                    separators=(",", ":"),
                )
            )
            async for message in conn:
                problem = self._on_message(room, name, message)
                if problem is not None:
                    await conn.send(_error(problem))
        finally:
            room.members.discard(conn)
            if not room.members:
                self.rooms.pop(room_name, None)

    def _on_message(self, room: Room, name: str, message: str | bytes) -> str | None:
        if isinstance(message, bytes):
            return "binary messages are not understood here"
        try:
            body = json.loads(message)
        except ValueError:
            return "not JSON"
        if not isinstance(body, dict):
            return "a message must be a JSON object"
        kind = body.get("type")
        if kind != "chat":
            return f"unknown message type {kind!r}"
        text = body.get("text")
        if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
            return f"text must be a non-empty string of at most {MAX_TEXT} characters"
        room.publish(name, text)
        return None

    async def http(self, request: HttpRequest) -> HttpResponse | None:
        """The chat page and the metrics."""
        if request.path == "/":
            page = importlib.resources.files(__package__).joinpath("static/chat.html")
            return HttpResponse(body=page.read_bytes(), content_type="text/html; charset=utf-8")
        if request.path == "/metrics":
            return HttpResponse(
                body=self.metrics.render(), content_type=trioheart.prometheus.CONTENT_TYPE
            )
        return None


async def run_demo(
    *,
    host: str,
    port: int,
    config: trioheart.ConnectionConfig,
    announce: bool = True,
    task_status: trio.TaskStatus[trioheart.Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the demo until SIGINT or SIGTERM, then shut down gracefully."""
    import signal
    import sys

    metrics = Metrics()
    app = ChatApp(metrics)
    log = trioheart.log.get_logger("trioheart.demo")
    # Listen for signals before announcing, so a Ctrl-C right after the
    # banner still shuts down gracefully.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: trioheart.Server = await nursery.start(
                lambda task_status: trioheart.serve(
                    app.handle,
                    host,
                    port,
                    config=config,
                    http_handler=app.http,
                    websocket_paths=["/ws"],
                    metrics=metrics,
                    task_status=task_status,
                )
            )
            base = f"{host}:{server.port}" if ":" not in host else f"[{host}]:{server.port}"
            urls = {
                "chat": f"http://{base}/",
                "websocket": f"ws://{base}/ws?room=lobby&name=you",
                "metrics": f"http://{base}/metrics",
            }
            log.info("demo.started", **urls)
            if announce:
                print(
                    "trioheart demo\n"
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
