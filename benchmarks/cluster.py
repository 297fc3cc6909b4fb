"""Chat nodes on one broker, and resuming clients, for the scale-out test and benchmark.

``python -m benchmarks.cluster --port 0 [--redis URL] [--key HEX]`` runs one
node: a chat server on :func:`trioheart.serve` whose rooms live in a
:class:`~trioheart.broker.Broker` (Redis when ``--redis`` is given,
embedded otherwise). It prints ``READY <port>`` once it listens.

:class:`ChatClient` is a resuming client: trio-websocket for the socket,
:class:`~trioheart.resume.ResumeClient` for the protocol. It records every
message it delivers, so a test can check order, loss and duplicates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

import trioheart
from trioheart.broker import Broker, BrokerUnavailable
from trioheart.resume import (
    RESUME_QUERY_PARAM,
    ClientState,
    GapDetected,
    LogLimits,
    MessageReceived,
    ResumeClient,
    ResumeRefused,
    ResumeServer,
    ResyncRequired,
    SessionResumed,
    SessionStarted,
)

READY: Final = "READY"


# --------------------------------------------------------------------------
# The node


async def _handle(broker: Broker, conn: trioheart.Connection) -> None:
    room = conn.query.get("room", "lobby") or "lobby"
    name = conn.query.get("name", "")
    request: str | None = None
    if conn.query.get(RESUME_QUERY_PARAM) == "1":
        with trio.move_on_after(10):
            first = await conn.receive()
            request = first if isinstance(first, str) else ""
        if request is None:
            request = ""
    try:
        outcome = await broker.join(room, conn, identity=name, request=request)
    except BrokerUnavailable as exc:
        conn.close(trioheart.CloseReason.BROKER_UNAVAILABLE, str(exc))
        return
    if isinstance(outcome, ResumeRefused):
        for text in outcome.messages():
            conn.send_nowait(text)
        conn.close(outcome.close_reason, outcome.detail)
        return
    try:
        async for message in conn:
            if isinstance(message, bytes):
                continue
            body = json.loads(message)
            if body.get("type") == "chat" and isinstance(body.get("text"), str):
                try:
                    broker.publish_nowait(
                        room, {"type": "chat", "from": name, "text": body["text"]}
                    )
                except BrokerUnavailable as exc:
                    conn.send_nowait(json.dumps({"type": "error", "error": str(exc)}))
    finally:
        broker.leave(room, conn)


async def run_node(*, port: int, redis: str | None, key: bytes, limits: LogLimits) -> None:
    """Serve one chat node until SIGTERM/SIGINT."""
    resume = ResumeServer(key=key)
    config = trioheart.ConnectionConfig(max_send_buffer=4 * 1024 * 1024)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            if redis is not None:
                broker_cm: Any = trioheart.open_redis_broker(
                    redis, resume_server=resume, limits=limits
                )
            else:
                broker_cm = _null_context(
                    trioheart.EmbeddedBroker(resume_server=resume, limits=limits)
                )
            async with broker_cm as broker:
                metrics = trioheart.Metrics()
                metrics.track_broker(broker)
                if redis is not None:
                    with trio.fail_after(10):
                        await broker.wait_up()
                server: trioheart.Server = await nursery.start(
                    lambda task_status: trioheart.serve(
                        lambda conn: _handle(broker, conn),
                        "127.0.0.1",
                        port,
                        config=config,
                        websocket_paths=["/ws"],
                        http_handler=metrics.http_handler(),
                        metrics=metrics,
                        task_status=task_status,
                    )
                )
                print(f"{READY} {server.port}", flush=True)
                async for _ in signals:
                    await server.aclose(drain_timeout=1.0)
                    break
            nursery.cancel_scope.cancel()


class _null_context:
    def __init__(self, value: Any) -> None:
        self.value = value

    async def __aenter__(self) -> Any:
        return self.value

    async def __aexit__(self, *exc: object) -> None:
        return None


@attrs.define
class NodeProcess:
    """A node in its own process; stop it by PID."""

    process: subprocess.Popen[str]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, room: str, name: str, *, resume: bool = False) -> str:
        extra = f"&{RESUME_QUERY_PARAM}=1" if resume else ""
        return f"ws://127.0.0.1:{self.port}/ws?room={room}&name={name}{extra}"

    def kill(self) -> None:
        """SIGKILL: no close frames, no drain, like a crash."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


def start_nodes(
    count: int, *, redis: str | None, key: bytes, timeout: float = 20.0
) -> list[NodeProcess]:
    """Start *count* node processes and wait for each to listen."""
    nodes: list[NodeProcess] = []
    try:
        for _ in range(count):
            args = [sys.executable, "-m", "benchmarks.cluster", "--port", "0", "--key", key.hex()]
            if redis is not None:
                args += ["--redis", redis]
            process = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            deadline = time.monotonic() + timeout
            assert process.stdout is not None
            line = ""
            while time.monotonic() < deadline and process.poll() is None:
                line = process.stdout.readline()
                if line.startswith(READY):
                    break
            if not line.startswith(READY):
                process.kill()
                raise RuntimeError(f"node did not start (exit {process.poll()})")
            nodes.append(NodeProcess(process=process, port=int(line.split()[1])))
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


async def broker_up(port: int) -> bool | None:
    """What the node on *port* says in ``trioheart_broker_up`` (``None``: no answer)."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return None
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(65536):
                body += chunk
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("trioheart_broker_up{"):
            return float(line.rsplit(" ", 1)[1]) == 1.0
    return None


# --------------------------------------------------------------------------
# The client


@attrs.define(eq=False)
class ChatClient:
    """A resuming chat client that records what it delivers."""

    name: str
    room: str = "lobby"
    protocol: ResumeClient = attrs.field(factory=ResumeClient)
    #: (epoch, seq, text) of every chat message delivered, in order.
    delivered: list[tuple[str, int, str]] = attrs.field(factory=list)
    resyncs: list[str] = attrs.field(factory=list)
    gaps: int = 0
    connections: int = 0
    resumed: int = 0
    #: trio.current_time() when the last connection was lost and when it resumed.
    lost_at: float | None = None
    resume_latencies: list[float] = attrs.field(factory=list)
    epoch: str | None = None
    last_error: str = ""
    _changed: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    _ws: Any = None
    live: trio.Event = attrs.field(factory=trio.Event)

    @property
    def live_now(self) -> bool:
        """Whether the client is connected and live in its room now."""
        return self._ws is not None and self.protocol.state is ClientState.LIVE

    @property
    def texts(self) -> list[str]:
        return [text for _, _, text in self.delivered]

    async def wait_delivered(self, count: int) -> None:
        """Wait until *count* chat messages were delivered."""
        await self.wait_until(lambda client: len(client.delivered) >= count)

    async def wait_until(self, predicate: Callable[[ChatClient], bool]) -> None:
        """Wait until *predicate* holds; checked after every message (bound it)."""
        while not predicate(self):
            await self._changed.park()

    async def publish(self, texts: Sequence[str], *, window: int = 16) -> None:
        """Send *texts* with at most *window* of its own not yet delivered back to it.

        A closed loop, as a chat client is: a sender that outruns the
        server's bounded receive queue is closed as ``slow_consumer``.
        Raises :class:`RuntimeError` if a send finds no connection.
        """
        start = len(self.delivered)
        for i, text in enumerate(texts):
            await self.wait_until(lambda c, i=i: len(c.delivered) - start >= i - window)
            if not await self.send(text):
                raise RuntimeError(f"{self.name} has no connection to send {text!r} on")

    async def send(self, text: str) -> bool:
        """Send a chat line on the current connection; False if there is none."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send_message(json.dumps({"type": "chat", "text": text}))
        except Exception:
            return False
        return True

    def _on(self, text: str) -> None:
        for event in self.protocol.receive(text):
            if isinstance(event, SessionStarted | SessionResumed):
                self.epoch = event.epoch
                if isinstance(event, SessionResumed):
                    self.resumed += 1
                if self.lost_at is not None:
                    self.resume_latencies.append(trio.current_time() - self.lost_at)
                    self.lost_at = None
                self.live.set()
            elif isinstance(event, ResyncRequired):
                self.resyncs.append(str(event.reason))
            elif isinstance(event, GapDetected):
                self.gaps += 1
            elif isinstance(event, MessageReceived) and event.message.get("type") == "chat":
                assert self.epoch is not None
                assert event.seq is not None
                self.delivered.append((self.epoch, event.seq, str(event.message["text"])))
        self._changed.unpark_all()

    async def run(self, urls: Sequence[str], *, start: int = 0, retry: float = 0.05) -> None:
        """Connect to ``urls[start]``; on a lost connection try the next, resuming.

        Runs until cancelled. *urls* are the nodes' base URLs
        (``ws://host:port``).
        """
        from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

        index = start
        while True:
            base = urls[index % len(urls)]
            request = self.protocol.start_connection()
            query = f"/ws?room={self.room}&name={self.name}"
            if request is not None:
                query += f"&{RESUME_QUERY_PARAM}=1"
            try:
                async with open_websocket_url(base + query, connect_timeout=5) as ws:
                    self.connections += 1
                    if request is not None:
                        await ws.send_message(request)
                    self._ws = ws
                    while True:
                        message = await ws.get_message()
                        if isinstance(message, str):
                            self._on(message)
                        if self.protocol.state.value in ("broken", "refused"):
                            break
            except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError) as exc:
                self.last_error = repr(exc)
            finally:
                self._ws = None
                self.protocol.connection_lost()
                if self.lost_at is None:
                    self.lost_at = trio.current_time()
            index += 1
            await trio.sleep(retry)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis", default=None, help="redis://host:port (embedded if omitted)")
    parser.add_argument("--key", default="00" * 32, help="the resume key, hex (shared by nodes)")
    parser.add_argument("--max-messages", type=int, default=10_000)
    args = parser.parse_args(argv)
    # Standard output carries only the READY line (the parent reads no more
    # of it, so a chatty log there would fill the pipe and stall the node).
    trioheart.log.configure_logging(json=True, level=logging.WARNING, stream=sys.stderr)
    limits = LogLimits(max_messages=args.max_messages, max_bytes=4_000_000, max_age=300.0)
    trio.run(
        lambda: run_node(
            port=args.port, redis=args.redis, key=bytes.fromhex(args.key), limits=limits
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
