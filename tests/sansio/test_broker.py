"""The sans-IO parts of a shared room log: outbox, link, and a node's copy of a room.

A pure model of the Redis side (:class:`SharedLog`, the same rules as the
Lua scripts in ``trioheart/_trio/redis_broker.py``) lets hypothesis drive
nodes, clients, lost replies, lagging readers, trims and a Redis that loses
its data, and check what the issue promises: every client sees each
message once and in order, or is told to reset; nothing is appended twice.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from trioheart.broker import (
    LinkMonitor,
    Outbox,
    OutboxBatch,
    OutboxLimits,
    RoomMirror,
    Snapshot,
    check_room_name,
    sequenced_prefix,
    sequenced_text,
)
from trioheart.errors import ConfigError
from trioheart.resume import (
    GapDetected,
    LogEntry,
    LogLimits,
    MessageReceived,
    ResetReason,
    ResumeClient,
    ResumeRefused,
    ResumeServer,
    ResumeStateError,
    ResyncRequired,
    RoomLog,
    SessionResumed,
    SessionStarted,
)

KEY = b"k" * 32

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
messages = st.dictionaries(
    st.text(max_size=6).filter(lambda k: k != "seq"), json_values, max_size=4
)


@given(message=messages, seq=st.integers(1, 2**62))
def test_the_prefix_plus_seq_is_what_the_room_log_would_write(
    message: dict[str, Any], seq: int
) -> None:
    log = RoomLog(last_seq=seq - 1)
    entry = log.append(message, now=0.0)
    assert sequenced_text(sequenced_prefix(message), seq) == entry.text
    assert json.loads(entry.text) == {**message, "seq": seq}


def test_a_message_with_its_own_seq_has_no_prefix() -> None:
    with pytest.raises(ConfigError, match="seq"):
        sequenced_prefix({"seq": 3})


@pytest.mark.parametrize("name", ["", "a{b", "b}", "tab\there", "x" * 201, 7])
def test_room_names_that_cannot_be_a_hash_tag_are_refused(name: Any) -> None:
    with pytest.raises(ConfigError, match="room"):
        check_room_name(name)


def test_room_log_add_takes_only_the_next_entry() -> None:
    log = RoomLog(epoch="e", last_seq=41)
    log.add(LogEntry(seq=42, at=0.0, text="x", size=1), now=0.0)
    assert (log.first_seq, log.last_seq) == (42, 42)
    with pytest.raises(ConfigError, match=r"entry\.seq must be 43"):
        log.add(LogEntry(seq=44, at=0.0, text="y", size=1), now=0.0)
    with pytest.raises(ConfigError, match="last_seq"):
        RoomLog(last_seq=-1)


# --------------------------------------------------------------------------
# The link


@given(st.lists(st.booleans(), max_size=40))
def test_each_outage_is_reported_once_and_each_recovery_once(works: list[bool]) -> None:
    link = LinkMonitor(now=0.0)
    downs = ups = 0
    for t, ok in enumerate(works, start=1):
        was_up, was_connected = link.up, link.connected_once
        if ok:
            event = link.connected(now=float(t))
            ups += event is not None
            assert (event is not None) == (not was_up and was_connected)
            if event is not None:
                assert event.down_for >= 0
        else:
            went = link.failed(now=float(t), error="boom")
            downs += went is not None
        assert link.up == (ok or (was_up and ok))
        assert (link.down_since is None) == link.up
    assert link.outages <= downs
    assert ups <= link.outages


def test_a_node_that_never_connected_reports_its_first_failure_only() -> None:
    link = LinkMonitor(now=5.0)
    first = link.failed(now=6.0, error="refused")
    assert first is not None
    assert first.at == 5.0
    assert link.failed(now=7.0, error="refused") is None
    assert link.connected(now=8.0) is None  # the first connection is no recovery
    assert link.failed(now=9.0, error="gone") is not None
    recovered = link.connected(now=12.0)
    assert recovered is not None
    assert recovered.down_for == 3.0
    assert link.outages == 1


# --------------------------------------------------------------------------
# The outbox


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["offer", "take", "ack", "fail"]), st.sampled_from("abc")),
        max_size=80,
    ),
    max_messages=st.integers(1, 6),
    max_bytes=st.integers(1, 60),
)
def test_the_outbox_is_bounded_ordered_and_resends_the_same_counters(
    ops: list[tuple[str, str]], max_messages: int, max_bytes: int
) -> None:
    outbox = Outbox(OutboxLimits(max_messages=max_messages, max_bytes=max_bytes))
    model: dict[str, deque[tuple[int, str]]] = {}
    flying: dict[str, OutboxBatch] = {}
    acked: dict[str, list[int]] = {}
    serial = itertools.count()
    for op, room in ops:
        if op == "offer":
            prefix = f"m{next(serial)}"
            counter = outbox.offer(room, prefix)
            fits = (
                sum(len(q) for q in model.values()) < max_messages
                and sum(len(p) for q in model.values() for _, p in q) + len(prefix) <= max_bytes
            )
            assert (counter is not None) == fits
            if counter is not None:
                model.setdefault(room, deque()).append((counter, prefix))
        elif op == "take" and room in outbox.ready():
            batch = outbox.take(room, max_messages=2, max_bytes=10)
            expected = list(model[room])[: len(batch.counters)]
            assert list(zip(batch.counters, batch.prefixes, strict=True)) == expected
            assert batch.counters  # at least one, however big
            flying[room] = batch
        elif op == "ack" and room in flying:
            batch = flying.pop(room)
            outbox.acked(batch)
            for _ in batch.counters:
                counter, _prefix = model[room].popleft()
                acked.setdefault(room, []).append(counter)
            if not model[room]:
                del model[room]
        elif op == "fail" and room in flying:
            outbox.failed(flying.pop(room))
        assert len(outbox) == sum(len(q) for q in model.values()) <= max_messages
        assert outbox.queued_bytes <= max_bytes
        assert set(outbox.ready()) == set(model) - set(flying)
        for name, queue in model.items():
            assert outbox.counters(name) == tuple(c for c, _ in queue)
    for counters in acked.values():
        assert counters == sorted(counters)  # a room's messages reach the log in order
    all_counters = [c for cs in acked.values() for c in cs]
    assert len(all_counters) == len(set(all_counters))


def test_taking_what_is_not_there_is_a_caller_bug() -> None:
    outbox = Outbox()
    with pytest.raises(ResumeStateError):
        outbox.take("lobby", max_messages=1, max_bytes=1)
    assert outbox.offer("lobby", "x") == 1
    outbox.take("lobby", max_messages=1, max_bytes=1)
    with pytest.raises(ResumeStateError):
        outbox.take("lobby", max_messages=1, max_bytes=1)  # one batch in flight per room
    assert outbox.is_pending("lobby", 1)
    outbox.fail_all()
    assert outbox.ready() == ["lobby"]


# --------------------------------------------------------------------------
# A model of the Redis side: the rules of the Lua scripts, without Redis


class SharedLog:
    """One room's shared log, as the publish and snapshot scripts keep it."""

    def __init__(self, limits: LogLimits) -> None:
        self.limits = limits
        self.epochs = 0
        self.history: dict[tuple[str, int], str] = {}
        self.new_epoch()

    def new_epoch(self) -> None:
        """What Redis holds after it lost everything and a node touched the room."""
        self.epochs += 1
        self.epoch = f"{1000 + self.epochs}.e{self.epochs}"
        self.entries: deque[LogEntry] = deque()
        self.seq = 0
        self.bytes = 0
        self.applied: dict[str, int] = {}

    @property
    def first_seq(self) -> int:
        return self.entries[0].seq if self.entries else self.seq + 1

    def publish(self, node: str, batch: OutboxBatch, now: float) -> None:
        applied, added = self.applied.get(node, 0), 0
        for counter, prefix in zip(batch.counters, batch.prefixes, strict=True):
            if counter > applied:
                self.seq += 1
                text = sequenced_text(prefix, self.seq)
                entry = LogEntry(seq=self.seq, at=now, text=text, size=len(text.encode()))
                self.entries.append(entry)
                self.history[(self.epoch, self.seq)] = text
                self.bytes += entry.size
                applied, added = counter, added + 1
        self.applied[node] = applied
        limits = self.limits
        while len(self.entries) > added and (
            len(self.entries) > limits.max_messages
            or self.bytes > limits.max_bytes
            or now - self.entries[0].at > limits.max_age
        ):
            self.bytes -= self.entries.popleft().size

    def after(self, seq: int, count: int) -> list[LogEntry]:
        return [e for e in self.entries if e.seq > seq][:count]

    def snapshot(self, known: str, after: int) -> Snapshot:
        if known == self.epoch and after > 0:
            check = next((e.text for e in self.entries if e.seq == after), None)
            entries = tuple(self.after(after, 10**9)) if after <= self.seq else ()
            return Snapshot(
                epoch=self.epoch,
                last_seq=self.seq,
                first_seq=self.first_seq,
                entries=entries,
                after=after,
                check_text=check,
            )
        return Snapshot(
            epoch=self.epoch,
            last_seq=self.seq,
            first_seq=self.first_seq,
            entries=tuple(self.entries),
        )


class Node:
    def __init__(self, name: str, shared: SharedLog, server: ResumeServer, now: float) -> None:
        self.name = name
        self.server = server
        self.outbox = Outbox(OutboxLimits(max_messages=8, max_bytes=10_000))
        self.mirror: RoomMirror[int] | None = None
        self.open(shared, now)

    def open(self, shared: SharedLog, now: float) -> None:
        snapshot = shared.snapshot("", 0)
        self.mirror = RoomMirror("lobby", self.server, snapshot, limits=shared.limits, now=now)


class SharedRoomMachine(RuleBasedStateMachine):
    """Two nodes, three clients, one room, and everything that can go wrong."""

    @initialize(
        max_messages=st.integers(2, 12),
        max_bytes=st.integers(200, 2000),
    )
    def setup(self, max_messages: int, max_bytes: int) -> None:
        self.now = 0.0
        self.limits = LogLimits(max_messages=max_messages, max_bytes=max_bytes, max_age=30.0)
        self.shared = SharedLog(self.limits)
        server = ResumeServer(key=KEY, token_ttl=1000.0)
        self.nodes = [Node(n, self.shared, server, self.now) for n in ("A", "B")]
        self.clients = {i: ResumeClient() for i in range(3)}
        self.where: dict[int, Node | None] = dict.fromkeys(self.clients)
        self.delivered: dict[int, list[tuple[str, int] | None]] = {i: [] for i in self.clients}
        self.epoch_of: dict[int, str | None] = dict.fromkeys(self.clients)
        self.serial = itertools.count()
        for client in self.clients:
            self._connect(client, self.nodes[client % 2])

    # -- helpers ------------------------------------------------------------

    def _feed(self, client: int, text: str) -> None:
        for event in self.clients[client].receive(text):
            assert not isinstance(event, GapDetected), f"client {client} saw a gap: {event}"
            if isinstance(event, SessionStarted | SessionResumed):
                self.epoch_of[client] = event.epoch
            elif isinstance(event, ResyncRequired):
                self.epoch_of[client] = None
                self.delivered[client].append(None)
            elif isinstance(event, MessageReceived):
                epoch = self.epoch_of[client]
                assert epoch is not None
                assert event.seq is not None
                assert self.shared.history[(epoch, event.seq)] == text  # byte for byte
                self.delivered[client].append((epoch, event.seq))

    def _deliver(self, node: Node, delivery: Any) -> None:
        for text in delivery.texts:
            for client in delivery.recipients:
                self._feed(client, text)
        for client in delivery.evicted:
            self._drop(client)
        if delivery.reset is not None:
            node.mirror = None  # the node opens a fresh copy on the next join

    def _drop(self, client: int) -> None:
        node = self.where[client]
        if node is not None and node.mirror is not None:
            node.mirror.leave(client)
        self.where[client] = None
        self.clients[client].connection_lost()

    def _connect(self, client: int, node: Node) -> None:
        if node.mirror is None:
            node.open(self.shared, self.now)
        assert node.mirror is not None
        request = self.clients[client].start_connection()
        if request is not None and node.mirror.needs_catch_up(request):
            snapshot = self.shared.snapshot(node.mirror.epoch, node.mirror.last_seq)
            self._deliver(node, node.mirror.reconcile(snapshot, now=self.now))
            if node.mirror is None:
                node.open(self.shared, self.now)
        mirror = node.mirror
        assert mirror is not None
        if request is None:
            outcome: Any = mirror.join(client, now=self.now)
        else:
            outcome = mirror.resume(client, request, now=self.now)
        assert not isinstance(outcome, ResumeRefused), f"a genuine client was refused: {outcome}"
        self.where[client] = node
        for text in outcome.messages():
            self._feed(client, text)

    # -- rules ----------------------------------------------------------------

    @rule(node=st.integers(0, 1))
    def publish(self, node: int) -> None:
        message = {"type": "chat", "text": f"m{next(self.serial)}"}
        self.nodes[node].outbox.offer("lobby", sequenced_prefix(message))

    @rule(node=st.integers(0, 1), reply_lost=st.booleans(), applied=st.booleans())
    def flush(self, node: int, reply_lost: bool, applied: bool) -> None:
        """One publish round trip; the reply may be lost, before or after Redis ran it."""
        n = self.nodes[node]
        if "lobby" not in n.outbox.ready():
            return
        batch = n.outbox.take("lobby", max_messages=3, max_bytes=self.limits.max_bytes // 2)
        if applied or not reply_lost:
            self.shared.publish(n.name, batch, self.now)
        if reply_lost:
            n.outbox.failed(batch)
        else:
            n.outbox.acked(batch)

    @rule(node=st.integers(0, 1), count=st.integers(1, 5))
    def read(self, node: int, count: int) -> None:
        """The node's reader takes what follows its head (it may lag, and miss trimmed ones)."""
        n = self.nodes[node]
        if n.mirror is None:
            return
        if n.mirror.epoch != self.shared.epoch:
            # XREAD from the old position returns the new epoch's entries, if it has any:
            # their IDs start with a later time.
            if self.shared.entries:
                self._deliver(n, n.mirror.receive(self.shared.epoch, (), now=self.now))
            return
        entries = self.shared.after(n.mirror.last_seq, count)
        self._deliver(n, n.mirror.receive(self.shared.epoch, entries, now=self.now))

    @rule(node=st.integers(0, 1))
    def reconnect(self, node: int) -> None:
        """The node's connection to Redis broke and came back: it reconciles."""
        n = self.nodes[node]
        if n.mirror is None:
            return
        snapshot = self.shared.snapshot(n.mirror.epoch, n.mirror.last_seq)
        self._deliver(n, n.mirror.reconcile(snapshot, now=self.now))

    @rule()
    def redis_loses_its_data(self) -> None:
        self.shared.new_epoch()

    @rule(seconds=st.floats(0.0, 40.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(client=st.integers(0, 2))
    def cut(self, client: int) -> None:
        if self.where[client] is not None:
            self._drop(client)

    @rule(client=st.integers(0, 2), node=st.integers(0, 1))
    def come_back(self, client: int, node: int) -> None:
        if self.where[client] is None:
            self._connect(client, self.nodes[node])

    @rule()
    def drain(self) -> None:
        """Flush every outbox and read everything: every live client holds the head."""
        for n in self.nodes:
            while "lobby" in n.outbox.ready():
                batch = n.outbox.take("lobby", max_messages=100, max_bytes=10**6)
                self.shared.publish(n.name, batch, self.now)
                n.outbox.acked(batch)
        for n in self.nodes:
            if n.mirror is not None:
                snapshot = self.shared.snapshot(n.mirror.epoch, n.mirror.last_seq)
                self._deliver(n, n.mirror.reconcile(snapshot, now=self.now))
        for client, node in self.where.items():
            if node is not None:
                assert self.epoch_of[client] == self.shared.epoch
                assert self.clients[client].last_seq == self.shared.seq

    # -- invariants -------------------------------------------------------------

    @invariant()
    def each_message_once_and_in_order(self) -> None:
        for client, seen in self.delivered.items():
            positions = [p for p in seen if p is not None]
            assert len(positions) == len(set(positions)), f"client {client} got one twice"
            assert self.clients[client].statistics().duplicates == 0, "a node sent one twice"
            for before, after in itertools.pairwise(seen):
                if before is None or after is None or before[0] != after[0]:
                    continue  # a resync, or another epoch: a new history starts
                assert after[1] == before[1] + 1, f"client {client}: {before} then {after}"

    @invariant()
    def nothing_is_appended_twice_in_an_epoch(self) -> None:
        texts = [
            json.loads(text)["text"]
            for (epoch, _), text in self.shared.history.items()
            if epoch == self.shared.epoch
        ]
        assert len(texts) == len(set(texts))


TestSharedRoom = SharedRoomMachine.TestCase
TestSharedRoom.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_copy_closes_when_the_log_skipped_what_it_had_not_read() -> None:
    limits = LogLimits(max_messages=2)
    shared = SharedLog(limits)
    node = Node("A", shared, ResumeServer(key=KEY), 0.0)
    assert node.mirror is not None
    node.mirror.join(1, now=0.0)
    outbox = Outbox()
    for i in range(5):
        outbox.offer("lobby", sequenced_prefix({"text": f"m{i}"}))
        shared.publish("B", outbox.take("lobby", max_messages=1, max_bytes=99), 0.0)
        outbox.acked(OutboxBatch(room="lobby", counters=(0,), prefixes=("",)))
    delivery = node.mirror.receive(shared.epoch, shared.after(0, 10), now=0.0)
    assert delivery.reset is ResetReason.TRIMMED
    assert delivery.evicted == (1,)
    assert node.mirror.closed
    with pytest.raises(ResumeStateError, match="closed"):
        node.mirror.join(2, now=0.0)


def test_a_copy_closes_when_the_log_went_back() -> None:
    shared = SharedLog(LogLimits())
    outbox = Outbox()
    for i in range(3):
        outbox.offer("lobby", sequenced_prefix({"text": f"m{i}"}))
    shared.publish("A", outbox.take("lobby", max_messages=3, max_bytes=999), 0.0)
    mirror: RoomMirror[int] = RoomMirror(
        "lobby", ResumeServer(key=KEY), shared.snapshot("", 0), now=0.0
    )
    rolled_back = Snapshot(epoch=shared.epoch, last_seq=2, first_seq=1, entries=(), after=3)
    assert mirror.reconcile(rolled_back, now=0.0).reset is ResetReason.EPOCH_CHANGED
    other: RoomMirror[int] = RoomMirror(
        "lobby", ResumeServer(key=KEY), shared.snapshot("", 0), now=0.0
    )
    rewritten = Snapshot(
        epoch=shared.epoch, last_seq=3, first_seq=1, entries=(), after=3, check_text="else"
    )
    assert other.reconcile(rewritten, now=0.0).reset is ResetReason.EPOCH_CHANGED


def test_a_resume_ahead_of_the_copy_asks_for_a_catch_up() -> None:
    shared = SharedLog(LogLimits())
    mirror: RoomMirror[int] = RoomMirror(
        "lobby", ResumeServer(key=KEY), shared.snapshot("", 0), now=0.0
    )
    ahead = {"type": "resume", "token": "t", "epoch": mirror.epoch, "seq": 5}
    assert mirror.needs_catch_up(ahead)
    assert mirror.needs_catch_up(json.dumps({**ahead, "epoch": "other"}))
    assert not mirror.needs_catch_up({**ahead, "seq": 0})
    assert not mirror.needs_catch_up("not json")
    assert not mirror.needs_catch_up(None)
