"""A bounded soak: thousands of resuming chat clients with churn, through the fault proxy.

``python -m benchmarks.soak [--quick] [--out DIR] [--seed N] [--clients N] [--duration S]``

The server is the demo chat app in its own process (``benchmarks.cluster``,
embedded broker); the fault proxy (``python -m trioheart.proxy``) runs in a
second process in front of it, driven through its HTTP control API; the
clients, all :func:`trioheart.client.open_resuming`, run in this one.

Each of ``--clients`` slots joins a room (one per ten slots), chats (a
message every few seconds, of random length), leaves politely after a
random lifetime (an ``app_closed`` close frame), and joins again under a
new name (a fresh session), until the churn ends. Meanwhile a seeded
schedule adds toxics and removes them again: ``reset_peer`` (TCP RST to
both ends) and ``blackhole`` (silence; both heartbeats must convict it) on
a few percent of the connections, ``timeout``, ``ws_drop`` of data frames
(the client sees a seq gap and resumes), ``latency``, ``slicer``, ``stall``
and ``ws_delay`` of pongs, and twice (once with ``--quick``) the whole
proxy goes down for a moment, so every client reconnects at once. Clients
that lose a connection reconnect (jittered backoff) and resume by sequence
number; a room log keeps only a few messages (``Plan.log_messages``), so a
client away for long is told to reset instead.

Every second a thread samples the server's ``/health.json?limit=0`` (open
connections, closes by reason, and the ``process`` block: live Trio tasks,
RSS and allocated blocks) and the proxy's ``GET /proxy``. When the churn
ends it removes
every toxic, waits until every client still there is live and caught up
with its room, has every client leave, and checks:

* **tasks**: the server's live task count is back to its baseline (taken
  before the first client came) once every connection has closed;
* **memory**: the server's RSS at the end is within :func:`rss_bound` of
  its baseline (16 MiB + 40 KiB per client slot; see :data:`RSS_FIXED`),
  and the blocks the interpreter holds within what the room logs hold plus
  :data:`FREE_LIST_BLOCKS`;
* **exactly once**: every message the server published (it has a seq) was
  delivered exactly once, in order, to every client that was in the room
  and stayed or resumed, with the same seq and text everywhere; a message
  no one received is only allowed when its sender's connection died with
  it in flight (it is counted). Resets (fresh sessions that skip history)
  are counted with the messages they skipped;
* **named closes**: every connection that reached the server has exactly
  one close reason there: the closes it counts lie between the connections
  the proxy made to it and those the proxy accepted (a connection the proxy
  dropped while connecting upstream, because it went down, may or may not
  have reached the server); none is ``internal_error`` or a name outside
  :class:`~trioheart.CloseReason`; and on the client side every
  ``Disconnected`` of a connection that opened has a reason (the others are
  tallied as ``not_opened``);
* the server process is alive at the end.

Writes DIR/soak.json (the plan, the chaos schedule, the timeline, the
figures and any violations) and DIR/soak.png; prints a table and the
command that re-creates it. Exits 1 if an invariant failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs
import trio

import trioheart
from benchmarks.cluster import start_nodes
from trioheart.backoff import Backoff
from trioheart.client import (
    ClientEvent,
    Connected,
    Disconnected,
    Message,
    NotConnected,
    ReconnectFailed,
    Reset,
    ResumingClient,
    open_resuming,
)

KEY: Final = b"soak-benchmark-resume-key-32b!!!"
MiB: Final = 1024 * 1024
#: The server's RSS after every client has left may exceed its baseline by
#: at most RSS_FIXED + RSS_PER_CLIENT per client slot (:func:`rss_bound`).
#: CPython seldom gives memory back: an arena returns to the system only
#: when every object in it is free, so the RSS at the end stays near the
#: peak, when one connection per slot was open. One open connection costs
#: the server about 27 KiB (measured: its Connection, wsproto and h11 state,
#: three tasks, the socket and its 4 KiB receive buffer); RSS_PER_CLIENT
#: allows 40. RSS_FIXED covers the room logs (every message of the run,
#: within the node's LogLimits) and the allocator's slack. A leak of
#: 11 KiB or more per connection made (the full run makes about 3.7 per
#: slot) exceeds the bound; smaller leaks show in ``allocated_blocks``.
RSS_FIXED: Final = 16 * MiB
#: Allocated blocks one chat message holds in an embedded room log (measured:
#: 1,000 messages published into a room hold 3.85 blocks each: the entry,
#: its message dict and its strings).
LOG_BLOCKS_PER_MESSAGE: Final = 4
#: What the server may hold at the end beyond its room logs, in allocated
#: blocks: CPython's free lists fill up at the peak and keep their objects
#: (2,000 tuples of each size below 20 alone: 38,000 blocks), whatever the
#: number of connections. A leak of a connection's state (about 300 blocks),
#: or of a few objects per connection over the full run's 7,000 connections,
#: exceeds it.
FREE_LIST_BLOCKS: Final = 50_000
RSS_PER_CLIENT: Final = 40 * 1024
#: The most one HTTP request to the server or the proxy's control API may take.
HTTP_TIMEOUT: Final = 10.0
#: Tries of each call to the proxy's control API.
CONTROL_ATTEMPTS: Final = 3
#: Most violations listed in the JSON (all are counted).
MAX_LISTED: Final = 50


def _progress(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The plan


@attrs.frozen(kw_only=True)
class Plan:
    """Everything that shapes a run (recorded in the JSON)."""

    clients: int
    rooms: int
    #: Seconds of churn (clients joining, chatting, vanishing, leaving).
    duration: float
    #: Seconds over which the slots first join.
    ramp: float
    #: Mean of a member's lifetime before it leaves (exponential).
    lifetime: float
    #: Each member sends a message every U(send_min, send_max) seconds.
    send_min: float
    send_max: float
    #: Messages each room's log keeps (the server's LogLimits.max_messages):
    #: a client away for longer than that many messages is told to reset.
    log_messages: int
    #: Server and client heartbeats: ping interval and pong timeout.
    ping_interval: float
    ping_timeout: float
    #: Mean seconds between two chaos events (exponential).
    chaos_every: float
    #: Multiplies the share of connections a vanishing toxic hits (capped at 0.5).
    vanish_scale: float
    #: When the proxy goes down (fractions of the duration), and for how long.
    downs: tuple[float, ...]
    down_for: float
    #: Reconnect backoff (full jitter).
    backoff_base: float
    backoff_cap: float
    #: Bounds of the end phase: catch up, then close and settle.
    quiesce_timeout: float
    settle_timeout: float
    #: Seconds between two samples of the server.
    sample_every: float
    seed: int

    @classmethod
    def full(cls, seed: int, clients: int, duration: float) -> Plan:
        return cls(
            clients=clients,
            rooms=max(1, clients // 10),
            duration=duration,
            ramp=30.0,
            lifetime=60.0,
            send_min=20.0,
            send_max=40.0,
            log_messages=10,
            ping_interval=15.0,
            ping_timeout=5.0,
            chaos_every=3.0,
            vanish_scale=1.0,
            downs=(0.4, 0.75),
            down_for=1.0,
            backoff_base=0.25,
            backoff_cap=4.0,
            quiesce_timeout=90.0,
            settle_timeout=60.0,
            sample_every=1.0,
            seed=seed,
        )

    @classmethod
    def quick(cls, seed: int, clients: int, duration: float) -> Plan:
        return cls(
            clients=clients,
            rooms=max(1, clients // 10),
            duration=duration,
            ramp=1.0,
            lifetime=3.0,
            send_min=0.2,
            send_max=0.8,
            log_messages=20,
            ping_interval=1.0,
            ping_timeout=1.0,
            chaos_every=0.4,
            vanish_scale=4.0,
            downs=(0.5,),
            down_for=0.3,
            backoff_base=0.05,
            backoff_cap=0.5,
            quiesce_timeout=30.0,
            settle_timeout=30.0,
            sample_every=0.5,
            seed=seed,
        )

    @property
    def detection(self) -> float:
        """How long a heartbeat takes at most to convict a silent peer."""
        return self.ping_interval + self.ping_timeout


def rss_bound(plan: Plan) -> int:
    """How far above its baseline the server's RSS may end, in bytes."""
    return RSS_FIXED + RSS_PER_CLIENT * plan.clients


# --------------------------------------------------------------------------
# HTTP to the server and the proxy's control API


async def http_json(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """One HTTP/1.1 request to 127.0.0.1:*port*; the status and the JSON body."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with trio.fail_after(HTTP_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(head.encode() + payload)
            data = bytearray()
            while chunk := await stream.receive_some(65536):
                data += chunk
    top, _, content = bytes(data).partition(b"\r\n\r\n")
    status = int(top.split(b" ", 2)[1])
    return status, json.loads(content) if content.strip() else None


@attrs.define
class ProxyControl:
    """The proxy process's control API.

    Each call is tried :data:`CONTROL_ATTEMPTS` times (the proxy shares its
    event loop with every byte it forwards, so under load it may answer
    late); adding a toxic that is already there, or removing one that is
    gone, counts as done, so a retry after a lost answer is harmless.
    """

    port: int
    #: The longest a call took, in seconds.
    slowest: float = 0.0

    async def _call(
        self, method: str, path: str, body: object = None, *, ok: tuple[int, ...] = (200,)
    ) -> Any:
        failure = ""
        for _ in range(CONTROL_ATTEMPTS):
            started = trio.current_time()
            try:
                status, answer = await http_json(self.port, method, path, body)
            except (OSError, trio.TooSlowError, ValueError) as exc:
                failure = repr(exc)
                continue
            finally:
                self.slowest = max(self.slowest, trio.current_time() - started)
            if status in ok:
                return answer
            raise RuntimeError(f"{method} {path} answered {status}: {answer}")
        raise RuntimeError(f"{method} {path}: no answer in {CONTROL_ATTEMPTS} tries ({failure})")

    async def add(self, toxic: dict[str, Any]) -> None:
        await self._call("POST", "/toxics", toxic, ok=(201, 409))

    async def remove(self, name: str) -> None:
        await self._call("DELETE", f"/toxics/{name}", ok=(204, 404))

    async def set_enabled(self, enabled: bool) -> None:
        await self._call("POST", "/proxy", {"enabled": enabled})

    async def reset(self) -> None:
        await self._call("POST", "/reset", ok=(204,))

    async def statistics(self) -> dict[str, Any]:
        body = await self._call("GET", "/proxy")
        stats: dict[str, Any] = body["statistics"]
        return stats


# --------------------------------------------------------------------------
# The chaos schedule


#: Chaos kinds and their weights in the draw.
CHAOS_KINDS: Final = {
    "reset_peer": 3,
    "blackhole": 2,
    "timeout": 1,
    "ws_drop": 2,
    "latency": 2,
    "slicer": 1,
    "stall": 1,
    "ws_delay": 1,
}
#: The ways a connection vanishes under a client: every schedule has each.
VANISHING: Final = ("reset_peer", "blackhole", "timeout", "ws_drop")


def _toxic(kind: str, rng: random.Random, plan: Plan) -> tuple[dict[str, Any], float]:
    """One toxic of *kind* with drawn attributes, and how long it stays."""
    detection = plan.detection
    attributes: dict[str, Any]

    def share(low: float, high: float) -> float:  # of the connections a vanishing toxic hits
        return min(0.5, rng.uniform(low, high) * plan.vanish_scale)

    if kind == "reset_peer":  # TCP RST to both ends, at once
        return {"type": kind, "toxicity": share(0.01, 0.05), "attributes": {"timeout": 0}}, 0.2
    if kind == "blackhole":  # silence both ways: each heartbeat must convict its peer
        toxic = {"type": kind, "stream": "both", "toxicity": share(0.01, 0.04)}
        return toxic, rng.uniform(1.2, 2.0) * detection
    if kind == "timeout":  # data dropped, then a FIN to both ends
        timeout = rng.uniform(0.2, 1.0) * detection
        attributes = {"timeout": round(timeout, 3)}
        return {
            "type": kind,
            "toxicity": share(0.01, 0.03),
            "attributes": attributes,
        }, timeout + 0.2
    if kind == "ws_drop":  # whole data frames lost: the client sees a seq gap and resumes
        attributes = {"frames": ["data"], "probability": rng.uniform(0.01, 0.05)}
        toxic = {"type": kind, "toxicity": share(0.05, 0.2), "attributes": attributes}
        return toxic, rng.uniform(0.5, 1.0) * detection
    if kind == "latency":
        latency = rng.uniform(0.01, 0.15)
        attributes = {"latency": round(latency, 4), "jitter": round(rng.uniform(0, latency / 2), 4)}
        toxic = {
            "type": kind,
            "stream": rng.choice(["upstream", "downstream"]),
            "toxicity": rng.uniform(0.2, 1.0),
            "attributes": attributes,
        }
        return toxic, rng.uniform(0.5, 1.5) * detection
    if kind == "slicer":  # small writes: frames cut anywhere
        size = rng.randrange(16, 128)
        attributes = {"average_size": size, "size_variation": size // 2}
        toxic = {"type": kind, "toxicity": rng.uniform(0.1, 0.4), "attributes": attributes}
        return toxic, rng.uniform(0.5, 1.0) * detection
    if kind == "stall":  # a frozen path, then everything at once
        duration = rng.uniform(0.05, 0.3) * detection
        attributes = {"duration": round(duration, 3)}
        return {
            "type": kind,
            "toxicity": share(0.02, 0.1),
            "attributes": attributes,
        }, duration + 0.2
    if kind == "ws_delay":  # late pongs: a slow path the pong window adapts to
        attributes = {"frames": ["pong"], "delay": round(rng.uniform(0.05, 0.5), 3)}
        toxic = {
            "type": kind,
            "stream": "upstream",
            "toxicity": rng.uniform(0.1, 0.3),
            "attributes": attributes,
        }
        return toxic, rng.uniform(0.5, 1.0) * detection
    raise ValueError(f"unknown chaos kind {kind!r}")


def chaos_schedule(plan: Plan) -> list[dict[str, Any]]:
    """The toxics to add and remove, drawn from the seed: ``at``, ``hold``, the toxic.

    Events come at exponential intervals (mean ``chaos_every``) from the end
    of the ramp, each of a kind drawn by :data:`CHAOS_KINDS`; every kind in
    :data:`VANISHING` is there at least once; and the proxy goes down at each
    fraction of the duration in ``downs``.
    """
    rng = random.Random(f"{plan.seed}-chaos")
    drawn: list[tuple[float, str]] = []
    at = plan.ramp
    end = plan.duration - plan.detection  # most toxics are gone before the churn ends
    while (at := at + rng.expovariate(1 / plan.chaos_every)) < end:
        drawn.append((at, rng.choices(list(CHAOS_KINDS), weights=list(CHAOS_KINDS.values()))[0]))
    for kind in VANISHING:
        if kind not in {k for _, k in drawn}:
            drawn.append((rng.uniform(plan.ramp, max(plan.ramp, end)), kind))
    events: list[dict[str, Any]] = []
    for n, (at, kind) in enumerate(sorted(drawn), 1):
        toxic, hold = _toxic(kind, rng, plan)
        toxic["name"] = f"{kind}-{n}"
        events.append({"at": round(at, 3), "hold": round(hold, 3), "toxic": toxic})
    for fraction in plan.downs:
        events.append(
            {"at": round(plan.duration * fraction, 3), "hold": plan.down_for, "down": True}
        )
    events.sort(key=lambda e: e["at"])
    return events


# --------------------------------------------------------------------------
# Members and the ledger that checks what they deliver


@attrs.define(eq=False)
class Member:
    """One client generation: joins under a fresh name, leaves once."""

    name: str
    room: str
    client: ResumingClient | None = None
    #: The live connection's index (the client's connection count when it went live).
    connection: int = 0
    live: bool = False
    epoch: str | None = None
    #: The seq expected next, or ``None`` before the first session.
    next_seq: int | None = None
    #: Connection indexes that ended (a Disconnected came after them), and why.
    ended: dict[int, str] = attrs.field(factory=dict)
    #: Texts sent, by the connection they went out on, in order.
    sent: dict[int, list[str]] = attrs.field(factory=dict)
    #: A Reset came and the fresh session has not started yet.
    reset_pending: bool = False
    lost_at: float | None = None
    #: Disconnected events with a reason (each ends a connection that opened).
    named_closes: int = 0
    left_during_churn: bool = False
    stayer: bool = False
    marker_seen: bool = False


def _never_opened(detail: str) -> str:
    """A name for a connection that failed before it opened (a Disconnected without a reason)."""
    if "handshake within" in detail:
        return "not_opened: handshake timeout"
    if "all attempts to connect" in detail or "refused" in detail.lower():
        return "not_opened: connection refused"
    if "during the handshake" in detail:
        return "not_opened: closed during the handshake"
    return "not_opened: " + detail[:60]


@attrs.define
class Ledger:
    """Checks every event as it arrives; keeps counts, not the deliveries."""

    #: (room, epoch) -> seq -> text, from every delivery.
    history: dict[tuple[str, str], dict[int, str]] = attrs.field(factory=dict)
    #: (room, epoch) -> the highest seq any client saw: delivered, or where a
    #: session started (a room's history may go on while no one is there).
    heads: dict[tuple[str, str], int] = attrs.field(factory=dict)
    #: text -> (room, epoch, seq) where it was published.
    published_at: dict[str, tuple[str, str, int]] = attrs.field(factory=dict)
    #: text -> the member that sent it and the connection it went out on.
    senders: dict[str, tuple[Member, int]] = attrs.field(factory=dict)
    send_failed: set[str] = attrs.field(factory=set)
    violations: list[str] = attrs.field(factory=list)
    violation_count: int = 0
    deliveries: int = 0
    duplicates_delivered: int = 0
    gaps_delivered: int = 0
    resets: Counter[str] = attrs.field(factory=Counter)
    skipped_by_resets: int = 0
    resumes: int = 0
    fresh_after_loss: int = 0
    #: Replayed messages the resume protocol dropped as already delivered.
    dropped_duplicates: int = 0
    #: Seq gaps the client saw on a connection (it closed it and resumed).
    repaired_gaps: int = 0
    disconnects: Counter[str] = attrs.field(factory=Counter)
    reconnect_latencies: list[float] = attrs.field(factory=list)
    other_messages: Counter[str] = attrs.field(factory=Counter)
    markers: set[str] = attrs.field(factory=set)

    def violation(self, text: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_LISTED:
            self.violations.append(text)

    def on_sent(self, member: Member, text: str, connection: int) -> None:
        self.senders[text] = (member, connection)
        member.sent.setdefault(connection, []).append(text)

    def on_event(self, member: Member, event: ClientEvent, now: float) -> None:
        if isinstance(event, Message):
            self._on_message(member, event)
        elif isinstance(event, Connected):
            self._on_connected(member, event, now)
        elif isinstance(event, Disconnected):
            member.live = False
            self.disconnects[
                event.reason.value if event.reason else _never_opened(event.detail)
            ] += 1
            if event.reason is not None:
                member.named_closes += 1
                # Events come in order: this ends the last connection that went live
                # (or a later one that never did, which carried no message).
                member.ended.setdefault(member.connection, event.reason.value)
            if member.lost_at is None:
                member.lost_at = now
        elif isinstance(event, Reset):
            self.resets[str(event.reason)] += 1
            member.reset_pending = True

    def _on_connected(self, member: Member, event: Connected, now: float) -> None:
        member.connection = event.connection
        member.live = True
        if member.lost_at is not None:
            self.reconnect_latencies.append(now - member.lost_at)
            member.lost_at = None
        if event.resumed:
            self.resumes += 1
            if event.epoch != member.epoch:
                self.violation(
                    f"{member.name} resumed into epoch {event.epoch}, not {member.epoch}"
                )
            else:
                self._saw(member, event.seq)
            return
        if member.next_seq is not None:  # a fresh session after the first: only after a Reset
            self.fresh_after_loss += 1
            if not member.reset_pending:
                self.violation(f"{member.name} started a fresh session without a reset")
            if event.epoch == member.epoch:
                self.skipped_by_resets += max(0, event.seq - (member.next_seq - 1))
        member.reset_pending = False
        member.epoch = event.epoch
        member.next_seq = event.seq + 1
        self._saw(member, event.seq)

    def _saw(self, member: Member, seq: int) -> None:
        assert member.epoch is not None
        key = (member.room, member.epoch)
        self.heads[key] = max(self.heads.get(key, 0), seq)

    def _on_message(self, member: Member, event: Message) -> None:
        data = event.data
        if event.seq is None or not isinstance(data, dict) or data.get("type") != "chat":
            kind = data.get("type") if isinstance(data, dict) else type(data).__name__
            self.other_messages[str(kind)] += 1
            if kind == "error":
                self.violation(f"{member.name} got an error frame: {data!r}")
            return
        seq, text = event.seq, str(data.get("text"))
        assert member.epoch is not None
        assert member.next_seq is not None
        if data.get("room") != member.room:
            self.violation(f"{member.name} in {member.room} got a message of {data.get('room')}")
        if text.split(":", 1)[0] != data.get("from") and text not in self.markers:
            self.violation(f"{text!r} arrived from {data.get('from')!r}")
        self.deliveries += 1
        if seq < member.next_seq:
            self.duplicates_delivered += 1
            self.violation(f"{member.name} got seq {seq} again (expected {member.next_seq})")
            return
        if seq > member.next_seq:
            self.gaps_delivered += seq - member.next_seq
            self.violation(f"{member.name} skipped seqs {member.next_seq}..{seq - 1}")
        member.next_seq = seq + 1
        self._saw(member, seq)
        key = (member.room, member.epoch)
        known = self.history.setdefault(key, {}).setdefault(seq, text)
        if known != text:
            self.violation(f"{key} seq {seq} is {text!r} for {member.name} but {known!r} before")
        where = self.published_at.setdefault(text, (member.room, member.epoch, seq))
        if where != (member.room, member.epoch, seq):
            self.violation(f"{text!r} published twice: at {where} and seq {seq}")
        if text in self.markers and member.room == data.get("room"):
            member.marker_seen = True

    def head(self, member: Member) -> int:
        """The room's last seq, as far as any client saw it, in the member's epoch."""
        assert member.epoch is not None
        return self.heads.get((member.room, member.epoch), 0)

    def unacknowledged(self, members: Sequence[Member]) -> tuple[Counter[str], list[str]]:
        """Sent texts no one received: (lost with their connection, by why it ended; lost).

        A connection is ordered, so once a later message of the same sender on
        the same connection was published, an earlier one that was not is lost
        for real; the last ones before a connection ended may have died with it.
        """
        with_connection: Counter[str] = Counter()
        lost: list[str] = []
        for member in members:
            for connection, texts in member.sent.items():
                ended = member.ended.get(connection)
                if ended is None and member.left_during_churn and connection == member.connection:
                    ended = "left"
                seen_later = False
                for text in reversed(texts):
                    if text in self.published_at:
                        seen_later = True
                    elif ended is not None and not seen_later:
                        with_connection[ended] += 1  # in flight when its connection died
                    else:
                        lost.append(text)
        return with_connection, lost


# --------------------------------------------------------------------------
# The run


@attrs.define
class Soak:
    plan: Plan
    url: str
    server_port: int
    proxy: ProxyControl
    ledger: Ledger = attrs.field(factory=Ledger)
    members: list[Member] = attrs.field(factory=list)
    samples: list[dict[str, Any]] = attrs.field(factory=list)
    chaos: list[dict[str, Any]] = attrs.field(factory=list)
    sending: bool = True
    churning: bool = True
    #: t=0 on the Trio clock, and on time.perf_counter() (for the sampler thread).
    started: float = 0.0
    started_perf: float = 0.0
    sent: int = 0
    send_skipped: int = 0
    gave_up: int = 0
    phase: str = "baseline"
    #: The clients' event loop: the most a 50 ms sleep overslept since the last sample.
    loop_lag: float = 0.0
    #: Unparked after every client event.
    changed: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    @property
    def live_members(self) -> list[Member]:
        return [m for m in self.members if m.client is not None]

    def client_config(self) -> trioheart.ConnectionConfig:
        plan = self.plan
        return trioheart.ConnectionConfig(
            heartbeat=trioheart.DetectorConfig(
                ping_interval=plan.ping_interval, ping_timeout=plan.ping_timeout
            ),
            handshake_timeout=min(plan.detection, 10.0),
            close_timeout=1.0,
            max_queued_messages=1024,
            max_queued_bytes=4 << 20,
        )

    # -- sampling -----------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        """One row of the timeline: the server, the proxy and the clients (blocking).

        It runs in a thread of its own (:class:`Sampler`), so a row comes
        every second even while thousands of clients keep the event loop busy.
        """
        row: dict[str, Any] = {
            "t": round(time.perf_counter() - self.started_perf, 3),
            "phase": self.phase,
        }
        try:
            health = _get_json(self.server_port, "/health.json?limit=0", HTTP_TIMEOUT)
            row.update(
                server_open=health["open"],
                tasks=health["process"]["tasks_living"],
                rss=health["process"]["rss_bytes"],
                blocks=health["process"]["allocated_blocks"],
                closed=health["closed"],
            )
            if health.get("stalls"):
                row["server_stalls"] = health["stalls"]["count"]
                row["server_stall_max"] = round(health["stalls"]["max_s"], 3)
        except (OSError, ValueError, KeyError) as exc:
            row["server_error"] = repr(exc)
        try:
            # A late answer leaves a gap in the proxy's line only, not in the timeline.
            answer = _get_json(self.proxy.port, "/proxy", 2 * self.plan.sample_every)
            row["proxy_open"] = answer["statistics"]["connections_open"]
        except (OSError, ValueError, KeyError) as exc:
            row["proxy_error"] = repr(exc)
        live = self.live_members
        row["members"] = len(live)
        row["members_live"] = sum(1 for m in live if m.live)
        row["sent"] = self.sent
        row["deliveries"] = self.ledger.deliveries
        row["client_loop_lag"], self.loop_lag = round(self.loop_lag, 3), 0.0
        self.samples.append(row)
        return row

    async def watch_loop_lag(self) -> None:
        """How late the clients' event loop wakes a sleeper: its lag, for the timeline."""
        while True:
            asleep = trio.current_time()
            await trio.sleep(0.05)
            self.loop_lag = max(self.loop_lag, trio.current_time() - asleep - 0.05)

    # -- chaos ----------------------------------------------------------------

    async def run_chaos(self) -> None:
        schedule = chaos_schedule(self.plan)
        try:
            async with trio.open_nursery() as nursery:
                for event in schedule:
                    await trio.sleep_until(self.started + event["at"])
                    nursery.start_soon(self._one_toxic, event)
        finally:
            # Every toxic gone, the proxy up: the end phase needs a clean path.
            with trio.CancelScope(shield=True), trio.fail_after(120):
                while True:
                    try:
                        await self.proxy.reset()
                        break
                    except RuntimeError as exc:
                        _progress(f"resetting the proxy failed, again: {exc}")

    async def _one_toxic(self, event: dict[str, Any]) -> None:
        record = {**event, "at": round(trio.current_time() - self.started, 3)}
        self.chaos.append(record)
        try:
            if event.get("down"):
                await self.proxy.set_enabled(False)
                record["applied_at"] = round(trio.current_time() - self.started, 3)
                await trio.sleep(event["hold"])
                await self.proxy.set_enabled(True)
            else:
                await self.proxy.add(event["toxic"])
                record["applied_at"] = round(trio.current_time() - self.started, 3)
                await trio.sleep(event["hold"])
                await self.proxy.remove(event["toxic"]["name"])
            record["removed_at"] = round(trio.current_time() - self.started, 3)
        except RuntimeError as exc:  # the run goes on; the proxy is reset at the end
            record["error"] = str(exc)
            _progress(f"chaos event at {event['at']} s failed: {exc}")

    # -- members ----------------------------------------------------------------

    async def slot(self, index: int) -> None:
        plan = self.plan
        rng = random.Random(f"{plan.seed}-slot-{index}")
        await trio.sleep_until(self.started + plan.ramp * index / plan.clients)
        generation = 0
        while self.churning:
            member = Member(name=f"u{index}g{generation}", room=f"room{index % plan.rooms}")
            self.members.append(member)
            leave_at = trio.current_time() + rng.expovariate(1 / plan.lifetime)
            member.stayer = leave_at >= self.started + plan.duration
            await self.live(member, math.inf if member.stayer else leave_at, rng)
            if member.stayer:
                return  # the end phase made it leave
            member.left_during_churn = True
            generation += 1
            await trio.sleep(rng.uniform(0.0, 1.0))

    async def live(self, member: Member, leave_at: float, rng: random.Random) -> None:
        plan = self.plan
        backoff = Backoff(base=plan.backoff_base, cap=plan.backoff_cap, jitter="full")
        url = f"{self.url}/ws?room={member.room}&name={member.name}"
        client: ResumingClient | None = None
        try:
            with trio.move_on_at(leave_at):
                async with open_resuming(
                    url,
                    config=self.client_config(),
                    backoff=backoff,
                    rng=random.Random(rng.random()),
                    max_events=4096,
                ) as client:
                    member.client = client
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self.talk, member, client, rng)
                        try:
                            async for event in client:
                                self.ledger.on_event(member, event, trio.current_time())
                                self.changed.unpark_all()
                        except ReconnectFailed as exc:
                            self.gave_up += 1
                            self.ledger.violation(f"{member.name} gave up: {exc}")
                        nursery.cancel_scope.cancel()
        finally:
            member.live = False
            member.client = None
            if client is not None:
                stats = client.statistics()
                self.ledger.dropped_duplicates += stats.duplicates
                self.ledger.repaired_gaps += stats.gaps
                # Every connection that opened ended with a reason, but the last,
                # which the member closed on leaving (app_closed).
                if not 0 <= stats.connections - member.named_closes <= 1:
                    self.ledger.violation(
                        f"{member.name}: {stats.connections} connections opened, "
                        f"{member.named_closes} ended with a reason"
                    )

    async def talk(self, member: Member, client: ResumingClient, rng: random.Random) -> None:
        plan = self.plan
        for k in range(1_000_000):
            await trio.sleep(rng.uniform(plan.send_min, plan.send_max))
            if not self.sending:
                return
            text = f"{member.name}:{k}:" + "x" * rng.randrange(0, 200)
            if client.connection is None:
                self.send_skipped += 1
                continue
            connection = client.statistics().connections
            try:
                await client.send({"type": "chat", "text": text})
            except NotConnected:
                self.ledger.send_failed.add(text)
                self.send_skipped += 1
                continue
            self.ledger.on_sent(member, text, connection)
            self.sent += 1

    # -- the end phase ---------------------------------------------------------

    async def quiesce(self) -> bool:
        """Every member still there live and caught up with its room; False on timeout."""
        stayers = [m for m in self.live_members if m.stayer]
        with trio.move_on_after(self.plan.quiesce_timeout) as scope:
            await self._until(lambda: all(m.live for m in stayers))
            rooms: dict[str, Member] = {}
            for member in stayers:
                rooms.setdefault(member.room, member)
            for room, member in rooms.items():
                text = f"marker:{room}"
                self.ledger.markers.add(text)
                client = member.client
                assert client is not None  # a stayer leaves only when told to
                while True:  # bounded by the scope
                    await client.wait_connected()
                    connection = client.statistics().connections
                    try:
                        await client.send({"type": "chat", "text": text})
                    except NotConnected:
                        continue
                    self.ledger.on_sent(member, text, connection)
                    break
            await self._until(lambda: all(m.marker_seen for m in stayers))
            await self._until(
                lambda: all(m.live and m.next_seq == self.ledger.head(m) + 1 for m in stayers)
            )
        return not scope.cancelled_caught

    async def _until(self, predicate: Callable[[], bool]) -> None:
        """Wait until *predicate* holds, checked after client events (the caller bounds it).

        The predicates walk every member, so events are taken in batches of
        up to 50 ms: one walk per batch, not one per event.
        """
        while not predicate():
            await self.changed.park()
            await trio.sleep(0.05)

    async def wait_server(self, predicate: Callable[[dict[str, Any]], bool]) -> bool:
        """Poll the server until *predicate(health)* holds (the caller bounds it)."""
        while True:
            try:
                _status, health = await http_json(self.server_port, "GET", "/health.json?limit=0")
            except (OSError, trio.TooSlowError, ValueError):
                pass  # a late answer: ask again
            else:
                if predicate(health):
                    return True
            await trio.sleep(0.2)  # another process's state: polled over HTTP


def _get_json(port: int, path: str, timeout: float) -> Any:
    """``GET http://127.0.0.1:port/path`` as JSON (blocking, for the sampler thread)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
        return json.loads(answer.read())


class Sampler(threading.Thread):
    """Samples the soak every ``sample_every`` seconds until :attr:`stop` is set."""

    def __init__(self, soak: Soak) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.soak = soak
        self.stop = threading.Event()

    def run(self) -> None:
        soak, every = self.soak, self.soak.plan.sample_every
        next_at = time.perf_counter()
        while not self.stop.is_set():
            row = soak.sample()
            if len(soak.samples) % max(1, round(10 / every)) == 0:
                _progress(
                    f"t={row['t']:.0f}s {row['phase']}: server open {row.get('server_open')}, "
                    f"tasks {row.get('tasks')}, RSS {(row.get('rss') or 0) / MiB:.1f} MiB, "
                    f"members live {row['members_live']}/{row['members']}, "
                    f"sent {row['sent']}, deliveries {row['deliveries']}"
                )
            next_at = max(next_at + every, time.perf_counter())
            self.stop.wait(next_at - time.perf_counter())


async def drive(plan: Plan, server_port: int, proxy_port: int, control_port: int) -> dict[str, Any]:
    soak = Soak(
        plan=plan,
        url=f"ws://127.0.0.1:{proxy_port}",
        server_port=server_port,
        proxy=ProxyControl(control_port),
    )
    soak.started, soak.started_perf = trio.current_time(), time.perf_counter()
    first = soak.started_perf
    results: dict[str, Any] = {"closed_in_time": False, "tasks_back_in_time": False}
    # Baseline: the server idle, before the first client.
    for _ in range(3):
        await trio.to_thread.run_sync(soak.sample)
        await trio.sleep(plan.sample_every)
    baseline = soak.samples[-1]
    results["baseline"] = {k: baseline[k] for k in ("tasks", "rss", "blocks")}
    soak.started, soak.started_perf = trio.current_time(), time.perf_counter()  # t=0
    for row in soak.samples:
        row["t"] = round(row["t"] - (soak.started_perf - first), 3)
    sampler = Sampler(soak)
    sampler.start()
    try:
        soak.phase = "churn"
        _progress(
            f"churn: {plan.clients} slots in {plan.rooms} rooms for {plan.duration:.0f} s "
            f"through the proxy"
        )
        async with trio.open_nursery() as clients:
            clients.start_soon(soak.watch_loop_lag)
            for index in range(plan.clients):
                clients.start_soon(soak.slot, index)
            async with trio.open_nursery() as chaos:
                chaos.start_soon(soak.run_chaos)
                await trio.sleep_until(soak.started + plan.duration)
                chaos.cancel_scope.cancel()  # run_chaos resets the proxy on its way out
            soak.churning = False
            soak.sending = False
            soak.phase = "quiesce"
            stayers = [m for m in soak.live_members if m.stayer]
            _progress(f"churn over: {len(stayers)} members stay; waiting until they catch up")
            started = trio.current_time()
            caught_up = await soak.quiesce()
            results["quiesce_seconds"] = round(trio.current_time() - started, 3)
            results["caught_up"] = caught_up
            for member in stayers:
                if not member.live:
                    soak.ledger.violation(f"{member.name} was not live at the end")
                elif member.next_seq != soak.ledger.head(member) + 1:
                    soak.ledger.violation(
                        f"{member.name} ended at seq {member.next_seq} - 1, the room at "
                        f"{soak.ledger.head(member)}"
                    )
            soak.phase = "leave"
            _progress("every member leaves")
            clients.cancel_scope.cancel()
        started = trio.current_time()
        with trio.move_on_after(plan.settle_timeout):
            results["closed_in_time"] = await soak.wait_server(lambda h: h["open"] == 0)
        soak.phase = "settle"
        base_tasks = results["baseline"]["tasks"]
        with trio.move_on_after(plan.settle_timeout):
            results["tasks_back_in_time"] = await soak.wait_server(
                lambda h: h["open"] == 0 and h["process"]["tasks_living"] == base_tasks
            )
        results["settle_seconds"] = round(trio.current_time() - started, 3)
    finally:
        sampler.stop.set()
        await trio.to_thread.run_sync(sampler.join)
    # A few more samples, so the timeline shows the end state.
    for _ in range(3):
        await trio.sleep(plan.sample_every)
        await trio.to_thread.run_sync(soak.sample)
    end = soak.samples[-1]
    proxy_stats = await soak.proxy.statistics()
    results["end"] = {k: end.get(k) for k in ("tasks", "rss", "blocks", "closed")}
    results["proxy"] = proxy_stats
    results["soak"] = soak
    return results


# --------------------------------------------------------------------------
# Processes


def start_proxy(
    server_port: int, seed: int, timeout: float = 20.0
) -> tuple[subprocess.Popen[str], int, int]:
    """``python -m trioheart.proxy`` before the server: (process, listen port, control port)."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "trioheart.proxy", "--upstream", f"127.0.0.1:{server_port}"),
            *("--control", "127.0.0.1:0", "--seed", str(seed)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while "control" not in found and time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline().strip()
        if " " in line:
            name, value = line.split(" ", 1)
            found[name] = value
    if "control" not in found:
        process.kill()
        raise RuntimeError(f"the proxy did not start (exit {process.poll()})")
    listen = int(found["listen"].rsplit(":", 1)[1])
    control = int(found["control"].rstrip("/").rsplit(":", 1)[1])
    return process, listen, control


def stop_proxy(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run(plan: Plan, log: IO[bytes]) -> dict[str, Any]:
    extra = [
        *("--ping-interval", str(plan.ping_interval), "--ping-timeout", str(plan.ping_timeout)),
        *("--max-messages", str(plan.log_messages)),
    ]
    load_start = os.getloadavg()
    overflows = _listen_overflows()
    (node,) = start_nodes(1, redis=None, key=KEY, extra_args=extra, stderr=log)
    proxy: subprocess.Popen[str] | None = None
    try:
        proxy, listen, control = start_proxy(node.port, plan.seed)
        _progress(f"server pid {node.pid} on :{node.port}, proxy pid {proxy.pid} on :{listen}")
        results = trio.run(drive, plan, node.port, listen, control)
        results["server_alive"] = node.process.poll() is None
        results["load_start"] = load_start
        after = _listen_overflows()
        results["listen_overflows"] = (
            None if overflows is None or after is None else after - overflows
        )
        results["cpu_seconds"] = {
            "server": _cpu_seconds(node.pid),
            "proxy": _cpu_seconds(proxy.pid),
            "clients": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
        }
    finally:
        if proxy is not None:
            stop_proxy(proxy)
        node.stop()
    return results


def _listen_overflows() -> int | None:
    """The kernel's count of connections dropped at a full accept queue (all of this host)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in itertools.pairwise(lines):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from ``/proc`` (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)


def _log_levels(text: str) -> dict[str, int]:
    """The server's log lines (JSON, warnings and up) by level and event."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            counts["unparsed"] += 1
            continue
        if isinstance(record, dict):
            counts[f"{record.get('level')} {record.get('event')}"] += 1
    return dict(counts.most_common())


# --------------------------------------------------------------------------
# The report


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def report(plan: Plan, results: dict[str, Any], command: str, log_text: str) -> dict[str, Any]:
    soak: Soak = results["soak"]
    ledger = soak.ledger
    members = soak.members
    with_connection, lost = ledger.unacknowledged(members)
    for text in lost[:10]:
        ledger.violation(f"{text!r} was sent and never published, its connection lived on")
    if len(lost) > 10:
        ledger.violation(f"... and {len(lost) - 10} more messages lost")
    published_unsent = sum(1 for text in ledger.send_failed if text in ledger.published_at)
    baseline, end = results["baseline"], results["end"]
    closed: dict[str, int] = dict(end["closed"] or {})
    names = {reason.value for reason in trioheart.CloseReason}
    unnamed = {reason: count for reason, count in closed.items() if reason not in names}
    if unnamed:
        ledger.violation(f"closes with no known reason: {unnamed}")
    if closed.get("internal_error"):
        ledger.violation(f"{closed['internal_error']} connections closed as internal_error")
    accepted = results["proxy"]["connections_accepted"]
    forwarded = results["proxy"]["upstream_connections"]
    if not forwarded <= sum(closed.values()) <= accepted:
        ledger.violation(
            f"accounting: the proxy accepted {accepted} connections and made {forwarded} to "
            f"the server, which named {sum(closed.values())} closes ({closed})"
        )
    if not results["closed_in_time"]:
        ledger.violation(f"connections still open {plan.settle_timeout} s after every client left")
    if end["tasks"] != baseline["tasks"]:
        ledger.violation(
            f"server tasks: {baseline['tasks']} at the start, {end['tasks']} at the end"
        )
    rss_growth = (end["rss"] or 0) - (baseline["rss"] or 0)
    bound = rss_bound(plan)
    if rss_growth > bound:
        ledger.violation(
            f"server RSS grew {rss_growth / MiB:.1f} MiB (bound {bound / MiB:.0f} MiB)"
        )
    held = end["blocks"] - baseline["blocks"]
    in_logs = min(len(ledger.published_at), plan.rooms * plan.log_messages)
    blocks_bound = LOG_BLOCKS_PER_MESSAGE * in_logs + FREE_LIST_BLOCKS
    if held > blocks_bound:
        ledger.violation(
            f"the server holds {held} more allocated blocks than at the start "
            f"(bound {blocks_bound}: the room logs and CPython's free lists)"
        )
    if not results["server_alive"]:
        ledger.violation("the server process died")
    if not results["caught_up"]:
        ledger.violation(f"members did not catch up within {plan.quiesce_timeout} s")
    samples = soak.samples
    peak = {
        key: max((row.get(key) or 0) for row in samples)
        for key in ("server_open", "proxy_open", "tasks", "rss", "blocks", "members")
    }
    connections = sum(len(m.ended) for m in members)
    latencies = ledger.reconnect_latencies
    published = len(ledger.published_at)
    return {
        "benchmark": "soak",
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "note": (
            "server (demo app, embedded broker), fault proxy and clients in three processes "
            "on the same cores; tasks and RSS are the server process's, from /health.json"
        ),
        "plan": attrs.asdict(plan),
        "rss_bound_mib": round(bound / MiB, 2),
        "baseline": {
            "tasks": baseline["tasks"],
            "rss_mib": round(baseline["rss"] / MiB, 2),
            "allocated_blocks": baseline["blocks"],
        },
        "peak": {
            "server_open": peak["server_open"],
            "proxy_open": peak["proxy_open"],
            "members": peak["members"],
            "tasks": peak["tasks"],
            "rss_mib": round(peak["rss"] / MiB, 2),
            "allocated_blocks": peak["blocks"],
        },
        "end": {
            "tasks": end["tasks"],
            "rss_mib": round((end["rss"] or 0) / MiB, 2),
            "rss_growth_mib": round(rss_growth / MiB, 2),
            "allocated_blocks": end["blocks"],
            "allocated_blocks_growth": end["blocks"] - baseline["blocks"],
            "allocated_blocks_in_room_logs": LOG_BLOCKS_PER_MESSAGE * in_logs,
            "allocated_blocks_bound": blocks_bound,
        },
        "tasks_back_to_baseline": end["tasks"] == baseline["tasks"],
        "rss_within_bound": rss_growth <= bound,
        "allocated_blocks_within_bound": held <= blocks_bound,
        "quiesce_seconds": results["quiesce_seconds"],
        "settle_seconds": results["settle_seconds"],
        "members": {
            "joined": len(members),
            "left_during_churn": sum(1 for m in members if m.left_during_churn),
            "stayed_to_the_end": sum(1 for m in members if m.stayer),
            "connections_lost": connections,
            "resumes": ledger.resumes,
            "gave_up": soak.gave_up,
        },
        "reconnect_seconds": {
            "count": len(latencies),
            "p50": _percentile(latencies, 50),
            "p99": _percentile(latencies, 99),
            "max": max(latencies, default=None),
        },
        "messages": {
            "sent": soak.sent + len(ledger.markers),
            "send_skipped_while_reconnecting": soak.send_skipped,
            "published": published,
            "lost_with_their_connection": sum(with_connection.values()),
            "lost_with_their_connection_by_reason": dict(with_connection.most_common()),
            "lost": len(lost),
            "published_though_send_raised": published_unsent,
            "deliveries": ledger.deliveries,
            "duplicates_delivered": ledger.duplicates_delivered,
            "gaps_delivered": ledger.gaps_delivered,
            "duplicates_dropped_by_resume": ledger.dropped_duplicates,
            "gaps_repaired_by_resume": ledger.repaired_gaps,
            "resets": dict(ledger.resets),
            "skipped_by_resets": ledger.skipped_by_resets,
            "other_messages": dict(ledger.other_messages),
        },
        "closes": {
            "server_by_reason": dict(sorted(closed.items(), key=lambda kv: -kv[1])),
            "server_total": sum(closed.values()),
            "proxy_accepted": accepted,
            "proxy_forwarded": forwarded,
            "client_disconnects_by_reason": dict(ledger.disconnects.most_common()),
        },
        "chaos": {
            "events": len(soak.chaos),
            "by_kind": dict(
                Counter("down" if e.get("down") else e["toxic"]["type"] for e in soak.chaos)
            ),
            "failed_calls": sum(1 for e in soak.chaos if "error" in e),
            "slowest_control_call_seconds": round(soak.proxy.slowest, 3),
            "schedule": soak.chaos,
        },
        "server_log": _log_levels(log_text),
        "cpu_seconds": results["cpu_seconds"],
        "client_loop_lag_max_s": max((r.get("client_loop_lag", 0.0) for r in samples), default=0),
        "server_stalls": {
            "count": max((r.get("server_stalls", 0) for r in samples), default=0),
            "max_s": max((r.get("server_stall_max", 0.0) for r in samples), default=0),
        },
        "load_average": {"start": results["load_start"], "end": os.getloadavg()},
        "listen_overflows_on_host": results["listen_overflows"],
        "violation_count": ledger.violation_count,
        "violations": ledger.violations,
        "timeline": samples,
    }


def _table(data: dict[str, Any]) -> str:
    plan, base, peak, end = data["plan"], data["baseline"], data["peak"], data["end"]
    msgs, members, closes = data["messages"], data["members"], data["closes"]
    rc = data["reconnect_seconds"]
    lines = [
        f"soak: {plan['clients']} client slots in {plan['rooms']} rooms, {plan['duration']:.0f} s "
        f"of churn through the fault proxy ({data['chaos']['events']} chaos events), seed "
        f"{plan['seed']}",
        f"{'server':<26}{'baseline':>10}{'peak':>10}{'end':>10}",
        f"{'  connections open':<26}{0:>10}{peak['server_open']:>10}{0:>10}",
        f"{'  live Trio tasks':<26}{base['tasks']:>10}{peak['tasks']:>10}{end['tasks']:>10}"
        f"   back to baseline: {'yes' if data['tasks_back_to_baseline'] else 'NO'}",
        f"{'  RSS (MiB)':<26}{base['rss_mib']:>10.1f}{peak['rss_mib']:>10.1f}"
        f"{end['rss_mib']:>10.1f}   end - baseline {end['rss_growth_mib']:.1f} MiB "
        f"(bound {data['rss_bound_mib']:.0f})",
        f"{'  allocated blocks':<26}{base['allocated_blocks']:>10}{peak['allocated_blocks']:>10}"
        f"{end['allocated_blocks']:>10}   end - baseline {end['allocated_blocks_growth']} "
        f"(bound {end['allocated_blocks_bound']}: room logs ~"
        f"{end['allocated_blocks_in_room_logs']} + free lists)",
        f"members: {members['joined']} joined, {members['left_during_churn']} left during the "
        f"churn, {members['stayed_to_the_end']} stayed; {members['connections_lost']} "
        f"connections lost, {members['resumes']} resumes",
        f"reconnect (lost -> live again): p50 {_ms(rc['p50'])}, p99 {_ms(rc['p99'])}, "
        f"max {_ms(rc['max'])} over {rc['count']}",
        f"messages: {msgs['sent']} sent, {msgs['published']} published, "
        f"{msgs['lost_with_their_connection']} lost in flight with their connection, "
        f"{msgs['lost']} lost; {msgs['deliveries']} deliveries, "
        f"{msgs['duplicates_delivered']} duplicated, {msgs['gaps_delivered']} skipped; "
        f"resets {sum(msgs['resets'].values())} ({msgs['skipped_by_resets']} messages skipped)",
        f"server closes: {closes['server_total']} (the proxy made {closes['proxy_forwarded']} "
        f"connections to it, of {closes['proxy_accepted']} accepted): "
        + ", ".join(f"{k} {v}" for k, v in closes["server_by_reason"].items()),
        "client disconnects: "
        + ", ".join(f"{k} {v}" for k, v in closes["client_disconnects_by_reason"].items()),
    ]
    cpu, load = data["cpu_seconds"], data["load_average"]["start"]
    lines.append(
        f"machine: {data['machine']['cpus']} cores, load average {load[0]:.1f} at the start; CPU "
        f"seconds: server {cpu['server']}, proxy {cpu['proxy']}, clients {cpu['clients']} in "
        f"{data['wall_seconds']:.0f} s; clients' loop lag up to {data['client_loop_lag_max_s']} s, "
        f"server loop stalls {data['server_stalls']['count']} (up to "
        f"{data['server_stalls']['max_s']} s); connections dropped at a full accept queue "
        f"on this host during the run: {data['listen_overflows_on_host']}"
    )
    if data["violations"]:
        lines.append(f"VIOLATIONS ({data['violation_count']}):")
        lines += [f"  {v}" for v in data["violations"][:20]]
    else:
        lines.append("invariants: all held")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["timeline"] if "tasks" in r]
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    conns, rss, tasks, closes = axes
    conns.plot(t, [r["server_open"] for r in rows], label="server: connections open")
    conns.plot(t, [r.get("proxy_open", math.nan) for r in rows], label="proxy: connections open")
    conns.plot(t, [r["members_live"] for r in rows], label="clients live in their room")
    conns.set_ylabel("connections")
    conns.legend(loc="upper right", fontsize=8)
    rss.plot(t, [r["rss"] / MiB for r in rows], color="tab:red")
    base = data["baseline"]["rss_mib"]
    rss.axhline(base, color="grey", linestyle=":", label=f"baseline {base:.1f} MiB")
    rss.axhline(
        base + data["rss_bound_mib"], color="grey", linestyle="--", label="bound at the end"
    )
    rss.set_ylabel("server RSS (MiB)")
    rss.legend(loc="upper left", fontsize=8)
    blocks = rss.twinx()
    blocks.plot(t, [r["blocks"] / 1000 for r in rows], color="tab:green", linewidth=1)
    blocks.set_ylabel("allocated blocks (x1000)", color="tab:green")
    tasks.plot(t, [r["tasks"] for r in rows], color="tab:purple")
    tasks.axhline(data["baseline"]["tasks"], color="grey", linestyle=":", label="baseline")
    tasks.set_ylabel("server live tasks")
    tasks.legend(loc="upper right", fontsize=8)
    reasons = sorted({k for r in rows for k in r["closed"]})
    for reason in reasons:
        per_second = []
        for previous, row in itertools.pairwise(rows):
            dt = max(row["t"] - previous["t"], 1e-9)
            per_second.append(
                (row["closed"].get(reason, 0) - previous["closed"].get(reason, 0)) / dt
            )
        closes.plot(t[1:], per_second, label=reason, linewidth=1)
    closes.set_ylabel("server closes / s")
    closes.set_xlabel("seconds since the first client")
    closes.legend(loc="upper right", fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
        for event in data["chaos"]["schedule"]:
            if event.get("down") and "applied_at" in event:
                # From when the proxy confirmed it was down to when it was back up.
                end = event.get("removed_at", event["applied_at"] + event["hold"])
                ax.axvspan(event["applied_at"], end, color="orange", alpha=0.3)
        churn_end = data["plan"]["duration"]
        ax.axvline(churn_end, color="black", linewidth=0.8, linestyle="--")
    conns.set_title(
        f"Soak: {data['plan']['clients']} client slots, churn until the dashed line; "
        "orange: proxy down"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="~50 clients for a few seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, help="client slots (default 2000; 50 with --quick)")
    parser.add_argument(
        "--duration", type=float, help="seconds of churn (default 150; 6 with --quick)"
    )
    args = parser.parse_args(argv)
    clients = args.clients if args.clients is not None else (50 if args.quick else 2000)
    duration = args.duration if args.duration is not None else (6.0 if args.quick else 150.0)
    make = Plan.quick if args.quick else Plan.full
    plan = make(seed=args.seed, clients=clients, duration=duration)
    command = "python -m benchmarks.soak" + (" --quick" if args.quick else "")
    command += f" --seed {args.seed}"
    if args.clients is not None:
        command += f" --clients {args.clients}"
    if args.duration is not None:
        command += f" --duration {args.duration:g}"
    args.out.mkdir(parents=True, exist_ok=True)
    trioheart.log.configure_logging(level=40, stream=sys.stderr)
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        results = run(plan, log)
        log.seek(0)
        log_text = log.read().decode(errors="replace")
    data = report(plan, results, command, log_text)
    data["wall_seconds"] = round(time.monotonic() - started, 1)
    (args.out / "soak.json").write_text(json.dumps(data, indent=1) + "\n")
    _plot(data, args.out / "soak.png")
    print(_table(data))
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    print(f"re-create with: {command} --out {args.out}")
    return 1 if data["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
