"""A fake subscriber for broker tests: records what it is sent, wakes waiters."""

from __future__ import annotations

import json
from typing import Any

import trio

from trioheart.errors import ConnectionClosed
from trioheart.reasons import CloseReason


class FakeSubscriber:
    """What a broker sends to, without a socket: a list of texts and a close reason."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.texts: list[str] = []
        self.closed: CloseReason | None = None
        self._changed = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        return f"<FakeSubscriber {self.name}>"

    def send_nowait(self, message: str) -> None:
        if self.closed is not None:
            raise ConnectionClosed(self.closed, self.closed.code)
        self.texts.append(message)
        self._changed.unpark_all()

    def close(self, reason: CloseReason, detail: str = "") -> None:
        if self.closed is None:
            self.closed = reason
        self._changed.unpark_all()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.texts]

    def chat(self) -> list[tuple[int, str]]:
        """The (seq, text) of every chat message received."""
        return [(m["seq"], m["text"]) for m in self.messages if m.get("type") == "chat"]

    def hello(self) -> dict[str, Any]:
        return next(m for m in self.messages if m["type"] == "hello")

    async def wait_chat(self, count: int) -> None:
        """Wait until *count* chat messages arrived (bound it with fail_after)."""
        while len(self.chat()) < count:
            await self._changed.park()

    async def wait_closed(self) -> CloseReason:
        while self.closed is None:
            await self._changed.park()
        return self.closed


def resume_request(hello: dict[str, Any], seq: int) -> dict[str, Any]:
    return {"type": "resume", "token": hello["token"], "epoch": hello["epoch"], "seq": seq}
