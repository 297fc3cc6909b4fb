"""The Redis broker: each room's log is a Redis stream shared by every node.

Per room ``R`` and key prefix ``P`` there are three keys, all with the hash
tag ``{R}`` so they live in one slot:

``P:{R}:meta``
    a hash: ``epoch`` (``"<ms>.<random>"``), ``ms`` (the epoch's creation
    time in ms, Redis's clock), ``seq`` (the room's head) and ``bytes``
    (text kept in the stream);
``P:{R}:log``
    the stream: entry ``<ms>-<seq>`` with fields ``t`` (the exact wire
    text) and ``a`` (when it was appended, the publishing node's wall clock);
``P:{R}:node:<node>``
    the highest outbox counter of that node appended in this room, so a
    batch sent again after a lost reply is not appended twice.

Two Lua scripts do all writes, each atomically: ``publish`` makes the epoch
if there is none, numbers a batch of messages with the next seqs, appends
them, and trims the stream by count, bytes and age (never the entries it
just appended); ``snapshot`` makes the epoch if there is none and reads the
head and the entries a node needs. A stream ID's first part is the epoch's
creation time, so a stream made anew after Redis lost its data sorts after
every ID of the old one and a node reading from its old position sees the
new epoch at once.

Every node reads the streams of the rooms it holds open with ``XREAD BLOCK``
on a connection of its own, and publishes through a bounded
:class:`~trioheart.broker.Outbox` on another. See :doc:`/explanation/scale-out`.
"""

from __future__ import annotations

import contextlib
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, final

import trio

from ..backoff import Backoff, Retrier
from ..broker import (
    BrokerStatistics,
    BrokerUnavailable,
    Delivery,
    LinkMonitor,
    Outbox,
    OutboxBatch,
    OutboxLimits,
    RoomMirror,
    Snapshot,
    Subscriber,
    check_room_name,
    sequenced_prefix,
)
from ..errors import ConfigError, ConnectionClosed
from ..log import get_logger
from ..reasons import CloseReason
from ..resume import LogEntry, LogLimits, NewSession, ResumeOutcome, ResumeServer, Session
from .redis import (
    RedisAddress,
    RedisConnection,
    RedisError,
    RedisReplyError,
    RedisUnavailable,
    parse_redis_url,
)

__all__ = ["RedisBroker", "open_redis_broker"]

_log = get_logger("trioheart.broker")

#: Most rooms one publishing round sends batches for (one pipeline).
_ROOMS_PER_ROUND: Final = 64
#: Most messages in one batch (one script call).
_BATCH_MESSAGES: Final = 256
#: Most entries one XREAD returns per stream.
_READ_COUNT: Final = 1000
#: A seq's digits plus the closing brace: what the log adds to a prefix.
_SEQ_ROOM: Final = 21

_PRELUDE: Final = r"""
local meta, log = KEYS[1], KEYS[2]
local function fmt(n) return string.format('%d', n) end
local function id_seq(id) return tonumber(string.sub(id, string.find(id, '-', 1, true) + 1)) end
local function ensure_epoch(suffix)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then return epoch end
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  epoch = fmt(ms) .. '.' .. suffix
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'ms', fmt(ms), 'seq', '0', 'bytes', '0')
  return epoch
end
"""

#: KEYS: meta, log, node. ARGV: now, max_messages, max_bytes, max_age, ttl_ms,
#: epoch suffix, then (counter, prefix) pairs. Returns {epoch, first, last}.
PUBLISH_SCRIPT: Final = (
    _PRELUDE
    + r"""
local now = tonumber(ARGV[1])
local max_n, max_b, max_age = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local epoch = ensure_epoch(ARGV[6])
local ms = redis.call('HGET', meta, 'ms')
local seq = tonumber(redis.call('HGET', meta, 'seq'))
local bytes = tonumber(redis.call('HGET', meta, 'bytes'))
local applied = tonumber(redis.call('GET', KEYS[3]) or '0')
local first, added = seq + 1, 0
for i = 7, #ARGV, 2 do
  local c = tonumber(ARGV[i])
  if c > applied then
    seq = seq + 1
    local text = ARGV[i + 1] .. fmt(seq) .. '}'
    redis.call('XADD', log, ms .. '-' .. fmt(seq), 't', text, 'a', ARGV[1])
    bytes = bytes + #text
    applied = c
    added = added + 1
  end
end
redis.call('SET', KEYS[3], fmt(applied), 'PX', ttl)
-- Trim, oldest first, by count, bytes and age; never what this call appended.
local n = redis.call('XLEN', log)
local dropped, last, cursor = 0, nil, '-'
while n - dropped > added do
  local batch = redis.call('XRANGE', log, cursor, '+', 'COUNT', 100)
  if #batch == 0 then break end
  local stop = false
  for _, e in ipairs(batch) do
    local remaining = n - dropped
    if remaining <= added then stop = true break end
    local size, at = #e[2][2], tonumber(e[2][4])
    if remaining > max_n or bytes > max_b or now - at > max_age then
      dropped, bytes, last = dropped + 1, bytes - size, e[1]
    else
      stop = true break
    end
  end
  if stop then break end
  cursor = '(' .. batch[#batch][1]
end
if last then redis.call('XTRIM', log, 'MINID', ms .. '-' .. fmt(id_seq(last) + 1)) end
redis.call('HSET', meta, 'seq', fmt(seq), 'bytes', fmt(bytes))
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', log, ttl)
return {epoch, first, seq}
"""
)

#: KEYS: meta, log. ARGV: known epoch, after, epoch suffix, ttl_ms, max count.
#: Returns {epoch, head, first kept, after, entries, text at after or nil}.
SNAPSHOT_SCRIPT: Final = (
    _PRELUDE
    + r"""
local epoch = ensure_epoch(ARGV[3])
local ms = redis.call('HGET', meta, 'ms')
local seq = tonumber(redis.call('HGET', meta, 'seq'))
local after = tonumber(ARGV[2])
local entries, check = {}, false
if epoch == ARGV[1] and after > 0 then
  if after <= seq then
    entries = redis.call('XRANGE', log, ms .. '-' .. fmt(after + 1), '+', 'COUNT', ARGV[5])
    local at = redis.call('XRANGE', log, ms .. '-' .. fmt(after), ms .. '-' .. fmt(after))
    if #at > 0 then check = at[1][2][2] end
  end
else
  after = 0
  local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', ARGV[5])
  for i = #newest, 1, -1 do entries[#entries + 1] = newest[i] end
end
local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
local first = seq + 1
if #oldest > 0 then first = id_seq(oldest[1][1]) end
redis.call('PEXPIRE', meta, ARGV[4])
if redis.call('EXISTS', log) == 1 then redis.call('PEXPIRE', log, ARGV[4]) end
return {epoch, seq, first, after, entries, check}
"""
)


def _epoch_ms(epoch: str) -> str:
    return epoch.split(".", 1)[0]


def _parse_entries(epoch: str, items: Sequence[Any]) -> tuple[str, list[LogEntry]]:
    """Stream entries as log entries; the epoch is another if an ID's time part differs."""
    ms = _epoch_ms(epoch)
    entries: list[LogEntry] = []
    for entry_id, fields in items:
        id_ms, _, seq_text = str(entry_id).partition("-")
        if id_ms != ms:
            return f"{id_ms}.?", entries  # a newer epoch's stream: never equal to ours
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        text = str(values["t"])
        entries.append(
            LogEntry(seq=int(seq_text), at=float(values["a"]), text=text, size=len(text.encode()))
        )
    return epoch, entries


def parse_snapshot(reply: Sequence[Any]) -> Snapshot:
    """The reply of :data:`SNAPSHOT_SCRIPT` as a :class:`~trioheart.broker.Snapshot`."""
    epoch, head, first, after, items, check = reply
    epoch = str(epoch)
    parsed_epoch, entries = _parse_entries(epoch, items or ())
    if parsed_epoch != epoch:  # pragma: no cover - one script call reads one epoch
        raise RedisUnavailable("snapshot mixed two epochs")
    return Snapshot(
        epoch=epoch,
        last_seq=int(head),
        first_seq=int(first),
        entries=tuple(entries),
        after=int(after),
        check_text=None if check is None else str(check),
    )


@final
class RedisBroker:
    """A node's broker on Redis. Make it with :func:`open_redis_broker`.

    Implements :class:`~trioheart.broker.Broker`; see there for the
    contract, and :func:`open_redis_broker` for the arguments.
    """

    def __init__(
        self,
        address: RedisAddress,
        *,
        resume_server: ResumeServer,
        limits: LogLimits,
        outbox: OutboxLimits,
        prefix: str,
        clock: Callable[[], float],
        command_timeout: float,
        block_interval: float,
        backoff: Backoff,
        max_rooms: int,
        room_linger: float,
        idle_ttl: float,
        rng: random.Random,
    ) -> None:
        self.address = address
        self._resume = resume_server
        self._limits = limits
        self._prefix = prefix
        self._clock = clock
        self._timeout = command_timeout
        self._block = block_interval
        self._backoff = backoff
        self._max_rooms = max_rooms
        self._linger = room_linger
        self._ttl_ms = max(1, int(idle_ttl * 1000))
        self._rng = rng
        #: This process's id in the shared keys (random per process).
        self.node_id = secrets.token_hex(8)
        self._mirrors: dict[str, RoomMirror[Subscriber]] = {}
        self._idle_since: dict[str, float] = {}
        self._opening: dict[str, trio.Event] = {}
        self._outbox = Outbox(outbox)
        self._outbox_changed = trio.Event()
        self._acks = trio.lowlevel.ParkingLot()
        self._link = LinkMonitor(now=clock())
        self._up_changed = trio.lowlevel.ParkingLot()
        self._cmd: RedisConnection | None = None
        self._cmd_lock = trio.Lock()
        self._failed = trio.Event()
        self._failure = ""
        self._session_was_up = False
        self._session: trio.Nursery | None = None
        self._reader_id: int | None = None
        self._shas: tuple[str, str] = ("", "")
        self._published = 0
        self._rejected = 0
        self._delivered = 0
        self._room_resets = 0

    # ------------------------------------------------------------------
    # Keys

    def _key(self, room: str, kind: str) -> str:
        return f"{self._prefix}:{{{room}}}:{kind}"

    # ------------------------------------------------------------------
    # The Broker interface

    @property
    def resume_server(self) -> ResumeServer:
        """Signs and checks the session tokens (give every node the same key)."""
        return self._resume

    @property
    def limits(self) -> LogLimits:
        """Each room log's bounds (give every node the same)."""
        return self._limits

    @property
    def up(self) -> bool:
        """Whether Redis is reachable now."""
        return self._link.up

    async def wait_up(self) -> None:
        """Wait until Redis is reachable (returns at once if it is)."""
        while not self._link.up:
            await self._up_changed.park()

    async def wait_down(self) -> None:
        """Wait until Redis is known to be unreachable (returns at once if so)."""
        while self._link.up:
            await self._up_changed.park()

    async def join(
        self,
        room: str,
        subscriber: Subscriber,
        *,
        identity: str = "",
        request: str | Mapping[str, Any] | None = None,
        replay_limits: LogLimits | None = None,
    ) -> NewSession | ResumeOutcome:
        """See :meth:`Broker.join <trioheart.broker.Broker.join>`.

        Opens the room on this node if needed (a snapshot from Redis). A
        resume naming a position this node has not read yet (another node
        was ahead) first brings the copy up to date. Cancelling it leaves
        the subscriber out of the room and the connections to Redis intact.
        """
        check_room_name(room)
        await trio.lowlevel.checkpoint()
        mirror = await self._open(room)
        if request is not None and mirror.needs_catch_up(request):
            await self._catch_up(mirror)
            mirror = await self._open(room)
        # No checkpoint from here until the outcome's messages are queued.
        now = self._clock()
        outcome: NewSession | ResumeOutcome
        if request is None:
            outcome = mirror.join(subscriber, identity=identity, now=now)
        else:
            outcome = mirror.resume(
                subscriber, request, identity=identity, now=now, replay_limits=replay_limits
            )
        if outcome.goes_live:
            self._idle_since.pop(room, None)
            try:
                for text in outcome.messages():
                    subscriber.send_nowait(text)
            except ConnectionClosed:
                self.leave(room, subscriber)
                raise
        return outcome

    def leave(self, room: str, subscriber: Subscriber) -> None:
        """See :meth:`Broker.leave <trioheart.broker.Broker.leave>`."""
        mirror = self._mirrors.get(room)
        if mirror is None:
            return
        mirror.leave(subscriber)
        if not mirror.subscribers:
            self._idle_since[room] = trio.current_time()

    def _prefix_for(self, message: Mapping[str, Any]) -> str:
        prefix = sequenced_prefix(message)
        size = len(prefix.encode("utf-8")) + _SEQ_ROOM
        if size > self._limits.max_bytes:
            raise ConfigError(
                f"message must fit the room log's max_bytes ({self._limits.max_bytes}); "
                f"got about {size} bytes"
            )
        return prefix

    def publish_nowait(self, room: str, message: Mapping[str, Any]) -> None:
        """See :meth:`Broker.publish_nowait <trioheart.broker.Broker.publish_nowait>`.

        The message waits in the outbox until Redis has appended it; while
        Redis is unreachable it waits there, in order, and goes out when
        Redis is back.
        """
        self._offer(room, message)

    def _offer(self, room: str, message: Mapping[str, Any]) -> int:
        check_room_name(room)
        prefix = self._prefix_for(message)
        counter = self._outbox.offer(room, prefix)
        if counter is None:
            self._rejected += 1
            limits, queued = self._outbox.limits, self._outbox.queued_bytes
            raise BrokerUnavailable(
                f"the outbox is full ({len(self._outbox)} messages, {queued} bytes; "
                f"at most {limits.max_messages} and {limits.max_bytes}): Redis has been "
                f"unreachable since {self._link.down_since}"
            )
        self._published += 1
        self._outbox_changed.set()
        return counter

    async def publish(self, room: str, message: Mapping[str, Any]) -> None:
        """Publish and wait until Redis has appended the message.

        Waits through an outage. Cancelling the wait does not withdraw the
        message.
        """
        counter = self._offer(room, message)
        while self._outbox.is_pending(room, counter):
            await self._acks.park()

    def refresh(self, session: Session) -> Session:
        """See :meth:`Broker.refresh <trioheart.broker.Broker.refresh>`."""
        return self._resume.refresh(session, now=self._clock())

    def statistics(self) -> BrokerStatistics:
        """A snapshot of the counters."""
        return BrokerStatistics(
            kind="redis",
            up=self._link.up,
            down_since=self._link.down_since,
            outages=self._link.outages,
            rooms=len(self._mirrors),
            subscribers=sum(len(m.subscribers) for m in self._mirrors.values()),
            published=self._published,
            rejected=self._rejected,
            outbox_messages=len(self._outbox),
            outbox_bytes=self._outbox.queued_bytes,
            delivered=self._delivered,
            room_resets=self._room_resets,
        )

    # ------------------------------------------------------------------
    # Rooms on this node

    async def _open(self, room: str) -> RoomMirror[Subscriber]:
        while True:
            mirror = self._mirrors.get(room)
            if mirror is not None and not mirror.closed:
                return mirror
            opening = self._opening.get(room)
            if opening is None:
                break
            await opening.wait()
        self._sweep()
        if len(self._mirrors) >= self._max_rooms:
            raise BrokerUnavailable(f"this node holds max_rooms={self._max_rooms} rooms")
        opening = self._opening[room] = trio.Event()
        try:
            (reply,) = await self._call([self._snapshot_command(room, known="", after=0)])
            snapshot = parse_snapshot(self._checked(reply))
            mirror = RoomMirror(
                room, self._resume, snapshot, limits=self._limits, now=self._clock()
            )
            self._mirrors[room] = mirror
            self._idle_since[room] = trio.current_time()
            self._wake_reader()
            return mirror
        finally:
            del self._opening[room]
            opening.set()

    async def _catch_up(self, mirror: RoomMirror[Subscriber]) -> None:
        command = self._snapshot_command(mirror.name, known=mirror.epoch, after=mirror.last_seq)
        (reply,) = await self._call([command])
        self._apply(
            mirror, mirror.reconcile(parse_snapshot(self._checked(reply)), now=self._clock())
        )

    def _sweep(self) -> None:
        """Drop rooms that have had no subscriber here for ``room_linger`` seconds."""
        now = trio.current_time()
        for room, since in list(self._idle_since.items()):
            mirror = self._mirrors.get(room)
            if mirror is None or mirror.subscribers:
                del self._idle_since[room]
            elif now - since >= self._linger:
                del self._idle_since[room]
                del self._mirrors[room]

    def _apply(self, mirror: RoomMirror[Subscriber], delivery: Delivery[Subscriber]) -> None:
        """Send what a mirror delivered; close its subscribers if it reset."""
        if delivery.texts:
            for subscriber in delivery.recipients:
                try:
                    for text in delivery.texts:
                        subscriber.send_nowait(text)
                except ConnectionClosed:
                    mirror.leave(subscriber)
                else:
                    self._delivered += len(delivery.texts)
        if delivery.reset is not None:
            self._room_resets += 1
            _log.warning(
                "broker.room_reset",
                room=mirror.name,
                reason=delivery.reset.value,
                evicted=len(delivery.evicted),
                epoch=mirror.epoch,
                seq=mirror.last_seq,
            )
            for subscriber in delivery.evicted:
                subscriber.close(
                    CloseReason.ROOM_RESET, f"room log {delivery.reset.value}; resume to resync"
                )
            if self._mirrors.get(mirror.name) is mirror:
                del self._mirrors[mirror.name]
                self._idle_since.pop(mirror.name, None)

    # ------------------------------------------------------------------
    # Commands

    def _snapshot_command(self, room: str, *, known: str, after: int) -> list[str | int]:
        return [
            "EVALSHA",
            self._shas[1],
            2,
            self._key(room, "meta"),
            self._key(room, "log"),
            known,
            after,
            secrets.token_hex(4),
            self._ttl_ms,
            self._limits.max_messages + 1,
        ]

    def _publish_command(self, batch: OutboxBatch, now: float) -> list[str | int]:
        limits = self._limits
        command: list[str | int] = [
            "EVALSHA",
            self._shas[0],
            3,
            self._key(batch.room, "meta"),
            self._key(batch.room, "log"),
            self._key(batch.room, f"node:{self.node_id}"),
            repr(now),
            limits.max_messages,
            limits.max_bytes,
            repr(float(limits.max_age)),
            self._ttl_ms,
            secrets.token_hex(4),
        ]
        for counter, prefix in zip(batch.counters, batch.prefixes, strict=True):
            command += [counter, prefix]
        return command

    @staticmethod
    def _checked(reply: Any) -> Any:
        if isinstance(reply, RedisReplyError):
            raise BrokerUnavailable(f"Redis refused a command: {reply}")
        return reply

    async def _call(self, commands: Sequence[Sequence[str | int]]) -> list[Any]:
        """Run *commands* on the command connection, shielded and bounded.

        Raises:
          BrokerUnavailable: if Redis is unreachable (the session restarts).
        """
        conn = self._cmd
        if conn is None or not self._link.up:
            raise BrokerUnavailable(
                f"Redis at {self.address.url()} is unreachable: {self._link.last_error}"
            )
        try:
            return await self._raw_call(conn, commands)
        except RedisUnavailable as exc:
            self._fail(exc)
            raise BrokerUnavailable(f"Redis at {self.address.url()}: {exc}") from exc

    async def _raw_call(
        self, conn: RedisConnection, commands: Sequence[Sequence[str | int]]
    ) -> list[Any]:
        # Shielded: a caller cancelled midway (a client that went away while
        # its room opened) must not break the connection every node task shares.
        replies: list[Any] | None = None
        with trio.CancelScope(shield=True):
            async with self._cmd_lock:
                with trio.move_on_after(self._timeout):
                    replies = await conn.pipeline(commands)
        if replies is None:
            conn.close()
            raise RedisUnavailable(f"no reply within {self._timeout} s")
        return replies

    def _fail(self, exc: BaseException) -> None:
        if not self._failed.is_set():
            self._failure = f"{type(exc).__name__}: {exc}"
            self._failed.set()

    def _wake_reader(self) -> None:
        """Make the reader's XREAD return, so that it reads the new room too."""
        if self._session is not None and self._reader_id is not None and self._link.up:
            self._session.start_soon(self._unblock, self._reader_id)

    async def _unblock(self, reader_id: int) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await self._call([["CLIENT", "UNBLOCK", reader_id]])

    # ------------------------------------------------------------------
    # The connection's life

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, and reconnect with backoff, until cancelled."""
        task_status.started()
        retrier: Retrier | None = None
        while True:
            try:
                await self._run_session()
            except (RedisError, BrokerUnavailable) as exc:
                self._fail(exc)
            self._outbox.fail_all()
            self._acks.unpark_all()
            went_down = self._link.failed(now=self._clock(), error=self._failure)
            if went_down is not None:
                _log.warning(
                    "broker.unavailable",
                    broker=self.address.url(),
                    error=went_down.error,
                    outbox=len(self._outbox),
                )
            self._up_changed.unpark_all()
            now = trio.current_time()
            if self._session_was_up:
                retrier, self._session_was_up = None, False  # a new outage: from the start
            if retrier is None:
                retrier = self._backoff.retrier(rng=self._rng, now=now)
            delay = retrier.next_delay(now=now)
            await trio.sleep(self._backoff.cap if delay is None else delay)
            if self._link.connected_once and delay is None:
                retrier = None  # keep trying, from the start of the curve

    async def _run_session(self) -> None:
        self._failed = trio.Event()
        self._failure = ""
        cmd = await self._connect()
        try:
            reader = await self._connect()
            try:
                load = await self._raw_call(
                    cmd,
                    [["SCRIPT", "LOAD", PUBLISH_SCRIPT], ["SCRIPT", "LOAD", SNAPSHOT_SCRIPT]],
                )
                for reply in load:
                    if isinstance(reply, RedisReplyError):
                        raise reply
                self._shas = (str(load[0]), str(load[1]))
                with trio.move_on_after(self._timeout) as scope:
                    self._reader_id = int(await reader.execute("CLIENT", "ID"))
                if scope.cancelled_caught:
                    raise RedisUnavailable(f"no reply within {self._timeout} s")
                await self._reconcile_all(cmd)
                self._cmd = cmd
                self._session_was_up = True
                recovered = self._link.connected(now=self._clock())
                if recovered is not None:
                    _log.info(
                        "broker.recovered",
                        broker=self.address.url(),
                        down_s=round(recovered.down_for, 3),
                        outbox=len(self._outbox),
                    )
                else:
                    _log.info("broker.connected", broker=self.address.url(), node=self.node_id)
                self._up_changed.unpark_all()
                async with trio.open_nursery() as nursery:
                    self._session = nursery
                    nursery.start_soon(self._publish_loop, cmd)
                    nursery.start_soon(self._read_loop, reader)
                    await self._failed.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self._session = None
                self._cmd = None
                reader.close()
        finally:
            cmd.close()
        raise RedisUnavailable(self._failure or "session ended")

    async def _connect(self) -> RedisConnection:
        with trio.move_on_after(self._timeout):
            return await RedisConnection.connect(self.address)
        raise RedisUnavailable(f"cannot connect to {self.address.url()} within {self._timeout} s")

    async def _reconcile_all(self, cmd: RedisConnection) -> None:
        """After a reconnect, bring every open room up to date (or reset it)."""
        mirrors = list(self._mirrors.values())
        for start in range(0, len(mirrors), _ROOMS_PER_ROUND):
            chunk = mirrors[start : start + _ROOMS_PER_ROUND]
            commands = [
                self._snapshot_command(m.name, known=m.epoch, after=m.last_seq) for m in chunk
            ]
            replies = await self._raw_call(cmd, commands)
            now = self._clock()
            for mirror, reply in zip(chunk, replies, strict=True):
                if isinstance(reply, RedisReplyError):
                    raise reply
                self._apply(mirror, mirror.reconcile(parse_snapshot(reply), now=now))

    async def _publish_loop(self, conn: RedisConnection) -> None:
        try:
            while True:
                rooms = self._outbox.ready()
                if not rooms:
                    self._outbox_changed = trio.Event()
                    await self._outbox_changed.wait()
                    continue
                batches = [
                    self._outbox.take(
                        room,
                        max_messages=min(_BATCH_MESSAGES, self._limits.max_messages),
                        max_bytes=self._limits.max_bytes,
                    )
                    for room in rooms[:_ROOMS_PER_ROUND]
                ]
                now = self._clock()
                try:
                    replies = await self._raw_call(
                        conn, [self._publish_command(b, now) for b in batches]
                    )
                except BaseException:
                    self._outbox.fail_all()
                    raise
                refused: RedisReplyError | None = None
                for batch, reply in zip(batches, replies, strict=True):
                    if isinstance(reply, RedisReplyError):
                        self._outbox.failed(batch)
                        refused = reply
                    else:
                        self._outbox.acked(batch)
                self._acks.unpark_all()
                if refused is not None:
                    raise RedisUnavailable(f"the publish script failed: {refused}")
        except RedisError as exc:
            self._fail(exc)

    async def _read_loop(self, conn: RedisConnection) -> None:
        idle_key = f"{self._prefix}:node:{self.node_id}:idle"
        block_ms = max(1, int(self._block * 1000))
        try:
            while True:
                self._sweep()
                mirrors = [m for m in self._mirrors.values() if not m.closed]
                keys = [self._key(m.name, "log") for m in mirrors] + [idle_key]
                ids = [f"{_epoch_ms(m.epoch)}-{m.last_seq}" for m in mirrors] + ["0-0"]
                args: list[str | int] = [
                    "XREAD",
                    "COUNT",
                    _READ_COUNT,
                    "BLOCK",
                    block_ms,
                    "STREAMS",
                    *keys,
                    *ids,
                ]
                with trio.move_on_after(self._block + self._timeout) as scope:
                    reply = await conn.execute(*args)
                if scope.cancelled_caught:
                    raise RedisUnavailable(f"XREAD did not return within {self._block} s + timeout")
                if not reply:
                    continue
                by_key = dict(zip(keys, mirrors, strict=False))
                now = self._clock()
                for key, items in reply:
                    mirror = by_key.get(str(key))
                    if mirror is None or self._mirrors.get(mirror.name) is not mirror:
                        continue
                    epoch, entries = _parse_entries(mirror.epoch, items)
                    self._apply(mirror, mirror.receive(mirror.epoch, entries, now=now))
                    if epoch != mirror.epoch:
                        self._apply(mirror, mirror.receive(epoch, (), now=now))
        except RedisError as exc:
            self._fail(exc)


@contextlib.asynccontextmanager
async def open_redis_broker(
    url: str,
    *,
    resume_server: ResumeServer | None = None,
    limits: LogLimits | None = None,
    outbox: OutboxLimits | None = None,
    prefix: str = "trioheart",
    clock: Callable[[], float] = time.time,
    command_timeout: float = 2.0,
    block_interval: float = 1.0,
    backoff: Backoff | None = None,
    max_rooms: int = 10_000,
    room_linger: float = 30.0,
    idle_ttl: float = 24 * 3600.0,
    rng: random.Random | None = None,
) -> AsyncIterator[RedisBroker]:
    """A :class:`~trioheart.broker.Broker` on the Redis at *url*, for this block.

    Entering starts the broker's task (connect, read, publish, reconnect)
    in a nursery of its own and does not wait for Redis: a node starts
    even while Redis is down, reports it, and connects when it can
    (:meth:`RedisBroker.wait_up` waits for that). Exiting cancels the
    task; messages still in the outbox are lost with the process, as are
    its connections.

    Every node of one chat service must use the same Redis, *prefix*,
    *limits* and resume key (``ResumeServer(key=...)``), and a wall clock
    (the default *clock*).

    Args:
      url: ``redis://[[user]:password@]host[:port][/db]``.
      resume_server: Signs and checks tokens; give it a key shared by all
        nodes. A random key (tokens work only on this node) if ``None``.
      limits: Each room log's bounds, kept in Redis and in each node's copy.
      outbox: How much to keep for Redis while it is unreachable.
      prefix: The first part of every key.
      clock: Wall-clock seconds: entries' ``at``, token times.
      command_timeout: How long a command may take before Redis counts as
        unreachable.
      block_interval: How long one ``XREAD`` blocks; with
        *command_timeout*, it bounds how long a dead Redis goes unnoticed
        by an idle node.
      backoff: The reconnect policy (base 0.1 s, cap 5 s, full jitter by default).
      max_rooms: At most this many rooms open on this node.
      room_linger: A room with no subscriber on this node is closed here
        after this many seconds (its log stays in Redis).
      idle_ttl: Redis drops a room's keys after this many seconds without
        a publish or an open; a later open starts a new epoch.
      rng: Randomness for the backoff jitter.

    Raises:
      ConfigError: for a bad URL or value.
    """
    address = parse_redis_url(url)
    for name, value in (
        ("command_timeout", command_timeout),
        ("block_interval", block_interval),
        ("room_linger", room_linger),
        ("idle_ttl", idle_ttl),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < math.inf
        ):
            raise ConfigError(f"{name} must be a positive, finite number of seconds; got {value!r}")
    if not prefix or "{" in prefix or "}" in prefix or not prefix.isprintable():
        raise ConfigError(f"prefix must be printable and without braces; got {prefix!r}")
    if isinstance(max_rooms, bool) or not isinstance(max_rooms, int) or max_rooms < 1:
        raise ConfigError(f"max_rooms must be a positive integer; got {max_rooms!r}")
    broker = RedisBroker(
        address,
        resume_server=resume_server if resume_server is not None else ResumeServer(),
        limits=limits if limits is not None else LogLimits(),
        outbox=outbox if outbox is not None else OutboxLimits(),
        prefix=prefix,
        clock=clock,
        command_timeout=command_timeout,
        block_interval=block_interval,
        backoff=backoff if backoff is not None else Backoff(base=0.1, cap=5.0),
        max_rooms=max_rooms,
        room_linger=room_linger,
        idle_ttl=idle_ttl,
        rng=rng if rng is not None else random.Random(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        try:
            yield broker
        finally:
            nursery.cancel_scope.cancel()
