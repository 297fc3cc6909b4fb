"""Every admission limit refuses with a clear status and a named reason, and lets go."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

import trioheart
from trioheart import ServerLimits

from .conftest import StartServer, idle
from .wsclient import connect, handshake

UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def raw_request(port: int, extra_headers: str = "") -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all((UPGRADE + extra_headers + "\r\n").encode())
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
        if response.startswith(b"HTTP/1.1 101"):
            break  # accepted: the WebSocket would go on; we only wanted the status
    await stream.aclose()
    return response


async def test_max_connections_refuses_with_503_then_admits_again(
    clock: MockClock, start_server: StartServer
) -> None:
    server = await start_server(idle, limits=ServerLimits(max_connections=2))
    async with connect(server.port), connect(server.port) as second:
        response = await raw_request(server.port)
        assert response.startswith(b"HTTP/1.1 503")
        assert b"Retry-After:" in response
        assert response.endswith(b"connection_limit\n")
        await second.close_cleanly()
        await second.run_until_closed()
        await server.wait_until(lambda s: s.connections_open == 1)
        await trio.testing.wait_all_tasks_blocked()
        async with connect(server.port):  # a place is free again
            pass
    assert server.statistics().closed["connection_limit"] == 1


async def test_per_address_limit_is_429(clock: MockClock, start_server: StartServer) -> None:
    server = await start_server(idle, limits=ServerLimits(max_connections_per_address=1))
    async with connect(server.port):
        response = await raw_request(server.port)
    assert response.startswith(b"HTTP/1.1 429")
    assert server.statistics().closed["address_limit"] == 1


async def test_handshake_rate_limit_refuses_a_burst_and_recovers(
    clock: MockClock, start_server: StartServer
) -> None:
    server = await start_server(idle, limits=ServerLimits(handshake_rate=2, handshake_burst=3))
    responses = [await raw_request(server.port) for _ in range(5)]
    statuses = [r.split(b" ")[1] for r in responses]
    assert statuses == [b"101", b"101", b"101", b"429", b"429"]
    await trio.sleep(0.5)  # one token back
    assert (await raw_request(server.port)).startswith(b"HTTP/1.1 101")
    assert server.statistics().closed["rate_limited"] == 2


async def test_origin_allowlist(clock: MockClock, start_server: StartServer) -> None:
    server = await start_server(
        idle, limits=ServerLimits(allowed_origins={"https://chat.example.com"})
    )
    refused = await raw_request(server.port, "Origin: https://evil.example\r\n")
    assert refused.startswith(b"HTTP/1.1 403")
    allowed = await raw_request(server.port, "Origin: https://chat.example.com\r\n")
    assert allowed.startswith(b"HTTP/1.1 101")
    assert server.statistics().closed["origin_refused"] == 1


async def test_authorize_hook_refuses_before_the_connection_costs_anything(
    clock: MockClock, start_server: StartServer
) -> None:
    handled: list[str] = []

    async def authorize(request: trioheart.HttpRequest) -> trioheart.HttpResponse | None:
        if request.query.get("token") != "s3cret":
            return trioheart.HttpResponse.text(401, "who are you?")
        return None

    async def handler(conn: trioheart.Connection) -> None:
        handled.append(conn.conn_id)

    server = await start_server(handler, authorize=authorize)
    stream, _ = await handshake(server.port, "/ws?token=s3cret")
    await stream.aclose()
    with pytest.raises(ConnectionError, match="401"):
        await handshake(server.port, "/ws?token=wrong")
    await server.wait_until(lambda s: "auth_refused" in s.closed)
    assert len(handled) == 1


# -- every limit is a metric too ---------------------------------------------


async def _refuse_by_connection_limit(server: trioheart.Server) -> None:
    async with connect(server.port):
        assert (await raw_request(server.port)).startswith(b"HTTP/1.1 503")


async def _refuse_by_address_limit(server: trioheart.Server) -> None:
    async with connect(server.port):
        assert (await raw_request(server.port)).startswith(b"HTTP/1.1 429")


async def _refuse_by_rate(server: trioheart.Server) -> None:
    assert (await raw_request(server.port)).startswith(b"HTTP/1.1 101")
    assert (await raw_request(server.port)).startswith(b"HTTP/1.1 429")


async def _refuse_by_origin(server: trioheart.Server) -> None:
    refused = await raw_request(server.port, "Origin: https://evil.example\r\n")
    assert refused.startswith(b"HTTP/1.1 403")


async def _refuse_by_authorize(server: trioheart.Server) -> None:
    with pytest.raises(ConnectionError, match="401"):
        await handshake(server.port, "/ws?token=wrong")


async def _send_too_big(server: trioheart.Server) -> None:
    async with connect(server.port) as client:
        await client.send("x" * 101)
        close = await client.run_until_closed()
    assert close is not None
    assert close.code == 1009


async def _queue_too_much(server: trioheart.Server) -> None:
    async with connect(server.port) as client:
        for i in range(9):  # the handler never reads: 8 may wait, the 9th may not
            await client.send(f"m{i}")
        close = await client.run_until_closed()
    assert close is not None
    assert close.code == 4008


async def _queue_too_many_bytes(server: trioheart.Server) -> None:
    async with connect(server.port) as client:
        for _ in range(3):  # the handler never reads: 2 x 1000 bytes may wait, 3 may not
            await client.send("q" * 1000)
        close = await client.run_until_closed()
    assert close is not None
    assert close.code == 4008


async def _refuse_unless_token(request: trioheart.HttpRequest) -> trioheart.HttpResponse | None:
    if request.query.get("token") != "s3cret":
        return trioheart.HttpResponse.text(401, "who are you?")
    return None


# case -> (the reason it must be counted under, serve() arguments, what hits it)
LIMIT_CASES = {
    "connection_limit": (
        "connection_limit",
        {"limits": ServerLimits(max_connections=1)},
        _refuse_by_connection_limit,
    ),
    "address_limit": (
        "address_limit",
        {"limits": ServerLimits(max_connections_per_address=1)},
        _refuse_by_address_limit,
    ),
    "rate_limited": (
        "rate_limited",
        {"limits": ServerLimits(handshake_rate=0.1, handshake_burst=1)},
        _refuse_by_rate,
    ),
    "origin_refused": (
        "origin_refused",
        {"limits": ServerLimits(allowed_origins={"https://chat.example.com"})},
        _refuse_by_origin,
    ),
    "auth_refused": ("auth_refused", {"authorize": _refuse_unless_token}, _refuse_by_authorize),
    "message_too_big": (
        "message_too_big",
        {"config": trioheart.ConnectionConfig(max_message_size=100)},
        _send_too_big,
    ),
    "max_queued_messages": (
        "slow_consumer",
        {"config": trioheart.ConnectionConfig(max_queued_messages=8)},
        _queue_too_much,
    ),
    "max_queued_bytes": (
        "slow_consumer",
        {
            "config": trioheart.ConnectionConfig(
                max_message_size=1000, max_queued_bytes=2000, max_queued_messages=100
            )
        },
        _queue_too_many_bytes,
    ),
}


def _closed_counts(metrics: trioheart.Metrics) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "trioheart_connections_closed_total":
                counts[sample.labels["reason"]] = sample.value
    return counts


@pytest.mark.parametrize("case", list(LIMIT_CASES))
async def test_each_limit_hit_is_counted_under_its_reason_in_the_metric(
    clock: MockClock, start_server: StartServer, case: str
) -> None:
    """Issue 9: every resource limit has a named reason *and* a metric when hit."""
    reason, kwargs, hit = LIMIT_CASES[case]
    metrics = trioheart.Metrics()
    server = await start_server(idle, metrics=metrics, **kwargs)
    before = _closed_counts(metrics)
    assert before[reason] == 0  # present from the start, so rate() is 0, not absent
    with trio.fail_after(30):
        await hit(server)
        await server.wait_until(lambda s: reason in s.closed)
    moved = {k: v - before[k] for k, v in _closed_counts(metrics).items() if v != before[k]}
    # Only this limit was hit (a connection the case itself opened and left
    # may add its own ending, e.g. connection_reset).
    limit_reasons = {r for r, _, _ in LIMIT_CASES.values()}
    assert {k: v for k, v in moved.items() if k in limit_reasons} == {reason: 1}
    assert server.statistics().closed[reason] == 1
