"""Room logs shared by several server processes: the broker interface, sans-IO.

One process holds only so many connections, and a client that reconnects
through a load balancer may land on another process (a *node*). For resume
to work there, every node must agree on each room's sequence numbers and be
able to replay any of them. A *broker* is what they agree through:

* the embedded broker (:class:`trioheart.EmbeddedBroker`) keeps each room's
  log in this process, exactly as :class:`~trioheart.resume.Room` does; it
  is the default and what one node needs;
* the Redis broker (:func:`trioheart.open_redis_broker`) keeps each room's
  log in a Redis stream, assigns each message its seq there (once, for all
  nodes), and every node reads the stream to fan messages out to its own
  connections.

Both implement :class:`Broker`. This module holds the interface and the
parts of the Redis broker that do no I/O, so that they can be proven with
hypothesis before a socket is involved:

* :class:`RoomMirror`: a node's copy of one shared room log plus the node's
  subscribers in it. It answers joins and resumes from the copy in one
  synchronous step (as :class:`~trioheart.resume.Room` does), takes the
  shared log's entries in order, and says when the copy can no longer be
  trusted (the log lost or skipped entries this node never read), so that
  its subscribers are told to resync instead of silently missing messages;
* :class:`Outbox`: the bounded queue of messages this node published and
  the shared log has not confirmed yet. It survives a broker outage: when
  the broker returns, the same messages are sent again with the same
  idempotency counters, so none is lost and none is appended twice;
* :class:`LinkMonitor`: whether the broker is reachable, since when, and
  the ``broker.unavailable`` / ``broker.recovered`` transitions.

See :doc:`/explanation/scale-out`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Final, Generic, Protocol, TypeVar, final

import attrs

from .errors import ConfigError, TrioheartError
from .reasons import CloseReason
from .resume import (
    LogEntry,
    LogLimits,
    NewSession,
    ResetReason,
    ResumeOutcome,
    ResumeServer,
    ResumeStateError,
    RoomLog,
    Session,
    encode_message,
)

__all__ = [
    "Broker",
    "BrokerRecovered",
    "BrokerStatistics",
    "BrokerUnavailable",
    "BrokerWentDown",
    "Delivery",
    "LinkMonitor",
    "Outbox",
    "OutboxBatch",
    "OutboxLimits",
    "RoomMirror",
    "Snapshot",
    "Subscriber",
    "check_room_name",
    "sequenced_prefix",
    "sequenced_text",
]

_ROOM_MAX: Final = 200


class BrokerUnavailable(TrioheartError):
    """The broker cannot take this request now; nothing was lost or half-done.

    Raised by :meth:`Broker.publish_nowait` when the bounded outbox is full
    (the broker has been unreachable for a while), and by
    :meth:`Broker.join` when the room's log cannot be reached or this node
    holds too many rooms. Tell the client (an error frame for a message it
    sent; close with :attr:`~trioheart.CloseReason.BROKER_UNAVAILABLE` for a
    join) and let it try again later.
    """


def check_room_name(room: str) -> str:
    """*room*, if a broker can use it as a room name.

    Raises:
      ConfigError: for a name that is not a string of 1 to 200 printable
        characters, or that holds ``{`` or ``}`` (Redis keys use the name
        as their hash tag).
    """
    if (
        not isinstance(room, str)
        or not 0 < len(room) <= _ROOM_MAX
        or not room.isprintable()
        or "{" in room
        or "}" in room
    ):
        raise ConfigError(
            f"room must be 1 to {_ROOM_MAX} printable characters without braces; got {room!r}"
        )
    return room


def sequenced_prefix(message: Mapping[str, Any]) -> str:
    """The wire text of *message* up to its seq: ``sequenced_text`` is this + seq + ``}``.

    A shared log assigns the seq where the message is appended (in Redis),
    so the node sends this prefix and the log completes it. The result is
    byte for byte what :meth:`RoomLog.append <trioheart.resume.RoomLog.append>`
    would produce: ``"seq"`` is the last key of the object.

    Raises:
      ConfigError: if *message* carries its own ``"seq"`` or is not
        JSON-serialisable.
    """
    if "seq" in message:
        raise ConfigError(
            f"message must not carry its own seq; the log assigns it; got {message!r}"
        )
    body = encode_message(message)
    return body[:-1] + ("," if len(body) > 2 else "") + '"seq":'


def sequenced_text(prefix: str, seq: int) -> str:
    """The message's wire text once the log gave it *seq* (see :func:`sequenced_prefix`)."""
    return f"{prefix}{seq}}}"


# --------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------


class Subscriber(Hashable, Protocol):
    """What a broker sends to: a :class:`trioheart.Connection` is one."""

    def send_nowait(self, message: str) -> None:
        """Queue *message* without blocking; raise :class:`~trioheart.ConnectionClosed` if gone."""

    def close(self, reason: CloseReason, detail: str = "") -> None:
        """Start closing with *reason*, without waiting."""


@final
@attrs.frozen(kw_only=True)
class BrokerStatistics:
    """A snapshot of one node's broker, as returned by :meth:`Broker.statistics`."""

    #: ``"embedded"`` or ``"redis"``.
    kind: str
    #: Whether the shared log is reachable now (always ``True`` when embedded).
    up: bool
    #: When it became unreachable (the broker's clock), or ``None`` while up.
    down_since: float | None
    #: Times it became unreachable since the node started.
    outages: int
    #: Rooms this node holds open now.
    rooms: int
    #: Subscribers live in them, on this node.
    subscribers: int
    #: Messages this node accepted for publishing.
    published: int
    #: Publishes refused because the outbox was full (each one told to the caller).
    rejected: int
    #: Messages waiting in the outbox for the shared log.
    outbox_messages: int
    #: Bytes of message text waiting in the outbox.
    outbox_bytes: int
    #: Messages sent to this node's subscribers.
    delivered: int
    #: Times a room's copy on this node was dropped because the shared log
    #: lost or skipped entries (each of its subscribers was closed with
    #: ``room_reset``, and learns ``reset`` when it resumes).
    room_resets: int


class Broker(Protocol):
    """A node's access to the room logs: one per server process.

    The contract, which both brokers keep and the tests check:

    * every message published in a room gets the room's next seq, once,
      whichever node published it, and every subscriber of that room on any
      node receives the messages in seq order, each once;
    * :meth:`join` makes a subscriber live from exactly the head it read:
      the outcome's messages (``hello``, or ``resumed`` and the replay) are
      queued to it before any later message;
    * a resume is decided against the shared log, so a client can resume
      on any node whose :class:`~trioheart.resume.ResumeServer` has the key;
    * when the shared log is unreachable nothing is dropped silently: a
      publish is kept (bounded) or refused with :class:`BrokerUnavailable`,
      and a subscriber that cannot be given what it is owed is closed with
      :attr:`~trioheart.CloseReason.ROOM_RESET` so that its resume says
      ``reset``.
    """

    @property
    def resume_server(self) -> ResumeServer:
        """Signs and checks the session tokens."""

    @property
    def limits(self) -> LogLimits:
        """Each room log's bounds."""

    async def join(
        self,
        room: str,
        subscriber: Subscriber,
        *,
        identity: str = "",
        request: str | Mapping[str, Any] | None = None,
        replay_limits: LogLimits | None = None,
    ) -> NewSession | ResumeOutcome:
        """Make *subscriber* live in *room*: a fresh session, or a resume of *request*.

        *replay_limits* narrows what this subscriber may be replayed below
        the room log's bounds (a heartbeat policy's ``resume_*`` keys);
        beyond it the resume is a ``reset`` with reason ``trimmed``.

        Unless the outcome is a :class:`~trioheart.resume.ResumeRefused`,
        its :meth:`messages` have been queued to *subscriber* with
        ``send_nowait`` in the same step that made it live. On a refusal
        nothing was sent: send the refusal and close.

        Raises:
          BrokerUnavailable: if the room's log cannot be reached now.
          ConfigError: for a bad room name.
        """

    def leave(self, room: str, subscriber: Subscriber) -> None:
        """Stop sending to *subscriber* (idempotent). Its session stays resumable."""

    def publish_nowait(self, room: str, message: Mapping[str, Any]) -> None:
        """Publish *message* in *room* without waiting; every subscriber gets it with its seq.

        Raises:
          BrokerUnavailable: if it cannot be kept (the outbox is full).
          ConfigError: if *message* has a ``"seq"``, is not JSON, or is
            larger than the log's ``max_bytes``.
        """

    async def publish(self, room: str, message: Mapping[str, Any]) -> None:
        """Publish *message* and wait until the room's log has it."""

    def refresh(self, session: Session) -> Session:
        """A fresh token for *session*; send :meth:`Session.token_message` of it."""

    def statistics(self) -> BrokerStatistics:
        """A snapshot of the counters."""


# --------------------------------------------------------------------------
# The link
# --------------------------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class BrokerWentDown:
    """The shared log became unreachable (log event ``broker.unavailable``)."""

    at: float
    error: str


@final
@attrs.frozen(kw_only=True)
class BrokerRecovered:
    """The shared log is reachable again (log event ``broker.recovered``)."""

    at: float
    #: How long it was unreachable.
    down_for: float


@final
class LinkMonitor:
    """Whether the shared log is reachable; turns failures into transitions.

    Starts *down* (nothing is known before the first connection), but a
    first connection is not reported as a recovery.
    """

    __slots__ = ("_connected_once", "_down_since", "_last_error", "_outages", "_reported", "_up")

    def __init__(self, *, now: float) -> None:
        self._up = False
        self._down_since: float | None = now
        self._outages = 0
        self._connected_once = False
        self._reported = False
        self._last_error = ""

    @property
    def up(self) -> bool:
        """Whether the shared log is reachable."""
        return self._up

    @property
    def down_since(self) -> float | None:
        """When it became unreachable, or ``None`` while up."""
        return None if self._up else self._down_since

    @property
    def outages(self) -> int:
        """Times it went from reachable to unreachable."""
        return self._outages

    @property
    def last_error(self) -> str:
        """The last failure, as text."""
        return self._last_error

    @property
    def connected_once(self) -> bool:
        """Whether a connection ever worked."""
        return self._connected_once

    def failed(self, *, now: float, error: str) -> BrokerWentDown | None:
        """A command or connection failed; the event if it is news.

        News is the end of a working connection (an outage begins, counted
        in :attr:`outages`) or the first failure of a node that never
        connected; further failed attempts during the same outage are not.
        """
        self._last_error = error
        if not self._up:
            if self._reported:
                return None
            self._reported = True
            since = self._down_since if self._down_since is not None else now
            return BrokerWentDown(at=since, error=error)
        self._up = False
        self._reported = True
        self._down_since = now
        self._outages += 1
        return BrokerWentDown(at=now, error=error)

    def connected(self, *, now: float) -> BrokerRecovered | None:
        """A connection works again; the event if this ends an outage."""
        if self._up:
            return None
        self._up = True
        self._reported = False
        first, self._connected_once = not self._connected_once, True
        since = self._down_since if self._down_since is not None else now
        self._down_since = None
        if first:
            return None
        return BrokerRecovered(at=now, down_for=max(0.0, now - since))


# --------------------------------------------------------------------------
# The outbox
# --------------------------------------------------------------------------


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name} must be a positive integer; got {value!r}")


@final
@attrs.frozen(kw_only=True)
class OutboxLimits:
    """How much a node keeps for the shared log while it cannot reach it.

    Args:
      max_messages: At most this many messages wait, over all rooms.
      max_bytes: At most this many bytes of message text wait.

    Raises:
      ConfigError: naming the field and the value, for a non-positive one.
    """

    max_messages: int = attrs.field(default=10_000, validator=_positive_int)
    max_bytes: int = attrs.field(default=10_000_000, validator=_positive_int)


@final
@attrs.frozen(kw_only=True)
class OutboxBatch:
    """Messages of one room to append in one step, oldest first."""

    room: str
    #: The idempotency counter of the first; the others follow by one each
    #: within the batch order (counters are per node, increasing, and may
    #: skip between rooms).
    counters: tuple[int, ...]
    #: The :func:`sequenced_prefix` of each message.
    prefixes: tuple[str, ...]

    @property
    def size(self) -> int:
        """Bytes of prefix text in the batch."""
        return sum(len(p.encode("utf-8")) for p in self.prefixes)


@attrs.define
class _Pending:
    counter: int
    prefix: str
    size: int


@final
class Outbox:
    """Messages this node published that the shared log has not confirmed.

    One FIFO per room; at most one batch per room is in flight, so a room's
    messages reach the log in the order they were published here. Each
    message has a counter from one increasing sequence per node: the log
    remembers the highest counter it appended for this node and room, so a
    batch sent again after a lost reply is not appended twice.

    Bounded by :class:`OutboxLimits`: :meth:`offer` says ``False`` when the
    message does not fit, and nothing already accepted is ever dropped.
    """

    __slots__ = ("_bytes", "_count", "_flying", "_limits", "_next_counter", "_queues")

    def __init__(self, limits: OutboxLimits | None = None) -> None:
        self._limits = OutboxLimits() if limits is None else limits
        self._queues: dict[str, deque[_Pending]] = {}
        self._flying: dict[str, int] = {}  # room -> messages in flight (at the head)
        self._count = 0
        self._bytes = 0
        self._next_counter = 1

    @property
    def limits(self) -> OutboxLimits:
        """The bounds in force."""
        return self._limits

    def __len__(self) -> int:
        return self._count

    @property
    def queued_bytes(self) -> int:
        """Bytes of message text waiting."""
        return self._bytes

    def offer(self, room: str, prefix: str) -> int | None:
        """Queue one message; its counter, or ``None`` if it does not fit."""
        size = len(prefix.encode("utf-8"))
        limits = self._limits
        if self._count + 1 > limits.max_messages or self._bytes + size > limits.max_bytes:
            return None
        counter = self._next_counter
        self._next_counter += 1
        self._queues.setdefault(room, deque()).append(_Pending(counter, prefix, size))
        self._count += 1
        self._bytes += size
        return counter

    def ready(self) -> list[str]:
        """Rooms with messages waiting and no batch in flight, oldest room first."""
        return [room for room in self._queues if room not in self._flying]

    def take(self, room: str, *, max_messages: int, max_bytes: int) -> OutboxBatch:
        """The next batch of *room* (at least one message), marked in flight.

        Raises:
          ResumeStateError: if *room* has nothing waiting or a batch in flight.
        """
        queue = self._queues.get(room)
        if not queue or room in self._flying:
            raise ResumeStateError(f"room {room!r} has no batch to take")
        taken: list[_Pending] = []
        size = 0
        for pending in queue:
            if taken and (len(taken) >= max_messages or size + pending.size > max_bytes):
                break
            taken.append(pending)
            size += pending.size
        self._flying[room] = len(taken)
        return OutboxBatch(
            room=room,
            counters=tuple(p.counter for p in taken),
            prefixes=tuple(p.prefix for p in taken),
        )

    def acked(self, batch: OutboxBatch) -> None:
        """The log has every message of *batch*: drop them."""
        count = self._flying.pop(batch.room)
        queue = self._queues[batch.room]
        for _ in range(count):
            pending = queue.popleft()
            self._count -= 1
            self._bytes -= pending.size
        if not queue:
            del self._queues[batch.room]

    def failed(self, batch: OutboxBatch) -> None:
        """*batch* may or may not have reached the log: keep it, to send again."""
        self._flying.pop(batch.room, None)

    def fail_all(self) -> None:
        """Every batch in flight failed (the connection was lost)."""
        self._flying.clear()

    def is_pending(self, room: str, counter: int) -> bool:
        """Whether the message with *counter* in *room* still waits for the log."""
        queue = self._queues.get(room)
        if not queue:
            return False
        return queue[0].counter <= counter

    def counters(self, room: str) -> tuple[int, ...]:
        """The counters waiting for *room*, oldest first (for tests and diagnostics)."""
        return tuple(p.counter for p in self._queues.get(room, ()))


# --------------------------------------------------------------------------
# A node's copy of one shared room log
# --------------------------------------------------------------------------

T = TypeVar("T", bound=Hashable)


@final
@attrs.frozen(kw_only=True)
class Snapshot:
    """What the shared log says about a room, read in one atomic step."""

    #: The log's epoch.
    epoch: str
    #: The seq of its newest message (0 before the first).
    last_seq: int
    #: The oldest seq it still keeps (``last_seq + 1`` when it keeps none).
    first_seq: int
    #: Entries, oldest first: every kept one, or those after the head the
    #: reader already had (:attr:`after`).
    entries: tuple[LogEntry, ...]
    #: The head the reader asked to continue from (0: it asked for everything).
    after: int = 0
    #: The text of the entry at :attr:`after`, if the log still keeps it; a
    #: copy compares it with its own to catch a log that was rolled back.
    check_text: str | None = None


@final
@attrs.frozen(kw_only=True)
class Delivery(Generic[T]):
    """What to do after a :class:`RoomMirror` took entries from the shared log."""

    #: The texts to send, in order, to every one of :attr:`recipients`.
    texts: tuple[str, ...] = ()
    #: The live subscribers at that moment.
    recipients: tuple[T, ...] = ()
    #: Set when the copy can no longer be trusted: the mirror is closed and
    #: every one of :attr:`evicted` must be closed with ``room_reset``.
    reset: ResetReason | None = None
    #: The subscribers to close.
    evicted: tuple[T, ...] = ()


def _request_position(request: str | Mapping[str, Any] | None) -> tuple[str, int] | None:
    """The (epoch, seq) a resume request names, if it names them well."""
    if request is None:
        return None
    if isinstance(request, str):
        try:
            request = json.loads(request)
        except (ValueError, RecursionError):
            return None
    if not isinstance(request, Mapping):
        return None
    epoch, seq = request.get("epoch"), request.get("seq")
    if not isinstance(epoch, str) or isinstance(seq, bool) or not isinstance(seq, int):
        return None
    return epoch, seq


@final
class RoomMirror(Generic[T]):
    """One node's copy of a shared room log, and the node's subscribers in it.

    Made from a full :class:`Snapshot`; then fed, in order, the entries the
    node reads from the shared log (:meth:`receive`) and, after a lost
    connection, a snapshot of what it missed (:meth:`reconcile`). Joins and
    resumes are decided against the copy in one synchronous step, like
    :class:`~trioheart.resume.Room`, so a subscriber is live from exactly
    the copy's head: what came before is in its replay, what comes after
    reaches it through :meth:`receive`.

    The copy is kept to the same :class:`~trioheart.resume.LogLimits` as
    the shared log. When the shared log turns out to have skipped entries
    this node never read (they were trimmed first), to have a new epoch
    (it lost its data), or to have been rolled back, the copy is closed:
    the :class:`Delivery` names the subscribers to close with
    ``room_reset``. Each of them reconnects, resumes, and is told ``reset``
    by a fresh copy: never a silent hole.

    Args:
      name: The room.
      server: Signs and checks the tokens.
      snapshot: A full snapshot (``after == 0``).
      limits: The log's bounds.
      now: The current time (the copy's age bound counts from entries' ``at``).

    Raises:
      ConfigError: for a snapshot that is not full or whose entries are not
        contiguous up to its head.
    """

    __slots__ = ("_closed", "_log", "_name", "_server", "_subscribers")

    def __init__(
        self,
        name: str,
        server: ResumeServer,
        snapshot: Snapshot,
        *,
        limits: LogLimits | None = None,
        now: float,
    ) -> None:
        if snapshot.after != 0:
            raise ConfigError(f"a mirror starts from a full snapshot; got after={snapshot.after}")
        self._name = check_room_name(name)
        self._server = server
        start = snapshot.entries[0].seq - 1 if snapshot.entries else snapshot.last_seq
        self._log = RoomLog(limits, epoch=snapshot.epoch, last_seq=start)
        for entry in snapshot.entries:
            self._log.add(entry, now=now)
        if self._log.last_seq != snapshot.last_seq:
            raise ConfigError(
                f"snapshot entries end at {self._log.last_seq}, not at its head {snapshot.last_seq}"
            )
        self._subscribers: dict[T, None] = {}
        self._closed = False

    @property
    def name(self) -> str:
        """The room."""
        return self._name

    @property
    def log(self) -> RoomLog:
        """The copy of the room's log."""
        return self._log

    @property
    def epoch(self) -> str:
        """The epoch of the copy."""
        return self._log.epoch

    @property
    def last_seq(self) -> int:
        """The copy's head: the newest seq this node has."""
        return self._log.last_seq

    @property
    def closed(self) -> bool:
        """Whether the copy was found untrustworthy (make a new one to go on)."""
        return self._closed

    @property
    def subscribers(self) -> tuple[T, ...]:
        """The live subscribers on this node, in join order."""
        return tuple(self._subscribers)

    def _check_usable(self, subscriber: T) -> None:
        if self._closed:
            raise ResumeStateError(f"the copy of room {self._name!r} is closed; open a new one")
        if subscriber in self._subscribers:
            raise ResumeStateError(f"{subscriber!r} is already live in room {self._name!r}")

    def needs_catch_up(self, request: str | Mapping[str, Any] | None) -> bool:
        """Whether *request* may name a position this copy has not reached yet.

        A client cut off from another node may hold messages newer than
        this copy (the other node's reader was ahead), or an epoch this
        copy has not seen yet. Deciding now would refuse it
        (``invalid_seq``) or reset it for nothing; the node should first
        bring the copy up to date (:meth:`reconcile`) and then decide.
        """
        position = _request_position(request)
        if position is None:
            return False
        epoch, seq = position
        return epoch != self.epoch or seq > self.last_seq

    def join(self, subscriber: T, *, identity: str = "", now: float) -> NewSession:
        """Start a fresh session for *subscriber*, live from the copy's head.

        Raises:
          ResumeStateError: if *subscriber* is already live, or the copy is closed.
        """
        self._check_usable(subscriber)
        outcome = self._server.new_session(self._log, room=self._name, identity=identity, now=now)
        self._subscribers[subscriber] = None
        return outcome

    def resume(
        self,
        subscriber: T,
        request: str | Mapping[str, Any],
        *,
        identity: str = "",
        now: float,
        replay_limits: LogLimits | None = None,
    ) -> ResumeOutcome:
        """Decide *request* against the copy and, unless refused, make *subscriber* live.

        *replay_limits* bounds what this subscriber may be replayed
        (:meth:`ResumeServer.resume <trioheart.resume.ResumeServer.resume>`).

        Raises:
          ResumeStateError: if *subscriber* is already live, or the copy is closed.
        """
        self._check_usable(subscriber)
        outcome = self._server.resume(
            request,
            self._log,
            room=self._name,
            identity=identity,
            now=now,
            replay_limits=replay_limits,
        )
        if outcome.goes_live:
            self._subscribers[subscriber] = None
        return outcome

    def leave(self, subscriber: T) -> None:
        """Stop sending to *subscriber* (idempotent)."""
        self._subscribers.pop(subscriber, None)

    def refresh(self, session: Session, *, now: float) -> Session:
        """A fresh token for *session*."""
        return self._server.refresh(session, now=now)

    def _close(self, reason: ResetReason) -> Delivery[T]:
        self._closed = True
        evicted = tuple(self._subscribers)
        self._subscribers.clear()
        return Delivery(reset=reason, evicted=evicted)

    def receive(self, epoch: str, entries: Iterable[LogEntry], *, now: float) -> Delivery[T]:
        """Take entries read from the shared log, oldest first.

        Entries at or below the head are skipped (they were already taken,
        e.g. by a :meth:`reconcile`); the next ones are kept and delivered.
        An entry of another epoch, or one past ``head + 1`` (the log
        dropped what this node had not read yet), closes the copy.

        Args:
          epoch: The epoch the entries belong to.
          entries: Entries in seq order.
          now: The current time.
        """
        if self._closed:
            return Delivery()
        if epoch != self.epoch:
            return self._close(ResetReason.EPOCH_CHANGED)
        texts: list[str] = []
        for entry in entries:
            if entry.seq <= self._log.last_seq:
                continue
            if entry.seq != self._log.last_seq + 1:
                return self._close_after(texts, ResetReason.TRIMMED)
            self._log.add(entry, now=now)
            texts.append(entry.text)
        if not texts:
            return Delivery()
        return Delivery(texts=tuple(texts), recipients=tuple(self._subscribers))

    def _close_after(self, texts: list[str], reason: ResetReason) -> Delivery[T]:
        # What was taken before the hole is still delivered; then the copy closes.
        closing = self._close(reason)
        return attrs.evolve(closing, texts=tuple(texts), recipients=closing.evicted)

    def reconcile(self, snapshot: Snapshot, *, now: float) -> Delivery[T]:
        """Bring the copy up to date from a snapshot taken after ``last_seq``.

        The snapshot must have been asked for with this copy's epoch and
        ``after = last_seq`` (an older *after* is fine: entries already
        taken are skipped). The copy closes when the log's epoch changed,
        its head went back, the entry at ``after`` differs from ours (the
        log was rolled back and grew again), or it no longer keeps
        ``after + 1``.
        """
        if self._closed:
            return Delivery()
        if snapshot.epoch != self.epoch:
            return self._close(ResetReason.EPOCH_CHANGED)
        head = self._log.last_seq
        if snapshot.last_seq < head or snapshot.after > head:
            return self._close(ResetReason.EPOCH_CHANGED)
        if snapshot.check_text is not None and self._log.first_seq <= snapshot.after:
            mine = self._log.since(snapshot.after - 1)
            if mine and mine[0].text != snapshot.check_text:
                return self._close(ResetReason.EPOCH_CHANGED)
        if snapshot.last_seq > head and snapshot.first_seq > head + 1:
            return self._close(ResetReason.TRIMMED)
        return self.receive(snapshot.epoch, snapshot.entries, now=now)
