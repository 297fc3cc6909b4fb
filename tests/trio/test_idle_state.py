"""An idle connection keeps no inbox and no closed-event; both appear when needed.

The benchmark ``benchmarks/heartbeat_cost`` counts bytes per idle
connection; these objects are made lazily to save them (docs/explanation/cost.rst).
These tests pin the behaviour that must not change with it: messages queued
in bursts keep their order, and waiting for a connection that has already
closed returns at once.
"""

from __future__ import annotations

import trio
from trio.testing import MockClock

import trioheart

from .conftest import StartServer
from .wsclient import connect


async def test_inbox_exists_only_while_messages_wait_and_keeps_their_order(
    clock: MockClock, start_server: StartServer
) -> None:
    idle_at_open: list[bool] = []
    seen: list[tuple[str | bytes, bool]] = []

    async def handler(conn: trioheart.Connection) -> None:
        idle_at_open.append(conn._inbox is None)
        await trio.sleep(5)  # the burst below is read and queued meanwhile
        for _ in range(3):
            message = await conn.receive()
            seen.append((message, conn._inbox is None))
        await conn.send("drained")
        message = await conn.receive()  # queued again after the inbox was dropped
        seen.append((message, conn._inbox is None))
        await conn.send("done")
        await trio.sleep_forever()

    server = await start_server(handler)
    async with connect(server.port) as client:
        with trio.fail_after(30):
            await client.send("a")
            await client.send(b"b")
            await client.send("c")
            assert await client.receive() == "drained"
            await client.send("d")
            assert await client.receive() == "done"
    assert idle_at_open == [True]
    assert seen == [("a", False), (b"b", False), ("c", True), ("d", True)]


async def test_waiting_for_a_connection_that_already_closed_returns_its_reason(
    clock: MockClock, start_server: StartServer
) -> None:
    conns: list[trioheart.Connection] = []

    async def handler(conn: trioheart.Connection) -> None:
        conns.append(conn)

    server = await start_server(handler)
    async with connect(server.port) as client:
        await client.run_until_closed()
    with trio.fail_after(30):
        await server.wait_until(lambda s: s.connections_open == 0 and bool(s.closed))
        conn = conns[0]
        assert conn.closed_at is not None
        assert conn._closed_event is None  # nobody waited: no event was made
        before = trio.current_time()
        assert await conn.wait_closed() is trioheart.CloseReason.APP_CLOSED
        await conn.aclose()  # closed already: returns at once
        assert trio.current_time() == before
