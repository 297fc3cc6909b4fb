"""Three server processes on one Redis: one order, and resume on any node.

Clients spread over three nodes chat in one room; every client sees the
same order; one node is killed with SIGKILL (by PID); its clients reconnect
to the others and resume with no loss and no duplicate. Real processes,
real time: every wait is bounded.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
import trio

from benchmarks.cluster import ChatClient, NodeProcess, broker_up, start_nodes
from tests.redis_server import RedisControl, RedisServer

WAIT = 20.0


async def http_get(port: int, path: str) -> bytes:
    """The body of GET *path* on a node (bounded)."""
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = b""
            while chunk := await stream.receive_some(65536):
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


@pytest.fixture
def three_nodes(redis_server: RedisServer) -> Iterator[list[NodeProcess]]:
    nodes = start_nodes(3, redis=redis_server.url, key=secrets.token_bytes(32))
    try:
        yield nodes
    finally:
        for node in nodes:
            node.kill()


async def chat_round(clients: list[ChatClient], tag: str, per_client: int) -> None:
    for i in range(per_client):
        for client in clients:
            assert await client.send(f"{tag}-{client.name}-{i}")


async def test_three_nodes_one_order_and_no_loss_when_a_node_dies(
    three_nodes: list[NodeProcess],
) -> None:
    urls = [f"ws://127.0.0.1:{node.port}" for node in three_nodes]
    clients = [ChatClient(name=f"c{i}") for i in range(9)]
    async with trio.open_nursery() as nursery:
        for i, client in enumerate(clients):
            nursery.start_soon(lambda c=client, i=i: c.run(urls, start=i % 3))
        with trio.fail_after(WAIT):
            for client in clients:
                await client.live.wait()
        await chat_round(clients, "before", 3)
        with trio.fail_after(WAIT):
            for client in clients:
                await client.wait_delivered(27)

        three_nodes[0].kill()  # SIGKILL, by PID: its clients lose their TCP connections
        survivors = [c for i, c in enumerate(clients) if i % 3 != 0]
        await chat_round(survivors, "during", 2)  # the room goes on meanwhile
        with trio.fail_after(WAIT):
            for client in clients:
                await client.wait_delivered(27 + 12)
        moved = [c for i, c in enumerate(clients) if i % 3 == 0]
        with trio.fail_after(WAIT):
            for client in moved:  # back on node 1 or 2, resumed
                await client.wait_until(lambda c: c.resumed >= 1)
        await chat_round(clients, "after", 1)
        with trio.fail_after(WAIT):
            for client in clients:
                await client.wait_delivered(27 + 12 + 9)
        nursery.cancel_scope.cancel()

    reference = clients[0].delivered
    assert [seq for _, seq, _ in reference] == list(range(1, 49))
    assert len({text for _, _, text in reference}) == 48
    for client in clients:
        assert client.delivered == reference, f"{client.name} saw another history"
        assert client.resyncs == []
        assert client.statistics().gaps == 0
        assert client.statistics().duplicates == 0
    for client in moved:
        assert client.resumed == 1
        assert client.connections == 2


async def test_redis_restarted_mid_chat_keeps_connections_then_resets(
    redis_control: RedisControl,
) -> None:
    nodes = start_nodes(2, redis=redis_control.url, key=secrets.token_bytes(32))
    try:
        urls = [f"ws://127.0.0.1:{node.port}" for node in nodes]
        clients = [ChatClient(name=f"c{i}") for i in range(4)]
        async with trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                nursery.start_soon(lambda c=client, i=i: c.run(urls, start=i % 2))
            with trio.fail_after(WAIT):
                for client in clients:
                    await client.live.wait()
            await chat_round(clients, "before", 2)
            with trio.fail_after(WAIT):
                for client in clients:
                    await client.wait_delivered(8)

            redis_control.stop()  # SIGKILL: Redis loses everything
            with trio.fail_after(WAIT):  # the nodes notice and say so ...
                for node in nodes:
                    while await broker_up(node.port) is not False:  # noqa: ASYNC110
                        await trio.sleep(0.05)  # another process: polled, and bounded
            # ... on the health page too ...
            for node in nodes:
                snapshot = json.loads(await http_get(node.port, "/health.json"))
                assert snapshot["broker"]["kind"] == "redis"
                assert snapshot["broker"]["up"] is False
                assert snapshot["broker"]["outages"] == 1
                assert snapshot["open"] == 2
            # ... and keep their clients' connections up through the outage.
            assert all(client.connections == 1 for client in clients)
            assert await clients[0].send("during")  # kept in node 0's outbox
            redis_control.start()

            with trio.fail_after(WAIT):
                for client in clients:
                    await client.wait_until(lambda c: bool(c.resyncs) and c.live_now)
            await chat_round(clients, "after", 1)
            with trio.fail_after(WAIT):
                for client in clients:
                    await client.wait_until(
                        lambda c: sum(t.startswith("after") for t in c.texts) >= 4
                    )
            nursery.cancel_scope.cancel()
    finally:
        for node in nodes:
            node.kill()
    for client in clients:
        # Told plainly: one reset (the epoch changed), and what came after it in one order.
        assert client.resyncs == ["epoch_changed"]
        assert client.connections >= 2
        before = [t for _, _, t in client.delivered if t.startswith("before")]
        assert len(before) == 8
        after = [(e, s, t) for e, s, t in client.delivered if t.startswith("after")]
        assert after == [x for x in clients[0].delivered if x[2].startswith("after")]
        assert client.statistics().duplicates == 0
        assert client.statistics().gaps == 0
