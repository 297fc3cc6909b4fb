"""Prometheus metrics, namespaced ``trioheart_``, with bounded labels only.

One :class:`Metrics` per server (or per process). It registers its
collectors in the registry you give it, so tests and embedding applications
can keep their own; :meth:`Metrics.render` returns the text exposition for
an endpoint of your own, and the demo serves it at ``/metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .reasons import CloseReason

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The Content-Type of :meth:`Metrics.render`'s output.
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_RTT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LIFETIME_BUCKETS: Final = (1, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)


@final
class Metrics:
    """The collectors trioheart updates.

    Args:
      registry: Where to register; a new private registry by default (pass
        ``prometheus_client.REGISTRY`` to share the process-wide one).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections_open = Gauge(
            "trioheart_connections_open", "WebSocket connections open now.", registry=r
        )
        self.connections_closed = Counter(
            "trioheart_connections_closed",
            "Connections closed, by the reason they closed.",
            ["reason"],
            registry=r,
        )
        self.connection_lifetime = Histogram(
            "trioheart_connection_lifetime_seconds",
            "How long connections lived, from handshake to close.",
            buckets=_LIFETIME_BUCKETS,
            registry=r,
        )
        self.pings_sent = Counter(
            "trioheart_pings_sent", "WebSocket pings sent by the heartbeat.", registry=r
        )
        self.pongs_received = Counter(
            "trioheart_pongs_received",
            "Pongs that answered the heartbeat's outstanding ping.",
            registry=r,
        )
        self.heartbeat_misses = Counter(
            "trioheart_heartbeat_misses",
            "Connections convicted for a missed pong or app-level heartbeat.",
            registry=r,
        )
        self.rtt = Histogram(
            "trioheart_rtt_seconds",
            "Round-trip time of heartbeat pings.",
            buckets=_RTT_BUCKETS,
            registry=r,
        )
        # Every reason is present from the start, at 0, so a rate() over a
        # reason that has not happened yet is 0 rather than absent.
        self._closed = {
            reason.value: self.connections_closed.labels(reason=reason.value)
            for reason in CloseReason
        }

    def track_server(self, server: Any) -> None:
        """Also export what *server* knows at scrape time: its policies.

        Adds ``trioheart_policy_revision``,
        ``trioheart_policy_connections{revision,rule}`` and
        ``trioheart_policy_updates_total{outcome}`` when the server runs
        with a :class:`~trioheart.PolicyStore`. Called by
        :func:`~trioheart.serve` with its ``metrics``.
        """
        self.registry.register(_ServerCollector(server))

    def connection_closed(self, reason: str, lifetime: float | None) -> None:
        """Account one closed connection (``lifetime`` None: it never opened)."""
        self._closed[reason].inc()
        if lifetime is not None:
            self.connections_open.dec()
            self.connection_lifetime.observe(lifetime)

    def render(self) -> bytes:
        """The text exposition format of every collector in the registry."""
        return generate_latest(self.registry)


class _ServerCollector(Collector):
    """Reads a server's policy census and store at scrape time (no per-event cost)."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        store = self._server.policies
        if store is None:
            return
        stats = store.statistics()
        yield GaugeMetricFamily(
            "trioheart_policy_revision", "Revision of the policy set in force.", stats.revision
        )
        connections = GaugeMetricFamily(
            "trioheart_policy_connections",
            "Open connections per policy revision and rule.",
            labels=["revision", "rule"],
        )
        for (revision, rule), count in sorted(self._server.policy_census.counts().items()):
            connections.add_metric([str(revision), rule], count)
        yield connections
        updates = CounterMetricFamily(
            "trioheart_policy_updates",
            "Policy updates offered to the store, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("accepted", "rejected", "unchanged"):
            updates.add_metric([outcome], getattr(stats, outcome))
        yield updates
