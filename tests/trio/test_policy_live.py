"""A new policy reaches running connections without a reconnect, at their next beat."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import structlog.testing
import trio
from trio.testing import MockClock

import trioheart
from trioheart._trio.policy_sources import PolicyStore
from trioheart.policy import PolicySet

from .wsclient import connect

V1 = """
[default]
ping_interval = 20
idle_timeout = 60

[rules.mobile]
match = { group = "mobile" }
ping_interval = 10
"""


def policy(text: str, revision: int) -> PolicySet:
    import tomllib

    return PolicySet.from_mapping(tomllib.loads(text), revision=revision)


async def idle(conn: trioheart.Connection) -> None:
    await trio.sleep_forever()


async def test_interval_changes_at_the_next_beat_and_metrics_count_revisions(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    store = PolicyStore(policy(V1, 1))
    metrics = trioheart.Metrics()
    server: trioheart.Server = await nursery.start(
        functools.partial(trioheart.serve, idle, "127.0.0.1", 0, policies=store, metrics=metrics)
    )
    pings: dict[str, list[float]] = {"mobile": [], "desktop": []}

    async def client(group: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with connect(server.port, f"/ws?group={group}&client_id={group}") as c:
            task_status.started()
            while await c.pump():
                if c.pings > len(pings[group]):
                    pings[group].append(trio.current_time())

    with structlog.testing.capture_logs() as logs:
        for group in pings:
            await nursery.start(client, group)
        await server.wait_until(lambda s: s.connections_open == 2)
        await trio.sleep(25)  # mobile pinged at 10 and 20, desktop at 20
        windows = {c.query["group"]: c.liveness().window for c in server.connections}
        assert windows == {"mobile": 20, "desktop": 20}  # max_window, before 4 RTT samples
        v2 = V1.replace("ping_interval = 10", "ping_interval = 4\nmax_window = 3")
        assert store.update(policy(v2, 2))
        await server.wait_until(lambda s: s.policy_revisions == {2: 2})
        # The window bound changes too, for the matching connection only.
        windows = {c.query["group"]: c.liveness().window for c in server.connections}
        assert windows == {"mobile": 3, "desktop": 20}
        await trio.sleep(20)

    start = pings["mobile"][0] - 10
    mobile = [round(t - start, 3) for t in pings["mobile"]]
    desktop = [round(t - start, 3) for t in pings["desktop"]]
    # Every 10 s before the change (at t=25); the next beat comes within the
    # new interval of the change, and from then on every 4 s.
    assert mobile[:2] == [10.0, 20.0]
    assert 25 < mobile[2] <= 25 + 4
    assert [b - a for a, b in itertools.pairwise(mobile[2:6])] == [4.0, 4.0, 4.0]
    assert desktop[:2] == [20.0, 40.0]  # untouched
    applied = [e for e in logs if e["event"] == "policy.applied"]
    assert [(e["rule"], e["revision"]) for e in applied] == [
        ("mobile", 1),
        ("default", 1),
        ("mobile", 2),  # desktop's policy did not change: no event
    ]
    text = metrics.render().decode()
    assert 'trioheart_policy_connections{revision="2",rule="mobile"} 1.0' in text
    assert 'trioheart_policy_connections{revision="2",rule="default"} 1.0' in text
    assert "trioheart_policy_revision 2.0" in text
    assert 'trioheart_policy_updates_total{outcome="accepted"} 1.0' in text


async def test_keepalive_follows_the_policy_on_a_live_socket(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    text = V1 + '\n[rules.eu]\nmatch = { region = "eu" }\nkeepalive_idle = 7\n'
    store = PolicyStore(policy(text, 1))
    server: trioheart.Server = await nursery.start(
        functools.partial(trioheart.serve, idle, "127.0.0.1", 0, policies=store)
    )
    async with connect(server.port, "/ws?region=eu") as client:
        await server.wait_until(lambda s: s.connections_open == 1)
        [conn] = server.connections
        assert conn.keepalive is not None
        assert conn.keepalive.idle == 7  # applied right after the handshake
        store.update(policy(text.replace("keepalive_idle = 7", "keepalive_idle = 9"), 2))
        await server.wait_until(lambda s: s.policy_revisions == {2: 1})
        assert conn.keepalive.idle == 9
        assert conn.policy is not None
        assert conn.policy.rule == "eu"
        await client.close_cleanly()
        await client.run_until_closed()
    await server.wait_until(lambda s: s.connections_open == 0)
    assert server.statistics().policy_revisions == {}
