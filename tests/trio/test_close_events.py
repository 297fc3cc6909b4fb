"""Every close path emits exactly one ``connection.closed``, with the right reason.

One scenario per way a connection can end, each on a fresh server. For
each, the test checks that the one vocabulary agrees everywhere: exactly
one ``connection.closed`` event names the reason with its code and the
fields every such event carries, the server's statistics and the
``trioheart_connections_closed_total`` metric count it once, and a close
frame, when one is sent, carries the reason's code and name. A new
:class:`~trioheart.CloseReason` without a scenario here (or a named test
elsewhere) fails :func:`test_every_reason_has_a_close_path_test`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import structlog.testing
import trio
import trio.testing
from trio.testing import MockClock
from wsproto.events import CloseConnection

import trioheart
from trioheart import CloseReason, ConnectionConfig, DetectorConfig, ServerLimits

from ..conftest import LiveTasks
from .conftest import StartServer, echo, idle
from .wsclient import RawClient, connect

CONFIG = ConnectionConfig(
    heartbeat=DetectorConfig(ping_interval=20, ping_timeout=10),
    handshake_timeout=5,
    close_timeout=2,
    max_message_size=100,
    max_queued_messages=2,
)
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)

# Reasons whose close path needs more than loopback, and the test that
# checks their one connection.closed event there.
ELSEWHERE = {
    CloseReason.TCP_TIMEOUT: "tests/netns/test_tcp_user_timeout_ws.py",
}

Drive = Callable[[trioheart.Server], Awaitable["CloseConnection | None"]]


@attrs.frozen
class Scenario:
    """One way to end a connection.

    *drive* makes it happen and returns the close frame the client got, if
    any. *also* counts the other connections the scenario ends (e.g. the
    one holding the only place, for ``connection_limit``).
    """

    id: str
    reason: CloseReason
    drive: Drive
    handler: Callable[[trioheart.Connection], Awaitable[Any]] = echo
    serve: dict[str, Any] = attrs.field(factory=dict)
    also: dict[str, int] = attrs.field(factory=dict)


def masked_frame(opcode_byte: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([opcode_byte, 0x80 | len(payload)]) + mask + masked


async def raw_request(port: int, data: bytes) -> bytes:
    """Send *data*; return what the server answered up to EOF or a 101."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
        if response.startswith(b"HTTP/1.1 101"):
            break
    await stream.aclose()
    return response


def client_does(
    action: Callable[[RawClient], Awaitable[None]] | None = None,
    *,
    path: str = "/ws",
    answer_pings: bool = True,
) -> Drive:
    async def drive(server: trioheart.Server) -> CloseConnection | None:
        async with connect(server.port, path, answer_pings=answer_pings) as client:
            if action is not None:
                await action(client)
            return await client.run_until_closed()

    return drive


async def _close_cleanly(client: RawClient) -> None:
    await client.close_cleanly(1000)


async def _reset(client: RawClient) -> None:
    client.reset()
    client.eof = True  # nothing more to read from a socket we closed


async def _bad_opcode(client: RawClient) -> None:
    await client.send_raw(masked_frame(0x83, b"x"))


async def _bad_utf8(client: RawClient) -> None:
    await client.send_raw(masked_frame(0x81, b"\xff\xfe\xfd"))


async def _too_big(client: RawClient) -> None:
    await client.send("x" * 101)


async def _three_unread(client: RawClient) -> None:
    for i in range(3):  # the handler never reads; the inbox holds 2
        await client.send(f"m{i}")


async def _handshake_never_ends(server: trioheart.Server) -> None:
    assert await raw_request(server.port, b"GET /ws HTTP/1.1\r\nHost: x\r\n") == b""


async def _garbage_handshake(server: trioheart.Server) -> None:
    assert (await raw_request(server.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")


async def _shutdown(server: trioheart.Server) -> CloseConnection | None:
    async with connect(server.port) as client:
        await server.wait_until(lambda s: s.connections_open == 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.aclose)
            return await client.run_until_closed()


def _refused_while_one_is_open(status: bytes, headers: bytes = b"") -> Drive:
    async def drive(server: trioheart.Server) -> None:
        async with connect(server.port):
            await server.wait_until(lambda s: s.connections_open == 1)
            response = await raw_request(server.port, UPGRADE + headers + b"\r\n")
            assert response.startswith(b"HTTP/1.1 " + status), response[:100]

    return drive


async def _second_handshake_too_soon(server: trioheart.Server) -> None:
    first = await raw_request(server.port, UPGRADE + b"\r\n")
    assert first.startswith(b"HTTP/1.1 101")  # then dropped: connection_reset
    assert (await raw_request(server.port, UPGRADE + b"\r\n")).startswith(b"HTTP/1.1 429")


async def _wrong_origin(server: trioheart.Server) -> None:
    response = await raw_request(server.port, UPGRADE + b"Origin: https://evil.example\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 403")


async def _refuse_everyone(request: trioheart.HttpRequest) -> trioheart.HttpResponse:
    return trioheart.HttpResponse.text(401, "who are you?")


async def _unauthorized(server: trioheart.Server) -> None:
    assert (await raw_request(server.port, UPGRADE + b"\r\n")).startswith(b"HTTP/1.1 401")


async def _returns(conn: trioheart.Connection) -> None:
    await conn.send("bye")


async def _raises(conn: trioheart.Connection) -> None:
    raise RuntimeError("bug in the application")


def _closes_with(reason: CloseReason) -> Callable[[trioheart.Connection], Awaitable[None]]:
    async def handler(conn: trioheart.Connection) -> None:
        await conn.aclose(reason)

    return handler


APP_HEARTBEAT = attrs.evolve(CONFIG, app_heartbeat_interval=5)

SCENARIOS = [
    Scenario("peer-close-frame", CloseReason.PEER_CLOSED, client_does(_close_cleanly)),
    Scenario("handler-returns", CloseReason.APP_CLOSED, client_does(), handler=_returns),
    Scenario(
        "pings-unanswered",
        CloseReason.PONG_TIMEOUT,
        client_does(answer_pings=False),
        handler=idle,
    ),
    Scenario(
        "app-pings-unanswered",
        CloseReason.HEARTBEAT_TIMEOUT,
        client_does(),
        handler=idle,
        serve={"config": APP_HEARTBEAT},
    ),
    Scenario("rst", CloseReason.CONNECTION_RESET, client_does(_reset)),
    Scenario("bad-opcode", CloseReason.PROTOCOL_ERROR, client_does(_bad_opcode)),
    Scenario("bad-utf8", CloseReason.INVALID_DATA, client_does(_bad_utf8)),
    Scenario("oversized", CloseReason.MESSAGE_TOO_BIG, client_does(_too_big)),
    Scenario("handshake-never-ends", CloseReason.HANDSHAKE_TIMEOUT, _handshake_never_ends),
    Scenario("garbage-handshake", CloseReason.HANDSHAKE_FAILED, _garbage_handshake),
    Scenario(
        "handler-never-reads", CloseReason.SLOW_CONSUMER, client_does(_three_unread), handler=idle
    ),
    Scenario("server-aclose", CloseReason.SERVER_SHUTDOWN, _shutdown),
    Scenario("handler-raises", CloseReason.INTERNAL_ERROR, client_does(), handler=_raises),
    *(
        Scenario(
            f"app-closes-with-{reason.value}",
            reason,
            client_does(),
            handler=_closes_with(reason),
        )
        for reason in (
            CloseReason.RESUME_REFUSED,
            CloseReason.BROKER_UNAVAILABLE,
            CloseReason.ROOM_RESET,
        )
    ),
    Scenario(
        "over-max-connections",
        CloseReason.CONNECTION_LIMIT,
        _refused_while_one_is_open(b"503"),
        handler=idle,
        serve={"limits": ServerLimits(max_connections=1)},
        also={"connection_reset": 1},
    ),
    Scenario(
        "over-per-address",
        CloseReason.ADDRESS_LIMIT,
        _refused_while_one_is_open(b"429"),
        handler=idle,
        serve={"limits": ServerLimits(max_connections_per_address=1)},
        also={"connection_reset": 1},
    ),
    Scenario(
        "handshake-rate",
        CloseReason.RATE_LIMITED,
        _second_handshake_too_soon,
        handler=idle,
        serve={"limits": ServerLimits(handshake_rate=0.1, handshake_burst=1)},
        also={"connection_reset": 1},
    ),
    Scenario(
        "bad-origin",
        CloseReason.ORIGIN_REFUSED,
        _wrong_origin,
        serve={"limits": ServerLimits(allowed_origins={"https://chat.example.com"})},
    ),
    Scenario(
        "authorize-refuses",
        CloseReason.AUTH_REFUSED,
        _unauthorized,
        serve={"authorize": _refuse_everyone},
    ),
]


def closed_counts(metrics: trioheart.Metrics) -> dict[str, float]:
    counts = {}
    for reason in CloseReason:
        value = metrics.registry.get_sample_value(
            "trioheart_connections_closed_total", {"reason": reason.value}
        )
        assert value is not None, f"no series for reason {reason.value}"
        if value:
            counts[reason.value] = value
    return counts


def check_the_one_event(
    logs: list[dict[str, Any]], reason: CloseReason, close: CloseConnection | None
) -> None:
    events = [e for e in logs if e["event"] == "connection.closed" and e["reason"] == reason]
    assert len(events) == 1, events
    [event] = events
    assert event["code"] == reason.code
    assert isinstance(event["conn_id"], str)
    assert event["duration_s"] >= 0
    if "rtt_s" in event:  # connections that opened report their heartbeat
        assert set(event["rtt_s"]) == {"last", "p50", "p99", "samples"}
    if reason.sends_close_frame and close is not None:
        assert close.code == reason.code
        assert CloseReason.from_close_frame(close.code, close.reason or "") is reason


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
async def test_each_close_path_emits_one_connection_closed(
    clock: MockClock, start_server: StartServer, scenario: Scenario
) -> None:
    metrics = trioheart.Metrics()
    server = await start_server(
        scenario.handler, **{"config": CONFIG, **scenario.serve}, metrics=metrics
    )
    expected = collections.Counter({scenario.reason.value: 1, **scenario.also})
    with structlog.testing.capture_logs() as logs:
        with trio.fail_after(120):
            close = await scenario.drive(server)
            await server.wait_until(
                lambda s: s.connections_open == 0 and s.closed == dict(expected)
            )
    check_the_one_event(logs, scenario.reason, close)
    closed_events = collections.Counter(
        e["reason"] for e in logs if e["event"] == "connection.closed"
    )
    assert closed_events == expected
    assert server.statistics().closed == dict(expected)
    assert closed_counts(metrics) == dict(expected)
    if scenario.reason.sends_close_frame:
        assert close is not None, "a close frame was due"


async def test_a_bug_in_trioheart_is_one_internal_error_for_that_connection_only(
    clock: MockClock,
    start_server: StartServer,
    monkeypatch: pytest.MonkeyPatch,
    live_tasks: LiveTasks,
) -> None:
    """A failure inside the runner (here: handling a pong) is contained and named."""

    def broken(self: trioheart.Connection, payload: bytes, now: float) -> None:
        if self.query.get("victim"):
            raise RuntimeError("bug in trioheart")

    monkeypatch.setattr(trioheart.Connection, "_on_pong", broken)
    config = attrs.evolve(CONFIG, heartbeat=DetectorConfig(ping_interval=1, ping_timeout=10))
    server = await start_server(echo, config=config)
    with structlog.testing.capture_logs() as logs:
        async with connect(server.port, "/ws?victim=1") as victim, connect(server.port) as other:
            with trio.fail_after(30):
                await victim.run_until_closed()
                await server.wait_until(lambda s: s.closed == {"internal_error": 1})
            await other.send("still here")
            with trio.fail_after(10):
                assert await other.receive() == "still here"
            await trio.testing.wait_all_tasks_blocked()
            # The victim's tasks are gone; the other connection's reader runs on.
            [survivor] = server.connections
            readers = [n for n in live_tasks.names() if n.startswith("trioheart.reader")]
            assert readers == [f"trioheart.reader[{survivor.conn_id}]"]
    check_the_one_event(logs, CloseReason.INTERNAL_ERROR, victim.close)
    assert [e["event"] for e in logs if e["event"] == "connection.failed"] == ["connection.failed"]


def test_every_reason_has_a_close_path_test() -> None:
    covered = {scenario.reason for scenario in SCENARIOS} | set(ELSEWHERE)
    assert covered == set(CloseReason), set(CloseReason) - covered
