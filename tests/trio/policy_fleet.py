"""A fleet of real WebSocket connections that follow a PolicyStore.

A trioheart server runs with the store; 100 clients connect with the
group, region, version and client id of :func:`fleet_attributes` in their
query. The tests read what each connection runs on the *server* side (its
detector's interval, its policy rule and revision), so they check the
runner's live application, not a simulation of it.
"""

from __future__ import annotations

import functools
import itertools
from urllib.parse import urlencode

import trio

import trioheart
from trioheart._trio.policy_sources import PolicyStore
from trioheart.policy import ConnectionAttributes

from .wsclient import connect

GROUPS = ["mobile", "desktop", "web"]
REGIONS = ["eu", "us", "ap"]
VERSIONS = ["1.4.0", "2.0.0", "2.5.1-rc.1", "3.0.0"]

# The policies the tests move between, in the file's form. Rule "mobile-eu"
# is what the update changes; "old-app" outranks it (a version rule) for
# clients before 2.0, and changes their window, not their interval.
POLICY_V1 = """
[default]
ping_interval = 20
idle_timeout = 60

[rules.mobile-eu]
match = { group = "mobile", region = "eu" }
ping_interval = 10

[rules.old-app]
match = { version = "<2" }
max_window = 40
"""
MOBILE_EU_V2 = 'ping_interval = 6\n[match]\ngroup = "mobile"\nregion = "eu"\n'


def fleet_attributes(count: int = 100) -> list[ConnectionAttributes]:
    """*count* connections, cycling through every group, region and version."""
    combos = itertools.cycle(itertools.product(VERSIONS, REGIONS, GROUPS))
    return [
        ConnectionAttributes(key=f"conn-{i}", group=group, region=region, client_version=version)
        for i, (version, region, group) in zip(range(count), combos, strict=False)
    ]


def matches_mobile_eu_rule(attributes: ConnectionAttributes) -> bool:
    """Written independently of the resolver: who runs rule mobile-eu."""
    assert attributes.client_version is not None
    old = attributes.client_version.startswith("1.")
    return attributes.group == "mobile" and attributes.region == "eu" and not old


def _path(attributes: ConnectionAttributes) -> str:
    query = {"client_id": attributes.key}
    for name, value in (
        ("group", attributes.group),
        ("region", attributes.region),
        ("version", attributes.client_version),
    ):
        if value is not None:
            query[name] = value
    return "/ws?" + urlencode(query)


async def _idle(conn: trioheart.Connection) -> None:
    await trio.sleep_forever()


class Fleet:
    """Real connections following *store*; start :meth:`run` in a nursery."""

    def __init__(self, store: PolicyStore, attributes: list[ConnectionAttributes]) -> None:
        self.store = store
        self.attributes = attributes
        self.server: trioheart.Server | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.server = await nursery.start(
                functools.partial(trioheart.serve, _idle, "127.0.0.1", 0, policies=self.store)
            )
            for attributes in self.attributes:
                nursery.start_soon(self._client, attributes, name=f"fleet:{attributes.key}")
            await self.server.wait_until(lambda s: s.connections_open == len(self.attributes))
            task_status.started()

    async def _client(self, attributes: ConnectionAttributes) -> None:
        assert self.server is not None
        async with connect(self.server.port, _path(attributes)) as client:
            while await client.pump():  # answers pings
                pass

    def _by_key(self) -> dict[str, trioheart.Connection]:
        assert self.server is not None
        return {conn.query["client_id"]: conn for conn in self.server.connections}

    @property
    def interval(self) -> dict[str, float]:
        """Each connection's heartbeat interval, as its server-side detector runs it."""
        return {key: conn.liveness().interval for key, conn in self._by_key().items()}

    @property
    def window(self) -> dict[str, float]:
        """Each connection's upper bound on the pong window."""
        return {key: conn.liveness().window for key, conn in self._by_key().items()}

    @property
    def revision(self) -> dict[str, int]:
        return {k: c.policy.revision for k, c in self._by_key().items() if c.policy}

    @property
    def rule(self) -> dict[str, str]:
        return {k: c.policy.rule for k, c in self._by_key().items() if c.policy}

    async def wait_all_at(self, revision: int) -> float:
        """Wait until every connection runs *revision*; return when the last one got it."""
        assert self.server is not None
        await self.server.wait_until(lambda s: set(s.policy_revisions) == {revision})
        return trio.current_time()
