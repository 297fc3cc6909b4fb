"""Chaos: resuming clients through the proxy to the demo server while faults come and go.

One seeded run of episodes. In each, one fault (a toxic, or the proxy going
down) hits the clients' connections for a while and is lifted; messages keep
flowing into the room from a client that does not go through the proxy;
then the test waits until every client is live again and caught up, and
every dead connection is gone from the server and the proxy. So every
connection the server closed during an episode died of that episode's
fault, and its named reason must be one that fault can cause:

* nothing crosses a blackhole or a forgotten NAT mapping, not even a RST,
  so the server must convict on its own: ``pong_timeout`` (or the kernel's
  ``tcp_timeout``, or ``handshake_timeout`` for a handshake caught in it).
  The proxy heals such a path when the toxic goes, but what it dropped is
  gone: a connection that was not convicted by then carries on with a hole,
  which the resuming client sees as a seq gap and closes with
  ``protocol_error`` (the server reads ``peer_closed``, code 1002);
* a middlebox that eats the clients' pings and pongs leaves the server
  nothing to hear: ``pong_timeout``;
* one that eats only pongs, both ways, leaves each side the other's pings
  as signs of life: it kills only when a pong window is shorter than the
  peer's ping interval, by ``pong_timeout`` on the side whose window ran
  out; the client's verdict reaches the server as its close frame (4001)
  or as the RST that follows it;
* a frozen path (``stall`` both ways) ends in whichever side gives up
  first: ``pong_timeout``, or the RST of the client that did (and a
  handshake caught in it in ``handshake_timeout``);
* a reset (``reset_peer``) or the proxy going down (a FIN, no close frame):
  ``connection_reset``;
* latency well under the pong window kills nothing.

Afterwards every client delivered exactly the room's messages from where it
started, in order, once (no client is ever told ``reset`` here: the room log
outlasts every outage), every server close was logged as
``connection.closed`` with its reason, and no task outlived the run.

Time is a MockClock that jumps after 2 ms of real idleness, so the run takes
minutes of virtual time and a few seconds of real time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing
from trio.testing import MockClock

import trioheart
from trioheart import ConnectionConfig, DetectorConfig
from trioheart.backoff import Backoff
from trioheart.client import Connected, Message, Reset, ResumingClient, open_resuming
from trioheart.demo.app import run_demo
from trioheart.proxy import (
    Blackhole,
    Latency,
    NatIdle,
    Proxy,
    ResetPeer,
    Stall,
    Stream,
    Toxic,
    WsDrop,
    open_proxy,
)

from ..conftest import LiveTasks

SEED = 20240605
CLIENTS = 4
PING_INTERVAL = 2.0
PING_TIMEOUT = 2.0
#: Long enough for both ends to give up on a dead path (interval + window, twice).
KILL_FOR = 2 * (PING_INTERVAL + PING_TIMEOUT) + 1.0
CONFIG = ConnectionConfig(
    heartbeat=DetectorConfig(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT),
    handshake_timeout=3.0,
)
BACKOFF = Backoff(base=0.2, cap=2.0)

SILENT = frozenset({"pong_timeout", "tcp_timeout", "handshake_timeout"})
#: A path that comes back after losing data: the client sees a seq gap (or a
#: broken frame) and closes with protocol_error (1002), or the server does.
HEALED = frozenset({"peer_closed/1002", "protocol_error"})
#: What each fault may name as the reason a server-side connection died
#: (``peer_closed`` with the code of the peer's close frame).
ALLOWED: dict[str, frozenset[str]] = {
    "blackhole": SILENT | HEALED,
    "nat_idle": SILENT | HEALED,
    "ws_drop": frozenset({"pong_timeout"}),
    "ws_drop_pongs": frozenset({"pong_timeout", "peer_closed/4001", "connection_reset"}),
    "stall": frozenset({"pong_timeout", "connection_reset", "handshake_timeout"}),
    "reset_peer": frozenset({"connection_reset"}),
    "down": frozenset({"connection_reset"}),
    "latency": frozenset(),
}
KINDS = sorted(ALLOWED)


@attrs.define
class Episode:
    kind: str
    toxicity: float
    duration: float
    closes: list[dict[str, object]] = attrs.Factory(list)


@attrs.define
class Listener:
    """What one resuming client delivered."""

    name: str
    client: ResumingClient | None = None
    start: int | None = None
    seqs: list[int] = attrs.Factory(list)
    resets: int = 0
    connected: int = 0

    async def follow(self, client: ResumingClient, changed: trio.lowlevel.ParkingLot) -> None:
        self.client = client
        async for event in client:
            changed.unpark_all()
            if isinstance(event, Connected):
                self.connected += 1
                if self.start is None:
                    self.start = event.seq
            elif isinstance(event, Message) and event.seq is not None:
                self.seqs.append(event.seq)
            elif isinstance(event, Reset):
                self.resets += 1


def _fault(kind: str, toxicity: float, rng: random.Random) -> Toxic | None:
    """The toxic for *kind* (``None`` for ``down``, which is not a toxic)."""
    if kind == "blackhole":
        return Toxic(attributes=Blackhole(), stream=Stream.BOTH, toxicity=toxicity, name=kind)
    if kind == "nat_idle":
        return Toxic(attributes=NatIdle(timeout=0.3), toxicity=toxicity, name=kind)
    if kind == "ws_drop":
        attributes = WsDrop(frames=["ping", "pong"])
        return Toxic(attributes=attributes, stream=Stream.UPSTREAM, toxicity=toxicity, name=kind)
    if kind == "ws_drop_pongs":
        attributes = WsDrop(frames="pong")
        return Toxic(attributes=attributes, stream=Stream.BOTH, toxicity=toxicity, name=kind)
    if kind == "stall":
        attributes = Stall(duration=None)  # until removed
        return Toxic(attributes=attributes, stream=Stream.BOTH, toxicity=toxicity, name=kind)
    if kind == "reset_peer":
        return Toxic(attributes=ResetPeer(timeout=0.0), toxicity=toxicity, name=kind)
    if kind == "latency":
        latency = Latency(latency=rng.uniform(0.1, 0.4), jitter=rng.uniform(0.0, 0.3))
        return Toxic(attributes=latency, toxicity=toxicity, name=kind)
    assert kind == "down"
    return None


def _plan(rng: random.Random) -> list[Episode]:
    """Every fault once at full strength, and three more, some on half the connections."""
    kinds = [*KINDS, *rng.choices(KINDS, k=3)]
    rng.shuffle(kinds)
    episodes = []
    seen: set[str] = set()
    for kind in kinds:
        full = kind == "down" or kind not in seen
        seen.add(kind)
        toxicity = 1.0 if full else rng.choice([1.0, 0.5])
        if kind in {"reset_peer", "down"}:
            duration = rng.uniform(0.5, 3.0)
        elif kind == "latency":
            duration = rng.uniform(3.0, 6.0)
        else:
            duration = rng.uniform(KILL_FOR, KILL_FOR + 3.0)
        episodes.append(Episode(kind, toxicity, duration))
    return episodes


async def _wait(park: trio.lowlevel.ParkingLot, condition: Callable[[], bool]) -> None:
    """Wait until *condition* holds: re-checked when a client reports an event,
    when the server's counts change, and every half second of virtual time
    (the proxy tells nobody when it lets a dead connection go)."""
    while not condition():
        with trio.move_on_after(0.5):
            await park.park()


@pytest.fixture
def clock() -> MockClock:
    """Jumps after 2 ms of real idleness: loopback bytes are delivered before it moves."""
    return MockClock(autojump_threshold=0.002)


async def test_faults_come_and_go_and_every_death_is_named_and_nothing_is_lost(
    clock: MockClock, live_tasks: LiveTasks
) -> None:
    episodes = _plan(random.Random(SEED))
    rng = random.Random(SEED + 1)  # the faults' details and the talker's pace
    before = set(live_tasks.live)
    listeners = [Listener(f"c{i}") for i in range(CLIENTS)]
    talker = Listener("talker")
    changed = trio.lowlevel.ParkingLot()
    logs: list[dict[str, Any]]

    async def server_changes(server: trioheart.Server) -> None:
        while True:
            seen = server.statistics()
            await server.wait_until(lambda now, seen=seen: now != seen)
            changed.unpark_all()

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            server: trioheart.Server = await nursery.start(
                lambda task_status: run_demo(
                    host="127.0.0.1",
                    port=0,
                    config=CONFIG,
                    announce=False,
                    task_status=task_status,
                )
            )
            nursery.start_soon(server_changes, server)
            room = f"ws://127.0.0.1:{server.port}/ws?room=chaos"
            async with open_proxy(upstream=("127.0.0.1", server.port), seed=SEED) as proxy:
                via_proxy = f"ws://127.0.0.1:{proxy.listen_address[1]}/ws?room=chaos"
                async with (
                    open_resuming(
                        f"{room}&name=talker",
                        config=CONFIG,
                        backoff=BACKOFF,
                        rng=random.Random(SEED + 2),
                    ) as talking,
                    trio.open_nursery() as clients,
                ):
                    clients.start_soon(talker.follow, talking, changed)
                    for i, listener in enumerate(listeners):
                        clients.start_soon(
                            _run_client,
                            f"{via_proxy}&name={listener.name}",
                            listener,
                            changed,
                            random.Random(SEED + 10 + i),
                        )
                    with trio.fail_after(30):
                        await _wait(changed, lambda: _quiet(server, proxy, listeners, talker))
                    for episode in episodes:
                        await _run_episode(
                            episode, proxy, server, talking, listeners, talker, changed, rng
                        )
                    clients.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    # Every connection that died, died of its episode's fault, with a named reason;
    # and every fault at full strength that must kill, killed.
    killed = {episode.kind for episode in episodes if episode.closes}
    must_kill = set(KINDS) - {"latency", "ws_drop_pongs"}
    assert killed >= must_kill, [(e.kind, e.toxicity, e.closes) for e in episodes]
    assert "latency" not in killed
    closed_events = {e["conn_id"]: e for e in logs if e["event"] == "connection.closed"}
    for episode in episodes:
        for close in episode.closes:
            named = str(close["reason"])
            if named == "peer_closed":
                named += f"/{close['code']}"
            assert named in ALLOWED[episode.kind], (episode.kind, close)
            event = closed_events.get(str(close["conn_id"]))
            assert event is not None, f"no connection.closed event for {close}"
            assert event["reason"] == close["reason"]
    # No message lost or duplicated: each client has the room's seqs from its start.
    head = talker.seqs[-1]
    assert talker.start is not None
    assert talker.seqs == list(range(talker.start + 1, head + 1))
    for listener in listeners:
        assert listener.resets == 0, listener.name
        assert listener.start is not None
        assert listener.seqs == list(range(listener.start + 1, head + 1)), listener.name
    assert sum(listener.connected for listener in listeners) > CLIENTS  # they did resume
    # And nothing outlived the run.
    await trio.testing.wait_all_tasks_blocked()
    assert set(live_tasks.live) <= before, live_tasks.names()


async def _run_client(
    url: str, listener: Listener, changed: trio.lowlevel.ParkingLot, rng: random.Random
) -> None:
    async with open_resuming(url, config=CONFIG, backoff=BACKOFF, rng=rng) as client:
        await listener.follow(client, changed)


def _quiet(
    server: trioheart.Server, proxy: Proxy, listeners: list[Listener], talker: Listener
) -> bool:
    """Every client is live and caught up, and no dead connection is left anywhere."""
    head = talker.seqs[-1] if talker.seqs else 0
    for listener in [*listeners, talker]:
        client = listener.client
        if client is None or client.connection is None:
            return False
        if (client.last_seq or 0) < head:
            return False
    return server.statistics().connections_open == len(
        listeners
    ) + 1 and proxy.statistics().connections_open == len(listeners)


async def _talk(talking: ResumingClient, until: float, rng: random.Random) -> None:
    """Chat into the room from outside the proxy until *until* (virtual time)."""
    n = 0
    while trio.current_time() < until:
        await talking.wait_connected()
        n += 1
        await talking.send({"type": "chat", "text": f"m{n}"})
        await trio.sleep(rng.uniform(0.2, 1.5))


async def _run_episode(
    episode: Episode,
    proxy: Proxy,
    server: trioheart.Server,
    talking: ResumingClient,
    listeners: list[Listener],
    talker: Listener,
    changed: trio.lowlevel.ParkingLot,
    rng: random.Random,
) -> None:
    closed_before = sum(server.statistics().closed.values())
    toxic = _fault(episode.kind, episode.toxicity, rng)
    end = trio.current_time() + episode.duration
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_talk, talking, end + 1.0, rng)
        if toxic is None:
            proxy.set_enabled(False)
        else:
            proxy.add_toxic(toxic)
        await trio.sleep_until(end)
        if toxic is None:
            proxy.set_enabled(True)
        else:
            proxy.remove_toxic(toxic.name)
    with trio.fail_after(60):
        await _wait(changed, lambda: _quiet(server, proxy, listeners, talker))
    new = sum(server.statistics().closed.values()) - closed_before
    recent = server.health_snapshot(limit=0)["recent_closes"]
    assert isinstance(recent, list)
    assert new <= len(recent), "more closes than the server remembers: shorten the episode"
    episode.closes = recent[len(recent) - new :] if new else []
