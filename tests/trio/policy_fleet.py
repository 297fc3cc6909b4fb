"""A fleet of simulated connections that follow a PolicyStore, for the source tests.

Each connection is a task that does what the runner will do: resolve its
policy from every set the store announces and keep the detector bounds it
got. The tests then check which connections changed.
"""

from __future__ import annotations

import itertools

import trio

from trioheart._trio.policy_sources import PolicyStore
from trioheart.policy import ConnectionAttributes

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


class Fleet:
    """Connections following *store*; start :meth:`run` in a nursery."""

    def __init__(self, store: PolicyStore, attributes: list[ConnectionAttributes]) -> None:
        self.store = store
        self.attributes = attributes
        self.interval: dict[str, float] = {}
        self.revision: dict[str, int] = {}
        self.rule: dict[str, str] = {}
        self.seen_at: dict[str, float] = {}
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for attributes in self.attributes:
                nursery.start_soon(self._follow, attributes, name=f"fleet:{attributes.key}")
            task_status.started()

    async def _follow(self, attributes: ConnectionAttributes) -> None:
        async for policy_set in self.store.subscribe():
            resolution = policy_set.resolve(attributes)
            self.interval[attributes.key] = resolution.policy.detector_config().ping_interval
            self.revision[attributes.key] = resolution.revision
            self.rule[attributes.key] = resolution.rule
            self.seen_at[attributes.key] = trio.current_time()
            self._changed.set()
            self._changed = trio.Event()

    async def wait_all_at(self, revision: int) -> float:
        """Wait until every connection runs *revision*; return when the last one got it."""
        while len(self.revision) < len(self.attributes) or any(
            seen < revision for seen in self.revision.values()
        ):
            await self._changed.wait()
        return max(self.seen_at.values())
