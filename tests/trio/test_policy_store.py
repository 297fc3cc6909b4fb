"""The policy store and the TOML file source, on the MockClock."""

from __future__ import annotations

import os
import pathlib
import statistics

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from tests.conftest import LiveTasks, Measured
from tests.trio.policy_fleet import (
    POLICY_V1,
    Fleet,
    fleet_attributes,
    matches_mobile_eu_rule,
)
from trioheart._trio.policy_sources import PolicyStore, TomlFileSource
from trioheart.errors import ConfigError
from trioheart.policy import PolicyError, PolicyProblem, PolicySet, load_policy_toml


def _set(revision: int, ping_interval: float = 20.0) -> PolicySet:
    return PolicySet.from_mapping(
        {"revision": revision, "default": {"ping_interval": ping_interval}}
    )


def _write(path: pathlib.Path, text: str) -> None:
    """Write atomically, as the docs tell operators to."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# The store


def test_store_accepts_changes_ignores_repeats_and_rejects_stale_revisions() -> None:
    store = PolicyStore()
    assert store.revision == 0
    with capture_logs() as logs:
        assert store.update(_set(3, 10), source="test")
        assert not store.update(_set(4, 10), source="test")  # same policies
        assert not store.update(_set(2, 5), source="test")  # older revision, new content
        assert not store.update(_set(3, 5), source="test")  # same revision, new content
        store.reject(PolicyError([PolicyProblem("r", "ping_interval", "bad")]), source="test")
    assert store.revision == 3
    assert store.current.default.ping_interval == 10
    stats = store.statistics()
    assert (stats.revision, stats.accepted, stats.rejected, stats.unchanged) == (3, 1, 3, 1)
    assert stats.last_rejected == ("rule 'r': bad",)
    assert [log["event"] for log in logs] == [
        "policy.updated",
        "policy.rejected",
        "policy.rejected",
        "policy.rejected",
    ]
    assert logs[0]["revision"] == 3
    assert logs[1]["errors"] == ["revision must be raised on every change; got 2 after 3"]
    assert logs[1]["running_revision"] == 3


def test_offer_turns_a_policy_error_into_a_rejection() -> None:
    store = PolicyStore(_set(1))
    assert not store.offer(lambda: load_policy_toml("revision = 2\n[default]\nping_interval = -1"))
    assert store.revision == 1
    assert store.statistics().rejected == 1
    assert store.offer(lambda: load_policy_toml("revision = 2\n[default]\nping_interval = 5"))
    assert store.revision == 2


async def test_subscribers_get_the_current_set_then_only_the_newest() -> None:
    store = PolicyStore(_set(1))
    subscription = store.subscribe()
    assert (await subscription.__anext__()).revision == 1
    store.update(_set(2, 5))
    store.update(_set(3, 6))  # the subscriber was not listening: it skips 2
    assert (await subscription.__anext__()).revision == 3
    with trio.testing.assert_checkpoints():
        assert await store.wait_revision(3) is store.current
    with trio.move_on_after(0.01) as scope:  # real clock: 10 ms, nothing else pending
        await subscription.__anext__()
    assert scope.cancelled_caught  # nothing new: it waits, holding nothing


async def test_waiters_wake_on_the_change_and_cancellation_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    live_tasks = LiveTasks()
    trio.lowlevel.add_instrument(live_tasks)
    store = PolicyStore(_set(1))
    got: list[int] = []

    async def follow() -> None:
        async for policy_set in store.subscribe():
            got.append(policy_set.revision)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        with trio.move_on_after(5):
            await store.wait_revision(2)  # cancelled: nothing changes
        await trio.sleep(1)
        store.update(_set(2, 5))
        assert (await store.wait_revision(2)).revision == 2
        stats = await store.wait_statistics(lambda s: s.accepted == 1)
        assert stats.revision == 2
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(live_tasks)
    assert got == [1, 2]
    assert live_tasks.spawned == 1
    assert not live_tasks.live, live_tasks.names()


# --------------------------------------------------------------------------
# The TOML file


async def test_file_changes_are_seen_within_the_poll_interval(
    autojump_clock: trio.testing.MockClock, tmp_path: pathlib.Path
) -> None:
    live_tasks = LiveTasks()
    trio.lowlevel.add_instrument(live_tasks)
    path = tmp_path / "policy.toml"
    _write(path, "revision = 1\n" + POLICY_V1)
    store = PolicyStore()
    attributes = fleet_attributes(100)
    fleet = Fleet(store, attributes)
    poll = 2.0
    async with trio.open_nursery() as nursery:
        await nursery.start(TomlFileSource(path, store, poll_interval=poll).run)
        assert store.revision == 1  # start returns after the first load
        await nursery.start(fleet.run)
        await fleet.wait_all_at(1)
        before = dict(fleet.interval)
        assert set(before.values()) == {10.0, 20.0}

        # An update: rule mobile-eu pings every 6 s instead of 10 s.
        await trio.sleep(0.7)  # somewhere between two polls
        changed_at = trio.current_time()
        _write(
            path, "revision = 2\n" + POLICY_V1.replace("ping_interval = 10", "ping_interval = 6")
        )
        with trio.fail_after(poll + 0.001):
            seen_at = await fleet.wait_all_at(2)
        latency = seen_at - changed_at
        assert 0 < latency <= poll
        matching = {a.key for a in attributes if matches_mobile_eu_rule(a)}
        assert len(matching) == 9  # mobile+eu is 1 in 9 (12 of 100), minus three 1.x clients
        assert {key for key in before if fleet.interval[key] != before[key]} == matching
        assert {fleet.interval[key] for key in matching} == {6.0}
        assert {fleet.rule[key] for key in matching} == {"mobile-eu"}

        # A malformed update is rejected whole and changes nothing.
        after_update = dict(fleet.interval)
        _write(
            path, "revision = 3\n" + POLICY_V1.replace("ping_interval = 10", "ping_interval = nan")
        )
        with trio.fail_after(poll + 0.001), capture_logs() as logs:
            stats = await store.wait_statistics(lambda s: s.rejected >= 1)
        assert stats.revision == 2
        assert stats.last_rejected == (
            "rule 'mobile-eu': ping_interval must be a positive, finite number of seconds; got nan",
        )
        # Only the policy's events: a loaded machine may also log loop.stalled.
        policy_logs = [log for log in logs if log["event"].startswith("policy.")]
        assert [log["event"] for log in policy_logs] == ["policy.rejected"]
        assert policy_logs[0]["source"] == f"file:{path}"
        _write(path, "revision = 3\n[default\n")  # not TOML at all
        with trio.fail_after(poll + 0.001):
            await store.wait_statistics(lambda s: s.rejected >= 2)
        await trio.sleep(poll * 2)
        assert fleet.interval == after_update
        assert set(fleet.revision.values()) == {2}

        # A touched file with the same content is no update at all.
        _write(path, "revision = 3\n" + POLICY_V1)
        with trio.fail_after(poll + 0.001):
            await fleet.wait_all_at(3)
        assert fleet.interval == before
        os.utime(path)
        await trio.sleep(poll * 2)
        assert store.statistics().accepted == 3  # 1, 2 and 3
        nursery.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(live_tasks)
    assert live_tasks.spawned > 100  # the source, the fleet and its connections
    assert not live_tasks.live, live_tasks.names()


async def test_a_missing_or_oversized_file_keeps_the_policy(
    autojump_clock: trio.testing.MockClock, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "policy.toml"
    store = PolicyStore(_set(5))
    source = TomlFileSource(path, store, poll_interval=1, max_bytes=100)
    with capture_logs() as logs:
        assert not await source.check()
        assert not await source.check()  # the same failure is logged once
    assert [log["event"] for log in logs] == ["policy.source_failed"]
    assert store.revision == 5
    _write(path, "revision = 6\n" + "#" * 200)
    assert not await source.check()
    assert store.statistics().last_rejected == ("the file is larger than 100 bytes",)
    _write(path, "revision = 6\n")
    assert await source.check()
    assert store.revision == 6
    assert source.source == f"file:{path}"


def test_poll_interval_is_checked() -> None:
    with pytest.raises(ConfigError, match="poll_interval must be a positive"):
        TomlFileSource("x", PolicyStore(), poll_interval=0)


async def test_file_source_in_real_time_reports_its_latency(
    tmp_path: pathlib.Path, measured: Measured
) -> None:
    """The same as above on the real clock, to measure the latency (printed)."""
    path = tmp_path / "policy.toml"
    _write(path, "revision = 1\n" + POLICY_V1)
    store = PolicyStore()
    attributes = fleet_attributes(100)
    matching = {a.key for a in attributes if matches_mobile_eu_rule(a)}
    fleet = Fleet(store, attributes)
    poll = 0.05
    latencies = []
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await nursery.start(TomlFileSource(path, store, poll_interval=poll).run)
            await nursery.start(fleet.run)
            await fleet.wait_all_at(1)
        before = dict(fleet.interval)
        for revision in range(2, 7):
            changed_at = trio.current_time()
            _write(path, f"revision = {revision}\n" + POLICY_V1.replace("= 10", f"= {revision}"))
            with trio.fail_after(5):
                latencies.append(await fleet.wait_all_at(revision) - changed_at)
            # Exactly the matching connections run the new interval.
            assert {k for k, v in fleet.interval.items() if v != before[k]} == matching
            assert {fleet.interval[key] for key in matching} == {float(revision)}
        nursery.cancel_scope.cancel()
    measured(
        f"TOML file rewritten -> all 100 connections at the new revision, poll "
        f"{poll * 1000:.0f} ms: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} changes"
    )
    assert all(0 < latency < 5 for latency in latencies)
