"""L4 settings are on the socket before the handshake, and read back."""

from __future__ import annotations

import socket

import trio
from trio.testing import MockClock

import trioheart
from trioheart import ConnectionConfig, KeepaliveConfig
from trioheart._trio.sockopts import apply_keepalive, read_tcp_info

from .conftest import StartServer
from .wsclient import connect


async def test_applied_values_are_what_the_kernel_reports() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    sock = listeners[0].socket
    config = KeepaliveConfig(idle=7, interval=3, count=4, user_timeout=19.5)
    applied = apply_keepalive(sock, config)
    assert applied.keepalive is True
    assert (applied.idle, applied.interval, applied.count) == (7, 3, 4)
    assert applied.user_timeout == 19.5
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 19500
    assert applied.unsupported == ()
    await listeners[0].aclose()


async def test_disabled_keepalive_sets_nothing() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    applied = apply_keepalive(listeners[0].socket, KeepaliveConfig(enabled=False))
    assert applied.keepalive is False
    await listeners[0].aclose()


async def test_missing_option_is_logged_once_and_the_others_applied(monkeypatch: object) -> None:
    import pytest
    import structlog.testing

    from trioheart._trio import sockopts

    mp = pytest.MonkeyPatch()
    mp.delattr(socket, "TCP_USER_TIMEOUT")
    mp.setattr(sockopts, "_warned", set())
    try:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        with structlog.testing.capture_logs() as logs:
            first = apply_keepalive(listeners[0].socket, KeepaliveConfig(idle=9))
            second = apply_keepalive(listeners[0].socket, KeepaliveConfig(idle=9))
        await listeners[0].aclose()
    finally:
        mp.undo()
    assert first.idle == 9
    assert first.user_timeout is None
    assert first.unsupported == ("TCP_USER_TIMEOUT",)
    assert second == first
    warnings = [e for e in logs if e["event"] == "socket.option_unsupported"]
    assert [w["option"] for w in warnings] == ["TCP_USER_TIMEOUT"]


async def test_server_tunes_each_socket_before_the_handshake(
    clock: MockClock, start_server: StartServer
) -> None:
    seen: list[tuple[int, int]] = []

    async def record(conn: trioheart.Connection) -> None:
        assert conn.keepalive is not None
        seen.append((conn.keepalive.idle or 0, conn.keepalive.count or 0))
        await conn.send("ok")

    config = ConnectionConfig(keepalive=KeepaliveConfig(idle=11, interval=2, count=5))
    server = await start_server(record, config=config)
    async with connect(server.port) as client:
        assert await client.receive() == "ok"
    assert seen == [(11, 5)]


async def test_tcp_info_is_read_from_a_live_socket() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    info = read_tcp_info(client.socket)
    assert info is not None
    assert info.state == "ESTABLISHED"
    await client.aclose()
    await listeners[0].aclose()
