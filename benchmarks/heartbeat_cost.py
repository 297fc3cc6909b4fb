"""What a heartbeat costs: memory per idle connection and CPU per ping, against the peers.

``python -m benchmarks.heartbeat_cost [--quick] [--out DIR] [--nice -10]``

Each server configuration runs in a fresh server process of its own; the
idle clients run in a separate client process, never in the server's:

* ``trioheart``: :func:`trioheart.serve`, ``ping_interval=1.0``, no metrics;
* ``trioheart+metrics``: the same with a :class:`trioheart.Metrics`;
* ``trio-websocket``: bare ``trio_websocket.serve_websocket``, no heartbeat;
* ``trio-websocket+naive``: the same plus the heartbeat everyone writes
  first: a task per connection, in a nursery per connection, that sleeps
  the interval and awaits ``ws.ping()`` under ``trio.move_on_after``;
* ``websockets``: python-websockets' own keepalive
  (``websockets.asyncio.server.serve``, ``ping_interval=1``).

Every heartbeat pings every 1 s and gives up after 5 s. Every handler just
receives messages until the connection closes.

The client is the same for every server: raw wsproto over Trio sockets,
one task per connection, which answers every ping with a pong and counts
them. It opens a few warm-up connections, then N idle ones (1,000, 2,000
and 5,000; a fresh server and client for each N).

* **Bytes per connection**: the server's ``VmRSS`` (``/proc/PID/status``)
  with N connections open and settled, minus the same after the warm-up,
  over N. Both are read right after a ``gc.collect()`` in the server, so
  garbage waiting for the cyclic collector does not count. Live tasks per
  connection come from a Trio Instrument (``asyncio.all_tasks()`` for
  websockets).
* **CPU per 1,000 pings**: the server's ``utime + stime``
  (``/proc/PID/stat``) over a fixed window after settling, divided by the
  pings the client answered in that window. Bare trio-websocket sends no
  pings: its line gives CPU seconds per second, idle. The share of that
  CPU spent in the cyclic garbage collector is measured too
  (``gc.callbacks``).
* **What-if**: at the largest N, trioheart and websockets run once more
  with ``gc.set_threshold(50_000)`` in the server process (CPython's
  default first threshold is 700), compared with each other.
* **Where the bytes go**: a separate server process for trioheart (and, in
  the full run, one for websockets) starts :mod:`tracemalloc` after the
  warm-up, and what is allocated and still alive once N more connections
  are open is broken down by file and line. Its RSS is not used
  (tracemalloc's own bookkeeping inflates it). In the full run
  the trioheart process is kept for 66 s more, so every connection's RTT
  estimator is full (64 samples), and the growth from that is reported too.

A fresh server that cannot accept all N connections within 30 s is
measured with those it has (``short_by`` says how many it lacked).
``--nice -10`` (as root) runs the server and client processes at that
niceness, each in a session and so an autogroup of its own, so that on a
busy shared machine they get the CPU they ask for; the committed run used
it.

Repeats interleave the configurations (and rotate their order); the table
gives medians over repeats and ratios of medians against websockets and
bare trio-websocket, per N. Writes DIR/heartbeat_cost.json, .png and .rst
(included by the docs); prints a table and the command that re-creates it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import linecache
import os
import platform
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

NAME: Final = "heartbeat_cost"
ROOT: Final = Path(__file__).resolve().parents[1]
CONFIGS: Final = (
    "trioheart",
    "trioheart+metrics",
    "trio-websocket",
    "trio-websocket+naive",
    "websockets",
)
# What-if configurations, at the largest N only: the same servers with the
# cyclic collector's first threshold raised from CPython's 700 (net container
# allocations) to this, in the server process.
GC_CONFIGS: Final = ("trioheart+gc", "websockets+gc")
GC_THRESHOLD0: Final = 50_000
DESCRIPTIONS: Final = {
    "trioheart": "trioheart.serve, ping_interval=1.0, ping_timeout=5.0, metrics=None",
    "trioheart+metrics": "the same with metrics=trioheart.Metrics()",
    "trio-websocket": "trio_websocket.serve_websocket, no heartbeat",
    "trio-websocket+naive": (
        "trio-websocket plus a heartbeat task per connection in a nursery per connection: "
        "trio.sleep(1.0), then ws.ping() under trio.move_on_after(5.0)"
    ),
    "websockets": "websockets.asyncio.server.serve, ping_interval=1, ping_timeout=5",
    "trioheart+gc": f"trioheart, with gc.set_threshold({GC_THRESHOLD0}) in the server process",
    "websockets+gc": f"websockets, with gc.set_threshold({GC_THRESHOLD0}) in the server process",
}
PING_INTERVAL: Final = 1.0
PING_TIMEOUT: Final = 5.0
WARMUP: Final = 20
PEER: Final = "websockets"
BARE: Final = "trio-websocket"


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    repeats: int
    warm_settle: float  # seconds after the warm-up connections
    settle: float  # seconds after N connections are open, before measuring
    window: float  # the CPU measurement window, seconds
    trace_n: int
    trace_age: float  # extra seconds the traced trioheart server keeps its connections
    what_if: tuple[str, ...] = GC_CONFIGS  # run at the largest N only


FULL: Final = Plan((1000, 2000, 5000), 3, 1.0, 1.5, 3.0, 1000, 66.0)
QUICK: Final = Plan((100,), 1, 0.2, 0.6, 1.0, 100, 0.0, ("trioheart+gc",))


_STARTED: Final = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{NAME} {time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# The server process: one configuration, commands on stdin, answers on stdout


class _GcClock:
    """Time the cyclic garbage collector ran in this process (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.runs = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.runs[info["generation"]] += 1


_GC_CLOCK: _GcClock | None = None


class _Commands:
    """What a server process answers on its control pipe, whatever its event loop."""

    def __init__(self, conns: Callable[[], int], tasks: Callable[[], int]) -> None:
        self.conns = conns
        self.tasks = tasks
        self.snapshots: list[tracemalloc.Snapshot] = []

    def handle(self, words: list[str]) -> dict[str, Any]:
        if words[0] == "stats":
            if words[1:] == ["gc"]:
                gc.collect()
            clock = _GC_CLOCK
            return {
                "conns": self.conns(),
                "tasks": self.tasks(),
                "gc_s": clock.seconds if clock is not None else 0.0,
                "gc_runs": clock.runs if clock is not None else [0, 0, 0],
            }
        if words[0] == "snapshot":
            # Tracing starts at the first snapshot, after the imports and the
            # warm-up: the snapshots stay small and only growth is traced.
            gc.collect()
            if not tracemalloc.is_tracing():
                tracemalloc.start(1)
            self.snapshots.append(tracemalloc.take_snapshot())
            return {"snapshots": len(self.snapshots)}
        if words[0] == "breakdown":
            before, after, n, *top = (int(word) for word in words[1:])
            return _breakdown(self.snapshots[before], self.snapshots[after], n, *top)
        return {"error": f"unknown command {words!r}"}


def _short(filename: str) -> str:
    for prefix in sorted((p for p in sys.path if p), key=len, reverse=True):
        if filename.startswith(prefix.rstrip(os.sep) + os.sep):
            return filename[len(prefix.rstrip(os.sep)) + 1 :]
    return filename


def _breakdown(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int = 20
) -> dict[str, Any]:
    """Per-connection growth between two snapshots, by file and by line."""
    drop = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, linecache.__file__),  # our own lookups of the lines below
        tracemalloc.Filter(False, "<unknown>"),
    ]
    a, b = after.filter_traces(drop), before.filter_traces(drop)
    by_line = [s for s in a.compare_to(b, "lineno") if s.size_diff]
    by_file = [s for s in a.compare_to(b, "filename") if s.size_diff]
    by_line.sort(key=lambda s: s.size_diff, reverse=True)
    by_file.sort(key=lambda s: s.size_diff, reverse=True)
    lines = []
    for stat in by_line[:top]:
        frame = stat.traceback[0]
        lines.append(
            {
                "where": f"{_short(frame.filename)}:{frame.lineno}",
                "code": linecache.getline(frame.filename, frame.lineno).strip(),
                "bytes_per_conn": stat.size_diff / n,
                "blocks_per_conn": stat.count_diff / n,
            }
        )
    return {
        "n": n,
        "traced_bytes_per_conn": sum(s.size_diff for s in by_line) / n,
        "blocks_per_conn": sum(s.count_diff for s in by_line) / n,
        "by_file": [
            {
                "file": _short(s.traceback[0].filename),
                "bytes_per_conn": s.size_diff / n,
                "blocks_per_conn": s.count_diff / n,
            }
            for s in by_file[:top]
        ],
        "by_line": lines,
    }


def _trio_server(kind: str) -> None:
    import functools

    import trio

    class TaskCount(trio.abc.Instrument):
        live = 0

        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            self.live += 1

        def task_exited(self, task: trio.lowlevel.Task) -> None:
            self.live -= 1

    counter = TaskCount()
    open_conns = 0

    async def control(commands: _Commands) -> None:
        stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buffer = b""
        async with stream:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    words = line.decode().split()
                    if words == ["quit"]:
                        return
                    _reply(commands.handle(words))

    if kind.startswith("trioheart"):
        import logging

        import trioheart
        from trioheart.log import configure_logging

        # Nothing is logged per ping, but opening 5,000 connections and the
        # stalls of a busy shared machine would be: errors only, as the peers.
        configure_logging(json=True, level=logging.ERROR, stream=sys.stderr)
        config = trioheart.ConnectionConfig(
            heartbeat=trioheart.DetectorConfig(
                ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT
            )
        )
        metrics = trioheart.Metrics() if kind == "trioheart+metrics" else None

        async def handler(conn: trioheart.Connection) -> None:
            nonlocal open_conns
            open_conns += 1
            try:
                async for _ in conn:
                    pass
            finally:
                open_conns -= 1

        async def start(nursery: trio.Nursery) -> int:
            server = await nursery.start(
                functools.partial(
                    trioheart.serve, handler, "127.0.0.1", 0, config=config, metrics=metrics
                )
            )
            return int(server.port)

    else:
        import trio_websocket

        naive = kind == "trio-websocket+naive"

        async def beat(ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope) -> None:
            try:
                while True:
                    await trio.sleep(PING_INTERVAL)
                    with trio.move_on_after(PING_TIMEOUT) as pong:
                        await ws.ping()
                    if pong.cancelled_caught:
                        await ws.aclose(1011, "keepalive ping timeout")
                        return
            except trio_websocket.ConnectionClosed:
                return
            finally:
                scope.cancel()

        async def receive_all(ws: trio_websocket.WebSocketConnection) -> None:
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                while True:
                    await ws.get_message()

        async def handler(request: trio_websocket.WebSocketRequest) -> None:
            nonlocal open_conns
            ws = await request.accept()
            open_conns += 1
            try:
                if naive:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(beat, ws, nursery.cancel_scope)
                        await receive_all(ws)
                        nursery.cancel_scope.cancel()
                else:
                    await receive_all(ws)
            finally:
                open_conns -= 1

        async def start(nursery: trio.Nursery) -> int:
            server = await nursery.start(
                functools.partial(
                    trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None
                )
            )
            return int(server.port)

    async def main() -> None:
        commands = _Commands(lambda: open_conns, lambda: counter.live)
        async with trio.open_nursery() as nursery:
            port = await start(nursery)
            _reply({"port": port, "pid": os.getpid()})
            await control(commands)
            nursery.cancel_scope.cancel()

    trio.run(main, instruments=[counter])


def _websockets_server() -> None:
    import asyncio

    from websockets.asyncio.server import ServerConnection, serve

    open_conns = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal open_conns
        open_conns += 1
        try:
            async for _ in ws:
                pass
        finally:
            open_conns -= 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands = _Commands(lambda: open_conns, lambda: len(asyncio.all_tasks()))
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(0), "rb")
        )
        async with serve(
            handler, "127.0.0.1", 0, ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            _reply({"port": port, "pid": os.getpid()})
            while True:
                line = await reader.readline()
                words = line.decode().split()
                if not words or words == ["quit"]:
                    return
                _reply(commands.handle(words))

    asyncio.run(main())


def serve_role(kind: str) -> None:
    global _GC_CLOCK
    _raise_nofile()
    _GC_CLOCK = _GcClock()
    if kind.endswith("+gc"):
        gc.set_threshold(GC_THRESHOLD0)
        kind = kind.removesuffix("+gc")
    if kind == "websockets":
        _websockets_server()
    else:
        _trio_server(kind)


# --------------------------------------------------------------------------
# The client process: idle connections that answer every ping


def client_role() -> None:
    import trio
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request

    _raise_nofile()
    counts = {"pongs": 0, "open": 0, "closed": 0}

    def answer(ws: WSConnection, data: bytes) -> tuple[bytes, bool, bool]:
        """Feed *data*; return (bytes to send, accepted, closed)."""
        ws.receive_data(data)
        out = b""
        accepted = closed = False
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                accepted = True
            elif isinstance(event, Ping):
                out += ws.send(event.response())
                counts["pongs"] += 1
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(Exception):
                    out += ws.send(event.response())
                closed = True
            elif isinstance(event, RejectConnection):
                raise RuntimeError(f"handshake rejected: {event.status_code}")
        return out, accepted, closed

    async def connection(port: int, task_status: trio.TaskStatus[None]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target="/")))
        accepted = False
        while not accepted:
            data = await stream.receive_some(4096)
            if not data:
                raise RuntimeError("the server closed the connection during the handshake")
            out, accepted, _ = answer(ws, data)
            if out:
                await stream.send_all(out)
        counts["open"] += 1
        task_status.started()
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    break
                out, _, closed = answer(ws, data)
                if out:
                    await stream.send_all(out)
                if closed:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            counts["open"] -= 1
            counts["closed"] += 1
            await trio.aclose_forcefully(stream)

    async def open_many(nursery: trio.Nursery, port: int, count: int) -> None:
        limiter = trio.CapacityLimiter(64)

        async def one() -> None:
            async with limiter:
                await nursery.start(connection, port)

        async with trio.open_nursery() as starters:
            for _ in range(count):
                starters.start_soon(one)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _reply({"ready": True, "pid": os.getpid()})
            stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buffer = b""
            async with stream:
                while True:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    buffer += data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        words = line.decode().split()
                        if words[0] == "open":
                            started = time.perf_counter()
                            with trio.move_on_after(float(words[3])):
                                await open_many(nursery, int(words[1]), int(words[2]))
                            _reply({**counts, "seconds": time.perf_counter() - started})
                        elif words[0] == "count":
                            _reply(dict(counts))
                        else:  # quit
                            nursery.cancel_scope.cancel()
                            return
            nursery.cancel_scope.cancel()

    trio.run(main)


# --------------------------------------------------------------------------
# The orchestrator


class Child:
    """A process of ours that answers one JSON line per command line. Killed by PID."""

    def __init__(self, name: str, args: list[str], *, nice: int = 0) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{NAME}", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # A session of its own is a scheduling group of its own where the
            # kernel groups by session (autogroup), so the niceness counts
            # against the other programs on the machine, not only ours.
            start_new_session=bool(nice),
            # The orchestrator runs no threads, so a preexec_fn is safe here.
            preexec_fn=(lambda: _set_nice(nice)) if nice else None,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited (status {self.process.wait(5)})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        return self.read(timeout)

    def cpu_seconds(self) -> float:
        """utime + stime of the process, from /proc/PID/stat."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        """VmRSS, from /proc/PID/status, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name}: no VmRSS in /proc/{self.pid}/status")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # our own child, by PID
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _set_nice(nice: int) -> None:
    os.nice(nice)
    with contextlib.suppress(OSError):  # a kernel without autogroup scheduling
        Path("/proc/self/autogroup").write_text(f"{nice}\n")


def _niceness(pid: int) -> str:
    """The process's niceness, and its scheduling group's where there is one."""
    text = f"nice {os.getpriority(os.PRIO_PROCESS, pid)}"
    with contextlib.suppress(OSError):
        text += f", {Path(f'/proc/{pid}/autogroup').read_text().strip()}"
    return text


def _wait_conns(server: Child, expected: int, timeout: float) -> int:
    """Poll the server until it holds *expected* connections; return what it holds."""
    deadline = time.monotonic() + timeout
    conns = 0
    while time.monotonic() < deadline:
        conns = int(server.ask("stats")["conns"])
        if conns >= expected:
            return conns
        time.sleep(0.05)
    return conns


def _open(client: Child, port: int, count: int) -> int:
    """Open *count* more connections; return how many the client holds in all.

    A server too busy to accept them all in time leaves the rest unopened
    (the point records ``short_by``).
    """
    seconds = 30.0
    return int(client.ask(f"open {port} {count} {seconds}", timeout=seconds + 30)["open"])


def _start(kind: str, *, nice: int = 0, traced: bool = False) -> tuple[Child, Child, int]:
    """A fresh server process of *kind* and a fresh client process; the server's port."""
    name = f"{kind} (traced)" if traced else kind
    server = Child(name, ["--role", "server", "--kind", kind], nice=nice)
    try:
        client = Child("client", ["--role", "client"], nice=nice)
    except BaseException:
        server.kill()
        raise
    try:
        port = int(server.read(timeout=30)["port"])
        client.read(timeout=30)
    except BaseException:
        server.kill()
        client.kill()
        raise
    return server, client, port


def measure(kind: str, n: int, plan: Plan, nice: int = 0) -> dict[str, Any]:
    """A fresh server process of *kind* and a fresh client process, with N idle connections."""
    server, client, port = _start(kind, nice=nice)
    try:
        niceness = _niceness(server.pid)
        _wait_conns(server, _open(client, port, WARMUP), 30)
        time.sleep(plan.warm_settle)
        base = server.ask("stats gc")
        base_rss = server.rss_kib()
        opening = time.monotonic()
        conns = _wait_conns(server, _open(client, port, n), 30)
        open_s = time.monotonic() - opening
        time.sleep(plan.settle)
        stats = server.ask("stats gc")
        rss = server.rss_kib()
        added = stats["conns"] - base["conns"]
        # The pings answered and the CPU spent are read back to back at both
        # ends of the window, so both count the same pings.
        started = time.monotonic()
        count0, cpu0, client0 = client.ask("count"), server.cpu_seconds(), client.cpu_seconds()
        gc0 = server.ask("stats")
        time.sleep(plan.window)
        count1, cpu1, client1 = client.ask("count"), server.cpu_seconds(), client.cpu_seconds()
        gc1 = server.ask("stats")
        elapsed = time.monotonic() - started
    finally:
        server.kill()  # first, so it does not log each connection the client drops
        client.kill()
    pings = count1["pongs"] - count0["pongs"]
    cpu, client_cpu = cpu1 - cpu0, client1 - client0
    point = {
        "n": n,
        "conns_open": stats["conns"] - WARMUP,
        "short_by": max(0, WARMUP + n - conns),
        "open_s": open_s,
        "rss_kib_base": base_rss,
        "rss_kib": rss,
        "bytes_per_conn": (rss - base_rss) * 1024 / added,
        "tasks_per_conn": (stats["tasks"] - base["tasks"]) / added,
        "window_s": elapsed,
        "cpu_s": cpu,
        "cpu_s_per_s": cpu / elapsed,
        "pings": pings,
        "pings_per_conn_per_s": pings / elapsed / added,
        "cpu_s_per_1000_pings": cpu / pings * 1000 if pings else None,
        # Time in the cyclic garbage collector, and its share of the CPU time.
        "gc_s": gc1["gc_s"] - gc0["gc_s"],
        "gc_share": (gc1["gc_s"] - gc0["gc_s"]) / cpu if cpu else 0.0,
        "gc_runs": [b - a for a, b in zip(gc0["gc_runs"], gc1["gc_runs"], strict=True)],
        "client_cpu_s_per_s": client_cpu / elapsed,
        # The same client for every server: its CPU per ping is the floor of
        # one Trio task woken once per ping to answer it.
        "client_cpu_s_per_1000_pings": client_cpu / pings * 1000 if pings else None,
        "closed_by_server": count1["closed"],
        "server_nice": niceness,
    }
    cost = (
        f"{point['cpu_s_per_1000_pings']:.4f} CPU s/1000 pings"
        if pings
        else f"{point['cpu_s_per_s'] * 1000:.2f} CPU ms/s idle"
    )
    _progress(
        f"  {kind} N={n}: {point['bytes_per_conn'] / 1024:.2f} KiB/conn, "
        f"{point['tasks_per_conn']:.2f} tasks/conn, {cost}, "
        f"{point['pings_per_conn_per_s']:.2f} pings/conn/s (opened in {open_s:.1f} s)"
    )
    return point


def trace(kind: str, n: int, age: float, plan: Plan, nice: int = 0) -> dict[str, Any]:
    """Where the bytes of a connection go: tracemalloc growth in a separate server."""
    server, client, port = _start(kind, nice=nice, traced=True)
    try:
        _wait_conns(server, _open(client, port, WARMUP), 30)
        time.sleep(plan.warm_settle)
        server.ask("snapshot", timeout=60)
        _wait_conns(server, _open(client, port, n), 30)
        time.sleep(plan.settle)
        server.ask("snapshot", timeout=60)
        result = server.ask(f"breakdown 0 1 {n}", timeout=60)
        result["age_s"] = plan.settle
        if age > 0:
            _progress(f"  keeping {n} traced {kind} connections for {age:.0f} s more")
            time.sleep(age)
            server.ask("snapshot", timeout=60)
            aged = server.ask(f"breakdown 1 2 {n}", timeout=60)
            result["aged"] = {
                "age_s": plan.settle + age,
                "extra_traced_bytes_per_conn": aged["traced_bytes_per_conn"],
                "by_line": aged["by_line"][:8],
            }
        result["conns_open"] = int(server.ask("stats")["conns"]) - WARMUP
        return result
    finally:
        server.kill()  # first, so it does not log each connection the client drops
        client.kill()


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(runs: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in CONFIGS + GC_CONFIGS:
        for n in plan.sizes:
            points = [p for p in runs if p["config"] == kind and p["n"] == n]
            if not points:
                continue
            rows.append(
                {
                    "config": kind,
                    "n": n,
                    "repeats": len(points),
                    "bytes_per_conn": _median([p["bytes_per_conn"] for p in points]),
                    "bytes_per_conn_runs": [p["bytes_per_conn"] for p in points],
                    "tasks_per_conn": _median([p["tasks_per_conn"] for p in points]),
                    "cpu_s_per_1000_pings": _median([p["cpu_s_per_1000_pings"] for p in points]),
                    "cpu_s_per_1000_pings_runs": [p["cpu_s_per_1000_pings"] for p in points],
                    "cpu_s_per_s": _median([p["cpu_s_per_s"] for p in points]),
                    "gc_share": _median([p["gc_share"] for p in points]),
                    "pings_per_conn_per_s": _median([p["pings_per_conn_per_s"] for p in points]),
                    "client_cpu_s_per_s": _median([p["client_cpu_s_per_s"] for p in points]),
                    "client_cpu_s_per_1000_pings": _median(
                        [p["client_cpu_s_per_1000_pings"] for p in points]
                    ),
                    "closed_by_server": sum(p["closed_by_server"] for p in points),
                    "short_by": sum(p["short_by"] for p in points),
                }
            )
    for row in rows:
        same_n = {r["config"]: r for r in rows if r["n"] == row["n"]}
        # Like with like: a what-if row is compared with the peer's what-if row.
        what_if = row["config"].endswith("+gc")
        peer, bare = same_n.get(PEER + "+gc" if what_if else PEER), same_n.get(BARE)
        row["bytes_vs_websockets"] = _ratio(row["bytes_per_conn"], peer and peer["bytes_per_conn"])
        row["bytes_vs_trio_websocket"] = _ratio(
            row["bytes_per_conn"], bare and bare["bytes_per_conn"]
        )
        row["cpu_per_ping_vs_websockets"] = _ratio(
            row["cpu_s_per_1000_pings"], peer and peer["cpu_s_per_1000_pings"]
        )
        # Bare trio-websocket sends no pings: against it, CPU is compared as
        # CPU seconds per second above its idle cost.
        row["cpu_s_per_s_over_trio_websocket"] = (
            row["cpu_s_per_s"] - bare["cpu_s_per_s"] if bare is not None else None
        )
    return rows


def metrics_overhead(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """trioheart with metrics on against off: CPU per ping (issue 7's target: < 1.10)."""
    out = []
    for row in rows:
        if row["config"] != "trioheart+metrics":
            continue
        off = next(r for r in rows if r["config"] == "trioheart" and r["n"] == row["n"])
        paired = []
        for a in (p for p in runs if p["config"] == "trioheart+metrics" and p["n"] == row["n"]):
            b = next(
                p
                for p in runs
                if p["config"] == "trioheart" and (p["n"], p["repeat"]) == (a["n"], a["repeat"])
            )
            if a["cpu_s_per_1000_pings"] and b["cpu_s_per_1000_pings"]:
                paired.append(a["cpu_s_per_1000_pings"] / b["cpu_s_per_1000_pings"])
        ratio = _ratio(row["cpu_s_per_1000_pings"], off["cpu_s_per_1000_pings"])
        out.append(
            {
                "n": row["n"],
                "cpu_per_ping_ratio": ratio,
                "cpu_per_ping_ratio_paired": paired,
                "bytes_ratio": _ratio(row["bytes_per_conn"], off["bytes_per_conn"]),
                "target": 1.10,
                "met": ratio is not None and ratio < 1.10,
            }
        )
    return out


def targets(rows: list[dict[str, Any]], overhead: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row["config"] != "trioheart":
            continue
        n = row["n"]
        bytes_ratio, cpu_ratio = row["bytes_vs_websockets"], row["cpu_per_ping_vs_websockets"]
        out.append(
            {
                "target": f"bytes/conn <= websockets (N={n})",
                "ratio": bytes_ratio,
                "met": bytes_ratio is not None and bytes_ratio <= 1.0,
            }
        )
        out.append(
            {
                "target": f"CPU/ping <= websockets (N={n})",
                "ratio": cpu_ratio,
                "met": cpu_ratio is not None and cpu_ratio <= 1.0,
            }
        )
    for item in overhead:
        out.append(
            {
                "target": f"metrics on: CPU/ping < 1.10 x off (N={item['n']})",
                "ratio": item["cpu_per_ping_ratio"],
                "met": item["met"],
            }
        )
    return out


def run(plan: Plan, *, quick: bool, nice: int = 0) -> dict[str, Any]:
    started = time.monotonic()
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for repeat in range(plan.repeats):
        for index, n in enumerate(plan.sizes):
            # Interleaved: every configuration once per N per repeat, in an
            # order that rotates, so no configuration always runs first.
            shift = (repeat + index) % len(CONFIGS)
            for kind in CONFIGS[shift:] + CONFIGS[:shift]:
                _progress(f"repeat {repeat + 1}/{plan.repeats}, N={n}: {kind}")
                load = os.getloadavg()[0]
                point = measure(kind, n, plan, nice)
                runs.append({"config": kind, "repeat": repeat, "loadavg": load, **point})
        largest = max(plan.sizes)
        shift = repeat % len(plan.what_if)
        for kind in plan.what_if[shift:] + plan.what_if[:shift]:
            _progress(f"repeat {repeat + 1}/{plan.repeats}, N={largest}: {kind} (what-if)")
            load = os.getloadavg()[0]
            point = measure(kind, largest, plan, nice)
            runs.append({"config": kind, "repeat": repeat, "loadavg": load, **point})
    where: dict[str, Any] = {}
    for kind in ("trioheart",) if quick else ("trioheart", "websockets"):
        _progress(f"where the bytes go: {kind}, N={plan.trace_n}, under tracemalloc")
        age = plan.trace_age if kind == "trioheart" else 0
        where[kind] = trace(kind, plan.trace_n, age, plan, nice)
    rows = summarise(runs, plan)
    overhead = metrics_overhead(runs, rows)
    command = f"python -m benchmarks.{NAME}" + (" --quick" if quick else "")
    if nice:
        command += f" --nice {nice}"
    return {
        "benchmark": NAME,
        "command": command,
        "quick": quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": _versions(),
            # The machine may be shared: its load before and after the run.
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "settings": {
            "ping_interval_s": PING_INTERVAL,
            "ping_timeout_s": PING_TIMEOUT,
            "sizes": list(plan.sizes),
            "repeats": plan.repeats,
            "warmup_connections": WARMUP,
            "settle_s": plan.settle,
            "window_s": plan.window,
            "trace_n": plan.trace_n,
            "trace_age_s": plan.trace_age,
            "nice": nice,
        },
        "configs": DESCRIPTIONS,
        "note": (
            "bytes_per_conn = (VmRSS with N idle connections - VmRSS after the warm-up) / N, "
            "both after gc.collect(), server process only; cpu_s_per_1000_pings = server "
            "utime+stime over the window / pings the client answered in it x 1000; "
            "medians over repeats; ratios are ratios of medians, same N, same run"
        ),
        "runs": runs,
        "results": rows,
        "metrics_overhead": overhead,
        "targets": targets(rows, overhead),
        "where_the_bytes_go": where,
        "wall_seconds": time.monotonic() - started,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("trioheart", "trio", "trio-websocket", "websockets", "wsproto"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


# --------------------------------------------------------------------------
# Output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'config':<22}{'N':>6}{'KiB/conn':>9}{'/ws':>6}{'/tws':>6}{'tasks':>6}"
        f"{'CPU s/1k pings':>15}{'/ws':>6}{'CPU ms/s':>9}{'GC %':>6}{'pings/c/s':>10}"
    )
    lines = [head, "-" * len(head)]
    for row in report["results"]:
        kbytes = row["bytes_per_conn"] / 1024
        lines.append(
            f"{row['config']:<22}{row['n']:>6}{kbytes:>9.2f}"
            f"{_fmt(row['bytes_vs_websockets'], '.2f'):>6}"
            f"{_fmt(row['bytes_vs_trio_websocket'], '.2f'):>6}"
            f"{row['tasks_per_conn']:>6.2f}"
            f"{_fmt(row['cpu_s_per_1000_pings'], '.4f'):>15}"
            f"{_fmt(row['cpu_per_ping_vs_websockets'], '.2f'):>6}"
            f"{row['cpu_s_per_s'] * 1000:>9.1f}{row['gc_share'] * 100:>6.0f}"
            f"{row['pings_per_conn_per_s']:>10.2f}"
        )
    lines.append(
        "KiB/conn: server RSS per idle connection (the kB of /proc); /ws, /tws: ratio to "
        "websockets and to bare trio-websocket; CPU ms/s: server CPU per second of wall time "
        "in the window (bare trio-websocket sends no pings: that is its idle cost); GC %: "
        "share of it in the cyclic garbage collector; +gc: what-if with "
        f"gc.set_threshold({GC_THRESHOLD0}), compared with websockets+gc"
    )
    for item in report["metrics_overhead"]:
        paired = ", ".join(f"{x:.3f}" for x in item["cpu_per_ping_ratio_paired"])
        ratio = _fmt(item["cpu_per_ping_ratio"], ".3f")
        lines.append(
            f"metrics on/off, N={item['n']}: CPU per ping x{ratio} (paired by repeat: "
            f"{paired}), bytes x{_fmt(item['bytes_ratio'], '.3f')}"
        )
    for kind, where in report["where_the_bytes_go"].items():
        top = ", ".join(f"{f['file']} {f['bytes_per_conn']:.0f}" for f in where["by_file"][:6])
        lines.append(
            f"where the bytes go ({kind}, N={where['n']}, tracemalloc): "
            f"{where['traced_bytes_per_conn']:.0f} B/conn traced; by file: {top}"
        )
        if "aged" in where:
            lines.append(
                f"  after {where['aged']['age_s']:.0f} s (RTT estimator full): "
                f"+{where['aged']['extra_traced_bytes_per_conn']:.0f} B/conn"
            )
    for target in report["targets"]:
        lines.append(
            f"[{'met' if target['met'] else 'NOT met'}] {target['target']}: "
            f"x{_fmt(target['ratio'], '.3f')}"
        )
    return "\n".join(lines)


STYLE: Final = {
    "trioheart": ("tab:red", "o", "-"),
    "trioheart+metrics": ("tab:red", "s", "--"),
    "trio-websocket": ("tab:gray", "^", "-"),
    "trio-websocket+naive": ("tab:gray", "v", "--"),
    "websockets": ("tab:blue", "D", "-"),
    "trioheart+gc": ("tab:orange", "*", ""),
    "websockets+gc": ("tab:cyan", "P", ""),
}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, cpu, where) = plt.subplots(
        1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.25]}
    )
    sizes = report["settings"]["sizes"]
    for kind in CONFIGS + GC_CONFIGS:
        rows = [r for r in report["results"] if r["config"] == kind]
        if not rows:
            continue
        color, marker, line = STYLE[kind]
        ns = [r["n"] for r in rows]
        mem.plot(
            ns,
            [r["bytes_per_conn"] / 1024 for r in rows],
            marker=marker,
            linestyle=line,
            color=color,
            label=kind,
        )
        pinged = [r for r in rows if r["cpu_s_per_1000_pings"] is not None]
        if pinged:
            cpu.plot(
                [r["n"] for r in pinged],
                [r["cpu_s_per_1000_pings"] for r in pinged],
                marker=marker,
                linestyle=line,
                color=color,
                label=kind,
            )
    for axis in (mem, cpu):
        axis.set_xscale("log")
        axis.set_xticks(sizes, [f"{n:,}" for n in sizes])
        axis.minorticks_off()
    mem.set_xlabel("idle connections N")
    mem.set_ylabel("server RSS per connection (KiB, median)")
    mem.set_title("Memory per idle connection")
    mem.set_ylim(bottom=0)
    mem.legend(fontsize=8)
    mem.grid(alpha=0.3)
    cpu.set_xlabel("idle connections N (1 ping/s each)")
    cpu.set_ylabel("server CPU s per 1,000 pings (median)")
    cpu.set_title("CPU per ping (bare trio-websocket: no pings)")
    cpu.set_ylim(bottom=0)
    cpu.legend(fontsize=8)
    cpu.grid(alpha=0.3)
    traced = report["where_the_bytes_go"].get("trioheart")
    if traced:
        files = traced["by_file"][:12][::-1]
        labels = [
            re.sub(r"<attrs generated methods (.*)>", r"\1 (attrs)", f["file"]) for f in files
        ]
        where.barh(labels, [f["bytes_per_conn"] for f in files])
        where.set_xlabel("bytes per connection, by file that allocated them")
        where.set_title(
            f"trioheart: where the bytes go\n(tracemalloc, N={traced['n']:,}, "
            f"{traced['traced_bytes_per_conn']:,.0f} B per connection)"
        )
        where.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_rst(report: dict[str, Any], path: Path) -> None:
    """The docs include this: the measured table, the targets and where the bytes go."""
    lines = [
        f".. list-table:: Idle connections, 1 ping/s (``{report['command']}``, medians of "
        f"{report['settings']['repeats']})",
        "   :header-rows: 1",
        "",
        "   * - configuration",
        "     - N",
        "     - KiB/conn",
        "     - vs websockets",
        "     - vs trio-websocket",
        "     - tasks/conn",
        "     - CPU s / 1,000 pings",
        "     - vs websockets",
        "     - CPU ms / s",
        "     - GC %",
        "     - pings / conn / s",
    ]
    for row in report["results"]:
        cells = [
            f"``{row['config']}``",
            str(row["n"]),
            f"{row['bytes_per_conn'] / 1024:.1f}",
            _fmt(row["bytes_vs_websockets"], ".2f"),
            _fmt(row["bytes_vs_trio_websocket"], ".2f"),
            f"{row['tasks_per_conn']:.2f}",
            _fmt(row["cpu_s_per_1000_pings"], ".4f"),
            _fmt(row["cpu_per_ping_vs_websockets"], ".2f"),
            f"{row['cpu_s_per_s'] * 1000:.1f}",
            f"{row['gc_share'] * 100:.0f}",
            f"{row['pings_per_conn_per_s']:.2f}",
        ]
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {cell}" for cell in cells[1:]]
    lines += ["", ".. list-table:: Targets", "   :header-rows: 1", ""]
    lines += ["   * - target", "     - measured ratio", "     - met"]
    for target in report["targets"]:
        lines += [
            f"   * - {target['target']}",
            f"     - {_fmt(target['ratio'], '.3f')}",
            f"     - {'yes' if target['met'] else '**no**'}",
        ]
    traced = report["where_the_bytes_go"].get("trioheart")
    if traced:
        lines += [
            "",
            f".. list-table:: trioheart: where the bytes of a connection go "
            f"(tracemalloc, N={traced['n']}, "
            f"{traced['traced_bytes_per_conn']:.0f} B traced per connection)",
            "   :header-rows: 1",
            "",
            "   * - allocated at",
            "     - code",
            "     - bytes/conn",
            "     - blocks/conn",
        ]
        for item in traced["by_line"][:15]:
            code = item["code"].replace("`", "'")
            if len(code) > 70:
                code = code[:67] + "..."
            lines += [
                f"   * - ``{item['where']}``",
                f"     - ``{code}``" if code else "     -",
                f"     - {item['bytes_per_conn']:.0f}",
                f"     - {item['blocks_per_conn']:.2f}",
            ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{NAME}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the server and client processes at this niceness, each in a session (and "
        "autogroup) of its own: e.g. -10 as root on a busy shared machine, so they get the "
        "CPU that 5,000 connections pinging every second need",
    )
    parser.add_argument(
        "--role", choices=("run", "server", "client"), default="run", help=argparse.SUPPRESS
    )
    parser.add_argument("--kind", choices=CONFIGS + GC_CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "server":
        serve_role(args.kind)
        return 0
    if args.role == "client":
        client_role()
        return 0
    _raise_nofile()
    # On SIGTERM, unwind through the finally blocks that kill our children.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = run(QUICK if args.quick else FULL, quick=args.quick, nice=args.nice)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out / f"{NAME}.png")
    write_rst(report, args.out / f"{NAME}.rst")
    print(table(report))
    print(f"wrote {args.out / (NAME + '.json')}, .png and .rst")
    print(f"re-create with: {report['command']} --out {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
