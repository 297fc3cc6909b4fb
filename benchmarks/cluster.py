"""Chat nodes on one broker, and resuming clients, for the scale-out test and benchmark.

``python -m benchmarks.cluster --port 0 [--redis URL] [--key HEX]
[--ping-interval S] [--ping-timeout S]`` runs one
node: the demo chat app (:func:`trioheart.demo.app.run_demo`), its rooms in
a :class:`~trioheart.broker.Broker` (Redis when ``--redis`` is given,
embedded otherwise). It prints ``READY <port>`` once it listens.

:class:`ChatClient` is a resuming client on :func:`trioheart.client.open_resuming`
that records every message it delivers, so a test can check order, loss and
duplicates.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Final

import attrs
import trio

import trioheart
from trioheart.backoff import Backoff
from trioheart.client import (
    ClientEvent,
    ClientStatistics,
    Connected,
    Disconnected,
    NotConnected,
    Reset,
    ResumingClient,
    open_resuming,
)
from trioheart.demo.app import run_demo
from trioheart.resume import RESUME_QUERY_PARAM, LogLimits

READY: Final = "READY"


# --------------------------------------------------------------------------
# The node


async def run_node(
    *,
    port: int,
    redis: str | None,
    key: bytes,
    limits: LogLimits,
    heartbeat: trioheart.DetectorConfig | None = None,
) -> None:
    """Serve one chat node (the demo's app) until SIGTERM/SIGINT; print READY once listening."""
    config = trioheart.ConnectionConfig(
        heartbeat=heartbeat if heartbeat is not None else trioheart.DetectorConfig(),
        max_send_buffer=4 * 1024 * 1024,
    )
    async with trio.open_nursery() as nursery:
        server: trioheart.Server = await nursery.start(
            functools.partial(
                run_demo,
                host="127.0.0.1",
                port=port,
                config=config,
                redis=redis,
                resume_key=key,
                limits=limits,
                announce=False,
            )
        )
        print(f"{READY} {server.port}", flush=True)


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
    count: int,
    *,
    redis: str | None,
    key: bytes,
    timeout: float = 20.0,
    extra_args: Sequence[str] = (),
    stderr: int | IO[bytes] = subprocess.DEVNULL,
) -> list[NodeProcess]:
    """Start *count* node processes and wait for each to listen.

    *extra_args* go to ``python -m benchmarks.cluster`` (e.g. the heartbeat
    options); *stderr* receives the nodes' warnings (discarded by default).
    """
    nodes: list[NodeProcess] = []
    try:
        for _ in range(count):
            args = [sys.executable, "-m", "benchmarks.cluster", "--port", "0", "--key", key.hex()]
            if redis is not None:
                args += ["--redis", redis]
            args += extra_args
            process = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=stderr,
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
    """A resuming chat client (:func:`trioheart.client.open_resuming`) that records what it gets."""

    name: str
    room: str = "lobby"
    #: (epoch, seq, text) of every chat message delivered, in order.
    delivered: list[tuple[str, int, str]] = attrs.field(factory=list)
    resyncs: list[str] = attrs.field(factory=list)
    connections: int = 0
    resumed: int = 0
    #: trio.current_time() when the last connection was lost, until it is live again.
    lost_at: float | None = None
    resume_latencies: list[float] = attrs.field(factory=list)
    epoch: str | None = None
    last_error: str = ""
    _changed: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    _client: ResumingClient | None = None
    live: trio.Event = attrs.field(factory=trio.Event)

    @property
    def live_now(self) -> bool:
        """Whether the client is connected and live in its room now."""
        return self._client is not None and self._client.connection is not None

    @property
    def texts(self) -> list[str]:
        return [text for _, _, text in self.delivered]

    def statistics(self) -> ClientStatistics:
        """The resuming client's counters (duplicates dropped, gaps, resets)."""
        assert self._client is not None
        return self._client.statistics()

    async def wait_delivered(self, count: int) -> None:
        """Wait until *count* chat messages were delivered."""
        await self.wait_until(lambda client: len(client.delivered) >= count)

    async def wait_until(self, predicate: Callable[[ChatClient], bool]) -> None:
        """Wait until *predicate* holds; checked after every event (bound it)."""
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
        if self._client is None:
            return False
        try:
            await self._client.send({"type": "chat", "text": text})
        except NotConnected:
            return False
        return True

    def _on(self, event: ClientEvent) -> None:
        if isinstance(event, Connected):
            self.epoch = event.epoch
            self.connections = event.connection
            if event.resumed:
                self.resumed += 1
            if self.lost_at is not None:
                self.resume_latencies.append(trio.current_time() - self.lost_at)
                self.lost_at = None
            self.live.set()
        elif isinstance(event, Reset):
            self.resyncs.append(str(event.reason))
        elif isinstance(event, Disconnected):
            self.last_error = event.detail
            if self.lost_at is None:
                self.lost_at = trio.current_time()
        elif isinstance(event.data, dict) and event.data.get("type") == "chat":
            assert self.epoch is not None
            assert event.seq is not None
            self.delivered.append((self.epoch, event.seq, str(event.data["text"])))
        self._changed.unpark_all()

    async def run(
        self,
        urls: Sequence[str],
        *,
        start: int = 0,
        retry: float = 0.05,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Connect to ``urls[start]``; on a lost connection try the next, resuming.

        Runs until cancelled. *urls* are the nodes' base URLs
        (``ws://host:port``); each retry waits *retry* seconds, or what
        *backoff* (with *rng*) draws when it is given.
        """
        ordered = [*urls[start:], *urls[:start]]
        query = f"/ws?room={self.room}&name={self.name}"
        if backoff is None:
            backoff = Backoff(base=retry, cap=retry, factor=1.0, jitter="none")
        config = trioheart.ConnectionConfig(max_queued_messages=1024, max_queued_bytes=4 << 20)
        async with open_resuming(
            [url + query for url in ordered],
            backoff=backoff,
            config=config,
            max_events=4096,
            rng=rng,
        ) as client:
            self._client = client
            async for event in client:
                self._on(event)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis", default=None, help="redis://host:port (embedded if omitted)")
    parser.add_argument("--key", default="00" * 32, help="the resume key, hex (shared by nodes)")
    parser.add_argument("--max-messages", type=int, default=10_000)
    parser.add_argument("--ping-interval", type=float, default=20.0, help="seconds (default 20)")
    parser.add_argument("--ping-timeout", type=float, default=20.0, help="seconds (default 20)")
    args = parser.parse_args(argv)
    heartbeat = trioheart.DetectorConfig(
        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout
    )
    # Standard output carries only the READY line (the parent reads no more
    # of it, so a chatty log there would fill the pipe and stall the node).
    trioheart.log.configure_logging(json=True, level=logging.WARNING, stream=sys.stderr)
    limits = LogLimits(max_messages=args.max_messages, max_bytes=4_000_000, max_age=300.0)
    trio.run(
        lambda: run_node(
            port=args.port,
            redis=args.redis,
            key=bytes.fromhex(args.key),
            limits=limits,
            heartbeat=heartbeat,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
