"""A raw WebSocket client for tests: does what a real client would, or what a bad one would.

Built on wsproto over a plain trio socket stream, so a test controls every
byte: whether pings are answered, whether the socket is read at all, and
what garbage is sent after the handshake.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class RawClient:
    """One client connection. ``answer_pings=False`` makes a peer that looks frozen at L7."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection, *, answer_pings: bool) -> None:
        self.stream = stream
        self.ws = ws
        self.answer_pings = answer_pings
        self.messages: list[str | bytes] = []
        self.pings = 0
        self.close: CloseConnection | None = None
        self.eof = False
        self.last_ping = b""  # the payload of the last ping seen
        self.answered = 0  # for tests that answer pings themselves
        self.stalled = False

    async def send(self, message: str | bytes) -> None:
        event: Event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        await self.stream.send_all(self.ws.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close_cleanly(self, code: int = 1000) -> None:
        await self.stream.send_all(self.ws.send(CloseConnection(code=code)))

    def reset(self) -> None:
        """Close the socket with RST (SO_LINGER 0): an abrupt disappearance."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.stream.socket.close()

    async def pump(self) -> bool:
        """Read once and handle the events; False at EOF or after a close frame."""
        if self.close is not None or self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.ws.receive_data(data)
        partial: list[str | bytes] = []
        for event in self.ws.events():
            if isinstance(event, Ping):
                self.pings += 1
                self.last_ping = bytes(event.payload)
                if self.answer_pings and self.ws.state is ConnectionState.OPEN:
                    await self.stream.send_all(self.ws.send(event.response()))
            elif isinstance(event, Message):
                partial.append(event.data)
                if event.message_finished:
                    joined = (
                        "".join(partial) if isinstance(event, TextMessage) else b"".join(partial)
                    )  # type: ignore[arg-type]
                    self.messages.append(joined)
                    partial = []
            elif isinstance(event, CloseConnection):
                self.close = event
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self.stream.send_all(self.ws.send(event.response()))
                return False
        return True

    async def receive(self) -> str | bytes:
        """The next message (pumping as needed); raises EOFError when the connection ended."""
        while not self.messages:
            if not await self.pump() and not self.messages:
                raise EOFError(self.close)
        return self.messages.pop(0)

    async def run_until_closed(self) -> CloseConnection | None:
        """Pump until the server closes (close frame or EOF); return its close frame, if any."""
        while await self.pump():
            pass
        if self.close is None:
            # Drain to EOF so the server's close completes.
            pass
        return self.close


async def handshake(
    port: int, path: str = "/ws", host: str = "127.0.0.1"
) -> tuple[trio.SocketStream, WSConnection]:
    stream = await trio.open_tcp_stream(host, port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"{host}:{port}", target=path)))
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed during the handshake")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return stream, ws
            if isinstance(event, RejectConnection | RejectData):
                raise ConnectionError(f"rejected: {event}")


@asynccontextmanager
async def connect(
    port: int, path: str = "/ws", *, answer_pings: bool = True
) -> AsyncIterator[RawClient]:
    stream, ws = await handshake(port, path)
    client = RawClient(stream, ws, answer_pings=answer_pings)
    try:
        yield client
    finally:
        await trio.aclose_forcefully(stream)
