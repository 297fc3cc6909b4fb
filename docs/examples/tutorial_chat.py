"""The tutorial's chat server: rooms, broadcast, and a liveness report.

Run it with ``python docs/examples/tutorial_chat.py`` and connect any
WebSocket client to ws://127.0.0.1:8000/?room=lobby.
"""

from __future__ import annotations

import json

import trio

import trioheart

rooms: dict[str, set[trioheart.Connection]] = {}


async def chat(conn: trioheart.Connection) -> None:
    room = rooms.setdefault(conn.query.get("room", "lobby"), set())
    room.add(conn)
    try:
        async for message in conn:
            frame = json.dumps({"from": conn.conn_id, "text": message})
            for member in room:
                if not member.closed:
                    member.send_nowait(frame)  # never waits on a slow member
    finally:
        room.discard(conn)


config = trioheart.ConnectionConfig(
    heartbeat=trioheart.DetectorConfig(ping_interval=15, ping_timeout=10),
    keepalive=trioheart.KeepaliveConfig(idle=30, interval=10, count=3),
)


async def main(port: int = 8000) -> None:
    await trioheart.serve(chat, "127.0.0.1", port, config=config)


if __name__ == "__main__":
    trio.run(main)
