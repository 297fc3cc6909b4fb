"""No task outlives its connection, whichever way the connection ends."""

from __future__ import annotations

import collections
import os

import structlog.testing
import trio
import trio.testing
from trio.testing import MockClock

import trioheart
from trioheart import ConnectionConfig, DetectorConfig

from ..conftest import LiveTasks, Measured
from .conftest import StartServer
from .wsclient import connect

PER_WAY = 50
CONFIG = ConnectionConfig(
    heartbeat=DetectorConfig(ping_interval=5, ping_timeout=5),
    handshake_timeout=3,
    close_timeout=1,
    max_message_size=1000,
    max_queued_bytes=1000,
)


async def handler(conn: trioheart.Connection) -> None:
    """Starts a task of its own in the connection's nursery, then echoes or fails."""
    conn.nursery.start_soon(trio.sleep_forever, name="app-task")
    if conn.query.get("raise"):
        raise RuntimeError("handler bug")
    async for message in conn:
        await conn.send(message)


def _garbage() -> bytes:
    return b"\x82\x85" + os.urandom(4) + b"\x00" * 5 + b"\xff" * 8  # a frame, then no opcode


async def _one(port: int, way: str, codes: list[int] | None = None) -> None:
    if way == "handshake_timeout":
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /ws HTTP/1.1\r\n")
        while await stream.receive_some(100):
            pass
        await stream.aclose()
        return
    path = "/ws?raise=1" if way == "internal_error" else "/ws"
    async with connect(port, path, answer_pings=way != "pong_timeout") as client:
        if way == "peer_closed":
            await client.send("x")
            await client.receive()
            await client.close_cleanly()
        elif way == "connection_reset":
            client.reset()
            return
        elif way == "protocol_error":
            await client.send_raw(_garbage())
        elif way == "message_too_big":
            await client.send("y" * 2000)
        close = await client.run_until_closed()
        if codes is not None and close is not None:
            codes.append(close.code)


WAYS = [
    "peer_closed",
    "pong_timeout",
    "connection_reset",
    "internal_error",
    "protocol_error",
    "message_too_big",
    "handshake_timeout",
]


async def test_hundreds_of_connections_ending_every_way_leave_no_task(
    clock: MockClock, live_tasks: LiveTasks, start_server: StartServer, measured: Measured
) -> None:
    server = await start_server(handler, config=CONFIG)
    baseline = set(live_tasks.live)
    spawned_before = live_tasks.spawned

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as clients:
            for way in WAYS:
                for _ in range(PER_WAY):
                    clients.start_soon(_one, server.port, way)
        total = PER_WAY * len(WAYS)
        await server.wait_until(lambda s: sum(s.closed.values()) == total)
        await server.wait_until(lambda s: s.connections_open == 0)
    # Every close path emits exactly one connection.closed, with its reason.
    events = [e for e in logs if e["event"] == "connection.closed"]
    assert len(events) == total
    assert len({e["conn_id"] for e in events}) == total
    assert collections.Counter(e["reason"] for e in events) == {way: PER_WAY for way in WAYS}
    # Let the connections' tasks run to their end (close bookkeeping is their last step).
    await trio.testing.wait_all_tasks_blocked()

    # Each connection spawned at least its handler task, reader and app-task...
    assert live_tasks.spawned - spawned_before >= 3 * PER_WAY * (len(WAYS) - 1)
    # ...and none of them is left.
    assert set(live_tasks.live) == baseline, live_tasks.names()
    closed = server.statistics().closed
    assert closed == {way: PER_WAY for way in WAYS}, closed

    # Server shutdown as the last way: open more, then close the server.
    codes: list[int] = []
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as clients:
            for _ in range(PER_WAY):
                clients.start_soon(_one, server.port, "server_shutdown", codes)
            await server.wait_until(lambda s: s.connections_open == PER_WAY)
            started = trio.current_time()
            await server.aclose()
            drained_in = trio.current_time() - started
    assert server.statistics().closed["server_shutdown"] == PER_WAY
    # Each got a 1001 close frame, within the drain bound, and one event.
    assert codes == [1001] * PER_WAY
    assert drained_in <= server.drain_timeout
    events = [e for e in logs if e["event"] == "connection.closed"]
    assert collections.Counter(e["reason"] for e in events) == {"server_shutdown": PER_WAY}
    assert len({e["conn_id"] for e in events}) == PER_WAY
    await trio.testing.wait_all_tasks_blocked()
    leftover = [t for t in live_tasks.live if t not in baseline]
    assert not leftover, [t.name for t in leftover]
    measured(
        f"{PER_WAY * (len(WAYS) + 1)} connections ending {len(WAYS) + 1} ways "
        f"({', '.join(WAYS)}, server_shutdown): {live_tasks.spawned - spawned_before} "
        f"tasks spawned (server and clients), {len(leftover)} left; shutdown of "
        f"{PER_WAY} drained in {drained_in:.3f} s (virtual; bound {server.drain_timeout} s)"
    )
