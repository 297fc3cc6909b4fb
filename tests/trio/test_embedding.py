"""The embedding API: serve on listeners the caller made; a connection tells its liveness."""

from __future__ import annotations

import functools
import socket

import pytest
import trio
from trio.testing import MockClock

import trioheart
from trioheart import CloseReason, ConnectionConfig, DetectorConfig, KeepaliveConfig

from ..conftest import LiveTasks
from .wsclient import connect

CONFIG = ConnectionConfig(
    heartbeat=DetectorConfig(ping_interval=5, ping_timeout=4),
    keepalive=KeepaliveConfig(idle=9, interval=3, count=2),
)


async def test_serve_listeners_the_caller_made_and_liveness_of_a_connection(
    clock: MockClock, nursery: trio.Nursery, live_tasks: LiveTasks
) -> None:
    # The caller makes (and may tune) the listeners, then hands them over.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    port = listeners[0].socket.getsockname()[1]
    seen: list[trioheart.Connection] = []
    closed_waiters: list[CloseReason] = []

    async def handler(conn: trioheart.Connection) -> None:
        seen.append(conn)

        async def wait_for_pongs() -> None:  # a task in the connection's nursery
            while True:
                try:
                    await conn.wait_pong()
                except trioheart.ConnectionClosed as closed:
                    closed_waiters.append(closed.reason)
                    raise

        conn.nursery.start_soon(wait_for_pongs)
        async for message in conn:
            await conn.send(message)

    server: trioheart.Server = await nursery.start(
        functools.partial(trioheart.serve_listeners, handler, listeners, config=CONFIG)
    )
    assert server.port == port
    async with connect(port) as client:
        await client.send("hi")
        with trio.fail_after(10):
            assert await client.receive() == "hi"
        with trio.move_on_after(21):  # pings at t=5, 10, 15, 20, each answered
            while await client.pump():
                pass
        [conn] = seen
        stats = conn.liveness()
        assert stats.pings_sent == stats.pongs_received == 4
        assert stats.last_rtt is not None
        assert stats.rtt_p50 is not None
        assert 0 < stats.window <= 4
        assert stats.interval == 5
        assert conn.keepalive is not None
        assert (conn.keepalive.idle, conn.keepalive.interval, conn.keepalive.count) == (9, 3, 2)
        assert conn.close_reason is None
        assert conn.close_code is None
        await client.close_cleanly(1000)
        with trio.fail_after(10):
            await client.run_until_closed()
    with trio.fail_after(10):
        assert await conn.wait_closed() is CloseReason.PEER_CLOSED
    assert conn.close_code == 1000
    # A task left waiting for a pong is woken by the close, not left behind.
    await trio.testing.wait_all_tasks_blocked()
    assert closed_waiters == [CloseReason.PEER_CLOSED]
    with pytest.raises(trioheart.ConnectionClosed):
        await conn.wait_pong()
    assert not [name for name in live_tasks.names() if conn.conn_id in name]
    with pytest.raises(RuntimeError, match="not running"):
        _ = conn.nursery
