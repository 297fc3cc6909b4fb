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
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .reasons import CloseReason
from .resume import RefuseReason, ResetReason

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The Content-Type of :meth:`Metrics.render`'s output.
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_RTT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LIFETIME_BUCKETS: Final = (1, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)
_WINDOW_BUCKETS: Final = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
_STALL_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
_HEALTH_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_INTERVAL_BUCKETS: Final = (1, 2, 5, 10, 15, 20, 30, 60)
#: Outcomes of a resume request (labels of ``trioheart_resumes_total``).
RESUME_OUTCOMES: Final = ("resumed", "reset", "refused")


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
        self.pong_window = Histogram(
            "trioheart_pong_window_seconds",
            "The pong window in force when each heartbeat ping was sent.",
            buckets=_WINDOW_BUCKETS,
            registry=r,
        )
        self.loop_stalls = Counter(
            "trioheart_loop_stalls",
            "Times this process's event loop stalled past the detection threshold.",
            registry=r,
        )
        self.loop_stall = Histogram(
            "trioheart_loop_stall_seconds",
            "How long each detected event-loop stall lasted.",
            buckets=_STALL_BUCKETS,
            registry=r,
        )
        self.resumes = Counter(
            "trioheart_resumes",
            "Resume requests, by outcome (resumed, reset, refused).",
            ["outcome"],
            registry=r,
        )
        self.messages_replayed = Counter(
            "trioheart_messages_replayed",
            "Messages replayed to clients that resumed.",
            registry=r,
        )
        self.sockets_tuned = Counter(
            "trioheart_sockets_tuned",
            "Sockets whose L4 settings were applied before the handshake, by keepalive on/off.",
            ["keepalive"],
            registry=r,
        )
        self.socket_options_unsupported = Counter(
            "trioheart_socket_options_unsupported",
            "Socket options the platform refused or lacks, per socket.",
            ["option"],
            registry=r,
        )
        for outcome in RESUME_OUTCOMES:
            self.resumes.labels(outcome=outcome)
        for state in ("on", "off"):
            self.sockets_tuned.labels(keepalive=state)
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

    def track_broker(self, broker: Any) -> None:
        """Also export what *broker* (a :class:`~trioheart.broker.Broker`) knows at scrape time.

        Adds ``trioheart_broker_up`` (1 while the shared log is reachable),
        ``trioheart_broker_outages_total``, ``trioheart_broker_rooms``,
        ``trioheart_broker_outbox_messages``, ``trioheart_broker_outbox_bytes``,
        ``trioheart_broker_published_total``,
        ``trioheart_broker_publish_rejected_total``,
        ``trioheart_broker_delivered_total``,
        ``trioheart_broker_room_resets_total``,
        ``trioheart_broker_resumes_accepted_total``,
        ``trioheart_broker_resume_resets_total{reason}`` and
        ``trioheart_broker_resume_refusals_total{reason}`` (from its
        :class:`~trioheart.resume.ResumeServer`), each with a ``broker`` label
        (``embedded`` or ``redis``).
        """
        self.registry.register(_BrokerCollector(broker))

    def socket_tuned(self, applied: Any) -> None:
        """Account one socket's applied L4 settings (an :class:`AppliedKeepalive`)."""
        self.sockets_tuned.labels(keepalive="on" if applied.keepalive else "off").inc()
        for option in applied.unsupported:
            self.socket_options_unsupported.labels(option=option).inc()

    def loop_stalled(self, lag: float) -> None:
        """Account one event-loop stall of *lag* seconds."""
        self.loop_stalls.inc()
        self.loop_stall.observe(lag)

    def resumed(self, outcome: str, replayed: int = 0) -> None:
        """Account one resume request and the messages it replayed.

        Args:
          outcome: ``"resumed"``, ``"reset"`` or ``"refused"``.
          replayed: Messages sent again to the client.
        """
        if outcome not in RESUME_OUTCOMES:
            raise ValueError(f"outcome must be one of {RESUME_OUTCOMES}; got {outcome!r}")
        self.resumes.labels(outcome=outcome).inc()
        if replayed:
            self.messages_replayed.inc(replayed)

    def http_handler(self) -> Any:
        """An ``http_handler`` for :func:`~trioheart.serve` answering ``GET /metrics``.

        Returns:
          ``async def handler(request) -> HttpResponse | None``: the metrics
          for ``/metrics``, ``None`` (404) for any other path.
        """
        from .http import HttpResponse

        async def handler(request: Any) -> HttpResponse | None:
            if request.path != "/metrics":
                return None
            return HttpResponse(body=self.render(), content_type=CONTENT_TYPE)

        return handler

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
        connections = list(self._server.connections)
        stats = [conn.liveness() for conn in connections]
        yield _gauge_histogram(
            "trioheart_connection_health",
            "Health scores of the open connections (0 bad, 1 good).",
            [s.health for s in stats],
            _HEALTH_BUCKETS,
        )
        yield _gauge_histogram(
            "trioheart_heartbeat_interval_seconds",
            "Heartbeat intervals the open connections run now.",
            [s.interval for s in stats],
            _INTERVAL_BUCKETS,
        )
        yield _gauge_histogram(
            "trioheart_connection_pong_window_seconds",
            "Pong windows the open connections run now.",
            [s.window for s in stats],
            _WINDOW_BUCKETS,
        )
        user_timeouts = [
            conn.keepalive.user_timeout
            for conn in connections
            if conn.keepalive is not None and conn.keepalive.user_timeout
        ]
        yield _gauge_histogram(
            "trioheart_tcp_user_timeout_seconds",
            "TCP_USER_TIMEOUT the kernel applied on the open connections.",
            user_timeouts,
            _INTERVAL_BUCKETS,
        )
        yield from self._policy_metrics()

    def _policy_metrics(self) -> Iterator[Metric]:
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


class _BrokerCollector(Collector):
    """Reads a broker's statistics at scrape time."""

    _GAUGES: Final = (
        ("rooms", "trioheart_broker_rooms", "Rooms open on this node."),
        (
            "outbox_messages",
            "trioheart_broker_outbox_messages",
            "Messages waiting for the shared log.",
        ),
        ("outbox_bytes", "trioheart_broker_outbox_bytes", "Bytes waiting for the shared log."),
    )
    _COUNTERS: Final = (
        ("outages", "trioheart_broker_outages", "Times the shared log became unreachable."),
        ("published", "trioheart_broker_published", "Messages this node accepted for publishing."),
        (
            "rejected",
            "trioheart_broker_publish_rejected",
            "Publishes refused because the outbox was full.",
        ),
        ("delivered", "trioheart_broker_delivered", "Messages sent to this node's subscribers."),
        (
            "room_resets",
            "trioheart_broker_room_resets",
            "Rooms whose copy was dropped because the shared log lost or skipped entries.",
        ),
    )

    def __init__(self, broker: Any) -> None:
        self._broker = broker

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._broker.statistics()
        label = [stats.kind]
        up = GaugeMetricFamily(
            "trioheart_broker_up",
            "1 while the shared room log (the broker) is reachable, else 0.",
            labels=["broker"],
        )
        up.add_metric(label, 1.0 if stats.up else 0.0)
        yield up
        for field, name, documentation in self._GAUGES:
            gauge = GaugeMetricFamily(name, documentation, labels=["broker"])
            gauge.add_metric(label, getattr(stats, field))
            yield gauge
        for field, name, documentation in self._COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=["broker"])
            counter.add_metric(label, getattr(stats, field))
            yield counter
        # The broker's resume server decides every resume on this node: a
        # reset with reason "trimmed" is the room log's bounds being hit.
        resume = self._broker.resume_server.statistics()
        resets = CounterMetricFamily(
            "trioheart_broker_resume_resets",
            "Resumes answered with reset, by reason (trimmed: the room log's bounds "
            "had dropped a message the client missed).",
            labels=["broker", "reason"],
        )
        for reset in ResetReason:
            resets.add_metric([stats.kind, reset.value], resume.resets.get(reset, 0))
        yield resets
        refusals = CounterMetricFamily(
            "trioheart_broker_resume_refusals",
            "Resume requests refused (malformed, a forged or foreign token, an impossible seq).",
            labels=["broker", "reason"],
        )
        for refusal in RefuseReason:
            refusals.add_metric([stats.kind, refusal.value], resume.refusals.get(refusal, 0))
        yield refusals
        accepted = CounterMetricFamily(
            "trioheart_broker_resumes_accepted",
            "Resume requests accepted: the client got exactly what it missed.",
            labels=["broker"],
        )
        accepted.add_metric(label, resume.resumed)
        yield accepted


def _gauge_histogram(
    name: str, documentation: str, values: list[float], buckets: tuple[float, ...]
) -> GaugeHistogramMetricFamily:
    counts = [0] * (len(buckets) + 1)
    for value in values:
        for index, bound in enumerate(buckets):
            if value <= bound:
                counts[index] += 1
                break
        else:
            counts[-1] += 1
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*buckets, float("inf")), counts, strict=True):
        running += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return GaugeHistogramMetricFamily(
        name, documentation, buckets=cumulative, gsum_value=float(sum(values))
    )
