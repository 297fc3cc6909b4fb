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
