"""A reconnect storm: N clients cut at once, for each jitter, and a server drain.

``python -m benchmarks.reconnect_storm [--quick] [--clients N] [--out DIR]``

N resuming clients (:class:`benchmarks.cluster.ChatClient`, i.e.
:func:`trioheart.client.open_resuming`) chat in rooms of about 100 through
a :class:`trioheart.proxy.Proxy` in front of the demo's chat app
(:class:`trioheart.demo.app.ChatApp`), while a publisher in the server's
process keeps posting to every room. Then all of them are cut at once: the
proxy goes down (every connection gets a FIN, new ones are refused) for
an outage, and comes back on the same port. The server and its room logs
live on, so every client must resume and receive every message exactly
once, in order (or be told ``reset``, counted apart).

That is done for each :class:`~trioheart.backoff.Jitter` (``none``,
``equal``, ``full``, ``decorrelated``) with the same base, cap and factor
(the library's defaults in the full run: 0.5 s, 30 s, 2). Measured:

* handshakes the server accepted per 100 ms (a stamp per handshake; the
  peak is the largest 100 ms bucket), and the reconnects the clients
  scheduled per 100 ms (the offered load, refused ones included);
* per client, the time from the cut to its resumed session (p50, p99,
  max), and at the server the time from the cut to the N-th handshake;
  clients not back within ``storm_bound`` are reported as such, and the
  run goes on;
* failed tries by kind, handshakes the server completed for clients that
  had already given up (wasted), and SYNs dropped by full accept queues;
* messages lost, duplicated and out of order per client (must be 0), and
  resets.

Then the drain case: no proxy, the server shuts down with
:meth:`Server.aclose(retry_window=...) <trioheart.Server.aclose>`, a
window sized by :meth:`RetryWindow.spread
<trioheart.backoff.RetryWindow.spread>` for a promised rate, and a new
server on the same port and the same broker takes over while the old one
drains; the clients spread their reconnects over the window. Its peak per
100 ms is compared with the promised rate.

The server, the proxy and the publisher run in this process, the clients
in one child process (``--run-clients``, fed over pipes), on the same two
cores as whatever else runs; the absolute times are the machine's, the
comparison between jitters in the same run is the result. Writes
DIR/reconnect_storm.json, .png and .rst (the docs include the table);
prints a table and the command that re-creates them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

import trioheart
from benchmarks.cluster import ChatClient
from trioheart.backoff import Backoff, RetryWindow
from trioheart.client import ClientEvent, ClientStatistics, Connected, Disconnected
from trioheart.demo.app import ChatApp
from trioheart.proxy import Proxy, open_proxy
from trioheart.resume import LogLimits, ResumeServer

ROOT: Final = Path(__file__).resolve().parents[1]
KEY: Final = b"reconnect-storm-benchmark-key-32"
JITTERS: Final = ("none", "equal", "full", "decorrelated")
BUCKET: Final = 0.1  # seconds: rates are per 100 ms
#: What the clients' process counts, summed over the clients.
COUNTED: Final = (
    "lost",
    "duplicated",
    "unexpected",
    "out_of_order",
    "resets",
    "reconnects",
    "failed_attempts",
    "dropped_duplicates",
    "gaps",
    "cut_more_than_once",
)
LIMITS: Final = LogLimits(max_messages=20_000, max_bytes=8_000_000, max_age=900.0)


@attrs.frozen(kw_only=True)
class Settings:
    """One run's workload; the same for every case of the run."""

    clients: int
    room_size: int
    #: The backoff of every jitter case.
    base: float
    cap: float
    factor: float = 2.0
    #: How long the proxy stays down.
    outage: float
    #: Seconds between two messages of one room.
    publish_interval: float
    #: Publishing before the cut, and after every client is back.
    lead: float
    tail: float
    #: The drain case: the accept rate the server asks for, and when the window opens.
    drain_rate: float
    drain_earliest: float
    #: New clients per 100 ms while the room fills (the benchmark is the storm, not this).
    ramp: int
    #: The bound of each phase, seconds.
    timeout: float
    #: How long after the cut the clients have to come back; past it the
    #: case is reported as not all back (and the run goes on).
    storm_bound: float

    @property
    def rooms(self) -> int:
        return max(1, self.clients // self.room_size)


QUICK: Final = Settings(
    clients=100,
    room_size=20,
    base=0.1,
    cap=2.0,
    outage=0.3,
    publish_interval=0.1,
    lead=0.3,
    tail=0.3,
    drain_rate=250.0,
    drain_earliest=0.2,
    ramp=50,
    timeout=60.0,
    storm_bound=60.0,
)
FULL: Final = Settings(
    clients=2000,
    room_size=100,
    base=0.5,
    cap=30.0,
    outage=2.0,
    publish_interval=2.0,
    lead=2.0,
    tail=1.0,
    drain_rate=250.0,
    drain_earliest=1.0,
    ramp=10,
    timeout=180.0,
    storm_bound=240.0,
)


def _progress(message: str) -> None:
    print(f"[reconnect_storm] {message}", file=sys.stderr, flush=True)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _listen_drops() -> int | None:
    """TcpExt ListenOverflows of this network namespace (SYNs a full accept queue dropped)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenOverflows", 0))
    return None


class _Lines:
    """Lines from a byte stream (a child's stdout, or our stdin)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next(self) -> str:
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = await self._stream.receive_some(1 << 16)
            if not chunk:
                raise EOFError("the other process closed the pipe")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line.decode()


# --------------------------------------------------------------------------
# The clients' process


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _failure_kind(event: Disconnected) -> str:
    """A short name for why a connection ended, or a try failed."""
    if event.reason is not None:
        return f"closed: {event.reason.value}"
    detail = event.detail
    if detail.startswith("no answer to the handshake"):
        return "handshake timeout"
    if "during the handshake" in detail:
        return "handshake broken"
    if "refused the handshake with HTTP" in detail:
        return "HTTP " + detail.split("HTTP ", 1)[1][:3]
    if "connect" in detail.lower():
        return "connect failed"
    return detail[:40]


@attrs.define(eq=False)
class StormClient(ChatClient):
    """A :class:`ChatClient` that also stamps its retries and resumes, and counts failures."""

    #: trio.current_time() at which each retry was due (a failure plus the drawn delay).
    retries_at: list[float] = attrs.field(factory=list)
    #: trio.current_time() of each Connected.
    connected_at: list[float] = attrs.field(factory=list)
    #: Disconnected events by :func:`_failure_kind`.
    failures: Counter[str] = attrs.field(factory=Counter)

    def _on(self, event: ClientEvent) -> None:
        if isinstance(event, Connected):
            self.connected_at.append(trio.current_time())
        elif isinstance(event, Disconnected):
            self.retries_at.append(trio.current_time() + event.retry_in)
            self.failures[_failure_kind(event)] += 1
        super()._on(event)

    def forget(self) -> ClientStatistics:
        """Forget what filling the rooms took; the counters to subtract later."""
        self.resume_latencies.clear()
        self.retries_at.clear()
        self.connected_at.clear()
        self.failures.clear()
        return self.statistics()


def _settled(client: StormClient, *, count: int) -> bool:
    """Has every message of its room, or is not connected (then it is not waited for)."""
    return len(client.delivered) >= count or not client.live_now


def _check_client(client: ChatClient, expected: int) -> dict[str, int]:
    """Loss, duplicates and order of one client's deliveries against its room's history."""
    want = [f"{client.room}:{i}" for i in range(expected)]
    got = client.texts
    seen = set(got)
    wanted = set(want)
    in_order = [text for text in dict.fromkeys(got)]  # first occurrences, in order
    return {
        "lost": len(wanted - seen),
        "duplicated": len(got) - len(seen),
        "unexpected": len(seen - wanted),
        "out_of_order": int(in_order != [text for text in want if text in seen]),
    }


async def _report_clients(clients: Sequence[StormClient]) -> None:
    """Say every few seconds how many clients are live, and why the others last failed."""
    while True:
        await trio.sleep(5.0)
        down = [c for c in clients if not c.live_now]
        if down:
            why = Counter(c.last_error.split(":")[0][:60] for c in down).most_common(3)
            _progress(f"clients: {len(clients) - len(down)} live; the others last saw {why}")


async def run_clients(spec: dict[str, Any]) -> dict[str, Any]:
    """Connect the clients, say LIVE, wait for END, check what they got; the child's body."""
    settings = Settings(**spec["settings"])
    backoff = Backoff(
        base=settings.base, cap=settings.cap, factor=settings.factor, jitter=spec["jitter"]
    )
    seeds = random.Random(spec["seed"])
    offset = time.monotonic() - trio.current_time()  # to share stamps with the server's process
    rooms = settings.rooms
    clients = [StormClient(name=f"c{i}", room=f"room{i % rooms}") for i in range(settings.clients)]
    stdin = _Lines(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
    async with trio.open_nursery() as nursery:
        for i, client in enumerate(clients):
            nursery.start_soon(
                functools.partial(
                    client.run,
                    [spec["url"]],
                    backoff=backoff,
                    rng=random.Random(seeds.getrandbits(64)),
                )
            )
            if i % settings.ramp == settings.ramp - 1:
                await trio.sleep(BUCKET)
        with trio.fail_after(settings.timeout):
            for client in clients:
                await client.wait_until(lambda c: c.live_now)
        before = {client.name: client.forget() for client in clients}
        print("LIVE", flush=True)
        nursery.start_soon(_report_clients, clients)
        line = await stdin.next()
        if not line.startswith("END "):
            raise RuntimeError(f"expected END, got {line[:80]!r}")
        end = json.loads(line.removeprefix("END "))
        counts: dict[str, int] = end["published"]
        cut_at = end["cut_at"] - offset  # on our clock
        with trio.move_on_after(settings.timeout):
            for client in clients:
                want = counts.get(client.room, 0)
                await client.wait_until(functools.partial(_settled, count=want))
        down = {client.name for client in clients if not client.live_now}
        nursery.cancel_scope.cancel()
    totals: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    reset_missed = reset_clients = incomplete = down_missing = 0
    latencies: list[float] = []  # the client's view: its lost connection to resumed
    since_cut: list[float] = []  # the server's cut to this client's first resume
    retries: list[float] = []
    for client in clients:
        stats, start = client.statistics(), before[client.name]
        check = _check_client(client, counts.get(client.room, 0))
        if client.resyncs:
            reset_clients += 1
            reset_missed += check.pop("lost")
        elif client.name in down:  # still reconnecting: what it lacks is not lost (yet)
            down_missing += check.pop("lost")
        totals.update(check)
        failures.update(client.failures)
        incomplete += int(len(client.delivered) < counts.get(client.room, 0))
        totals["resets"] += len(client.resyncs)
        totals["reconnects"] += stats.connections - start.connections
        totals["failed_attempts"] += stats.failed_attempts - start.failed_attempts
        totals["dropped_duplicates"] += stats.duplicates - start.duplicates
        totals["gaps"] += stats.gaps - start.gaps
        totals["cut_more_than_once"] += int(len(client.resume_latencies) > 1)
        if client.resume_latencies:
            latencies.append(client.resume_latencies[0])
        back = [at for at in client.connected_at if at >= cut_at]
        if back:
            since_cut.append(back[0] - cut_at)
        retries += [at + offset for at in client.retries_at]
    latencies.sort()
    since_cut.sort()
    return {
        "clients": len(clients),
        "rooms": rooms,
        "resumed_clients": len(since_cut),
        "latencies": [round(x, 4) for x in latencies],
        "since_cut": [round(x, 4) for x in since_cut],
        "retries_at": [round(x, 4) for x in sorted(retries)],
        "reset_clients": reset_clients,
        "missed_after_reset": reset_missed,
        "incomplete_clients": incomplete,
        "down_at_end_clients": len(down),
        "missing_while_down": down_missing,
        "failures": dict(failures.most_common()),
        "delivered": sum(len(c.delivered) for c in clients),
        **{key: totals.get(key, 0) for key in COUNTED},
    }


def _clients_main(spec_json: str) -> int:
    _raise_nofile()
    trioheart.log.configure_logging(json=True, level=logging.ERROR, stream=sys.stderr)
    spec = json.loads(spec_json)
    report = trio.run(run_clients, spec)
    print("RESULT " + json.dumps(report, separators=(",", ":")), flush=True)
    return 0


# --------------------------------------------------------------------------
# The server's process


async def _publish(broker: trioheart.EmbeddedBroker, counts: dict[str, int], every: float) -> None:
    """Post one message to each room every *every* seconds, spread evenly, until cancelled."""
    rooms = sorted(counts)
    step = every / len(rooms)
    at = trio.current_time()
    for i in range(10**9):  # bounded by the caller's cancel scope long before this
        room = rooms[i % len(rooms)]
        broker.publish_nowait(
            room,
            {"type": "chat", "room": room, "from": "publisher", "text": f"{room}:{counts[room]}"},
        )
        counts[room] += 1
        at += step
        await trio.sleep_until(at)


async def _report(
    case: str, server: trioheart.Server, accepted: int, cut_at: float, proxy: Proxy | None
) -> None:
    """Say every few seconds how far the clients are; until cancelled."""
    while True:
        await trio.sleep(5.0)
        stats = server.statistics()
        through = "" if proxy is None else f", {proxy.statistics().connections_open} at the proxy"
        _progress(
            f"{case}: {time.monotonic() - cut_at:.0f} s after the cut: "
            f"{stats.connections_accepted - accepted} handshakes, {stats.connections_open} open"
            f"{through}, closed {stats.closed}"
        )


async def _drain(server: trioheart.Server, window: RetryWindow, done: list[float]) -> None:
    """Close *server* with *window* in every close frame; note when it is all closed."""
    await server.aclose(retry_window=window)
    done.append(time.monotonic())


async def _restart(
    nursery: trio.Nursery, serve: functools.partial[Any], port: int
) -> trioheart.Server:
    """A new server on *port* as soon as the old one's listener is closed (it drains meanwhile).

    The caller bounds it in time.
    """
    while True:
        try:
            server: trioheart.Server = await nursery.start(functools.partial(serve, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            await trio.sleep(0.01)  # the old listener closes at its next checkpoint
        else:
            return server


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _per_bucket(stamps: Sequence[float], origin: float, end: float) -> list[int]:
    """How many *stamps* fall in each 100 ms from *origin* to *end*."""
    buckets = [0] * max(1, math.ceil((end - origin) / BUCKET))
    for stamp in stamps:
        index = math.floor((stamp - origin) / BUCKET)
        if 0 <= index < len(buckets):
            buckets[index] += 1
    return buckets


async def run_case(settings: Settings, case: str, seed: int) -> dict[str, Any]:
    """One storm (*case* a jitter) or the drain (*case* ``drain``), server side."""
    drain = case == "drain"
    n = settings.clients
    broker = trioheart.EmbeddedBroker(resume_server=ResumeServer(key=KEY), limits=LIMITS)
    app = ChatApp(None, broker)
    accepted_at: list[float] = []

    async def handler(conn: trioheart.Connection) -> None:
        accepted_at.append(time.monotonic())
        await app.handle(conn)

    config = trioheart.ConnectionConfig(max_send_buffer=4 << 20)
    serve = functools.partial(
        trioheart.serve, handler, "127.0.0.1", config=config, websocket_paths=["/ws"]
    )
    counts = {f"room{i}": 0 for i in range(settings.rooms)}
    process: trio.Process | None = None
    async with trio.open_nursery() as nursery:
        server: trioheart.Server = await nursery.start(serve)
        servers = [server]
        port = server.port
        proxied = (
            contextlib.nullcontext(None)
            if drain
            else open_proxy(upstream=("127.0.0.1", port), seed=seed)
        )
        async with proxied as proxy:
            target = port if proxy is None else proxy.listen_address[1]
            spec = {
                "settings": attrs.asdict(settings),
                "jitter": "full" if drain else case,
                "url": f"ws://127.0.0.1:{target}",
                "seed": seed,
            }
            try:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "benchmarks.reconnect_storm", "--run-clients"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                    env={**os.environ, "STORM_SPEC": json.dumps(spec)},
                )
                assert process.stdout is not None
                assert process.stdin is not None
                lines = _Lines(process.stdout)
                with trio.fail_after(settings.timeout):
                    line = await lines.next()
                if line != "LIVE":
                    raise RuntimeError(f"the clients said {line[:200]!r}, not LIVE")
                _progress(f"{case}: {n} clients live in {settings.rooms} rooms; publishing")
                window: RetryWindow | None = None
                drained: list[float] = []
                restart: float | None = None
                async with trio.open_nursery() as publishing:
                    publishing.start_soon(_publish, broker, counts, settings.publish_interval)
                    await trio.sleep(settings.lead)
                    drops = _listen_drops()
                    accepted = server.statistics().connections_accepted
                    cut_at = time.monotonic()
                    if proxy is not None:
                        _progress(f"{case}: proxy down for {settings.outage} s")
                        proxy.set_enabled(False)
                        await trio.sleep(settings.outage)
                        proxy.set_enabled(True)
                    else:
                        window = RetryWindow.spread(
                            clients=n, rate=settings.drain_rate, earliest=settings.drain_earliest
                        )
                        _progress(f"{case}: server closing with {window.close_text()}")
                        nursery.start_soon(_drain, server, window, drained)
                        with trio.fail_after(settings.timeout):
                            server = await _restart(nursery, serve, port)
                        servers.append(server)
                        accepted = 0
                        restart = time.monotonic() - cut_at
                        _progress(f"{case}: a new server listens after {restart:.2f} s")
                    async with trio.open_nursery() as watching:
                        watching.start_soon(_report, case, server, accepted, cut_at, proxy)
                        with trio.move_on_after(settings.storm_bound) as bound:
                            await server.wait_until(
                                lambda s: (
                                    s.connections_accepted - accepted >= n
                                    and s.connections_open >= n
                                )
                            )
                        watching.cancel_scope.cancel()
                    all_back = None if bound.cancelled_caught else time.monotonic() - cut_at
                    after_drops = _listen_drops()
                    if all_back is None:
                        _progress(f"{case}: not all back {settings.storm_bound} s after the cut")
                    else:
                        _progress(f"{case}: all {n} back {all_back:.2f} s after the cut")
                    await trio.sleep(settings.tail)
                    publishing.cancel_scope.cancel()
                finish = {"published": counts, "cut_at": cut_at}
                await process.stdin.send_all(f"END {json.dumps(finish)}\n".encode())
                with trio.fail_after(settings.timeout + 30):
                    line = await lines.next()
                    await process.wait()
                if not line.startswith("RESULT "):
                    raise RuntimeError(f"the clients said {line[:200]!r}, not RESULT")
                clients = json.loads(line.removeprefix("RESULT "))
            finally:
                if process is not None and process.returncode is None:
                    process.kill()  # our own child, by its PID
                    with trio.CancelScope(shield=True), trio.move_on_after(10):
                        await process.wait()
        nursery.cancel_scope.cancel()
    stalls = {"count": 0, "max_s": 0.0, "total_s": 0.0}
    for each in servers:
        if each.stalls is not None:
            seen = each.stalls.statistics()
            stalls["count"] += seen.count
            stalls["max_s"] = max(stalls["max_s"], seen.max)
            stalls["total_s"] += seen.total
    end = cut_at + (settings.storm_bound if all_back is None else all_back) + 1.0
    accepts = _per_bucket(accepted_at, cut_at, end)
    attempts = _per_bucket(clients.pop("retries_at"), cut_at, end)
    since_cut, latencies = clients["since_cut"], clients["latencies"]
    # Clients not back count as later than any that are (None in the JSON).
    padded: list[float] = since_cut + [math.inf] * (n - len(since_cut))
    handshakes = sum(1 for at in accepted_at if at >= cut_at)
    result: dict[str, Any] = {
        "case": case,
        "jitter": spec["jitter"],
        "cut": "server drain and restart" if drain else f"proxy down {settings.outage} s",
        "clients": n,
        "messages_published": sum(counts.values()),
        "peak_accepts_per_100ms": max(accepts),
        "peak_attempts_per_100ms": max(attempts),
        "peak_accepts_per_s": max(
            sum(accepts[i : i + 10]) for i in range(max(1, len(accepts) - 9))
        ),
        "all_back_s": all_back,
        "resume_p50_s": _finite(_percentile(padded, 0.5)),
        "resume_p99_s": _finite(_percentile(padded, 0.99)),
        "resume_max_s": _finite(padded[-1]),
        "server_handshakes": handshakes,
        "wasted_handshakes": max(0, handshakes - clients["reconnects"]),
        "lost_to_resumed_p50_s": _percentile(latencies, 0.5),
        "lost_to_resumed_p99_s": _percentile(latencies, 0.99),
        "server_stalls": stalls,
        "listen_overflows": None if drops is None or after_drops is None else after_drops - drops,
        "accepts_per_100ms": accepts,
        "attempts_per_100ms": attempts,
        **{key: value for key, value in clients.items() if key != "clients"},
    }
    if window is not None:
        result["retry_window"] = [window.earliest, window.latest]
        result["restart_s"] = restart
        result["old_server_drained_s"] = drained[0] - cut_at if drained else None
        result["promised_per_100ms"] = n / (window.latest - window.earliest) * BUCKET
    return result


def run(quick: bool, clients: int | None = None) -> dict[str, Any]:
    _raise_nofile()
    settings = QUICK if quick else FULL
    if clients is not None:
        settings = attrs.evolve(settings, clients=clients)
    load_before = os.getloadavg()
    cases: list[dict[str, Any]] = []
    for number, case in enumerate([*JITTERS, "drain"]):
        load = os.getloadavg()  # other programs share the cores: say how busy they were
        result = trio.run(run_case, settings, case, 1000 + number)
        result["load_average_at_start"] = load
        cases.append(result)
        bound = settings.storm_bound
        _progress(
            f"{case}: peak {result['peak_accepts_per_100ms']}/100 ms, all back "
            f"{_secs(result['all_back_s'], bound)} s, resume p50 "
            f"{_secs(result['resume_p50_s'], bound)} s p99 {_secs(result['resume_p99_s'], bound)} "
            f"s; lost {result['lost']}, dup {result['duplicated']}, resets {result['resets']}"
        )
    full = next(c for c in cases if c["case"] == "full")
    for row in cases:
        row["peak_ratio_vs_full"] = row["peak_accepts_per_100ms"] / full["peak_accepts_per_100ms"]
        if row["all_back_s"] is not None and full["all_back_s"] is not None:
            row["all_back_ratio_vs_full"] = row["all_back_s"] / full["all_back_s"]
    return {
        "benchmark": "reconnect_storm",
        "command": "python -m benchmarks.reconnect_storm"
        + (" --quick" if quick else "")
        + (f" --clients {clients}" if clients is not None else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": attrs.asdict(settings),
        "note": (
            "the server, the proxy and the publisher in one process, the clients in another, "
            "on the same cores; accepts = WebSocket handshakes the server completed per 100 ms "
            "from the cut; attempts = connect tries the clients scheduled per 100 ms (refused "
            "ones included); resume_* = from the cut to each client's first resumed session "
            "(None: not back within storm_bound); lost_to_resumed_* = the client's own view, from "
            "its lost connection; all_back_s = cut to the N-th handshake at the server; "
            "wasted_handshakes = handshakes the server completed for clients that had given up "
            "on them; lost/duplicated/out_of_order count messages against each room's history "
            "(clients with a reset, or still reconnecting at the end, apart); listen_overflows "
            "= SYNs dropped by full accept queues in this network namespace (other programs too)"
        ),
        "cases": cases,
    }


def _secs(value: float | None, bound: float) -> str:
    return f">{bound:.0f}" if value is None else f"{value:.2f}"


def _table(report: dict[str, Any]) -> str:
    bound = report["settings"]["storm_bound"]
    head = (
        f"{'case':<13}{'peak/100ms':>11}{'tries/100ms':>12}{'all back s':>11}"
        f"{'p50 s':>7}{'p99 s':>7}{'max s':>7}{'failed':>8}{'wasted':>7}"
        f"{'lost':>6}{'dup':>5}{'resets':>8}"
    )
    lines = [head]
    for row in report["cases"]:
        lines.append(
            f"{row['case']:<13}{row['peak_accepts_per_100ms']:>11}"
            f"{row['peak_attempts_per_100ms']:>12}{_secs(row['all_back_s'], bound):>11}"
            f"{_secs(row['resume_p50_s'], bound):>7}{_secs(row['resume_p99_s'], bound):>7}"
            f"{_secs(row['resume_max_s'], bound):>7}{row['failed_attempts']:>8}"
            f"{row['wasted_handshakes']:>7}{row['lost']:>6}{row['duplicated']:>5}"
            f"{row['resets']:>8}"
        )
    drain = next(r for r in report["cases"] if r["case"] == "drain")
    earliest, latest = drain["retry_window"]
    lines.append(
        f"drain: window {earliest:g}..{latest:g} s promises {drain['promised_per_100ms']:.1f} "
        f"per 100 ms; measured peak {drain['peak_accepts_per_100ms']} "
        f"({drain['peak_accepts_per_100ms'] / drain['promised_per_100ms']:.2f}x)"
    )
    return "\n".join(lines)


def _dumps(report: dict[str, Any]) -> str:
    """Indented JSON, with each list of numbers on one line."""

    def one_line(match: re.Match[str]) -> str:
        return "[" + ", ".join(item.strip() for item in match[1].split(",")) + "]"

    text = json.dumps(report, indent=1)
    return re.sub(r"\[\s*([-\d.eE+,\s]+?)\s*\]", one_line, text) + "\n"


def write_rst(report: dict[str, Any], path: Path) -> None:
    """The table as reStructuredText; the docs include it."""
    bound = report["settings"]["storm_bound"]
    n = report["settings"]["clients"]
    lines = [
        f".. list-table:: {n} clients cut at once (``{report['command']}``)",
        "   :header-rows: 1",
        "",
        "   * - case",
        "     - peak handshakes / 100 ms",
        "     - peak tries / 100 ms",
        "     - all back (s)",
        "     - resumed p50 / p99 / max (s)",
        "     - failed tries",
        "     - wasted handshakes",
        "     - SYNs dropped",
        "     - lost / dup / reset",
    ]
    for row in report["cases"]:
        times = " / ".join(
            _secs(row[key], bound) for key in ("resume_p50_s", "resume_p99_s", "resume_max_s")
        )
        drops = row["listen_overflows"]
        lines += [
            f"   * - {row['case']}",
            f"     - {row['peak_accepts_per_100ms']}",
            f"     - {row['peak_attempts_per_100ms']}",
            f"     - {_secs(row['all_back_s'], bound)}",
            f"     - {times}",
            f"     - {row['failed_attempts']}",
            f"     - {row['wasted_handshakes']}",
            f"     - {'?' if drops is None else drops}",
            f"     - {row['lost']} / {row['duplicated']} / {row['resets']}",
        ]
    path.write_text("\n".join(lines) + "\n")


def _plot(report: dict[str, Any], path: Path) -> None:
    """Per case, handshakes and tries per 100 ms; and the share of clients back over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    cases = report["cases"]
    n = settings["clients"]
    fig = plt.figure(figsize=(13, 2.0 * len(cases) + 0.6))
    grid = fig.add_gridspec(len(cases), 2, width_ratios=(1.6, 1))
    last = max(len(row["accepts_per_100ms"]) for row in cases) * BUCKET
    shared = None
    for i, row in enumerate(cases):
        axis = fig.add_subplot(grid[i, 0], sharex=shared)
        shared = shared or axis
        accepts, attempts = row["accepts_per_100ms"], row["attempts_per_100ms"]
        axis.plot(
            [k * BUCKET for k in range(len(attempts))],
            attempts,
            drawstyle="steps-post",
            color="tab:orange",
            linewidth=0.8,
            label="tries the clients scheduled",
        )
        axis.plot(
            [k * BUCKET for k in range(len(accepts))],
            accepts,
            drawstyle="steps-post",
            color="tab:blue",
            linewidth=0.9,
            label="handshakes the server accepted",
        )
        if row["case"] == "drain":
            earliest, latest = row["retry_window"]
            axis.axhline(row["promised_per_100ms"], color="black", linestyle=":", linewidth=1)
            title = f"drain: window {earliest:g}..{latest:g} s, {row['promised_per_100ms']:.0f}"
            title += " per 100 ms promised (dotted)"
        else:
            axis.axvspan(0, settings["outage"], color="grey", alpha=0.15)
            title = f"jitter {row['case']} (proxy down in grey)"
        back = row["resumed_clients"]
        title += f"; {back} of {n} back" + (
            "" if row["all_back_s"] is None else f" in {row['all_back_s']:.1f} s"
        )
        axis.set_title(title, fontsize=9, loc="left")
        axis.set_ylabel("per 100 ms", fontsize=8)
        axis.set_yscale("symlog", linthresh=10)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        axis.set_xlim(0, last)
        if i == 0:
            axis.legend(fontsize=7, loc="upper right")
        if i == len(cases) - 1:
            axis.set_xlabel("seconds since the cut")
    right = fig.add_subplot(grid[:, 1])
    for row in cases:
        times = sorted(row["since_cut"])
        style = "--" if row["case"] == "drain" else "-"
        label = "drain (retry window)" if row["case"] == "drain" else f"jitter {row['case']}"
        right.plot(
            [0.0, *times, last],
            [0.0, *[(k + 1) / n for k in range(len(times))], len(times) / n],
            style,
            drawstyle="steps-post",
            label=label,
        )
    right.set_xscale("symlog", linthresh=10)
    right.set_xlim(0, last)
    right.set_ylim(0, 1.02)
    right.set_xlabel("seconds since the cut")
    right.set_ylabel("share of clients resumed")
    right.set_title(f"{n} clients cut at once: who is back when", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reconnect_storm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--clients", type=int, default=None, help="N (default 2000; 100 quick)")
    parser.add_argument("--run-clients", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_clients:  # the child: the spec comes in the environment
        return _clients_main(os.environ["STORM_SPEC"])
    trioheart.log.configure_logging(json=True, level=logging.ERROR, stream=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.clients is not None and args.clients < 1:
        parser.error(f"--clients must be at least 1; got {args.clients}")
    report = run(args.quick, args.clients)
    (args.out / "reconnect_storm.json").write_text(_dumps(report))
    _plot(report, args.out / "reconnect_storm.png")
    write_rst(report, args.out / "reconnect_storm.rst")
    print(_table(report))
    print(f"wrote {args.out / 'reconnect_storm.json'}, .png and .rst")
    print(f"re-create with: {report['command']} --out {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
