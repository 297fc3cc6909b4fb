"""One bad connection never hurts the others: their heartbeats keep their rhythm."""

from __future__ import annotations

import itertools
import os

import trio
from trio.testing import MockClock

from trioheart import ConnectionConfig, DetectorConfig

from .conftest import StartServer, echo
from .wsclient import connect

INTERVAL = 1.0
CONFIG = ConnectionConfig(
    heartbeat=DetectorConfig(ping_interval=INTERVAL, ping_timeout=2),
    handshake_timeout=3,
    max_message_size=4096,
    max_queued_bytes=8192,
)


async def _bad_client(port: int, kind: int) -> None:
    if kind == 0:  # a handshake that never ends
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        while await stream.receive_some(100):
            pass
        await stream.aclose()
    elif kind == 1:  # garbage instead of a handshake
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(os.urandom(3000) + b"\r\n\r\n")
        while await stream.receive_some(4096):
            pass
        await stream.aclose()
    else:
        async with connect(port) as client:
            if kind == 2:  # garbage frames
                await client.send_raw(os.urandom(64))
            elif kind == 3:  # oversized message
                await client.send("x" * 5000)
            else:  # invalid UTF-8
                await client.send_raw(b"\x81\x83" + b"\x00\x00\x00\x00" + b"\xc3\x28\xff")
            await client.run_until_closed()


async def test_bad_connections_do_not_disturb_a_healthy_heartbeat(
    clock: MockClock, start_server: StartServer
) -> None:
    server = await start_server(echo, config=CONFIG)
    ping_times: list[float] = []
    async with connect(server.port) as healthy:

        async def watch() -> None:
            while await healthy.pump():
                if healthy.pings > len(ping_times):
                    ping_times.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as bad:
                for i in range(300):
                    bad.start_soon(_bad_client, server.port, i % 5)
                    if i % 30 == 29:
                        await trio.sleep(0.5)
            await server.wait_until(lambda s: sum(s.closed.values()) >= 300)
            await trio.sleep(3 * INTERVAL)
            nursery.cancel_scope.cancel()

    gaps = [b - a for a, b in itertools.pairwise(ping_times)]
    assert len(gaps) >= 5
    # Every ping left on its beat while 300 bad connections came and went.
    assert all(abs(gap - INTERVAL) < 0.05 for gap in gaps), gaps
    closed = server.statistics().closed
    assert sum(closed.values()) >= 300
    assert set(closed) <= {
        "handshake_timeout",
        "handshake_failed",
        "protocol_error",
        "message_too_big",
        "invalid_data",
        "connection_reset",
        # random bytes can announce a frame longer than what follows: the
        # client's pongs then vanish into its payload, and it is convicted
        "pong_timeout",
    }, closed
