"""The etcd policy source against a real etcd on loopback (real time, with deadlines)."""

from __future__ import annotations

import base64
import json
import statistics
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from tests.conftest import LiveTasks, Measured
from tests.etcd_server import EtcdServer
from tests.trio.policy_fleet import (
    MOBILE_EU_V2,
    Fleet,
    fleet_attributes,
    matches_mobile_eu_rule,
)
from trioheart._trio.policy_sources import (
    EtcdGatewayError,
    EtcdSource,
    PolicyStore,
    _json_lines,
    _Resync,
    prefix_range_end,
)

httpx = pytest.importorskip("httpx", reason="the etcd source needs the etcd extra (httpx)")

# Generous: a loaded 2-core CI machine. The measured latency is printed.
DEADLINE = 10.0

DEFAULT = "ping_interval = 20\nidle_timeout = 60\n"
MOBILE_EU_V1 = 'ping_interval = 10\n[match]\ngroup = "mobile"\nregion = "eu"\n'
OLD_APP = 'max_window = 40\n[match]\nversion = "<2"\n'


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Etcd:
    """Just enough of etcd's JSON gateway to set up the tests."""

    def __init__(self, client: httpx.AsyncClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def _post(self, path: str, body: dict[str, Any]) -> int:
        response = await self.client.post(path, json=body)
        response.raise_for_status()
        return int(response.json()["header"]["revision"])

    async def put(self, **values: str) -> int:
        """Put ``prefix + key`` for each item, in one transaction; return the revision."""
        return await self._post(
            "/v3/kv/txn",
            {
                "success": [
                    {
                        "request_put": {
                            "key": _b64(self.prefix + key.replace("__", "/")),
                            "value": _b64(value),
                        }
                    }
                    for key, value in values.items()
                ]
            },
        )

    async def delete(self, key: str) -> int:
        return await self._post("/v3/kv/deleterange", {"key": _b64(self.prefix + key)})


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Etcd]:
    async with httpx.AsyncClient(
        base_url=etcd_server.endpoint, timeout=DEADLINE, trust_env=False
    ) as client:
        yield Etcd(client, f"/trioheart-test/{uuid.uuid4().hex}/")


def _source(store: PolicyStore, etcd_server: EtcdServer, etcd: Etcd, **kwargs: Any) -> EtcdSource:
    return EtcdSource(store, endpoint=etcd_server.endpoint, prefix=etcd.prefix, **kwargs)


async def test_an_update_reaches_exactly_the_matching_connections(
    etcd_server: EtcdServer, etcd: Etcd, measured: Measured
) -> None:
    live_tasks = LiveTasks()
    trio.lowlevel.add_instrument(live_tasks)
    first = await etcd.put(default=DEFAULT, rules__mobile_eu=MOBILE_EU_V1, rules__old_app=OLD_APP)
    store = PolicyStore()
    attributes = fleet_attributes(100)
    fleet = Fleet(store, attributes)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(DEADLINE):
            await nursery.start(_source(store, etcd_server, etcd).run)
        assert store.revision >= first  # start returns after the first read
        assert [rule.name for rule in store.current.rules] == ["old_app", "mobile_eu"]
        await nursery.start(fleet.run)
        with trio.fail_after(DEADLINE):
            await fleet.wait_all_at(store.revision)
        before = dict(fleet.interval)
        rules_before = dict(fleet.rule)
        matching = {a.key for a in attributes if matches_mobile_eu_rule(a)}
        assert len(matching) == 9

        # The update: rule mobile_eu pings every 9, 8, 7, then 6 s instead of
        # 10 s; each one is timed from the put until every connection runs it.
        latencies = []
        for interval in (9, 8, 7, 6):
            changed_at = trio.current_time()
            revision = await etcd.put(rules__mobile_eu=MOBILE_EU_V2.replace("= 6", f"= {interval}"))
            with trio.fail_after(DEADLINE):
                seen_at = await fleet.wait_all_at(revision)
            latencies.append(seen_at - changed_at)
            assert store.revision == revision  # the etcd revision of the change
            changed = {key for key in before if fleet.interval[key] != before[key]}
            assert changed == matching
            assert {fleet.interval[key] for key in matching} == {float(interval)}
            assert {key: fleet.rule[key] for key in before if key not in matching} == {
                key: rule for key, rule in rules_before.items() if key not in matching
            }
        assert {fleet.rule[key] for key in matching} == {"mobile_eu"}
        measured(
            "etcd put -> all 100 connections at the new revision, the 9 matching "
            f"at the new interval: {', '.join(f'{t * 1000:.1f}' for t in latencies)} ms "
            f"(median {statistics.median(latencies) * 1000:.1f} ms; bound {DEADLINE} s)"
        )

        # Malformed updates are rejected whole and change nothing.
        after_update = dict(fleet.interval)
        with capture_logs() as logs:
            await etcd.put(rules__mobile_eu=MOBILE_EU_V2.replace("= 6", "= -6"))
            with trio.fail_after(DEADLINE):
                stats = await store.wait_statistics(lambda s: s.rejected >= 1)
            await etcd.put(rules__mobile_eu="ping_interval = [")  # not TOML
            await etcd.put(rules__other="pingg = 1")  # another key, with a typo
            with trio.fail_after(DEADLINE):
                stats = await store.wait_statistics(lambda s: s.rejected >= 3)
        assert stats.revision == revision
        rejected = [log for log in logs if log["event"] == "policy.rejected"]
        assert "rule 'mobile_eu': ping_interval must be a positive" in rejected[0]["errors"][0]
        assert "not a valid TOML document" in rejected[1]["errors"][0]
        # The whole set is judged: the broken rule still rejects the next change.
        assert len(rejected[2]["errors"]) == 2
        assert not [log for log in logs if log["event"] == "policy.updated"]
        assert fleet.interval == after_update
        assert set(fleet.revision.values()) == {revision}

        # Fixing both keys at once (one transaction) is accepted.
        fixed = await etcd.put(
            rules__mobile_eu=MOBILE_EU_V1,
            rules__other='ping_interval = 9\n[match]\ngroup = "nobody"\n',
        )
        with trio.fail_after(DEADLINE):
            await fleet.wait_all_at(fixed)
        assert fleet.interval == before
        deleted = await etcd.delete("rules/mobile_eu")
        with trio.fail_after(DEADLINE):
            await store.wait_revision(deleted)
        assert [rule.name for rule in store.current.rules] == ["old_app", "other"]
        nursery.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(live_tasks)
    assert not live_tasks.live, live_tasks.names()


async def test_a_quiet_watch_is_re_established_without_missing_a_change(
    etcd_server: EtcdServer, etcd: Etcd, measured: Measured
) -> None:
    await etcd.put(default=DEFAULT)
    store = PolicyStore()
    latencies = []
    async with trio.open_nursery() as nursery:
        with trio.fail_after(DEADLINE):
            await nursery.start(_source(store, etcd_server, etcd, watch_idle_timeout=0.2).run)
        for interval in (7, 8, 9):
            await trio.sleep(0.3)  # longer than the idle timeout: the watch is re-made
            changed_at = trio.current_time()
            revision = await etcd.put(default=f"ping_interval = {interval}\n")
            with trio.fail_after(DEADLINE):
                await store.wait_revision(revision)
            latencies.append(trio.current_time() - changed_at)
            assert store.current.default.ping_interval == interval
        nursery.cancel_scope.cancel()
    measured(
        "etcd put -> store, each after a watch re-made: "
        f"{', '.join(f'{t * 1000:.1f}' for t in latencies)} ms"
    )
    assert store.statistics().accepted == 4


async def test_an_unreachable_etcd_is_retried_with_backoff() -> None:
    with trio.socket.socket() as sock:  # a loopback port that nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PolicyStore()
    source = EtcdSource(store, endpoint=f"http://127.0.0.1:{port}", retry_base=0.01, retry_cap=0.02)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.5) as scope:
                await nursery.start(source.run)
            nursery.cancel_scope.cancel()
    assert scope.cancelled_caught  # it never read the prefix, so it never started
    failures = [log for log in logs if log["event"] == "policy.source_failed"]
    assert len(failures) >= 3
    assert all(0 <= log["retry_in_s"] <= 0.02 for log in failures)
    assert "ConnectError" in failures[0]["error"]
    assert store.revision == 0


async def test_a_stray_key_under_the_prefix_is_rejected(
    etcd_server: EtcdServer, etcd: Etcd
) -> None:
    await etcd.put(default=DEFAULT, stray="x = 1")
    store = PolicyStore()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(DEADLINE):
                await nursery.start(_source(store, etcd_server, etcd).run)
            nursery.cancel_scope.cancel()
    assert store.revision == 0
    (rejected,) = [log for log in logs if log["event"] == "policy.rejected"]
    assert rejected["errors"] == [
        f"unexpected key '{etcd.prefix}stray': expected {etcd.prefix}default or "
        f"{etcd.prefix}rules/NAME"
    ]


# --------------------------------------------------------------------------
# The gateway protocol, without etcd


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await trio.lowlevel.checkpoint()
        yield chunk


async def test_json_lines_are_split_across_chunks_and_bounded() -> None:
    messages = [{"result": {"n": i}} for i in range(3)]
    data = b"".join(json.dumps(m).encode() + b"\n" for m in messages)
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert [m async for m in _json_lines(_chunks(*pieces), 1000)] == messages
    with pytest.raises(EtcdGatewayError, match="longer than 64 bytes"):
        async for _ in _json_lines(_chunks(b"x" * 65), 64):
            pass
    with pytest.raises(EtcdGatewayError, match="not JSON"):
        async for _ in _json_lines(_chunks(b"{nope\n"), 64):
            pass


def test_prefix_range_end_covers_the_prefix() -> None:
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"
    for prefix in (b"/trioheart/policy/", b"x\xff\xfe"):
        end = prefix_range_end(prefix)
        for suffix in (b"", b"\0", b"\xff" * 4, b"rules/z"):
            assert prefix <= prefix + suffix < end


def test_watch_messages_that_are_not_the_protocol_are_errors() -> None:
    source = EtcdSource(PolicyStore(), prefix="/p/")
    for message in (["list"], {"error": {"code": 14}}, {"nothing": 1}):
        with pytest.raises(EtcdGatewayError):
            source._on_watch_message(message)
    bad_key = {"result": {"events": [{"kv": {"key": "!!", "mod_revision": "3"}}]}}
    with pytest.raises(EtcdGatewayError, match="bad base64"):
        source._on_watch_message(bad_key)
    no_revision = {"result": {"events": [{"kv": {"key": _b64("/p/default")}}]}}
    with pytest.raises(EtcdGatewayError, match="expected an integer"):
        source._on_watch_message(no_revision)
    compacted = {"result": {"canceled": True, "compact_revision": "4"}}
    with pytest.raises(_Resync, match="compact_revision=4"):
        source._on_watch_message(compacted)
    created = {"result": {"header": {"revision": "3"}, "created": True}}
    source._on_watch_message(created)  # nothing to do


async def test_a_caller_supplied_client_is_used_and_left_open(
    etcd_server: EtcdServer, etcd: Etcd
) -> None:
    revision = await etcd.put(default="ping_interval = 11\n")
    store = PolicyStore()
    async with httpx.AsyncClient(base_url=etcd_server.endpoint, trust_env=False) as client:
        source = EtcdSource(store, prefix=etcd.prefix, endpoint="unused", client=client)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(DEADLINE):
                await nursery.start(source.run)
            nursery.cancel_scope.cancel()
        assert store.revision >= revision
        assert store.current.default.ping_interval == 11
        assert not client.is_closed
