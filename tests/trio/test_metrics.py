"""Scrape /metrics while connections live and die; every counter moves by exactly what happened."""

from __future__ import annotations

import functools

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


async def scrape(port: int) -> dict[str, float]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
    await stream.aclose()
    assert response.startswith(b"HTTP/1.1 200")
    text = response.split(b"\r\n\r\n", 1)[1].decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
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

    after = await scrape(server.port)

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert after["trioheart_connections_open"] == 3
    assert moved("trioheart_pings_sent_total") == 3 * 2 + 1  # healthy: t=10, 20; silent: t=10
    assert moved("trioheart_pongs_received_total") == 3 * 2
    assert moved("trioheart_rtt_seconds_count") == 3 * 2
    assert moved("trioheart_pong_window_seconds_count") == 3 * 2 + 1
    assert moved("trioheart_heartbeat_misses_total") == 1
    closed = {
        reason.value: moved(f'trioheart_connections_closed_total{{reason="{reason.value}"}}')
        for reason in trioheart.CloseReason
    }
    assert {k: v for k, v in closed.items() if v} == {
        "pong_timeout": 1,
        "peer_closed": 1,
        "message_too_big": 1,
        "handshake_timeout": 1,
    }
    # Lifetimes are observed for connections that opened, not failed handshakes.
    assert moved("trioheart_connection_lifetime_seconds_count") == 3
    # Every accepted socket is tuned before anything is read: 7 clients, and
    # the two scrapes after the first one.
    assert moved('trioheart_sockets_tuned_total{keepalive="on"}') == 7 + 2
    assert after["trioheart_connection_health_gcount"] == 3
    assert after['trioheart_heartbeat_interval_seconds_bucket{le="10.0"}'] == 3
