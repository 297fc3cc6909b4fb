"""The Broker contract, checked on both brokers: embedded, and Redis (one node)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.trio.broker_helpers import FakeSubscriber, resume_request
from trioheart._trio.broker import EmbeddedBroker
from trioheart.backoff import Backoff
from trioheart.broker import Broker, BrokerUnavailable
from trioheart.errors import ConfigError, ConnectionClosed
from trioheart.prometheus import Metrics
from trioheart.reasons import CloseReason
from trioheart.resume import (
    LogLimits,
    NewSession,
    RefuseReason,
    ResetReason,
    ResumeAccepted,
    ResumeRefused,
    ResumeReset,
    ResumeServer,
)

KEY = b"contract-key-of-at-least-16-bytes"
WAIT = 10.0
LIMITS = LogLimits(max_messages=50, max_bytes=5000, max_age=60.0)


@pytest.fixture(params=["embedded", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "embedded":
        yield EmbeddedBroker(resume_server=ResumeServer(key=KEY), limits=LIMITS, max_rooms=3)
        return
    from trioheart._trio.redis_broker import open_redis_broker

    server = request.getfixturevalue("redis_server")
    async with open_redis_broker(
        server.url,
        resume_server=ResumeServer(key=KEY),
        limits=LIMITS,
        max_rooms=3,
        command_timeout=1.0,
        block_interval=0.25,
        backoff=Backoff(base=0.05, cap=0.2),
        rng=random.Random(1),
    ) as redis_broker:
        with trio.fail_after(WAIT):
            await redis_broker.wait_up()
        yield redis_broker


def chat(text: str) -> dict[str, Any]:
    return {"type": "chat", "text": text}


async def test_join_then_publish_reaches_everyone_in_order(broker: Broker) -> None:
    subs = [FakeSubscriber(f"s{i}") for i in range(3)]
    for sub in subs:
        outcome = await broker.join("lobby", sub)
        assert isinstance(outcome, NewSession)
        assert sub.messages[0]["type"] == "hello"  # queued in the same step
    for i in range(10):
        broker.publish_nowait("lobby", chat(f"m{i}"))
    await broker.publish("lobby", chat("last"))
    with trio.fail_after(WAIT):
        for sub in subs:
            await sub.wait_chat(11)
    expected = [(i + 1, f"m{i}") for i in range(10)] + [(11, "last")]
    assert all(sub.chat() == expected for sub in subs)
    stats = broker.statistics()
    assert stats.published == 11
    assert stats.subscribers == 3
    assert stats.delivered == 33
    assert stats.up


async def test_a_resume_replays_exactly_the_gap_then_goes_live(broker: Broker) -> None:
    ann = FakeSubscriber("ann")
    await broker.join("lobby", ann, identity="ann")
    for i in range(3):
        await broker.publish("lobby", chat(f"m{i}"))
    with trio.fail_after(WAIT):
        await ann.wait_chat(3)
    broker.leave("lobby", ann)
    broker.leave("lobby", ann)  # idempotent
    for i in range(3, 6):
        await broker.publish("lobby", chat(f"m{i}"))
    again = FakeSubscriber("again")
    outcome = await broker.join(
        "lobby", again, identity="ann", request=resume_request(ann.hello(), 3)
    )
    assert isinstance(outcome, ResumeAccepted)
    await broker.publish("lobby", chat("live"))
    with trio.fail_after(WAIT):
        await again.wait_chat(4)
    assert again.chat() == [(4, "m3"), (5, "m4"), (6, "m5"), (7, "live")]
    assert len(ann.chat()) == 3  # the one who left got nothing more
    session = broker.refresh(outcome.session)
    assert session.id == outcome.session.id
    assert session.token != outcome.session.token


async def test_a_refused_resume_sends_nothing_and_joins_nothing(broker: Broker) -> None:
    sub = FakeSubscriber("s")
    outcome = await broker.join("lobby", sub, request='{"type": "resume"}')
    assert isinstance(outcome, ResumeRefused)
    assert outcome.reason is RefuseReason.MALFORMED
    assert sub.texts == []
    await broker.publish("lobby", chat("hi"))
    assert broker.statistics().subscribers == 0


async def test_a_closed_subscriber_is_dropped_and_the_others_carry_on(broker: Broker) -> None:
    gone, stays = FakeSubscriber("gone"), FakeSubscriber("stays")
    await broker.join("lobby", gone)
    await broker.join("lobby", stays)
    gone.close(CloseReason.CONNECTION_RESET)
    await broker.publish("lobby", chat("one"))
    await broker.publish("lobby", chat("two"))
    with trio.fail_after(WAIT):
        await stays.wait_chat(2)
    assert gone.chat() == []
    assert broker.statistics().subscribers == 1
    dead = FakeSubscriber("dead")
    dead.close(CloseReason.CONNECTION_RESET)
    with pytest.raises(ConnectionClosed):
        await broker.join("lobby", dead)
    assert broker.statistics().subscribers == 1


async def test_bad_input_is_refused_and_nothing_else_is_hurt(broker: Broker) -> None:
    sub = FakeSubscriber("s")
    await broker.join("lobby", sub)
    with pytest.raises(ConfigError, match="room"):
        await broker.join("bad{room}", FakeSubscriber("x"))
    with pytest.raises(ConfigError, match="seq"):
        broker.publish_nowait("lobby", {"type": "chat", "seq": 9})
    with pytest.raises(ConfigError, match="max_bytes"):
        broker.publish_nowait("lobby", chat("x" * 6000))
    with pytest.raises(ConfigError, match="JSON"):
        broker.publish_nowait("lobby", {"type": "chat", "text": float("nan")})
    await broker.publish("lobby", chat("fine"))
    with trio.fail_after(WAIT):
        await sub.wait_chat(1)
    assert sub.chat() == [(1, "fine")]


async def test_rooms_are_bounded(broker: Broker) -> None:
    for name in ("a", "b", "c"):
        await broker.join(name, FakeSubscriber(name))
    with pytest.raises(BrokerUnavailable, match="max_rooms"):
        await broker.join("d", FakeSubscriber("d"))


async def test_the_metrics_say_what_the_broker_knows(broker: Broker) -> None:
    metrics = Metrics()
    metrics.track_broker(broker)
    await broker.join("lobby", FakeSubscriber("s"))
    await broker.publish("lobby", chat("hi"))
    text = metrics.render().decode()
    kind = broker.statistics().kind
    assert f'trioheart_broker_up{{broker="{kind}"}} 1.0' in text
    assert f'trioheart_broker_published_total{{broker="{kind}"}} 1.0' in text
    assert f'trioheart_broker_rooms{{broker="{kind}"}} 1.0' in text


async def test_a_resume_past_the_log_bounds_is_a_reset_and_a_metric(broker: Broker) -> None:
    """Issue 9: hitting the resume log's bounds is named (reset ``trimmed``) and counted."""
    metrics = Metrics()
    metrics.track_broker(broker)
    kind = broker.statistics().kind
    ann = FakeSubscriber("ann")
    await broker.join("lobby", ann, identity="ann")
    broker.leave("lobby", ann)
    for i in range(LIMITS.max_messages + 10):  # the log keeps the last 50: 1-10 are gone
        await broker.publish("lobby", chat(f"m{i}"))
    trimmed = await broker.join(
        "lobby", FakeSubscriber("back"), identity="ann", request=resume_request(ann.hello(), 0)
    )
    assert isinstance(trimmed, ResumeReset)
    assert trimmed.reason is ResetReason.TRIMMED
    refused = await broker.join("lobby", FakeSubscriber("bad"), request='{"type": "resume"}')
    assert isinstance(refused, ResumeRefused)
    text = metrics.render().decode()
    assert f'trioheart_broker_resume_resets_total{{broker="{kind}",reason="trimmed"}} 1.0' in text
    assert (
        f'trioheart_broker_resume_resets_total{{broker="{kind}",reason="epoch_changed"}} 0.0'
        in text
    )
    assert (
        f'trioheart_broker_resume_refusals_total{{broker="{kind}",reason="malformed"}} 1.0' in text
    )
    assert f'trioheart_broker_resumes_accepted_total{{broker="{kind}"}} 0.0' in text
