"""The resume protocol under arbitrary interleavings: exactly once, in order, or reset.

A hypothesis state machine drives one :class:`ResumeServer`, two rooms and
three clients through sends, abrupt disconnects, reconnects (whose resume
request may wait while live messages flow), trimming by count, bytes and
age, token refreshes and expiry, server restarts, and attackers presenting
forged, tampered, foreign or history-grabbing tokens. The "network" is one
FIFO of texts per connection, cut at any point.

What must hold, for every client, at every step:

* the application sees each (epoch, seq) at most once, and within a session
  in exactly increasing order with no hole, except right after a
  ``ResyncRequired``: so nothing is duplicated and nothing lost in silence;
* what it sees is byte for byte what was published under that seq;
* a client that is live with nothing in flight holds the room's head:
  nothing it is owed is missing;
* a genuine client is never refused, and is reset only when the gap truly
  cannot be filled (epoch changed, token expired, or the log lacks a message);
* an attacker's request is never accepted and never yields a message.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trioheart import CloseReason
from trioheart.resume import (
    ClientState,
    GapDetected,
    LogLimits,
    MessageReceived,
    NewSession,
    RefuseReason,
    ResetReason,
    ResumeAccepted,
    ResumeClient,
    ResumeOutcome,
    ResumeRefused,
    ResumeReset,
    ResumeServer,
    ResyncRequired,
    Room,
    Session,
    SessionResumed,
    SessionStarted,
)

TOKEN_TTL = 30.0
PEERS = (("a", "ann"), ("a", "bob"), ("b", "ann"))  # (room, identity): each pair foreign


@attrs.define
class Conn:
    id: int
    room: str
    request: str | None  # the first frame, not yet handled by the server
    handled: bool = False
    wire: deque[str] = attrs.field(factory=deque)  # server -> client, in flight
    session: Session | None = None
    closing: bool = False  # the server closes once the wire is drained (refused)
    lossy: bool = False  # a message was dropped in flight by a (buggy) middlebox


@attrs.define
class Peer:
    room: str
    identity: str
    client: ResumeClient = attrs.field(factory=ResumeClient)
    conn: Conn | None = None
    # The application's view:
    epoch: str | None = None
    next_seq: int | None = None
    resync_pending: bool = False
    seen: set[tuple[str, int]] = attrs.field(factory=set)
    sessions: list[Session] = attrs.field(factory=list)  # genuine ones the server issued
    delivered: int = 0
    resyncs: int = 0


class ResumeProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.limits = LogLimits()
        self.server = ResumeServer(token_ttl=TOKEN_TTL)
        self.rooms: dict[str, Room[int]] = {}
        self.peers = [Peer(room=room, identity=who) for room, who in PEERS]
        self.conns: dict[int, Conn] = {}
        self.next_conn = 0
        self.published: dict[tuple[str, int], str] = {}
        self.expires: dict[str, float] = {}  # token -> expires_at
        self.attacks = 0

    # -- setup ---------------------------------------------------------------

    @initialize(
        max_messages=st.integers(1, 12),
        max_bytes=st.integers(40, 2000),
        max_age=st.floats(1.0, 60.0),
    )
    def setup(self, max_messages: int, max_bytes: int, max_age: float) -> None:
        self.limits = LogLimits(max_messages=max_messages, max_bytes=max_bytes, max_age=max_age)
        self._start_server()

    def _start_server(self) -> None:
        self.server = ResumeServer(token_ttl=TOKEN_TTL)  # a new random key, as on a restart
        self.rooms = {name: Room(name, self.server, self.limits) for name in ("a", "b")}

    def _record(self, session: Session) -> None:
        self.expires[session.token] = session.expires_at

    # -- the network ---------------------------------------------------------

    def _offline(self) -> list[Peer]:
        return [peer for peer in self.peers if peer.conn is None]

    def _unhandled(self) -> list[Peer]:
        return [peer for peer in self.peers if peer.conn is not None and not peer.conn.handled]

    def _with_wire(self) -> list[Peer]:
        return [peer for peer in self.peers if peer.conn is not None and peer.conn.wire]

    def _online(self) -> list[Peer]:
        return [peer for peer in self.peers if peer.conn is not None]

    @precondition(lambda self: self._offline())
    @rule(i=st.integers(0, 2), at_once=st.booleans())
    def open_connection(self, i: int, at_once: bool) -> None:
        """A client (re)connects; the server may see its first frame now or later."""
        offline = self._offline()
        peer = offline[i % len(offline)]
        self._connect(peer)
        if at_once:
            self._handle_first_frame(peer)

    def _connect(self, peer: Peer) -> Conn:
        request = peer.client.start_connection()
        conn = Conn(id=self.next_conn, room=peer.room, request=request)
        self.next_conn += 1
        self.conns[conn.id] = conn
        peer.conn = conn
        return conn

    @precondition(lambda self: self._unhandled())
    @rule(i=st.integers(0, 2))
    def server_handles_first_frame(self, i: int) -> None:
        unhandled = self._unhandled()
        self._handle_first_frame(unhandled[i % len(unhandled)])

    def _handle_first_frame(self, peer: Peer) -> None:
        conn = peer.conn
        assert conn is not None
        assert not conn.handled
        conn.handled = True
        room = self.rooms[conn.room]
        outcome: NewSession | ResumeOutcome
        if conn.request is None:
            outcome = room.join(conn.id, identity=peer.identity, now=self.now)
        else:
            head_before = room.log.last_seq
            outcome = room.resume(conn.id, conn.request, identity=peer.identity, now=self.now)
            self._check_genuine_outcome(room, json.loads(conn.request), outcome, head_before)
        if isinstance(outcome, ResumeRefused):
            conn.closing = True
            assert conn.id not in room
        else:
            conn.session = outcome.session
            peer.sessions.append(outcome.session)
            self._record(outcome.session)
            assert conn.id in room
        conn.wire.extend(outcome.messages())

    def _check_genuine_outcome(
        self, room: Room[int], request: dict[str, Any], outcome: ResumeOutcome, head: int
    ) -> None:
        """A genuine client is reset only when it must be, and never refused."""
        assert not isinstance(outcome, ResumeRefused), outcome
        if request["epoch"] != room.log.epoch:
            assert isinstance(outcome, ResumeReset)
            assert outcome.reason is ResetReason.EPOCH_CHANGED
        elif self.now >= self.expires[request["token"]]:
            assert isinstance(outcome, ResumeReset)
            assert outcome.reason is ResetReason.TOKEN_EXPIRED
        elif isinstance(outcome, ResumeReset):
            assert outcome.reason is ResetReason.TRIMMED
            assert room.log.first_seq > request["seq"] + 1  # a message really is gone
        else:
            assert isinstance(outcome, ResumeAccepted)
            assert outcome.seq == head == room.log.last_seq
            assert [e.seq for e in outcome.replay] == list(range(request["seq"] + 1, head + 1))
            for entry in outcome.replay:
                assert self.published[(room.log.epoch, entry.seq)] == entry.text
        assert outcome.seq == room.log.last_seq  # live from the head, whatever the outcome
        self._check_age_bound(room)

    def _check_age_bound(self, room: Room[int]) -> None:
        """Right after a trim (a resume trims first), nothing older than max_age is kept."""
        kept = room.log.since(room.log.first_seq - 1)
        assert kept is not None
        assert all(self.now - entry.at <= self.limits.max_age for entry in kept)

    @rule(room=st.sampled_from("ab"), sizes=st.lists(st.integers(0, 60), min_size=1, max_size=4))
    def publish(self, room: str, sizes: list[int]) -> None:
        r = self.rooms[room]
        for size in sizes:
            text = f"{len(self.published)}:" + "é" * (size // 2) + "x" * (size - size // 2)
            pub = r.publish({"type": "chat", "text": text, "from": "someone"}, now=self.now)
            key = (r.log.epoch, pub.entry.seq)
            assert key not in self.published
            self.published[key] = pub.entry.text
            for conn_id in pub.recipients:
                self.conns[conn_id].wire.append(pub.entry.text)

    @precondition(lambda self: self._with_wire())
    @rule(i=st.integers(0, 2), n=st.sampled_from([1, 2, 3, 100]))
    def deliver(self, i: int, n: int) -> None:
        with_wire = self._with_wire()
        self._deliver(with_wire[i % len(with_wire)], n)

    def _deliver(self, peer: Peer, n: int) -> None:
        conn = peer.conn
        assert conn is not None
        while n and conn.wire:
            n -= 1
            for event in peer.client.receive(conn.wire.popleft()):
                self._app_sees(peer, conn, event)
        if conn.closing and not conn.wire:
            self._drop(peer)

    def _app_sees(self, peer: Peer, conn: Conn, event: object) -> None:
        if isinstance(event, SessionStarted):
            assert peer.next_seq is None or peer.resync_pending, "a fresh start without a resync"
            assert event.epoch == self.rooms[peer.room].log.epoch
            peer.epoch, peer.next_seq, peer.resync_pending = event.epoch, event.seq + 1, False
        elif isinstance(event, SessionResumed):
            assert not peer.resync_pending
            assert event.epoch == peer.epoch
            assert peer.next_seq is not None
            assert event.replayed == event.seq - (peer.next_seq - 1)
        elif isinstance(event, ResyncRequired):
            assert isinstance(event.reason, ResetReason), "a genuine client was refused"
            peer.resync_pending = True
            peer.resyncs += 1
        elif isinstance(event, MessageReceived):
            assert event.seq is not None
            assert not peer.resync_pending
            assert event.seq == peer.next_seq, (event.seq, peer.next_seq)
            assert peer.epoch is not None
            key = (peer.epoch, event.seq)
            assert key not in peer.seen, f"duplicate {key}"
            assert event.message == json.loads(self.published[key])
            peer.seen.add(key)
            peer.next_seq += 1
            peer.delivered += 1
        elif isinstance(event, GapDetected):
            assert conn.lossy, f"a gap on a lossless connection: {event}"
            assert peer.client.state is ClientState.BROKEN
        else:  # pragma: no cover
            raise AssertionError(f"unexpected event {event!r}")

    def _drop(self, peer: Peer) -> None:
        conn = peer.conn
        assert conn is not None
        self.rooms[conn.room].leave(conn.id)
        del self.conns[conn.id]
        peer.client.connection_lost()
        peer.conn = None

    @precondition(lambda self: self._online())
    @rule(i=st.integers(0, 2))
    def cut(self, i: int) -> None:
        """Abrupt disconnect: whatever is in flight is lost."""
        online = self._online()
        self._drop(online[i % len(online)])

    @rule()
    def everyone_settles(self) -> None:
        """Every client connects if it must and reads everything in flight."""
        for peer in self.peers:
            conn = self._connect(peer) if peer.conn is None else peer.conn
            if not conn.handled:
                self._handle_first_frame(peer)
            self._deliver(peer, 10_000)

    @rule(p=st.integers(0, 2), index=st.integers(0, 20))
    def middlebox_loses_a_message(self, p: int, index: int) -> None:
        conn = self.peers[p].conn
        if conn is None:
            return
        sequenced = [i for i, text in enumerate(conn.wire) if '"type":"chat"' in text]
        if sequenced:
            del conn.wire[sequenced[index % len(sequenced)]]
            conn.lossy = True

    @rule(p=st.integers(0, 2), back=st.integers(0, 5))
    def middlebox_repeats_a_message(self, p: int, back: int) -> None:
        peer = self.peers[p]
        conn, last = peer.conn, peer.client.last_seq
        if conn is None or peer.client.state is not ClientState.LIVE or not last:
            return
        seq = max(1, last - back)
        conn.wire.append(self.published[(peer.client.epoch or "", seq)])

    # -- the server's housekeeping -------------------------------------------

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 31.0, 90.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(room=st.sampled_from("ab"))
    def trim(self, room: str) -> None:
        log = self.rooms[room].log
        log.trim(now=self.now)
        self._check_age_bound(self.rooms[room])
        stats = log.statistics()
        assert stats.messages <= self.limits.max_messages
        assert stats.bytes <= self.limits.max_bytes

    @rule(p=st.integers(0, 2))
    def refresh_token(self, p: int) -> None:
        conn = self.peers[p].conn
        if conn is None or conn.session is None or conn.closing:
            return
        conn.session = self.rooms[conn.room].refresh(conn.session, now=self.now)
        self.peers[p].sessions.append(conn.session)
        self._record(conn.session)
        conn.wire.append(conn.session.token_message())

    @rule(die=st.integers(0, 7))
    def restart_server(self, die: int) -> None:
        """The server restarts (one time in eight that this rule is drawn)."""
        if die:
            return
        for peer in self.peers:
            if peer.conn is not None:
                self._drop(peer)
        self._start_server()

    # -- attackers -------------------------------------------------------------

    def _attack(self, room: Room[int], request: dict[str, Any], identity: str) -> ResumeOutcome:
        self.attacks += 1
        attacker = -self.attacks  # a connection id no genuine client uses
        outcome = room.resume(attacker, json.dumps(request), identity=identity, now=self.now)
        assert not isinstance(outcome, ResumeAccepted), "an attacker resumed a session"
        sequenced = [m for m in outcome.messages() if '"type":"chat"' in m]
        assert not sequenced, "an attacker got messages"
        if isinstance(outcome, ResumeReset):  # a fresh session: from the head, no history
            assert outcome.seq == room.log.last_seq
            room.leave(attacker)
        else:
            assert outcome.close_reason is CloseReason.RESUME_REFUSED
            assert attacker not in room
        return outcome

    @rule(
        kind=st.sampled_from(["forged", "tampered", "foreign", "impossible_seq"]),
        room=st.sampled_from("ab"),
        raw=st.binary(min_size=0, max_size=80),
        victim=st.integers(0, 2),
        thief=st.integers(0, 2),
        position=st.integers(0, 200),
        char=st.sampled_from("AQgw-_9z"),
        flag=st.booleans(),
    )
    def attacker(
        self,
        kind: str,
        room: str,
        raw: bytes,
        victim: int,
        thief: int,
        position: int,
        char: str,
        flag: bool,
    ) -> None:
        if kind == "forged":
            self._forged_token(room, raw, seq=position % 10)
            return
        if not self.peers[victim].sessions:
            return
        stolen = self.peers[victim].sessions[-1]
        if kind == "tampered":
            self._tampered_token(self.peers[victim], stolen, position, char)
        elif kind == "foreign" and victim != thief:
            self._foreign_token(stolen, self.peers[thief], same_epoch=flag)
        elif kind == "impossible_seq":
            self._impossible_seq(self.peers[victim], stolen, before=flag)

    def _forged_token(self, room: str, raw: bytes, seq: int) -> None:
        """Random bytes as a token: refused."""
        r = self.rooms[room]
        token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode() or "A"
        outcome = self._attack(
            r, {"type": "resume", "token": token, "epoch": r.log.epoch, "seq": seq}, "ann"
        )
        assert isinstance(outcome, ResumeRefused)
        assert outcome.reason in (RefuseReason.INVALID_TOKEN, RefuseReason.MALFORMED)

    def _tampered_token(self, peer: Peer, session: Session, position: int, char: str) -> None:
        """A genuine token with one character changed: refused."""
        token = session.token
        i = position % len(token)
        if token[i] == char:
            return
        token = token[:i] + char + token[i + 1 :]
        request = {
            "type": "resume",
            "token": token,
            "epoch": session.epoch,
            "seq": session.since_seq,
        }
        outcome = self._attack(self.rooms[peer.room], request, peer.identity)
        if session.epoch == self.rooms[peer.room].log.epoch:
            assert isinstance(outcome, ResumeRefused)
            assert outcome.reason is RefuseReason.INVALID_TOKEN

    def _foreign_token(self, stolen: Session, target: Peer, *, same_epoch: bool) -> None:
        """Another room's or another identity's genuine token: never a resume."""
        room = self.rooms[target.room]
        epoch = room.log.epoch if same_epoch else stolen.epoch
        request = {"type": "resume", "token": stolen.token, "epoch": epoch, "seq": stolen.since_seq}
        outcome = self._attack(room, request, target.identity)
        if epoch == room.log.epoch:
            assert isinstance(outcome, ResumeRefused)
            assert outcome.reason is RefuseReason.INVALID_TOKEN

    def _impossible_seq(self, peer: Peer, session: Session, *, before: bool) -> None:
        """Its own genuine token, but history from before it joined, or from the future."""
        room = self.rooms[peer.room]
        seq = session.since_seq - 1 if before else room.log.last_seq + 1
        if seq < 0 or session.epoch != room.log.epoch or self.now >= session.expires_at:
            return
        request = {"type": "resume", "token": session.token, "epoch": session.epoch, "seq": seq}
        outcome = self._attack(room, request, peer.identity)
        assert isinstance(outcome, ResumeRefused)
        assert outcome.reason is RefuseReason.INVALID_SEQ

    # -- what must always hold -----------------------------------------------

    @invariant()
    def caught_up_clients_miss_nothing(self) -> None:
        for peer in self.peers:
            conn = peer.conn
            if (
                conn is None
                or not conn.handled
                or conn.wire
                or conn.lossy
                or conn.closing
                or peer.client.state is not ClientState.LIVE
            ):
                continue
            log = self.rooms[peer.room].log
            assert peer.client.epoch == peer.epoch == log.epoch
            assert peer.client.last_seq == log.last_seq
            assert peer.next_seq == log.last_seq + 1

    @invariant()
    def logs_stay_within_bounds(self) -> None:
        for room in self.rooms.values():
            stats = room.log.statistics()
            assert stats.messages <= self.limits.max_messages
            assert stats.bytes <= self.limits.max_bytes
            assert stats.first_seq <= stats.last_seq + 1

    @invariant()
    def client_counters_match_the_application(self) -> None:
        for peer in self.peers:
            stats = peer.client.statistics()
            assert stats.delivered == peer.delivered
            assert stats.resyncs == peer.resyncs


ResumeProtocol.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestResumeProtocol = ResumeProtocol.TestCase
