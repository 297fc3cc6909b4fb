"""The proxy on real loopback sockets, with trio streams and trio-websocket as peers.

Time is a MockClock that jumps only after 10 ms of real idleness
(``loopback_clock``), so every duration below is virtual and exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
from trio.testing import MockClock
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from trioheart import ConfigError
from trioheart.proxy import (
    Blackhole,
    Latency,
    LimitData,
    NatIdle,
    Proxy,
    ProxyError,
    ResetPeer,
    Stall,
    Timeout,
    Toxic,
    WsDelay,
    WsDrop,
    open_proxy,
)

from ..conftest import LiveTasks


async def echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


@asynccontextmanager
async def tcp_server(
    handler: Callable[[trio.SocketStream], Awaitable[None]] = echo,
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def ws_echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except Exception:
        return


@asynccontextmanager
async def ws_server(
    handler: Callable[[WebSocketRequest], Awaitable[None]] = ws_echo,
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        yield server.port
        nursery.cancel_scope.cancel()


def ws_url(proxy: Proxy) -> str:
    host, port = proxy.listen_address
    return f"ws://{host}:{port}/chat"


async def wait_for(predicate: Callable[[], bool], limit: float = 30) -> None:
    """Poll *predicate* (statistics have no event to wait on) for *limit* virtual seconds."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the value
            await trio.sleep(0.25)


def proxy_tasks(live: LiveTasks) -> list[str]:
    return [n for n in live.names() if "proxy-conn" in n or "_pump" in n or "_supervise" in n]


async def test_passthrough_and_no_task_outlives_its_connection(
    loopback_clock: MockClock, live_tasks: LiveTasks
) -> None:
    async with tcp_server() as port, open_proxy(upstream=("127.0.0.1", port)) as proxy:
        for round_ in range(3):
            client = await trio.open_tcp_stream(*proxy.listen_address)
            payload = bytes([round_]) * 200_000
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, payload)
                got = bytearray()
                while len(got) < len(payload):
                    got += await client.receive_some()
            assert got == payload
            assert proxy.statistics().connections_open == 1
            assert proxy_tasks(live_tasks)  # the connection's tasks are there...
            await client.aclose()
            await wait_for(lambda: proxy.statistics().connections_open == 0)
            assert proxy_tasks(live_tasks) == []  # ...and gone with it
        stats = proxy.statistics()
        assert stats.upstream_bytes_sent == stats.downstream_bytes_sent == 600_000
        assert stats.connections_accepted == stats.upstream_connections == 3
    assert live_tasks.live == set(), live_tasks.names()


async def test_latency_added_and_removed_live(loopback_clock: MockClock) -> None:
    async with tcp_server() as port, open_proxy(upstream=("127.0.0.1", port)) as proxy:
        client = await trio.open_tcp_stream(*proxy.listen_address)

        async def rtt() -> float:
            start = trio.current_time()
            await client.send_all(b"x")
            assert await client.receive_some() == b"x"
            return trio.current_time() - start

        assert await rtt() < 0.05
        with proxy.toxic(Latency(latency=0.25), stream="upstream"):
            proxy.add_toxic(Latency(latency=0.5), name="down")
            assert await rtt() == pytest.approx(0.75, abs=0.05)
            proxy.update_toxic("down", attributes=Latency(latency=2.0))
            assert await rtt() == pytest.approx(2.25, abs=0.05)
            proxy.remove_toxic("down")
            assert await rtt() == pytest.approx(0.25, abs=0.05)
        assert await rtt() < 0.05
        await client.aclose()


async def test_stall_buffers_up_to_the_limit_then_pushes_back(loopback_clock: MockClock) -> None:
    received = bytearray()
    arrived = trio.Event()
    chunk = 4096

    async def sink(stream: trio.SocketStream) -> None:
        async for data in stream:
            received.extend(data)
            arrived.set()

    limit = 64 * 1024
    async with (
        tcp_server(sink) as port,
        open_proxy(upstream=("127.0.0.1", port), buffer_limit=limit, read_size=16 * 1024) as proxy,
    ):
        proxy.add_toxic(Stall(duration=30), stream="upstream")
        client = await trio.open_tcp_stream(*proxy.listen_address)
        sent = 0
        with trio.move_on_after(5):  # the sender blocks: backpressure
            while True:
                await client.send_all(b"z" * chunk)
                sent += chunk
        assert received == b""
        assert 0 < proxy.statistics().bytes_buffered <= limit
        assert sent < 64 * 1024 * 1024  # it did not take everything
        await client.aclose()  # a send cut short by the timeout may have sent part of a chunk
        await arrived.wait()
        assert trio.current_time() >= 30
        await wait_for(lambda: len(received) >= sent)
        assert sent <= len(received) < sent + chunk
        assert received == b"z" * len(received)


async def test_reset_peer_resets_the_client(
    loopback_clock: MockClock, live_tasks: LiveTasks
) -> None:
    async with tcp_server() as port, open_proxy(upstream=("127.0.0.1", port)) as proxy:
        client = await trio.open_tcp_stream(*proxy.listen_address)
        await client.send_all(b"hi")
        assert await client.receive_some() == b"hi"
        proxy.add_toxic(ResetPeer(timeout=1.0))
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError, match="reset"):
            await client.receive_some()
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.05)
        await wait_for(lambda: proxy.statistics().connections_open == 0)
        assert proxy_tasks(live_tasks) == []  # an aborted connection leaves no task either


async def test_timeout_drops_data_then_closes(loopback_clock: MockClock) -> None:
    async with tcp_server() as port, open_proxy(upstream=("127.0.0.1", port)) as proxy:
        proxy.add_toxic(Timeout(timeout=3), stream="upstream")
        client = await trio.open_tcp_stream(*proxy.listen_address)
        await client.send_all(b"never echoed")
        assert await client.receive_some() == b""  # EOF, nothing before it
        assert trio.current_time() == pytest.approx(3, abs=0.05)


async def test_limit_data_closes_after_that_many_bytes(loopback_clock: MockClock) -> None:
    async with tcp_server() as port, open_proxy(upstream=("127.0.0.1", port)) as proxy:
        proxy.add_toxic(LimitData(bytes=1000))
        client = await trio.open_tcp_stream(*proxy.listen_address)
        await client.send_all(b"q" * 5000)
        got = bytearray()
        while data := await client.receive_some():
            got += data
        assert got == b"q" * 1000


async def test_down_refuses_and_closes_then_comes_back_on_the_same_port(
    loopback_clock: MockClock, live_tasks: LiveTasks
) -> None:
    async with tcp_server() as port, open_proxy(upstream=("127.0.0.1", port)) as proxy:
        address = proxy.listen_address
        client = await trio.open_tcp_stream(*address)
        await client.send_all(b"a")
        assert await client.receive_some() == b"a"
        assert [name for name in live_tasks.names() if "_accept_loop" in name]
        proxy.set_enabled(False)
        assert await client.receive_some() == b""
        await wait_for(lambda: proxy.statistics().connections_open == 0)
        assert proxy_tasks(live_tasks) == []
        assert not [name for name in live_tasks.names() if "_accept_loop" in name]
        with pytest.raises(OSError, match="connect"):
            await trio.open_tcp_stream(*address)
        proxy.set_enabled(True)
        assert proxy.listen_address == address
        again = await trio.open_tcp_stream(*address)
        await again.send_all(b"b")
        assert await again.receive_some() == b"b"
        await again.aclose()


async def test_an_unreachable_upstream_resets_the_client(loopback_clock: MockClock) -> None:
    async with tcp_server() as port:
        pass  # now nothing listens on port
    async with open_proxy(upstream=("127.0.0.1", port)) as proxy:
        client = await trio.open_tcp_stream(*proxy.listen_address)
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()
        await wait_for(lambda: proxy.statistics().connections_open == 0)
        stats = proxy.statistics()
        assert (stats.connections_accepted, stats.upstream_connections) == (1, 0)


async def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="upstream must be HOST:PORT"):
        Proxy(upstream="nowhere")
    with pytest.raises(ConfigError, match="buffer_limit must be a positive integer"):
        Proxy(upstream="127.0.0.1:1", buffer_limit=0)
    with pytest.raises(ConfigError, match="listen host must be a numeric IP"):
        Proxy(upstream="127.0.0.1:1", listen="example.com:80")
    with pytest.raises(ConfigError, match="control must be a loopback address"):
        async with open_proxy(upstream="127.0.0.1:1", control="0.0.0.0:0"):
            pass
    async with tcp_server() as port:
        with pytest.raises(ProxyError, match="cannot listen"):
            async with open_proxy(upstream="127.0.0.1:1", listen=("127.0.0.1", port)):
                pass


# -- WebSocket-aware toxics, with trio-websocket on both ends -------------------


async def ping_answered(ws: WebSocketConnection, payload: bytes, within: float = 5) -> bool:
    with trio.move_on_after(within):
        await ws.ping(payload)
        return True
    return False


async def test_ws_drop_pongs_keeps_data_flowing(loopback_clock: MockClock) -> None:
    async with (
        ws_server() as port,
        open_proxy(upstream=("127.0.0.1", port)) as proxy,
        open_websocket_url(ws_url(proxy)) as ws,
    ):
        assert await ping_answered(ws, b"before")
        with proxy.toxic(WsDrop(frames="pong")):
            assert not await ping_answered(ws, b"eaten")
            for i in range(20):  # data still flows, byte for byte
                await ws.send_message(f"message {i}")
                assert await ws.get_message() == f"message {i}"
        assert await ping_answered(ws, b"after")
        assert ws.closed is None


async def test_ws_drop_data_upstream_keeps_pings_alive(loopback_clock: MockClock) -> None:
    got: list[str] = []

    async def recorder(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                got.append(await ws.get_message())
        except Exception:
            return

    async with (
        ws_server(recorder) as port,
        open_proxy(upstream=("127.0.0.1", port)) as proxy,
        open_websocket_url(ws_url(proxy)) as ws,
    ):
        await ws.send_message("kept 1")
        await wait_for(lambda: len(got) == 1)
        proxy.add_toxic(WsDrop(frames="data"), stream="upstream", name="eat")
        await ws.send_message("x" * 100_000)  # fragmented or not, it goes whole
        await ws.send_message("dropped")
        assert await ping_answered(ws, b"alive")
        proxy.remove_toxic("eat")
        await ws.send_message("kept 2")
        await wait_for(lambda: len(got) == 2)
        assert got == ["kept 1", "kept 2"]


async def test_ws_delay_pings_shows_as_rtt(loopback_clock: MockClock) -> None:
    async with (
        ws_server() as port,
        open_proxy(upstream=("127.0.0.1", port)) as proxy,
        open_websocket_url(ws_url(proxy)) as ws,
    ):
        proxy.add_toxic(WsDelay(frames="ping", delay=4.0), stream="upstream")
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.ping, b"slow")
            await ws.send_message("overtakes the ping")
            assert await ws.get_message() == "overtakes the ping"
            assert trio.current_time() - start < 0.1
        assert trio.current_time() - start == pytest.approx(4.0, abs=0.1)


async def test_nat_idle_silently_strands_both_ends(loopback_clock: MockClock) -> None:
    server_got: list[str] = []
    server_ws: list[WebSocketConnection] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        server_ws.append(ws)
        try:
            while True:
                server_got.append(await ws.get_message())
        except Exception:
            return

    async with ws_server(handler) as port, open_proxy(upstream=("127.0.0.1", port)) as proxy:
        proxy.add_toxic(NatIdle(timeout=60))
        async with open_websocket_url(ws_url(proxy)) as ws:
            await ws.send_message("fresh")
            await trio.sleep(59)
            await ws.send_message("still mapped")  # 59 s idle: refreshes the mapping
            await wait_for(lambda: len(server_got) == 2)
            await trio.sleep(61)
            await ws.send_message("into the void")
            await server_ws[0].send_message("also lost")
            assert not await ping_answered(ws, b"anyone?", within=30)
            assert server_got == ["fresh", "still mapped"]
            assert ws.closed is None
            assert server_ws[0].closed is None
            with trio.move_on_after(0):
                await ws.aclose()


async def test_blackhole_both_ways_with_a_ping_deadline(loopback_clock: MockClock) -> None:
    async with (
        ws_server() as port,
        open_proxy(upstream=("127.0.0.1", port)) as proxy,
        open_websocket_url(ws_url(proxy)) as ws,
    ):
        proxy.add_toxic(Toxic(attributes=Blackhole(), stream="both"))
        assert not await ping_answered(ws, b"hello?", within=10)
        assert ws.closed is None
        assert proxy.statistics().connections_open == 1
        with trio.move_on_after(0):
            await ws.aclose()


async def test_stall_then_deliver_everything(loopback_clock: MockClock) -> None:
    async with (
        ws_server() as port,
        open_proxy(upstream=("127.0.0.1", port)) as proxy,
        open_websocket_url(ws_url(proxy)) as ws,
    ):
        proxy.add_toxic(Stall(duration=10))
        for i in range(5):
            await ws.send_message(str(i))
        got = [await ws.get_message() for _ in range(5)]
        assert got == ["0", "1", "2", "3", "4"]
        assert trio.current_time() >= 10
