"""A network fuzz against a live trioheart server on loopback.

Usage::

    python -m tests.fuzz.network --duration 60             # the documented run
    python -m tests.fuzz.network --duration 5 --quick      # a smoke run

K healthy clients stay connected the whole time: they answer the server's
WebSocket pings and send app-level pings (``{"type":"ping","id":N}``, which
the server answers with ``{"type":"pong","id":N}``) every 20 ms, and time
each one. First the run is quiet (the RTT baseline), then F fuzz workers
open connection after connection for ``--duration`` seconds, each with one
scenario: random or mutated handshakes, a handshake trickled or left
unfinished, random or rule-breaking frames, a message too big, pings with
no reading, a reset, or silence after the handshake. Every scenario is
bounded in bytes and time, and only 127.0.0.1 is ever contacted.

Checked, and reported as violations:

* the server never crashes: its process (or task) is alive at the end and
  still answers;
* no other connection is closed: every healthy client is still open at the
  end of the fuzz, and closes cleanly afterwards;
* no hang: every fuzz connection is closed by the server within its bound
  after its last byte (``handshake_timeout`` + the 1 s lingering close
  before the handshake completed; ping interval + pong timeout +
  ``close_timeout`` after it), and the server ends up with only the healthy
  connections open;
* every ending is named: the closes the server counts by reason
  (``server.statistics().closed``) add up to the fuzz connections it
  accepted as WebSocket handshakes, and none is ``internal_error``;
* memory: the server's peak RSS during the fuzz stays within
  :data:`MEMORY_BOUND` of its RSS after the quiet phase.

Measured and reported, not asserted in the test suite: the healthy
clients' app-ping RTT p50/p99 in the quiet phase and during the fuzz, and
their ratio (the invariant for the documented run: p99 within 1.5x).

By default the server runs in its own process and the fuzz workers in
another, so neither the workers' CPU nor the measuring clients' share the
server's event loop; ``--inline`` runs everything in one Trio run (the
test suite's slice).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

import trioheart
from trioheart import ConnectionConfig, DetectorConfig

from . import wire

HOST = "127.0.0.1"  # loopback only
MiB = 1024 * 1024
#: The server's peak RSS during the fuzz may exceed its RSS after the quiet
#: phase by at most this much. Per fuzz connection the server holds at most
#: max_queued_bytes + max_send_buffer + one partial message (~0.6 MiB with
#: the limits below), so 32 workers stay under 20 MiB; the rest is slack for
#: the allocator and the connections' objects.
MEMORY_BOUND = 48 * MiB
#: Extra time allowed past each bound for the scheduler and the kernel.
SLACK = 1.0
LINGER = 1.0  # the server's lingering close after an HTTP answer (server.py)


def server_config(*, fast: bool) -> ConnectionConfig:
    """The fuzzed server's configuration; *fast* shortens every bound (test slice)."""
    scale = 0.5 if fast else 1.0
    return ConnectionConfig(
        heartbeat=DetectorConfig(ping_interval=1.0 * scale, ping_timeout=2.0 * scale),
        handshake_timeout=2.0 * scale,
        close_timeout=1.0 * scale,
        max_message_size=64 * 1024,
        max_queued_bytes=256 * 1024,
        max_queued_messages=64,
        max_send_buffer=256 * 1024,
        max_request_size=8 * 1024,
    )


@attrs.frozen
class Bounds:
    """How long after its last byte a bad connection may stay open."""

    handshake: float
    after_handshake: float

    @classmethod
    def of(cls, config: ConnectionConfig) -> Bounds:
        hb = config.heartbeat
        return cls(
            handshake=config.handshake_timeout + LINGER + SLACK,
            after_handshake=hb.max_interval + hb.ping_timeout + config.close_timeout + SLACK,
        )


# --------------------------------------------------------------------------
# The server side
# --------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return 0


class MemoryWatch:
    """Samples RSS every 20 ms; :meth:`mark` starts a new peak from now."""

    def __init__(self) -> None:
        self.baseline = self.peak = rss_bytes()

    def mark(self) -> None:
        self.baseline = self.peak = rss_bytes()

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await trio.sleep(0.02)


async def echo(conn: trioheart.Connection) -> None:
    async for message in conn:
        await conn.send(message)


async def serve_fuzz_target(
    config: ConnectionConfig, *, task_status: trio.TaskStatus[trioheart.Server]
) -> None:
    """The server under fuzz: echo, with ``GET /stats`` (JSON) on the same port."""
    watch = MemoryWatch()
    server: trioheart.Server | None = None
    http_served = 0

    async def http(request: trioheart.HttpRequest) -> trioheart.HttpResponse | None:
        nonlocal http_served
        if request.path != "/stats" or server is None:
            http_served += 1  # a plain HTTP request: answered 404, not a close reason
            return None
        if "mark" in request.query:
            watch.mark()
        stats = server.statistics()
        body = {
            "connections_open": stats.connections_open,
            "connections_accepted": stats.connections_accepted,
            "closed": stats.closed,
            "http_served": http_served,
            "rss": rss_bytes(),
            "rss_baseline": watch.baseline,
            "rss_peak": max(watch.peak, rss_bytes()),
            "tasks": trio.lowlevel.current_statistics().tasks_living,
        }
        return trioheart.HttpResponse(
            body=json.dumps(body).encode(), content_type="application/json"
        )

    async def serve_then_stop(task_status: trio.TaskStatus[trioheart.Server]) -> None:
        await trioheart.serve(
            echo,
            HOST,
            0,
            config=config,
            http_handler=http,
            drain_timeout=2,
            task_status=task_status,
        )
        nursery.cancel_scope.cancel()  # served until Server.aclose(): stop watching too

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        server = await nursery.start(serve_then_stop)
        task_status.started(server)


async def fetch_stats(port: int, *, mark: bool = False) -> dict[str, Any]:
    """``GET /stats`` from the server under fuzz."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(HOST, port)
        target = "/stats?mark=1" if mark else "/stats"
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
        await stream.aclose()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"/stats answered {head[:60]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


# --------------------------------------------------------------------------
# Healthy clients
# --------------------------------------------------------------------------


@attrs.define
class Healthy:
    """One healthy client: answers pings, times its app-level pings."""

    stream: trio.SocketStream
    ws: WSConnection
    #: (time sent, RTT) of each app-level ping answered.
    samples: list[tuple[float, float]] = attrs.field(factory=list)
    sent: dict[int, float] = attrs.field(factory=dict)
    closed_by_server: str | None = None
    ws_pings: int = 0
    send_lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def send(self, data: bytes) -> None:
        async with self.send_lock:  # the reader answers pings while the pinger pings
            await self.stream.send_all(data)

    async def reader(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    self.closed_by_server = self.closed_by_server or "EOF"
                    return
                now = trio.current_time()
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, Ping):
                        self.ws_pings += 1
                        if self.ws.state is ConnectionState.OPEN:
                            await self.send(self.ws.send(event.response()))
                    elif isinstance(event, TextMessage):
                        body = json.loads(event.data)
                        sent = self.sent.pop(body.get("id"), None)
                        if body.get("type") == "pong" and sent is not None:
                            self.samples.append((sent, now - sent))
                    elif isinstance(event, CloseConnection):
                        self.closed_by_server = f"close {event.code} {event.reason}"
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.closed_by_server = self.closed_by_server or repr(exc)

    async def pinger(self, interval: float) -> None:
        for ping_id in itertools.count(1):
            # Stop once either side began closing: wsproto sends nothing after a close frame.
            if self.closed_by_server is not None or self.ws.state is not ConnectionState.OPEN:
                return
            self.sent[ping_id] = trio.current_time()
            try:
                await self.send(self.ws.send(TextMessage(data=f'{{"type":"ping","id":{ping_id}}}')))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(interval)

    async def close(self) -> None:
        if self.ws.state is ConnectionState.OPEN:
            await self.send(self.ws.send(CloseConnection(code=1000)))


async def open_healthy(port: int) -> Healthy:
    stream = await trio.open_tcp_stream(HOST, port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"{HOST}:{port}", target="/ws")))
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed during a healthy handshake")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return Healthy(stream, ws)
            if isinstance(event, RejectConnection):
                raise ConnectionError(f"healthy handshake rejected: {event}")


# --------------------------------------------------------------------------
# Fuzz workers
# --------------------------------------------------------------------------

SCENARIOS = (
    "garbage_handshake",
    "mutated_handshake",
    "unfinished_handshake",
    "trickled_handshake",
    "plain_http",
    "silent_after_handshake",
    "garbage_frames",
    "mutated_frames",
    "frames_in_handshake_packet",
    "message_too_big",
    "invalid_utf8",
    "ping_flood_no_read",
    "reset_mid_frame",
)


@attrs.define
class FuzzReport:
    """What the fuzz workers saw."""

    connections: int = 0
    refused_connect: int = 0
    by_scenario: Counter[str] = attrs.field(factory=Counter)
    violations: list[str] = attrs.field(factory=list)
    worst_handshake_close: float = 0.0
    worst_ws_close: float = 0.0
    bytes_sent: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "refused_connect": self.refused_connect,
            "by_scenario": dict(self.by_scenario),
            "violations": self.violations,
            "worst_handshake_close": round(self.worst_handshake_close, 3),
            "worst_ws_close": round(self.worst_ws_close, 3),
            "bytes_sent": self.bytes_sent,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FuzzReport:
        return cls(
            connections=data["connections"],
            refused_connect=data["refused_connect"],
            by_scenario=Counter(data["by_scenario"]),
            violations=list(data["violations"]),
            worst_handshake_close=data["worst_handshake_close"],
            worst_ws_close=data["worst_ws_close"],
            bytes_sent=data["bytes_sent"],
        )


def mutate(data: bytes, rng: random.Random, count: int = 3) -> bytes:
    """A few random byte edits: flip, insert, delete, duplicate a slice."""
    out = bytearray(data)
    for _ in range(count):
        if not out:
            out += rng.randbytes(4)
        at = rng.randrange(len(out))
        op = rng.randrange(4)
        if op == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = rng.randbytes(rng.randrange(1, 8))
        elif op == 2:
            del out[at : at + rng.randrange(1, 8)]
        else:
            out[at:at] = out[at : at + rng.randrange(1, 32)]
    return bytes(out)


def mutated_request(rng: random.Random) -> bytes:
    headers = list(wire.UPGRADE_HEADERS)
    headers[3] = ("Sec-WebSocket-Key", wire.websocket_key(rng.randrange(2**32)))
    choice = rng.randrange(8)
    if choice == 0:
        headers.pop(rng.randrange(len(headers)))
    elif choice == 1:
        headers.append(("X-Big", "a" * rng.randrange(4000, 12000)))
    elif choice == 2:
        headers[4] = ("Sec-WebSocket-Version", rng.choice(["8", "", "13, 8", "1" * 50]))
    elif choice == 3:
        headers[3] = ("Sec-WebSocket-Key", rng.choice(["", "abc", "=" * 24, "AAAA" * 8]))
    elif choice == 4:
        headers.append(("Content-Length", str(rng.randrange(0, 10**6))))
    elif choice == 5:
        headers.append(("Transfer-Encoding", "chunked"))
    target = rng.choice(["/ws", "/ws?room=x", "/nope", "*", "/ws" + "?a=b" * 200])
    method = rng.choice(["GET"] * 6 + ["POST", "HEAD", "GETT"])
    data = wire.upgrade_request(target, headers, method=method)
    return mutate(data, rng, rng.randrange(0, 3)) if rng.random() < 0.5 else data


def random_frames(rng: random.Random, count: int) -> bytes:
    """Frames that mostly follow the rules and sometimes break one."""
    out = []
    for _ in range(count):
        opcode = rng.choice(
            [wire.TEXT, wire.BINARY, wire.CONT, wire.PING, wire.PONG, wire.CLOSE, 3, 11]
        )
        size = rng.choice([0, 1, 7, 125, 126, 1000, 65535, 70000])
        if opcode >= 8:
            size = min(size, 125)
        payload = rng.randbytes(size) if opcode != wire.TEXT else b"a" * size
        frame = wire.Frame(
            opcode=opcode,
            payload=payload,
            fin=rng.random() < 0.8,
            mask=rng.randbytes(4) if rng.random() < 0.9 else None,
            rsv=rng.choice([0] * 8 + [1, 4]),
        )
        if rng.random() < 0.05:
            frame = attrs.evolve(frame, announced=rng.choice([2**63, 2**40, size + 10]))
        out.append(frame.encode())
    return b"".join(out)


class FuzzClient:
    """One fuzz connection: send (bounded), then wait for the server to end it."""

    def __init__(self, port: int, rng: random.Random, bounds: Bounds, report: FuzzReport) -> None:
        self.port = port
        self.rng = rng
        self.bounds = bounds
        self.report = report
        self.stream: trio.SocketStream | None = None
        self.received = bytearray()
        self.last_sent = 0.0
        self.reset = False

    async def send(self, data: bytes) -> bool:
        assert self.stream is not None
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.report.bytes_sent += len(data)
        self.last_sent = trio.current_time()
        return True

    async def read_some(self, within: float) -> bytes:
        assert self.stream is not None
        with trio.move_on_after(within):
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
            if len(self.received) < 4096:
                self.received += chunk[:4096]
            return chunk
        return b"?"  # nothing yet

    async def await_upgrade(self) -> bool:
        """Read until the 101 (True), or an HTTP refusal or the end (False)."""
        deadline = trio.current_time() + self.bounds.handshake
        while b"\r\n\r\n" not in self.received and trio.current_time() < deadline:
            chunk = await self.read_some(deadline - trio.current_time())
            if not chunk:
                return False
        return self.received.startswith(b"HTTP/1.1 101")

    async def wait_closed(self, scenario: str) -> None:
        """Read (never answering pings) until EOF; the server must end it in time."""
        assert self.stream is not None
        if self.reset:  # we reset it ourselves; the kernel tells the server at once
            return
        upgraded = self.received.startswith(b"HTTP/1.1 101")
        bound = self.bounds.after_handshake if upgraded else self.bounds.handshake
        start = self.last_sent or trio.current_time()
        with trio.move_on_at(start + bound + 5) as scope:
            try:
                while chunk := await self.stream.receive_some(65536):
                    if len(self.received) < 4096:
                        self.received += chunk[:4096]
                    if not upgraded and self.received.startswith(b"HTTP/1.1 101"):
                        upgraded = True
                        bound = self.bounds.after_handshake
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        took = trio.current_time() - start
        if upgraded:
            self.report.worst_ws_close = max(self.report.worst_ws_close, took)
        else:
            self.report.worst_handshake_close = max(self.report.worst_handshake_close, took)
        if scope.cancelled_caught or took > bound:
            phase = "after the handshake" if upgraded else "in the handshake"
            self.report.violations.append(
                f"hang: {scenario} still open {took:.2f} s after its last byte {phase} "
                f"(bound {bound:.2f} s)"
            )

    async def run(self, scenario: str) -> None:
        try:
            self.stream = await trio.open_tcp_stream(HOST, self.port)
        except OSError:
            self.report.refused_connect += 1
            return
        self.report.connections += 1
        self.report.by_scenario[scenario] += 1
        try:
            await getattr(self, scenario)()
            await self.wait_closed(scenario)
        finally:
            await trio.aclose_forcefully(self.stream)

    # The scenarios ------------------------------------------------------

    async def garbage_handshake(self) -> None:
        await self.send(self.rng.randbytes(self.rng.randrange(1, 9000)))

    async def mutated_handshake(self) -> None:
        await self.send(mutated_request(self.rng))

    async def unfinished_handshake(self) -> None:
        request = wire.upgrade_request()
        await self.send(request[: self.rng.randrange(1, len(request) - 2)])

    async def trickled_handshake(self) -> None:
        for byte in wire.upgrade_request():
            if not await self.send(bytes([byte])):
                return
            await trio.sleep(self.rng.uniform(0.05, 0.3))

    async def plain_http(self) -> None:
        await self.send(
            b"GET /" + self.rng.choice([b"", b"x", b"ws"]) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )

    async def _upgrade(self) -> bool:
        return await self.send(wire.upgrade_request()) and await self.await_upgrade()

    async def silent_after_handshake(self) -> None:
        await self._upgrade()

    async def garbage_frames(self) -> None:
        if await self._upgrade():
            await self.send(self.rng.randbytes(self.rng.randrange(1, 4000)))

    async def mutated_frames(self) -> None:
        if await self._upgrade():
            data = random_frames(self.rng, self.rng.randrange(1, 8))
            await self.send(mutate(data, self.rng, self.rng.randrange(0, 2)))

    async def frames_in_handshake_packet(self) -> None:
        await self.send(wire.upgrade_request() + random_frames(self.rng, self.rng.randrange(1, 4)))

    async def message_too_big(self) -> None:
        if await self._upgrade():
            size = 64 * 1024 + self.rng.randrange(1, 5000)
            await self.send(
                wire.Frame(opcode=wire.BINARY, payload=bytes(size), mask=b"abcd").encode()
            )

    async def invalid_utf8(self) -> None:
        if await self._upgrade():
            await self.send(wire.text_frame(b"ok \xc3\x28 \xed\xa0\x80"))

    async def ping_flood_no_read(self) -> None:
        if not await self._upgrade():
            return
        big = wire.Frame(opcode=wire.BINARY, payload=bytes(60000), mask=b"abcd").encode()
        ping = wire.Frame(opcode=wire.PING, payload=b"p" * 125, mask=b"abcd").encode()
        for _ in range(20):  # echoes the peer never reads block the server's writes
            if not await self.send(big):
                return
        with trio.move_on_after(1.0):
            for _ in range(2000):  # at most 260 KB of pings
                if not await self.send(ping):
                    return

    async def reset_mid_frame(self) -> None:
        if await self._upgrade():
            await self.send(
                wire.Frame(opcode=wire.TEXT, payload=b"x" * 100, mask=b"abcd").encode()[:50]
            )
            assert self.stream is not None
            self.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.stream.socket.close()
            self.reset = True


async def run_fuzzers(
    port: int, *, duration: float, workers: int, seed: int, bounds: Bounds
) -> FuzzReport:
    """*workers* loops of fuzz connections for *duration* seconds, then their tails."""
    report = FuzzReport()
    end = trio.current_time() + duration

    async def worker(index: int) -> None:
        for n in itertools.count():
            if trio.current_time() >= end:
                return
            rng = random.Random(f"{seed}-{index}-{n}")
            scenario = rng.choice(SCENARIOS)
            await FuzzClient(port, rng, bounds, report).run(scenario)

    async with trio.open_nursery() as nursery:
        for index in range(workers):
            nursery.start_soon(worker, index)
    return report


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@attrs.define
class NetworkFuzzResult:
    seed: int
    duration: float
    healthy: int
    workers: int
    fuzz: FuzzReport
    closed: dict[str, int]
    http_served: int
    violations: list[str]
    rtt_quiet: list[float]
    rtt_fuzz: list[float]
    rss_baseline: int
    rss_peak: int
    rss_end: int
    tasks_end: int

    @property
    def ratio_p99(self) -> float:
        return percentile(self.rtt_fuzz, 99) / percentile(self.rtt_quiet, 99)

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "duration_s": self.duration,
            "healthy_clients": self.healthy,
            "fuzz_workers": self.workers,
            "fuzz_connections": self.fuzz.connections,
            "fuzz": self.fuzz.to_dict(),
            "closed_by_reason": self.closed,
            "plain_http_served": self.http_served,
            "violations": self.violations,
            "rtt_quiet_ms": {
                "samples": len(self.rtt_quiet),
                "p50": round(percentile(self.rtt_quiet, 50) * 1e3, 3),
                "p99": round(percentile(self.rtt_quiet, 99) * 1e3, 3),
            },
            "rtt_fuzz_ms": {
                "samples": len(self.rtt_fuzz),
                "p50": round(percentile(self.rtt_fuzz, 50) * 1e3, 3),
                "p99": round(percentile(self.rtt_fuzz, 99) * 1e3, 3),
            },
            "rtt_p99_ratio": round(self.ratio_p99, 3),
            "rss_mb": {
                "baseline": round(self.rss_baseline / MiB, 1),
                "peak": round(self.rss_peak / MiB, 1),
                "end": round(self.rss_end / MiB, 1),
                "bound_over_baseline": MEMORY_BOUND / MiB,
            },
            "server_tasks_end": self.tasks_end,
        }


async def _start_server_process(fast: bool) -> tuple[trio.Process, int]:
    args = [sys.executable, "-m", "tests.fuzz.network", "--serve"]
    if fast:
        args.append("--fast")
    proc = await trio.lowlevel.open_process(
        args, stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert proc.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            if not chunk:
                break
            line += chunk
    if not line.startswith(b"PORT "):
        proc.kill()
        raise RuntimeError(f"the server process said {line!r}")
    return proc, int(line.split()[1])


async def _fuzz_in_subprocess(
    port: int, *, duration: float, workers: int, seed: int, fast: bool
) -> FuzzReport:
    args = [
        sys.executable, "-m", "tests.fuzz.network", "--fuzz-port", str(port),
        "--duration", str(duration), "--workers", str(workers), "--seed", str(seed),
    ]  # fmt: skip
    if fast:
        args.append("--fast")
    done = await trio.run_process(args, capture_stdout=True, cwd=Path(__file__).parents[2])
    return FuzzReport.from_dict(json.loads(done.stdout))


async def network_fuzz(
    *,
    duration: float,
    quiet: float,
    healthy: int = 8,
    workers: int = 32,
    seed: int = 1,
    inline: bool = False,
    fast: bool = False,
    ping_every: float = 0.02,
    progress: Callable[[str], None] = lambda _: None,
) -> NetworkFuzzResult:
    """Run the whole network fuzz; see the module docstring."""
    config = server_config(fast=fast)
    bounds = Bounds.of(config)
    violations: list[str] = []
    proc: trio.Process | None = None
    try:
        async with trio.open_nursery() as nursery:
            if inline:
                server: trioheart.Server = await nursery.start(serve_fuzz_target, config)
                port = server.port
            else:
                proc, port = await _start_server_process(fast)
            clients = [await open_healthy(port) for _ in range(healthy)]
            async with trio.open_nursery() as clients_nursery:
                for client in clients:
                    clients_nursery.start_soon(client.reader)
                    clients_nursery.start_soon(client.pinger, ping_every)
                progress(f"quiet phase: {quiet} s, {healthy} healthy clients")
                quiet_start = trio.current_time()
                await trio.sleep(quiet)
                await fetch_stats(port, mark=True)
                fuzz_start = trio.current_time()
                progress(f"fuzz phase: {duration} s, {workers} fuzz workers")
                if inline:
                    fuzz = await run_fuzzers(
                        port, duration=duration, workers=workers, seed=seed, bounds=bounds
                    )
                else:
                    fuzz = await _fuzz_in_subprocess(
                        port, duration=duration, workers=workers, seed=seed, fast=fast
                    )
                fuzz_end = fuzz_start + duration
                progress(
                    f"fuzz done: {fuzz.connections} connections; waiting for the server to settle"
                )
                try:
                    with trio.fail_after(bounds.after_handshake + bounds.handshake):
                        # Another process's counts: polled over HTTP.
                        while (stats := await fetch_stats(port))["connections_open"] > healthy:  # noqa: ASYNC110
                            await trio.sleep(0.1)
                except trio.TooSlowError:
                    stats = await fetch_stats(port)
                    violations.append(
                        f"hang: {stats['connections_open'] - healthy} fuzz connections still open"
                    )
                for i, client in enumerate(clients):
                    if client.closed_by_server is not None:
                        violations.append(
                            f"healthy client {i} was closed: {client.closed_by_server}"
                        )
                for client in clients:
                    await client.close()
                with trio.move_on_after(bounds.after_handshake) as scope:
                    while (await fetch_stats(port))["connections_open"] > 0:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                if scope.cancelled_caught:
                    violations.append("healthy clients did not close cleanly")
                clients_nursery.cancel_scope.cancel()
            final = await fetch_stats(port)
            if inline:
                await server.aclose()
            else:
                assert proc is not None
                if proc.poll() is not None:
                    violations.append(f"the server process died (exit {proc.returncode})")
                proc.terminate()
                await proc.wait()
    finally:
        # On any error, stop the server process too: left running, it would
        # hold our caller's pipes open and turn the error into a hang.
        if proc is not None and proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()

    closed = dict(final["closed"])
    violations = fuzz.violations + violations
    healthy_closes = closed.get("peer_closed", 0)
    counted = sum(closed.values())
    http_served = final["http_served"]
    if counted + http_served != fuzz.connections + healthy:
        violations.append(
            f"accounting: the server counted {counted} closes ({closed}) and served "
            f"{http_served} plain HTTP requests; {fuzz.connections} fuzz and {healthy} "
            "healthy connections were made"
        )
    if closed.get("internal_error"):
        violations.append(f"{closed['internal_error']} connections ended as internal_error")
    if healthy_closes < healthy:
        violations.append(
            f"only {healthy_closes} peer_closed; the {healthy} healthy clients close so"
        )
    growth = final["rss_peak"] - final["rss_baseline"]
    if growth > MEMORY_BOUND:
        violations.append(
            f"memory: peak RSS {final['rss_peak'] / MiB:.1f} MiB is {growth / MiB:.1f} MiB over "
            f"the baseline (bound {MEMORY_BOUND / MiB:.0f} MiB)"
        )
    rtt_quiet = [rtt for c in clients for at, rtt in c.samples if quiet_start <= at < fuzz_start]
    rtt_fuzz = [rtt for c in clients for at, rtt in c.samples if fuzz_start <= at < fuzz_end]
    return NetworkFuzzResult(
        seed=seed,
        duration=duration,
        healthy=healthy,
        workers=workers,
        fuzz=fuzz,
        closed=closed,
        http_served=http_served,
        violations=violations,
        rtt_quiet=rtt_quiet,
        rtt_fuzz=rtt_fuzz,
        rss_baseline=final["rss_baseline"],
        rss_peak=final["rss_peak"],
        rss_end=final["rss"],
        tasks_end=final["tasks"],
    )


def print_result(result: NetworkFuzzResult, command: str) -> None:
    s = result.summary()
    print()
    print(f"fuzz connections   {s['fuzz_connections']}, by scenario:")
    for name, count in sorted(result.fuzz.by_scenario.items()):
        print(f"  {name:<28}{count:>6}")
    print(f"server closes by reason (and {result.http_served} plain HTTP requests served)")
    for name, count in sorted(result.closed.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28}{count:>6}")
    print(
        f"slowest close after the last byte: {s['fuzz']['worst_handshake_close']} s in the "
        f"handshake, {s['fuzz']['worst_ws_close']} s after it"
    )
    q, f = s["rtt_quiet_ms"], s["rtt_fuzz_ms"]
    print(f"{'healthy app-ping RTT':<22}{'samples':>9}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'  quiet':<22}{q['samples']:>9}{q['p50']:>9}{q['p99']:>9}")
    print(f"{'  during fuzz':<22}{f['samples']:>9}{f['p50']:>9}{f['p99']:>9}")
    print(f"RTT p99 ratio (fuzz / quiet): {s['rtt_p99_ratio']}  (invariant: <= 1.5)")
    m = s["rss_mb"]
    print(
        f"server RSS: {m['baseline']} MiB after the quiet phase, peak {m['peak']} MiB during the "
        f"fuzz, {m['end']} MiB at the end (bound: baseline + {m['bound_over_baseline']:.0f} MiB)"
    )
    print(f"server tasks at the end: {s['server_tasks_end']}")
    if result.violations:
        print(f"VIOLATIONS ({len(result.violations)}):")
        for v in result.violations[:20]:
            print(f"  {v}")
    else:
        print("no violations")
    print(f"re-create: {command}")


def _serve_main(fast: bool) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server: trioheart.Server = await nursery.start(
                serve_fuzz_target, server_config(fast=fast)
            )
            print(f"PORT {server.port}", flush=True)

    trioheart.log.configure_logging(level=40, stream=sys.stderr)
    trio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.network", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of fuzzing")
    parser.add_argument(
        "--quiet", type=float, help="seconds of quiet baseline (default: duration/3)"
    )
    parser.add_argument("--healthy", type=int, help="healthy clients (default 8)")
    parser.add_argument("--workers", type=int, help="concurrent fuzz workers (default 32)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--inline", action="store_true", help="server and clients in one process")
    parser.add_argument("--fast", action="store_true", help="shorter server bounds")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: at most 3 s, 4 workers, 2 healthy"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fuzz-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve_main(args.fast)
        return 0
    if args.fuzz_port is not None:
        config = server_config(fast=args.fast)
        report = trio.run(
            functools.partial(
                run_fuzzers,
                args.fuzz_port,
                duration=args.duration,
                workers=args.workers,
                seed=args.seed,
                bounds=Bounds.of(config),
            )
        )
        print(json.dumps(report.to_dict()))
        return 0
    if args.quick:  # a smoke run, unless told otherwise
        args.duration = min(args.duration, 3.0)
        args.workers = args.workers if args.workers is not None else 4
        args.healthy = args.healthy if args.healthy is not None else 2
    args.workers = args.workers if args.workers is not None else 32
    args.healthy = args.healthy if args.healthy is not None else 8
    quiet = args.quiet if args.quiet is not None else max(2.0, args.duration / 3)
    trioheart.log.configure_logging(level=40, stream=sys.stderr)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    result = trio.run(
        functools.partial(
            network_fuzz,
            duration=args.duration,
            quiet=quiet,
            healthy=args.healthy,
            workers=args.workers,
            seed=args.seed,
            inline=args.inline,
            fast=args.fast,
            progress=progress,
        )
    )
    command = " ".join(
        ["python -m tests.fuzz.network", *(argv if argv is not None else sys.argv[1:])]
    )
    print_result(result, command)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "network_fuzz.json"
    path.write_text(json.dumps(result.summary(), indent=2) + "\n")
    print(f"wrote {path}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
