"""Scrape /metrics while connections live and die; every counter moves by exactly what happened.

MockClock for the heartbeats; the one event-loop stall is real, a CPU-bound
step that holds the loop (the stall monitor measures real time, so MockClock
cannot fake one, and a jump of the mock clock is rightly not a stall).
"""

from __future__ import annotations

import functools
import time

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

import trioheart
from trioheart import ConnectionConfig, DetectorConfig

from .wsclient import connect

CONFIG = ConnectionConfig(
    heartbeat=DetectorConfig(ping_interval=10, ping_timeout=5),
    handshake_timeout=3,
    max_message_size=100,
    max_queued_bytes=100,
)


STALL_THRESHOLD = 0.25  # high, so that a loaded test machine rarely adds a stall
STALL = 0.35


def hold_the_loop(seconds: float) -> None:
    """Busy for *seconds* without a checkpoint, as a GIL-holding call would be."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Scrape(dict[str, float]):
    """Each sample's value by ``name{labels}``; :attr:`counters` names the counting ones."""

    counters: set[str]


async def scrape(port: int) -> Scrape:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
    await stream.aclose()
    assert response.startswith(b"HTTP/1.1 200")
    text = response.split(b"\r\n\r\n", 1)[1].decode()
    samples = Scrape()
    samples.counters = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            samples[key] = sample.value
            # Counters, and the count of each histogram: what only goes up.
            if family.type in {"counter", "histogram"} and sample.name.endswith(
                ("_total", "_count")
            ):
                samples.counters.add(key)
    return samples


async def echo(conn: trioheart.Connection) -> None:
    async for message in conn:
        await conn.send(message)


async def test_counters_move_by_exactly_what_happened(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    metrics = trioheart.Metrics()
    server: trioheart.Server = await nursery.start(
        functools.partial(
            trioheart.serve,
            echo,
            "127.0.0.1",
            0,
            config=CONFIG,
            metrics=metrics,
            http_handler=metrics.http_handler(),
            stall_threshold=STALL_THRESHOLD,
        )
    )
    before = await scrape(server.port)
    assert before["trioheart_connections_open"] == 0

    async def healthy(task_status: trio.TaskStatus[None]) -> None:
        async with connect(server.port) as client:
            task_status.started()
            while await client.pump():
                pass

    for _ in range(3):
        await nursery.start(healthy)
    async with connect(server.port, answer_pings=False) as silent:
        await server.wait_until(lambda s: s.connections_open == 4)
        assert (await scrape(server.port))["trioheart_connections_open"] == 4
        # t=10: every connection gets a ping; the silent one misses its window (t=15).
        await silent.run_until_closed()
    await trio.sleep(10)  # t ~ 25: the healthy ones got their second ping at t=20
    # One client leaves cleanly, one sends too much, one never finishes its handshake.
    async with connect(server.port) as leaving:
        await leaving.close_cleanly()
        await leaving.run_until_closed()
    async with connect(server.port) as greedy:
        await greedy.send("x" * 101)
        await greedy.run_until_closed()
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET /ws HTTP/1.1\r\n")
    assert await stream.receive_some(10) == b""
    await server.wait_until(lambda s: s.connections_open == 3)
    # The server itself stalls (once on purpose; a loaded machine may add one,
    # which the monitor then saw too).
    await trio.lowlevel.checkpoint()
    hold_the_loop(STALL)
    await trio.lowlevel.checkpoint()

    after = await scrape(server.port)

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert after["trioheart_connections_open"] == 3
    assert server.stalls is not None
    stalls = server.stalls.statistics()
    assert stalls.max >= STALL
    # Every counter of the exposition, by exactly what happened; any other
    # counter that moved (a resume, an unsupported socket option, a stall
    # the monitor did not report...) fails this.
    moved_counters = {
        name: moved(name) for name in before.counters | after.counters if moved(name) != 0
    }
    assert moved_counters == {
        # healthy: pinged at t=10 and 20 and answered; silent: pinged at t=10.
        "trioheart_pings_sent_total": 3 * 2 + 1,
        "trioheart_pongs_received_total": 3 * 2,
        "trioheart_rtt_seconds_count": 3 * 2,
        "trioheart_pong_window_seconds_count": 3 * 2 + 1,
        "trioheart_heartbeat_misses_total": 1,
        'trioheart_connections_closed_total{reason="pong_timeout"}': 1,
        'trioheart_connections_closed_total{reason="peer_closed"}': 1,
        'trioheart_connections_closed_total{reason="message_too_big"}': 1,
        'trioheart_connections_closed_total{reason="handshake_timeout"}': 1,
        # Lifetimes are observed for connections that opened, not failed handshakes.
        "trioheart_connection_lifetime_seconds_count": 3,
        "trioheart_loop_stalls_total": stalls.count,
        "trioheart_loop_stall_seconds_count": stalls.count,
        # Every accepted socket is tuned before anything is read: 7 clients,
        # and the two scrapes after the first one.
        'trioheart_sockets_tuned_total{keepalive="on"}': 7 + 2,
    }
    assert {
        'trioheart_resumes_total{outcome="refused"}',
        "trioheart_messages_replayed_total",
    } <= after.counters
    # The silent one lived 15 s (ping at t=10, window 5 s); the other two ~0.
    assert moved("trioheart_connection_lifetime_seconds_sum") == pytest.approx(15, abs=1)
    assert moved("trioheart_loop_stall_seconds_sum") == stalls.total
    assert STALL <= stalls.max < STALL + 1
    assert after["trioheart_connection_health_gcount"] == 3
    assert after['trioheart_heartbeat_interval_seconds_bucket{le="10.0"}'] == 3
