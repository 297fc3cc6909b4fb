"""Every way a connection ends has one named reason, one close code and one log event."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import structlog.testing
import trio
from trio.testing import MockClock

import trioheart
from trioheart import ConnectionConfig, DetectorConfig

from .conftest import StartServer, echo, idle
from .wsclient import connect

FAST = ConnectionConfig(
    heartbeat=DetectorConfig(ping_interval=20, ping_timeout=10),
    handshake_timeout=5,
    close_timeout=2,
)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def closed_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in logs if event["event"] == "connection.closed"]


async def wait_all_closed(server: trioheart.Server) -> None:
    with trio.fail_after(120):
        await server.wait_until(lambda s: s.connections_open == 0 and bool(s.closed))


def masked_frame(opcode_byte: int, payload: bytes) -> bytes:
    """A client frame (masked, as RFC 6455 requires), FIN set."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([opcode_byte, 0x80 | len(payload)]) + mask + masked


async def test_peer_close_is_answered_and_named(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    server = await start_server(echo, config=FAST)
    async with connect(server.port) as client:
        await client.send("hi")
        assert await client.receive() == "hi"
        await client.close_cleanly(1000)
        close = await client.run_until_closed()
    await wait_all_closed(server)
    assert close is not None
    assert close.code == 1000  # the server echoed our close frame
    [event] = closed_events(logs)
    assert event["reason"] == "peer_closed"
    assert event["peer_code"] == 1000
    assert server.statistics().closed == {"peer_closed": 1}


async def test_handler_return_closes_as_app_closed(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    async def hello(conn: trioheart.Connection) -> None:
        await conn.send("bye")

    server = await start_server(hello, config=FAST)
    async with connect(server.port) as client:
        assert await client.receive() == "bye"
        close = await client.run_until_closed()
    await wait_all_closed(server)
    assert close is not None
    assert close.code == 1000
    assert close.reason == "app_closed"
    [event] = closed_events(logs)
    assert event["reason"] == "app_closed"


async def test_handler_exception_is_internal_error_and_spares_the_server(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    async def broken(conn: trioheart.Connection) -> None:
        if conn.query.get("boom"):
            raise RuntimeError("bug in the application")
        await echo(conn)

    server = await start_server(broken, config=FAST)
    async with connect(server.port, "/ws?boom=1") as bad, connect(server.port) as good:
        close = await bad.run_until_closed()
        await good.send("still here")
        assert await good.receive() == "still here"
    assert close is not None
    assert close.code == 1011
    assert close.reason == "internal_error"
    await wait_all_closed(server)
    reasons = sorted(event["reason"] for event in closed_events(logs))
    assert reasons == ["connection_reset", "internal_error"]


async def test_silent_peer_is_closed_at_the_pong_deadline(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    server = await start_server(idle, config=FAST)
    async with connect(server.port, answer_pings=False) as client:
        start = trio.current_time()
        close = await client.run_until_closed()
        elapsed = trio.current_time() - start
    assert client.pings == 1
    assert close is not None
    assert close.code == 4001
    assert close.reason == "pong_timeout"
    # ping at t=20, window 10: closed at t=30, not before.
    assert 30 <= elapsed < 30.5
    await wait_all_closed(server)
    [event] = closed_events(logs)
    assert event["reason"] == "pong_timeout"
    assert event["code"] == 4001
    assert any(e["event"] == "heartbeat.missed" for e in logs)


async def test_a_write_queued_at_the_deadline_does_not_make_a_silent_peer_slow(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    """Regression: the app queued a message in the very tick the peer was convicted.

    Our ping went out long before and the peer reads (its socket takes every
    byte); it just never answers. The write of the new message had been
    *scheduled*, not blocked, yet the conviction used to say slow_consumer
    whenever the handler's wake-up ran first (Trio shuffles the tasks woken
    at one instant, so about half the time). Found by benchmarks.nat_survival.
    """

    async def at_the_deadline(conn: trioheart.Connection) -> None:
        # No inbound frame after the handshake: ping at +20, deadline at +30.
        await trio.sleep_until(conn.opened_at + 30)
        conn.send_nowait("news")
        await trio.sleep_forever()

    server = await start_server(at_the_deadline, config=FAST)
    rounds = 16  # P(every round happened to pass before the fix) = 2**-16
    for _ in range(rounds):
        async with connect(server.port, answer_pings=False) as client:
            close = await client.run_until_closed()
        assert close is not None
        assert close.reason == "pong_timeout"
    with trio.fail_after(10):
        await server.wait_until(lambda s: s.connections_open == 0)
    assert server.statistics().closed == {"pong_timeout": rounds}
    assert [e["reason"] for e in closed_events(logs)] == ["pong_timeout"] * rounds


async def test_a_ping_stuck_behind_a_blocked_write_convicts_as_slow_consumer(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    """The peer is there at L4 but reads nothing: our ping never leaves, so no pong."""
    config = ConnectionConfig(
        heartbeat=DetectorConfig(ping_interval=20, ping_timeout=10),
        send_timeout=1000,  # so that the heartbeat, not the write, gives up first
        max_send_buffer=64 * 1024 * 1024,
    )

    async def pusher(conn: trioheart.Connection) -> None:
        while True:
            await conn.send("z" * 65536)

    server = await start_server(pusher, config=config)
    async with connect(server.port, answer_pings=False) as client:
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with trio.fail_after(5):
            await server.wait_until(lambda s: s.connections_open == 1)
        [conn] = server.connections
        await trio.sleep_until(conn.opened_at + 31)  # ping at +20, deadline at +30
        assert conn.close_reason is trioheart.CloseReason.SLOW_CONSUMER
        reason = await conn.wait_closed()
    assert reason is trioheart.CloseReason.SLOW_CONSUMER
    # The blocked write is given close_timeout once the close began, not the
    # 1000 s of send_timeout: the whole close is bounded by close_timeout twice
    # (the write in progress, then the final flush).
    assert conn.closed_at is not None
    assert conn.closed_at - (conn.opened_at + 30) <= 2 * config.close_timeout + 0.1
    await wait_all_closed(server)
    missed = [e for e in logs if e["event"] == "heartbeat.missed"]
    assert [e["reason"] for e in missed] == ["slow_consumer"]


async def test_any_inbound_frame_is_a_sign_of_life(
    clock: MockClock, start_server: StartServer
) -> None:
    """A pong stuck behind bulk data must not get a busy connection killed."""
    server = await start_server(echo, config=FAST)
    async with connect(server.port, answer_pings=False) as client:
        for i in range(40):  # 200 s of virtual time, data every 5 s, no pong ever
            await client.send(f"bulk {i}")
            assert await client.receive() == f"bulk {i}"
            await trio.sleep(5)
        assert client.pings >= 1
        assert len(server.connections) == 1
        [conn] = server.connections
        assert conn.close_reason is None


async def test_answered_pings_keep_an_idle_connection_open(
    clock: MockClock, start_server: StartServer
) -> None:
    server = await start_server(idle, config=FAST)
    async with connect(server.port) as client:
        with trio.move_on_after(210):
            while await client.pump():
                pass
        assert client.pings == 10  # one every 20 s
        [conn] = server.connections
        stats = conn.liveness()
        assert stats.pongs_received == 10
        assert stats.rtt_p50 is not None


async def test_app_level_heartbeat_unanswered_is_heartbeat_timeout(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    config = ConnectionConfig(
        heartbeat=DetectorConfig(ping_interval=20, ping_timeout=10), app_heartbeat_interval=5
    )
    server = await start_server(idle, config=config)
    async with connect(server.port) as client:  # answers WS pings, ignores app pings
        close = await client.run_until_closed()
    assert close is not None
    assert close.code == 4002
    assert close.reason == "heartbeat_timeout"
    assert client.messages == ['{"type":"ping","id":1}']
    await wait_all_closed(server)
    [event] = closed_events(logs)
    assert event["reason"] == "heartbeat_timeout"


async def test_app_level_heartbeat_answered_keeps_it_open(
    clock: MockClock, start_server: StartServer
) -> None:
    config = ConnectionConfig(
        heartbeat=DetectorConfig(ping_interval=20, ping_timeout=10), app_heartbeat_interval=5
    )
    server = await start_server(idle, config=config)
    async with connect(server.port) as client:
        with trio.move_on_after(60):
            while True:
                message = await client.receive()
                assert isinstance(message, str)
                await client.send(message.replace('"ping"', '"pong"'))
        assert len(server.connections) == 1


async def test_app_level_ping_from_a_browser_is_answered(
    clock: MockClock, start_server: StartServer
) -> None:
    server = await start_server(echo, config=FAST)
    async with connect(server.port) as client:
        await client.send('{"type":"ping","id":"abc"}')
        assert await client.receive() == '{"type":"pong","id":"abc"}'
        await client.send('{"type":"other"}')  # not a heartbeat: the handler gets it
        assert await client.receive() == '{"type":"other"}'


async def test_reset_is_connection_reset(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    server = await start_server(idle, config=FAST)
    async with connect(server.port) as client:
        client.reset()
    await wait_all_closed(server)
    [event] = closed_events(logs)
    assert event["reason"] == "connection_reset"
    assert event["code"] == 1006


@pytest.mark.parametrize(
    ("frame", "reason", "code"),
    [
        pytest.param(masked_frame(0x81, b"\xff\xfe\xfd"), "invalid_data", 1007, id="bad-utf8"),
        pytest.param(masked_frame(0xF1, b"x"), "protocol_error", 1002, id="reserved-bits"),
        pytest.param(b"\x81\x05hello", "protocol_error", 1002, id="unmasked"),
        pytest.param(masked_frame(0x83, b"x"), "protocol_error", 1002, id="bad-opcode"),
    ],
)
async def test_bad_frames_get_a_named_close(
    clock: MockClock,
    start_server: StartServer,
    logs: list[dict[str, Any]],
    frame: bytes,
    reason: str,
    code: int,
) -> None:
    server = await start_server(echo, config=FAST)
    async with connect(server.port) as client:
        await client.send_raw(frame)
        close = await client.run_until_closed()
    assert close is not None
    assert close.code == code
    await wait_all_closed(server)
    [event] = closed_events(logs)
    assert event["reason"] == reason


async def test_oversized_message_is_message_too_big(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    config = ConnectionConfig(max_message_size=1000, max_queued_bytes=4000)
    server = await start_server(echo, config=config)
    async with connect(server.port) as client:
        await client.send("x" * 1000)  # at the limit: fine
        assert await client.receive() == "x" * 1000
        await client.send("y" * 1001)
        close = await client.run_until_closed()
    assert close is not None
    assert close.code == 1009
    await wait_all_closed(server)
    [event] = closed_events(logs)
    assert event["reason"] == "message_too_big"


async def test_handler_that_never_reads_is_a_slow_consumer(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    config = ConnectionConfig(max_queued_messages=8)
    server = await start_server(idle, config=config)
    async with connect(server.port) as client:
        for i in range(9):
            await client.send(f"m{i}")
        close = await client.run_until_closed()
    assert close is not None
    assert close.code == 4008
    await wait_all_closed(server)
    [event] = closed_events(logs)
    assert event["reason"] == "slow_consumer"


async def test_client_that_never_reads_is_a_slow_consumer(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    """Fan-out never waits on one client: its bounded buffer fills and it is closed."""
    sent = 0

    async def firehose(conn: trioheart.Connection) -> None:
        nonlocal sent
        while True:
            conn.send_nowait("z" * 16384)
            sent += 1
            await trio.sleep(0.001)

    config = ConnectionConfig(max_send_buffer=256 * 1024)
    server = await start_server(firehose, config=config)
    async with connect(server.port) as client:
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await wait_all_closed(server)
    [event] = closed_events(logs)
    assert event["reason"] == "slow_consumer"
    # Bounded: it stopped after the socket buffers and 256 KiB of ours filled.
    assert sent < 2000


async def test_blocked_send_is_a_slow_consumer_after_send_timeout(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    config = ConnectionConfig(send_timeout=3, max_send_buffer=64 * 1024 * 1024)
    started = trio.Event()
    blocked_for: list[float] = []

    async def pusher(conn: trioheart.Connection) -> None:
        started.set()
        while True:
            t0 = trio.current_time()
            await conn.send("z" * 65536)
            blocked_for.append(trio.current_time() - t0)

    server = await start_server(pusher, config=config)
    async with connect(server.port) as client:
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await started.wait()
        await wait_all_closed(server)
    [event] = closed_events(logs)
    assert event["reason"] == "slow_consumer"
    assert max(blocked_for, default=0) < 3.5


async def test_shutdown_closes_every_connection_with_1001(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    server = await start_server(echo, config=FAST)
    async with connect(server.port) as a, connect(server.port) as b:
        await a.send("x")
        assert await a.receive() == "x"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.aclose)
            close_a = await a.run_until_closed()
            close_b = await b.run_until_closed()
    assert close_a is not None
    assert close_b is not None
    assert (close_a.code, close_b.code) == (1001, 1001)
    reasons = [event["reason"] for event in closed_events(logs)]
    assert reasons == ["server_shutdown", "server_shutdown"]


async def test_cancelling_the_server_closes_every_connection_with_1001(
    clock: MockClock, nursery: trio.Nursery, logs: list[dict[str, Any]]
) -> None:
    """Regression: a cancelled server closed its connections as internal_error (1011).

    The reader, cancelled first, took the missing reason for a bug; the
    documented ``server_shutdown`` (with the retry window) never went out.
    """
    from trioheart.backoff import RetryWindow

    window = RetryWindow(earliest=1.0, latest=3.0)
    scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[trioheart.Server]) -> None:
        with scope:
            await trioheart.serve(
                idle, "127.0.0.1", 0, config=FAST, retry_window=window, task_status=task_status
            )

    server: trioheart.Server = await nursery.start(run_server)
    async with connect(server.port) as a, connect(server.port) as b:
        with trio.fail_after(10):
            await server.wait_until(lambda s: s.connections_open == 2)
        scope.cancel()
        close_a = await a.run_until_closed()
        close_b = await b.run_until_closed()
    assert close_a is not None
    assert close_b is not None
    assert (close_a.code, close_b.code) == (1001, 1001)
    assert RetryWindow.from_close_text(close_a.reason or "") == window
    reasons = [event["reason"] for event in closed_events(logs)]
    assert reasons == ["server_shutdown", "server_shutdown"]
    assert server.statistics().closed == {"server_shutdown": 2}


async def test_shutdown_is_bounded_when_peers_never_answer(
    clock: MockClock, start_server: StartServer
) -> None:
    config = ConnectionConfig(close_timeout=2)
    server = await start_server(idle, config=config)
    async with connect(server.port, answer_pings=False):  # never reads: no close echo
        await server.wait_until(lambda s: s.connections_open == 1)
        start = trio.current_time()
        await server.aclose(drain_timeout=5)
        assert trio.current_time() - start <= 5.1
        assert server.statistics().closed == {"server_shutdown": 1}


async def test_handshake_that_never_finishes_is_closed(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    server = await start_server(echo, config=FAST)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # ...and nothing more
    start = trio.current_time()
    assert await stream.receive_some(100) == b""
    assert 5 <= trio.current_time() - start < 5.5
    await stream.aclose()
    [event] = closed_events(logs)
    assert event["reason"] == "handshake_timeout"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"garbage\r\n\r\n", b"400", id="garbage"),
        pytest.param(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"400",
            id="no-key",
        ),
        pytest.param(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n",
            b"400",
            id="short-key",
        ),
        pytest.param(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n",
            b"431",
            id="oversized",
        ),
    ],
)
async def test_malformed_handshake_is_refused_clearly(
    clock: MockClock,
    start_server: StartServer,
    logs: list[dict[str, Any]],
    request_bytes: bytes,
    status: bytes,
) -> None:
    server = await start_server(echo, config=FAST)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(request_bytes)
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
    await stream.aclose()
    assert response.split(b" ")[1] == status, response[:200]
    [event] = closed_events(logs)
    assert event["reason"] == "handshake_failed"


async def test_plain_http_is_served_and_not_counted(
    clock: MockClock, start_server: StartServer
) -> None:
    async def http(request: trioheart.HttpRequest) -> trioheart.HttpResponse | None:
        return trioheart.HttpResponse.text(200, f"hello {request.query.get('who')}")

    server = await start_server(echo, config=FAST, http_handler=http)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET /?who=you HTTP/1.1\r\nHost: x\r\n\r\n")
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"hello you")
    assert server.statistics().closed == {}


async def test_plain_http_answered_near_the_handshake_deadline_is_not_counted(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    # The answer goes out just before handshake_timeout (a slow handler, or
    # a server under load); the lingering close after it runs past the
    # deadline. A served request is not a close, whenever its linger ends.
    async def slow_http(request: trioheart.HttpRequest) -> trioheart.HttpResponse | None:
        await trio.sleep(4.5)  # FAST.handshake_timeout is 5
        return trioheart.HttpResponse.text(200, "late but whole")

    server = await start_server(echo, config=FAST, http_handler=slow_http)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
    assert response.endswith(b"late but whole")
    await trio.sleep(2)  # we never close our side: the server's linger times out
    assert server.statistics().closed == {}
    assert closed_events(logs) == []
    await stream.aclose()


async def test_a_refusal_near_the_handshake_deadline_is_counted_once(
    clock: MockClock, start_server: StartServer, logs: list[dict[str, Any]]
) -> None:
    server = await start_server(echo, config=FAST)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await trio.sleep(4.8)  # FAST.handshake_timeout is 5
    await stream.send_all(b"garbage\r\n\r\n")
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
    assert response.startswith(b"HTTP/1.1 400")
    await trio.sleep(2)  # we never close our side: the server's linger times out
    assert server.statistics().closed == {"handshake_failed": 1}
    assert [event["reason"] for event in closed_events(logs)] == ["handshake_failed"]
    await stream.aclose()


async def test_shutdown_announces_when_to_come_back(
    clock: MockClock, start_server: StartServer
) -> None:
    from trioheart.backoff import RetryWindow

    server = await start_server(echo, config=FAST)
    async with connect(server.port) as client:
        await server.wait_until(lambda s: s.connections_open == 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: server.aclose(retry_window=RetryWindow(earliest=2.0, latest=10.0))
            )
            close = await client.run_until_closed()
    assert close is not None
    assert close.code == 1001
    assert trioheart.CloseReason.from_close_frame(close.code, close.reason or "") is (
        trioheart.CloseReason.SERVER_SHUTDOWN
    )
    window = RetryWindow.from_close_text(close.reason or "")
    assert window == RetryWindow(earliest=2.0, latest=10.0)


def test_close_text_is_bounded() -> None:
    conn = object.__new__(trioheart.Connection)
    with pytest.raises(ValueError, match="at most 123 bytes"):
        conn.close(text="x" * 124)
