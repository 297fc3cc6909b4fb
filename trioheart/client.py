"""The Trio client: :func:`connect` for one connection, :func:`open_resuming` to stay connected.

Both tune the socket before the handshake and run trioheart's heartbeat on
the client's side too: a server that goes silent is noticed within the pong
window, not when TCP gives up. :func:`open_resuming` reconnects with
jittered exponential backoff and resumes by sequence number::

    async with trioheart.client.open_resuming(
        "ws://127.0.0.1:8765/ws?room=lobby&name=ann"
    ) as client:
        async for event in client:
            match event:
                case trioheart.client.Connected(resumed=resumed, replayed=n):
                    ...
                case trioheart.client.Message(seq=seq, data=data):
                    ...
                case trioheart.client.Reset():
                    ...  # fetch the room's state afresh
                case trioheart.client.Disconnected(reason=reason, retry_in=delay):
                    ...
"""

from __future__ import annotations

from ._trio.client import (
    ClientEvent,
    ClientStatistics,
    Connected,
    Disconnected,
    HandshakeRejected,
    Message,
    NotConnected,
    ReconnectFailed,
    Reset,
    ResumingClient,
    connect,
    open_resuming,
)

__all__ = [
    "ClientEvent",
    "ClientStatistics",
    "Connected",
    "Disconnected",
    "HandshakeRejected",
    "Message",
    "NotConnected",
    "ReconnectFailed",
    "Reset",
    "ResumingClient",
    "connect",
    "open_resuming",
]
