"""Fixtures for Trio tests: a mock clock that works with real loopback sockets."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import trioheart


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """A MockClock for tests that also use loopback sockets.

    pytest-trio runs the test under any fixture value that is a Clock. The
    small nonzero threshold lets the kernel deliver loopback bytes before
    virtual time jumps (STYLE.md, "Tests").
    """
    return trio.testing.MockClock(autojump_threshold=0.002)


StartServer = Callable[..., Awaitable[trioheart.Server]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """``await start_server(handler, **kwargs)``: trioheart.serve in the test's nursery."""

    async def start(
        handler: Callable[[trioheart.Connection], Awaitable[Any]], **kwargs: Any
    ) -> trioheart.Server:
        server: trioheart.Server = await nursery.start(
            functools.partial(trioheart.serve, handler, "127.0.0.1", 0, **kwargs)
        )
        return server

    return start


async def echo(conn: trioheart.Connection) -> None:
    async for message in conn:
        await conn.send(message)


async def idle(conn: trioheart.Connection) -> None:
    await trio.sleep_forever()


async def refused_port() -> int:
    """A loopback port where nothing listens: every connect is refused at once."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    return port
