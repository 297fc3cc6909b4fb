"""The Redis broker against a real Redis on loopback (tests/redis_server.py).

Real time, real sockets: every wait is bounded with ``fail_after``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import structlog
import trio
import trio.lowlevel

from tests.conftest import LiveTasks
from tests.redis_server import RedisControl, RedisServer
from tests.trio.broker_helpers import FakeSubscriber, resume_request
from trioheart._trio.redis import RedisConnection, RedisReplyError, parse_redis_url
from trioheart._trio.redis_broker import RedisBroker, open_redis_broker
from trioheart.backoff import Backoff
from trioheart.broker import BrokerUnavailable, OutboxLimits
from trioheart.errors import ConfigError
from trioheart.prometheus import Metrics
from trioheart.reasons import CloseReason
from trioheart.resume import (
    LogLimits,
    NewSession,
    ResetReason,
    ResumeAccepted,
    ResumeRefused,
    ResumeReset,
    ResumeServer,
)

KEY = b"shared-key-of-the-cluster-32byte"
WAIT = 10.0


@asynccontextmanager
async def nodes(url: str, count: int, **kwargs: Any) -> AsyncIterator[list[RedisBroker]]:
    """*count* brokers on one Redis with one resume key, quick to notice and to retry."""
    options: dict[str, Any] = {
        "command_timeout": 1.0,
        "block_interval": 0.25,
        "backoff": Backoff(base=0.05, cap=0.2),
        "rng": random.Random(8),
        **kwargs,
    }
    async with AsyncExitStack() as stack:
        brokers = [
            await stack.enter_async_context(
                open_redis_broker(url, resume_server=ResumeServer(key=KEY), **options)
            )
            for _ in range(count)
        ]
        with trio.fail_after(WAIT):
            for broker in brokers:
                await broker.wait_up()
        yield brokers


def chat(text: str) -> dict[str, str]:
    return {"type": "chat", "text": text}


async def test_nodes_deliver_every_message_once_in_one_order(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, 3) as brokers:
        subs = [FakeSubscriber(f"s{i}") for i in range(6)]
        for i, sub in enumerate(subs):
            outcome = await brokers[i % 3].join("lobby", sub)
            assert isinstance(outcome, NewSession)
            assert outcome.seq == 0
        async with trio.open_nursery() as nursery:
            for n, broker in enumerate(brokers):

                async def talk(broker: RedisBroker = broker, n: int = n) -> None:
                    for i in range(40):
                        broker.publish_nowait("lobby", chat(f"n{n}-{i}"))
                        if i % 7 == 0:
                            await trio.lowlevel.checkpoint()

                nursery.start_soon(talk)
        with trio.fail_after(WAIT):
            for sub in subs:
                await sub.wait_chat(120)
    first = subs[0].chat()
    assert [seq for seq, _ in first] == list(range(1, 121))
    assert len({text for _, text in first}) == 120
    for sub in subs[1:]:
        assert sub.chat() == first  # the same order everywhere
    for n in range(3):  # each node's own messages keep the order it published them in
        mine = [text for _, text in first if text.startswith(f"n{n}-")]
        assert mine == [f"n{n}-{i}" for i in range(40)]


async def test_a_client_resumes_on_another_node_with_exactly_what_it_missed(
    redis_server: RedisServer,
) -> None:
    async with nodes(redis_server.url, 2) as (a, b):
        ann, bob = FakeSubscriber("ann"), FakeSubscriber("bob")
        await a.join("lobby", ann, identity="ann")
        await b.join("lobby", bob, identity="bob")
        for i in range(5):
            await a.publish("lobby", chat(f"m{i}"))
        with trio.fail_after(WAIT):
            await ann.wait_chat(5)
        a.leave("lobby", ann)  # ann's connection to node A is cut after seq 5
        for i in range(5, 12):
            await b.publish("lobby", chat(f"m{i}"))
        again = FakeSubscriber("ann-again")
        outcome = await b.join(
            "lobby", again, identity="ann", request=resume_request(ann.hello(), 5)
        )
        assert isinstance(outcome, ResumeAccepted)
        await b.publish("lobby", chat("live"))
        with trio.fail_after(WAIT):
            await again.wait_chat(8)
        assert again.messages[0]["type"] == "resumed"
        assert again.messages[0]["replay"] == 7
        assert again.chat() == [(i + 1, f"m{i}") for i in range(5, 12)] + [(13, "live")]
        # The token is bound to the identity, on every node.
        thief = FakeSubscriber("thief")
        refused = await a.join(
            "lobby", thief, identity="mallory", request=resume_request(ann.hello(), 5)
        )
        assert isinstance(refused, ResumeRefused)
        assert thief.texts == []


async def test_a_resume_ahead_of_this_node_is_accepted(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, 2) as (a, b):
        ann = FakeSubscriber("ann")
        await a.join("lobby", ann)
        watcher = FakeSubscriber("watcher")
        await b.join("lobby", watcher)  # B holds the room open
        for round_ in range(20):
            await a.publish("lobby", chat(f"m{round_}"))
            seq = round_ + 1
            # No wait for B's reader: B may not have read seq yet and must catch up.
            again = FakeSubscriber(f"again{round_}")
            outcome = await b.join("lobby", again, request=resume_request(ann.hello(), seq))
            assert isinstance(outcome, ResumeAccepted)
            assert outcome.seq >= seq
            b.leave("lobby", again)


async def test_publishes_are_appended_once_when_a_batch_is_sent_again(
    redis_server: RedisServer,
) -> None:
    async with nodes(redis_server.url, 1) as (a,):
        sub = FakeSubscriber("s")
        await a.join("lobby", sub)
        await a.publish("lobby", chat("one"))
        with trio.fail_after(WAIT):
            conn = await RedisConnection.connect(parse_redis_url(redis_server.url))
        try:
            from trioheart.broker import OutboxBatch, sequenced_prefix

            batch = OutboxBatch(
                room="lobby",
                counters=(10, 11),
                prefixes=(sequenced_prefix(chat("two")), sequenced_prefix(chat("three"))),
            )
            command = a._publish_command(batch, now=1.0)
            first = await conn.execute(*command)
            again = await conn.execute(*command)  # a reply lost, the batch sent again
            assert first[1:] == [2, 3]
            assert again[1:] == [4, 3]  # nothing appended: first would be 4, last stays 3
            assert await conn.execute("XLEN", "trioheart:{lobby}:log") == 3
        finally:
            await conn.aclose()
        with trio.fail_after(WAIT):
            await sub.wait_chat(3)
        assert sub.chat() == [(1, "one"), (2, "two"), (3, "three")]


async def test_redis_keeps_each_room_within_its_bounds(redis_server: RedisServer) -> None:
    limits = LogLimits(max_messages=10, max_bytes=2000, max_age=60.0)
    async with nodes(redis_server.url, 1, limits=limits) as (a,):
        early = FakeSubscriber("early")
        await a.join("lobby", early)
        # In batches smaller than the log, each delivered before the next: a
        # node that fell a whole log behind would (rightly) reset its room,
        # which is another test's subject; this one is about the bounds.
        for batch in range(6):
            for i in range(batch * 5, batch * 5 + 5):
                a.publish_nowait("lobby", chat(f"m{i:02d}"))
            with trio.fail_after(WAIT):
                await early.wait_chat(batch * 5 + 5)
        await a.publish("lobby", chat("big" * 300))
        with trio.fail_after(WAIT):
            conn = await RedisConnection.connect(parse_redis_url(redis_server.url))
        try:
            length = await conn.execute("XLEN", "trioheart:{lobby}:log")
            meta = await conn.execute("HGETALL", "trioheart:{lobby}:meta")
        finally:
            await conn.aclose()
        fields = dict(zip(meta[::2], meta[1::2], strict=True))
        assert length <= 10
        assert int(fields["bytes"]) <= 2000
        assert int(fields["seq"]) == 31
        with trio.fail_after(WAIT):
            await early.wait_chat(31)  # delivered live, whatever the log keeps
        late = FakeSubscriber("late")
        outcome = await a.join("lobby", late, request=resume_request(early.hello(), 0))
        assert isinstance(outcome, ResumeReset)
        assert outcome.reason is ResetReason.TRIMMED
        with pytest.raises(ConfigError, match="max_bytes"):
            a.publish_nowait("lobby", chat("x" * 2000))


async def test_redis_killed_and_restarted_tells_every_client_to_reset(
    redis_control: RedisControl,
) -> None:
    metrics = Metrics()
    with structlog.testing.capture_logs() as events:
        async with nodes(redis_control.url, 2) as (a, b):
            metrics.track_broker(a)
            subs = [FakeSubscriber(f"s{i}") for i in range(4)]
            for i, sub in enumerate(subs):
                await (a, b)[i % 2].join("lobby", sub)
            for i in range(6):
                await (a, b)[i % 2].publish("lobby", chat(f"before{i}"))
            with trio.fail_after(WAIT):
                for sub in subs:
                    await sub.wait_chat(6)
            redis_control.stop()  # SIGKILL: everything Redis held is gone
            with trio.fail_after(WAIT):
                await a.wait_down()
                await b.wait_down()
            assert b'trioheart_broker_up{broker="redis"} 0.0' in metrics.render()
            # The connections stay up through the outage; publishes wait in the outbox.
            assert all(sub.closed is None for sub in subs)
            a.publish_nowait("lobby", chat("during"))
            assert a.statistics().outbox_messages == 1
            with pytest.raises(BrokerUnavailable):
                await a.join("elsewhere", FakeSubscriber("new"))
            redis_control.start()
            with trio.fail_after(WAIT):
                await a.wait_up()
                await b.wait_up()
                for sub in subs:
                    assert await sub.wait_closed() is CloseReason.ROOM_RESET
            assert b'trioheart_broker_up{broker="redis"} 1.0' in metrics.render()
            # Resuming with the old epoch says so, and the client is live again at once.
            again = FakeSubscriber("again")
            outcome = await b.join("lobby", again, request=resume_request(subs[0].hello(), 6))
            assert isinstance(outcome, ResumeReset)
            assert outcome.reason is ResetReason.EPOCH_CHANGED
            await a.publish("lobby", chat("after"))
            with trio.fail_after(WAIT):
                await again.wait_chat(1)
            assert again.chat()[-1][1] == "after"
            stats = a.statistics()
            assert stats.outages == 1
            assert stats.room_resets == 1
            assert stats.outbox_messages == 0
    names = [e["event"] for e in events]
    assert names.count("broker.unavailable") == 2  # once per node
    assert names.count("broker.recovered") == 2
    assert "broker.room_reset" in names


async def test_redis_back_with_its_data_loses_nothing(redis_control: RedisControl) -> None:
    async with nodes(redis_control.url, 2) as (a, b):
        subs = [FakeSubscriber(f"s{i}") for i in range(4)]
        for i, sub in enumerate(subs):
            await (a, b)[i % 2].join("lobby", sub)
        for i in range(5):
            await a.publish("lobby", chat(f"before{i}"))
        with trio.fail_after(WAIT):
            for sub in subs:
                await sub.wait_chat(5)
        redis_control.save_and_stop()
        with trio.fail_after(WAIT):
            await a.wait_down()
            await b.wait_down()
        for i in range(4):  # both nodes take messages while Redis is away
            a.publish_nowait("lobby", chat(f"a-during{i}"))
            b.publish_nowait("lobby", chat(f"b-during{i}"))
        redis_control.start()
        with trio.fail_after(WAIT):
            for sub in subs:
                await sub.wait_chat(13)
        for i in range(2):
            await b.publish("lobby", chat(f"after{i}"))
        with trio.fail_after(WAIT):
            for sub in subs:
                await sub.wait_chat(15)
        assert all(sub.closed is None for sub in subs)
        history = subs[0].chat()
        assert [seq for seq, _ in history] == list(range(1, 16))
        for sub in subs[1:]:
            assert sub.chat() == history
        texts = [text for _, text in history]
        assert [t for t in texts if t.startswith("a-")] == [f"a-during{i}" for i in range(4)]
        assert [t for t in texts if t.startswith("b-")] == [f"b-during{i}" for i in range(4)]
        assert a.statistics().room_resets == 0


async def test_a_full_outbox_refuses_plainly(redis_control: RedisControl) -> None:
    outbox = OutboxLimits(max_messages=3, max_bytes=10_000)
    async with nodes(redis_control.url, 1, outbox=outbox) as (a,):
        await a.join("lobby", FakeSubscriber("s"))
        redis_control.stop()
        with trio.fail_after(WAIT):
            await a.wait_down()
        for i in range(3):
            a.publish_nowait("lobby", chat(f"kept{i}"))
        with pytest.raises(BrokerUnavailable, match="outbox is full"):
            a.publish_nowait("lobby", chat("refused"))
        stats = a.statistics()
        assert (stats.outbox_messages, stats.rejected, stats.up) == (3, 1, False)


async def test_a_node_starts_while_redis_is_down_and_connects_later(
    redis_control: RedisControl,
) -> None:
    redis_control.stop()
    with structlog.testing.capture_logs() as events:
        async with open_redis_broker(
            redis_control.url, backoff=Backoff(base=0.05, cap=0.2), command_timeout=0.5
        ) as broker:
            with trio.fail_after(WAIT):
                # The broker's first attempt fails in its own task; a log event is all
                # there is to see from outside.
                while not any(e["event"] == "broker.unavailable" for e in events):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert not broker.up
            with pytest.raises(BrokerUnavailable):
                await broker.join("lobby", FakeSubscriber("s"))
            redis_control.start()
            with trio.fail_after(WAIT):
                await broker.wait_up()
            sub = FakeSubscriber("s")
            assert isinstance(await broker.join("lobby", sub), NewSession)
    names = [e["event"] for e in events]
    assert names.count("broker.unavailable") == 1
    assert "broker.connected" in names


async def test_no_task_outlives_the_broker(
    redis_server: RedisServer, live_tasks: LiveTasks
) -> None:
    before = set(live_tasks.live)
    async with nodes(redis_server.url, 2) as (a, b):
        sub = FakeSubscriber("s")
        await a.join("lobby", sub)
        await b.publish("lobby", chat("hi"))
        with trio.fail_after(WAIT):
            await sub.wait_chat(1)
        assert live_tasks.live - before
    assert not (live_tasks.live - before), f"leaked: {live_tasks.names()}"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379", "redis://", "redis://h:notaport", "redis://h:1/x"],
)
def test_bad_urls_are_refused_with_the_url_named(url: str) -> None:
    with pytest.raises(ConfigError, match="redis url"):
        parse_redis_url(url)


def test_a_url_gives_host_port_db_and_credentials() -> None:
    address = parse_redis_url("redis://me:s%40cret@127.0.0.1:7000/3")
    assert (address.host, address.port, address.db) == ("127.0.0.1", 7000, 3)
    assert (address.username, address.password) == ("me", "s@cret")
    assert "s@cret" not in repr(address)
    assert "s@cret" not in address.url()


async def test_an_error_reply_is_raised_and_the_connection_stays_usable(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(WAIT):
        conn = await RedisConnection.connect(parse_redis_url(redis_server.url))
        try:
            with pytest.raises(RedisReplyError, match="unknown command"):
                await conn.execute("NOSUCHCOMMAND")
            replies = await conn.pipeline([["SET", "k", "v"], ["INCR", "k"], ["GET", "k"]])
            assert replies[0] == "OK"
            assert isinstance(replies[1], RedisReplyError)
            assert replies[2] == "v"
            assert not conn.broken
        finally:
            await conn.aclose()


async def test_a_cancelled_join_leaves_the_redis_connections_intact(
    redis_server: RedisServer,
) -> None:
    async with nodes(redis_server.url, 1) as (a,):
        for room in ("r1", "r2", "r3"):
            sub = FakeSubscriber(room)
            with trio.move_on_after(0.0005):  # cancelled while its room opens, or before
                await a.join(room, sub)
            assert sub.texts == [] or sub.messages[0]["type"] == "hello"
        assert a.up
        sub = FakeSubscriber("after")
        assert isinstance(await a.join("r1", sub), NewSession)
        await a.publish("r1", chat("still fine"))
        with trio.fail_after(WAIT):
            await sub.wait_chat(1)
        assert a.statistics().outages == 0
