"""The embedded broker: each room's log in this process (one node)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, final

import trio

from ..broker import (
    BrokerStatistics,
    BrokerUnavailable,
    Subscriber,
    check_room_name,
    sequenced_prefix,
)
from ..errors import ConfigError, ConnectionClosed
from ..resume import LogLimits, NewSession, ResumeOutcome, ResumeServer, Room, Session

__all__ = ["EmbeddedBroker"]

_SEQ_ROOM: Final = 21


@final
class EmbeddedBroker:
    """A :class:`~trioheart.broker.Broker` that keeps every room's log in this process.

    The default, and all one server process needs: each room is a
    :class:`~trioheart.resume.Room`. A room without subscribers is kept for
    :attr:`keep_empty_for` seconds, so that its last member can still
    resume, and then dropped (a later join starts a new epoch).

    Args:
      resume_server: Signs and checks tokens; a random key if ``None``.
      limits: Each room log's bounds.
      clock: The ``now`` of the resume protocol; the Trio clock by default.
      max_rooms: At most this many rooms; a join that would make one more
        raises :class:`~trioheart.broker.BrokerUnavailable`.
    """

    def __init__(
        self,
        *,
        resume_server: ResumeServer | None = None,
        limits: LogLimits | None = None,
        clock: Callable[[], float] = trio.current_time,
        max_rooms: int = 10_000,
    ) -> None:
        if isinstance(max_rooms, bool) or not isinstance(max_rooms, int) or max_rooms < 1:
            raise ConfigError(f"max_rooms must be a positive integer; got {max_rooms!r}")
        self._resume = resume_server if resume_server is not None else ResumeServer()
        self._limits = limits if limits is not None else LogLimits()
        self._clock = clock
        self._max_rooms = max_rooms
        #: The rooms, by name.
        self.rooms: dict[str, Room[Subscriber]] = {}
        self._empty_since: dict[str, float] = {}
        self._published = 0
        self._delivered = 0

    @property
    def resume_server(self) -> ResumeServer:
        """Signs and checks the session tokens."""
        return self._resume

    @property
    def limits(self) -> LogLimits:
        """Each room log's bounds."""
        return self._limits

    @property
    def keep_empty_for(self) -> float:
        """How long a room without subscribers is kept: ``max(max_age, token_ttl)``."""
        return max(self._limits.max_age, self._resume.token_ttl)

    def _room(self, name: str, now: float) -> Room[Subscriber]:
        check_room_name(name)
        self._sweep(now)
        room = self.rooms.get(name)
        if room is None:
            if len(self.rooms) >= self._max_rooms:
                raise BrokerUnavailable(f"this node holds max_rooms={self._max_rooms} rooms")
            room = self.rooms[name] = Room(name, self._resume, self._limits)
            self._empty_since[name] = now
        return room

    def _sweep(self, now: float) -> None:
        keep = self.keep_empty_for
        for name, since in list(self._empty_since.items()):
            if now - since <= keep:
                break  # oldest first: the rest are younger
            del self._empty_since[name]
            room = self.rooms.get(name)
            if room is not None and not room.subscribers:
                del self.rooms[name]

    async def join(
        self,
        room: str,
        subscriber: Subscriber,
        *,
        identity: str = "",
        request: str | Mapping[str, Any] | None = None,
        replay_limits: LogLimits | None = None,
    ) -> NewSession | ResumeOutcome:
        """See :meth:`Broker.join <trioheart.broker.Broker.join>`. Always a checkpoint."""
        await trio.lowlevel.checkpoint()
        now = self._clock()
        the_room = self._room(room, now)
        outcome: NewSession | ResumeOutcome
        if request is None:
            outcome = the_room.join(subscriber, identity=identity, now=now)
        else:
            outcome = the_room.resume(
                subscriber, request, identity=identity, now=now, replay_limits=replay_limits
            )
        if outcome.goes_live:
            self._empty_since.pop(room, None)
            try:
                for text in outcome.messages():
                    subscriber.send_nowait(text)
            except ConnectionClosed:
                self.leave(room, subscriber)
                raise
        return outcome

    def leave(self, room: str, subscriber: Subscriber) -> None:
        """See :meth:`Broker.leave <trioheart.broker.Broker.leave>`."""
        the_room = self.rooms.get(room)
        if the_room is None:
            return
        the_room.leave(subscriber)
        if not the_room.subscribers:
            self._empty_since.pop(room, None)
            self._empty_since[room] = self._clock()

    def publish_nowait(self, room: str, message: Mapping[str, Any]) -> None:
        """See :meth:`Broker.publish_nowait <trioheart.broker.Broker.publish_nowait>`.

        Appends at once and queues the text to every subscriber.
        """
        now = self._clock()
        the_room = self._room(room, now)
        if "seq" not in message:
            size = len(sequenced_prefix(message).encode("utf-8")) + _SEQ_ROOM
            if size > self._limits.max_bytes:
                raise ConfigError(
                    f"message must fit the room log's max_bytes ({self._limits.max_bytes}); "
                    f"got about {size} bytes"
                )
        publication = the_room.publish(message, now=now)
        self._published += 1
        text = publication.entry.text
        for subscriber in publication.recipients:
            try:
                subscriber.send_nowait(text)
            except ConnectionClosed:
                the_room.leave(subscriber)
            else:
                self._delivered += 1

    async def publish(self, room: str, message: Mapping[str, Any]) -> None:
        """Publish; the log has it when this returns. Always a checkpoint."""
        await trio.lowlevel.checkpoint()
        self.publish_nowait(room, message)

    def refresh(self, session: Session) -> Session:
        """See :meth:`Broker.refresh <trioheart.broker.Broker.refresh>`."""
        return self._resume.refresh(session, now=self._clock())

    def statistics(self) -> BrokerStatistics:
        """A snapshot of the counters (always up, never an outbox)."""
        return BrokerStatistics(
            kind="embedded",
            up=True,
            down_since=None,
            outages=0,
            rooms=len(self.rooms),
            subscribers=sum(len(room.subscribers) for room in self.rooms.values()),
            published=self._published,
            rejected=0,
            outbox_messages=0,
            outbox_bytes=0,
            delivered=self._delivered,
            room_resets=0,
        )
