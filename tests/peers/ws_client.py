"""A separate client process: connects with trio-websocket and idles.

Usage: python -m tests.peers.ws_client URL
Prints "connected" on stdout once the handshake is done. Its trio-websocket
reader answers pings, so the server sees a healthy peer until the process
is frozen (SIGSTOP), when only L7 can notice: the kernel keeps ACKing.
"""

from __future__ import annotations

import contextlib
import sys

import trio
import trio_websocket


async def main(url: str) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        print("connected", flush=True)
        while True:
            await ws.get_message()


if __name__ == "__main__":
    with contextlib.suppress(trio_websocket.ConnectionClosed, KeyboardInterrupt):
        trio.run(main, sys.argv[1])
