"""Fan-out over one, two and three nodes, embedded and on Redis, and resume after a node dies.

``python -m benchmarks.fanout [--quick] [--out DIR]``

For each configuration (the embedded broker on one node; the Redis broker
on one, two and three nodes) and each number of clients N, it starts the
nodes as processes (``benchmarks.cluster``), spreads N resuming clients
over them in one room, has one client publish M messages as fast as it can,
and times until every client has delivered all M. The rate is N x M
deliveries over that time. Every client must hold the same M messages in
the same order (loss and duplicates are counted, and must be 0).

Then, on three Redis nodes with the most clients, it kills one node with
SIGKILL and measures, for each of its clients, the time from the lost
connection to the ``resumed`` on another node, while messages keep
flowing: p50, p99, and again loss and duplicates. Each client first waits
a delay drawn as trioheart's default backoff draws it (full jitter, base
0.5 s), so the figures include that wait; without it the moved clients
come back in one burst and queue behind each other.

The clients run in this one Python process and the nodes and Redis in
theirs, all on the same two cores; on this machine the single client
process is the bottleneck (it parses every frame of every client), so
the absolute numbers are the load generator's and the machine's, and the
ratios against the embedded broker, measured in the same run, are the
result. So that the server side's cost can be read apart from the load
generator's, it also records the CPU time the nodes (together), Redis and
the clients' process spent while publishing (from ``/proc``, all threads):
node CPU per delivery, Redis CPU per message, client CPU per delivery.
Writes DIR/fanout.json and DIR/fanout.png; prints a table and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from benchmarks.cluster import ChatClient, NodeProcess, start_nodes

KEY = b"fanout-benchmark-key-32-bytes-!!"
CONFIGS = [("embedded", 1), ("redis", 1), ("redis", 2), ("redis", 3)]


def _progress(message: str) -> None:
    print(f"[fanout] {message}", file=sys.stderr, flush=True)


def start_redis(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (bash scripts/dev system installs it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            *(binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""),
            *("--appendonly", "no", "--dir", str(base), "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise SystemExit("redis-server did not start")


def _flush(url: str) -> None:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        sock.recv(16)


async def _connect_all(clients: list[ChatClient], urls: list[str], nursery: trio.Nursery) -> None:
    for i, client in enumerate(clients):
        nursery.start_soon(lambda c=client, i=i: c.run(urls, start=i % len(urls), retry=0.1))
        if i % 50 == 49:
            await trio.sleep(0.01)  # a gentle ramp: the benchmark is fan-out, not accept
    with trio.fail_after(60):
        for client in clients:
            await client.live.wait()


def _check(clients: list[ChatClient], expected: int) -> tuple[int, int]:
    """(lost, duplicated) over all clients, against the first client's history."""
    reference = [text for _, _, text in clients[0].delivered]
    lost = duplicated = 0
    for client in clients:
        texts = [text for _, _, text in client.delivered]
        lost += max(0, expected - len(set(texts)))
        duplicated += len(texts) - len(set(texts)) + client.statistics().duplicates
        if texts != reference:
            lost += sum(1 for a, b in zip(texts, reference, strict=False) if a != b)
    return lost, duplicated


_TICKS: float = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used so far, all its threads, from /proc; None if unknown.

    ``/proc/PID/task/*/schedstat`` counts nanoseconds on the CPU; without
    it, ``/proc/PID/stat``'s utime + stime count clock ticks (10 ms).
    """
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        if total > 0:
            return total / 1e9
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError, IndexError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def _cpu(pids: Sequence[int]) -> float | None:
    values = [cpu_seconds(pid) for pid in pids]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


async def measure_fanout(
    urls: list[str],
    clients_n: int,
    messages: int,
    node_pids: Sequence[int] = (),
    redis_pid: int | None = None,
) -> dict[str, Any]:
    """Deliveries per second, and the CPU each side spent on them.

    The CPU of the nodes, of Redis and of this (the clients') process is
    read around the publishing phase only (every client already live), so
    it is the cost of fan-out, not of accepting connections.
    """
    clients = [ChatClient(name=f"c{i}") for i in range(clients_n)]
    async with trio.open_nursery() as nursery:
        await _connect_all(clients, urls, nursery)
        publisher = clients[0]
        nodes_before = _cpu(node_pids)
        redis_before = _cpu([redis_pid]) if redis_pid is not None else None
        clients_before = time.process_time()
        started = trio.current_time()
        await publisher.publish([f"m{i}" for i in range(messages)])
        with trio.fail_after(120):
            for client in clients:
                await client.wait_delivered(messages)
        elapsed = trio.current_time() - started
        clients_cpu = time.process_time() - clients_before
        nodes_after = _cpu(node_pids)
        redis_after = _cpu([redis_pid]) if redis_pid is not None else None
        nursery.cancel_scope.cancel()
    lost, duplicated = _check(clients, messages)
    nodes_cpu = (
        nodes_after - nodes_before
        if nodes_before is not None and nodes_after is not None and node_pids
        else None
    )
    redis_cpu = (
        redis_after - redis_before if redis_before is not None and redis_after is not None else None
    )
    return {
        "clients": clients_n,
        "messages": messages,
        "deliveries": clients_n * messages,
        "seconds": elapsed,
        "rate": clients_n * messages / elapsed,
        "lost": lost,
        "duplicated": duplicated,
        "nodes_cpu_s": nodes_cpu,
        "redis_cpu_s": redis_cpu,
        "clients_cpu_s": clients_cpu,
    }


async def measure_resume(
    nodes: list[NodeProcess], clients_n: int, messages: int, rng: random.Random
) -> dict[str, Any]:
    urls = [f"ws://127.0.0.1:{node.port}" for node in nodes]
    clients = [ChatClient(name=f"r{i}") for i in range(clients_n)]
    async with trio.open_nursery() as nursery:
        for i, client in enumerate(clients):
            delay = rng.uniform(0.0, 0.5)  # trioheart's default backoff: full jitter, base 0.5 s
            nursery.start_soon(lambda c=client, i=i, d=delay: c.run(urls, start=i % 3, retry=d))
            if i % 50 == 49:
                await trio.sleep(0.01)
        with trio.fail_after(60):
            for client in clients:
                await client.live.wait()
        talker = clients[1]  # on node 1, which survives
        await talker.publish([f"m{i}" for i in range(messages // 2)])
        nodes[0].kill()
        for i in range(messages // 2, messages):
            await talker.publish([f"m{i}"])
            await trio.sleep(0.005)  # keep messages flowing while the moved clients resume
        moved = clients[0::3]
        with trio.fail_after(120):
            for client in clients:
                await client.wait_delivered(messages)
            for client in moved:
                await client.wait_until(lambda c: bool(c.resume_latencies))
        nursery.cancel_scope.cancel()
    latencies = sorted(latency for c in moved for latency in c.resume_latencies)
    lost, duplicated = _check(clients, messages)
    return {
        "clients": clients_n,
        "moved": len(moved),
        "latencies": latencies,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
        "resyncs": sum(len(c.resyncs) for c in clients),
        "lost": lost,
        "duplicated": duplicated,
    }


def _median_per(rows: list[dict[str, Any]], field: str, count: int) -> float | None:
    """The median of *field* over *rows*, in microseconds per one of *count*."""
    values = [r[field] for r in rows if r.get(field) is not None]
    return statistics.median(values) / count * 1e6 if values else None


def run(quick: bool, out: Path) -> dict[str, Any]:
    sizes = [20] if quick else [200, 2000]
    deliveries = 400 if quick else 20_000
    repeats = 1 if quick else 3
    resume_clients = 30 if quick else 2000
    configs = CONFIGS[:3] if quick else CONFIGS
    rng = random.Random(8)
    wall_started = time.monotonic()
    results: list[dict[str, Any]] = []
    resume: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis, url = start_redis(Path(tmp))
        try:
            for clients_n in sizes:
                messages = max(10, deliveries // clients_n)
                for broker, count in configs:
                    rates = []
                    for repeat in range(repeats):
                        _flush(url)
                        nodes = start_nodes(
                            count, redis=url if broker == "redis" else None, key=KEY
                        )
                        try:
                            urls = [f"ws://127.0.0.1:{n.port}" for n in nodes]
                            result = trio.run(
                                measure_fanout,
                                urls,
                                clients_n,
                                messages,
                                [n.pid for n in nodes],
                                redis.pid if broker == "redis" else None,
                            )
                        finally:
                            for node in nodes:
                                node.stop()
                        rates.append(result)
                        _progress(
                            f"{broker} x{count} N={clients_n} M={messages} #{repeat + 1}: "
                            f"{result['rate']:,.0f} deliveries/s "
                            f"(lost {result['lost']}, dup {result['duplicated']})"
                        )
                    median = statistics.median(r["rate"] for r in rates)
                    deliveries_n = clients_n * messages
                    results.append(
                        {
                            "broker": broker,
                            "nodes": count,
                            "clients": clients_n,
                            "messages": messages,
                            "rate_median": median,
                            "rates": [r["rate"] for r in rates],
                            "lost": sum(r["lost"] for r in rates),
                            "duplicated": sum(r["duplicated"] for r in rates),
                            # Server-side cost, independent of the load generator:
                            # CPU of all nodes per delivery, of Redis per message.
                            "nodes_cpu_us_per_delivery": _median_per(
                                rates, "nodes_cpu_s", deliveries_n
                            ),
                            "redis_cpu_us_per_message": _median_per(rates, "redis_cpu_s", messages),
                            "clients_cpu_us_per_delivery": _median_per(
                                rates, "clients_cpu_s", deliveries_n
                            ),
                        }
                    )
            for row in results:
                base = next(
                    r["rate_median"]
                    for r in results
                    if r["broker"] == "embedded" and r["clients"] == row["clients"]
                )
                row["ratio_vs_embedded"] = row["rate_median"] / base
            _flush(url)
            nodes = start_nodes(3, redis=url, key=KEY)
            try:
                _progress(f"resume after a node kill: 3 nodes, {resume_clients} clients")
                resume = trio.run(measure_resume, nodes, resume_clients, 40, rng)
            finally:
                for node in nodes:
                    node.kill()
            _progress(
                f"resume: {resume['moved']} clients moved, p50 {resume['p50'] * 1000:.0f} ms, "
                f"p99 {resume['p99'] * 1000:.0f} ms (lost {resume['lost']}, "
                f"dup {resume['duplicated']})"
            )
        finally:
            redis.send_signal(signal.SIGTERM)
            redis.wait(timeout=10)
    return {
        "benchmark": "fanout",
        "command": "python -m benchmarks.fanout" + (" --quick" if quick else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "note": (
            "rate = clients x messages / seconds until every client delivered every message; "
            "nodes, Redis and the clients (one Python process, the bottleneck here) share "
            "the same cores; ratio_vs_embedded compares with the embedded broker on one "
            "node, same run, same N; resume latencies include a full-jitter wait of "
            "U(0, 0.5) s before reconnecting; *_cpu_us_* are CPU microseconds (from "
            "/proc, all threads) spent while publishing, every client already live: all "
            "nodes together per delivery, Redis per message, the clients' process per delivery"
        ),
        "fanout": results,
        "resume_after_node_kill": resume,
        "wall_seconds": time.monotonic() - wall_started,
    }


def _table(report: dict[str, Any]) -> str:
    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"{'broker':<9}{'nodes':>6}{'clients':>9}{'msgs':>7}{'deliveries/s':>15}{'ratio':>8}"
        f"{'node us/dlv':>13}{'redis us/msg':>14}{'client us/dlv':>15}"
    ]
    for row in report["fanout"]:
        lines.append(
            f"{row['broker']:<9}{row['nodes']:>6}{row['clients']:>9}{row['messages']:>7}"
            f"{row['rate_median']:>15,.0f}{row['ratio_vs_embedded']:>8.2f}"
            f"{us(row.get('nodes_cpu_us_per_delivery')):>13}"
            f"{us(row.get('redis_cpu_us_per_message')):>14}"
            f"{us(row.get('clients_cpu_us_per_delivery')):>15}"
        )
    resume = report["resume_after_node_kill"]
    lines.append(
        f"resume after SIGKILL of 1 of 3 nodes: {resume['moved']} clients, "
        f"p50 {resume['p50'] * 1000:.0f} ms, p99 {resume['p99'] * 1000:.0f} ms, "
        f"max {resume['max'] * 1000:.0f} ms, lost {resume['lost']}, dup {resume['duplicated']}"
    )
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.2))
    for broker, count in CONFIGS:
        rows = [r for r in report["fanout"] if (r["broker"], r["nodes"]) == (broker, count)]
        if rows:
            label = f"{broker}, {count} node{'s' if count > 1 else ''}"
            left.plot(
                [r["clients"] for r in rows],
                [r["rate_median"] for r in rows],
                marker="o",
                label=label,
            )
            costs = [
                (r["clients"], r["nodes_cpu_us_per_delivery"])
                for r in rows
                if r.get("nodes_cpu_us_per_delivery") is not None
            ]
            if costs:
                middle.plot([c[0] for c in costs], [c[1] for c in costs], marker="o", label=label)
    middle.set_xscale("log")
    middle.set_xlabel("clients in the room")
    middle.set_ylabel("CPU µs per delivery, all nodes together")
    middle.set_title("Server-side cost of fan-out")
    middle.legend()
    middle.grid(alpha=0.3)
    left.set_xlabel("clients in the room")
    left.set_ylabel("deliveries per second (median)")
    left.set_title("Fan-out, one room")
    left.legend()
    left.grid(alpha=0.3)
    latencies = [x * 1000 for x in report["resume_after_node_kill"]["latencies"]]
    right.hist(latencies, bins=30)
    right.set_xlabel("lost connection -> resumed on another node (ms)")
    right.set_ylabel("clients")
    right.set_title("Resume after SIGKILL of 1 of 3 nodes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args.quick, args.out)
    (args.out / "fanout.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out / "fanout.png")
    print(_table(report))
    print(f"wrote {args.out / 'fanout.json'} and {args.out / 'fanout.png'}")
    print(f"re-create with: {report['command']} --out {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
