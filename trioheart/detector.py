"""The liveness detector of one connection, sans-IO.

Like h11's ``Connection``, :class:`LivenessDetector` does no I/O and has no
clock: the caller (the Trio runner, a test, or a benchmark replaying a
trace) feeds it what happened and when, and asks it what to do next:

* :meth:`~LivenessDetector.wake_at` says when the caller must call
  :meth:`~LivenessDetector.poll` at the latest;
* :meth:`~LivenessDetector.poll` answers :attr:`Action.SEND_PING`,
  :attr:`Action.CONVICT` or ``None``;
* :meth:`~LivenessDetector.on_ping_sent`, :meth:`~LivenessDetector.on_pong`,
  :meth:`~LivenessDetector.on_activity` and
  :meth:`~LivenessDetector.on_local_stall` report events.

At most one ping is outstanding at a time. Any inbound frame is a sign of
life: while a ping is outstanding, the conviction deadline is
``max(ping sent, last inbound frame) + window``, so a pong stuck behind bulk
data never gets a busy connection killed.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Final, final

import attrs

from .errors import ConfigError

__all__ = ["Action", "DetectorConfig", "DetectorStatistics", "LivenessDetector"]


class Action(enum.Enum):
    """What :meth:`LivenessDetector.poll` asks the caller to do."""

    #: Send a ping now and report it with :meth:`LivenessDetector.on_ping_sent`.
    SEND_PING = "send_ping"
    #: The peer missed its deadline: close the connection.
    CONVICT = "convict"


def _positive_finite(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(
            f"{attribute.name} must be a positive, finite number of seconds; got {value!r}"
        )


def _optional_positive_finite(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None:
        _positive_finite(instance, attribute, value)


@final
@attrs.frozen(kw_only=True)
class DetectorConfig:
    """Bounds for one connection's heartbeat. All durations are float seconds.

    Args:
      ping_interval: The base interval between pings.
      ping_timeout: The upper bound on the pong window: how long after a ping
        (or after the last inbound frame, whichever is later) the peer may
        stay silent before it is convicted.
      min_interval: The lower bound of the adaptive interval (defaults to
        *ping_interval*).
      max_interval: The upper bound of the adaptive interval (defaults to
        *ping_interval*).
      min_window: The lower bound of the pong window.
      idle_timeout: The smallest idle timeout of a NAT or load balancer on
        the path, if known; the interval never exceeds half of it.

    Raises:
      ConfigError: naming the field and the value, for a non-positive,
        non-finite or inconsistent value.
    """

    ping_interval: float = attrs.field(default=20.0, validator=_positive_finite)
    ping_timeout: float = attrs.field(default=20.0, validator=_positive_finite)
    min_interval: float = attrs.field(
        default=attrs.Factory(lambda self: self.ping_interval, takes_self=True),
        validator=_positive_finite,
    )
    max_interval: float = attrs.field(
        default=attrs.Factory(lambda self: self.ping_interval, takes_self=True),
        validator=_positive_finite,
    )
    min_window: float = attrs.field(
        default=attrs.Factory(lambda self: min(1.0, self.ping_timeout), takes_self=True),
        validator=_positive_finite,
    )
    idle_timeout: float | None = attrs.field(default=None, validator=_optional_positive_finite)

    def __attrs_post_init__(self) -> None:
        if not self.min_interval <= self.ping_interval <= self.max_interval:
            raise ConfigError(
                "ping_interval must lie within [min_interval, max_interval]; got "
                f"{self.ping_interval!r} not in [{self.min_interval!r}, {self.max_interval!r}]"
            )
        if self.min_window > self.ping_timeout:
            raise ConfigError(
                f"min_window must not exceed ping_timeout; got {self.min_window!r} > "
                f"{self.ping_timeout!r}"
            )
        if self.idle_timeout is not None and self.max_interval > self.idle_timeout / 2:
            raise ConfigError(
                "max_interval must be at most half of idle_timeout, so the heartbeat keeps "
                f"the path's idle mappings alive; got {self.max_interval!r} > "
                f"{self.idle_timeout!r} / 2"
            )


@final
@attrs.frozen
class DetectorStatistics:
    """A snapshot of one detector, as returned by :meth:`LivenessDetector.statistics`."""

    #: Pings reported sent.
    pings_sent: int
    #: Pongs that answered the outstanding ping.
    pongs_received: int
    #: The most recent RTT sample, in seconds, or ``None`` before the first.
    last_rtt: float | None
    #: The median of the recent RTT samples, or ``None``.
    rtt_p50: float | None
    #: The 99th percentile of the recent RTT samples, or ``None``.
    rtt_p99: float | None
    #: The current pong window, in seconds.
    window: float
    #: The current ping interval, in seconds.
    interval: float
    #: The health score in [0, 1].
    health: float


_RTT_KEEP: Final = 64


@final
class LivenessDetector:
    """Decides when to ping and when to give up on the peer.

    Args:
      config: The bounds this detector works within.
      now: The current time, on whatever clock the caller uses throughout.
    """

    __slots__ = (
        "_activity_at",
        "_config",
        "_next_ping_at",
        "_ping_id",
        "_ping_sent_at",
        "_pings_sent",
        "_pongs_received",
        "_rtts",
    )

    def __init__(self, config: DetectorConfig, *, now: float) -> None:
        self._config = config
        self._next_ping_at = now + config.ping_interval
        self._ping_sent_at: float | None = None
        self._activity_at = now
        self._ping_id = 0
        self._pings_sent = 0
        self._pongs_received = 0
        self._rtts: list[float] = []

    @property
    def config(self) -> DetectorConfig:
        """The bounds in force."""
        return self._config

    def reconfigure(self, config: DetectorConfig, *, now: float) -> None:
        """Take new bounds; they apply from the next ping on."""
        self._config = config
        if self._ping_sent_at is None:
            self._next_ping_at = min(self._next_ping_at, now + config.ping_interval)

    @property
    def window(self) -> float:
        """The current pong window, in seconds."""
        return self._config.ping_timeout

    @property
    def interval(self) -> float:
        """The current ping interval, in seconds."""
        return self._config.ping_interval

    @property
    def health(self) -> float:
        """The health score in [0, 1]."""
        return 1.0

    @property
    def ping_outstanding(self) -> bool:
        """Whether a ping is waiting for its pong."""
        return self._ping_sent_at is not None

    @property
    def ping_id(self) -> int:
        """The id of the most recent ping; the caller puts it in the payload."""
        return self._ping_id

    def wake_at(self) -> float:
        """The time at which :meth:`poll` must be called at the latest."""
        if self._ping_sent_at is not None:
            return max(self._ping_sent_at, self._activity_at) + self.window
        return self._next_ping_at

    def poll(self, now: float) -> Action | None:
        """What to do at *now*: ping, convict, or nothing."""
        if now < self.wake_at():
            return None
        return Action.CONVICT if self._ping_sent_at is not None else Action.SEND_PING

    def on_ping_sent(self, now: float) -> int:
        """Report that a ping was sent at *now*. Returns its id."""
        self._ping_id += 1
        self._pings_sent += 1
        self._ping_sent_at = now
        return self._ping_id

    def on_pong(self, now: float, ping_id: int) -> float | None:
        """Report a pong carrying *ping_id*. Returns the RTT sample, if it answered."""
        self._activity_at = max(self._activity_at, now)
        if self._ping_sent_at is None or ping_id != self._ping_id:
            return None
        rtt = max(0.0, now - self._ping_sent_at)
        self._next_ping_at = self._ping_sent_at + self.interval
        self._ping_sent_at = None
        self._pongs_received += 1
        self._rtts.append(rtt)
        if len(self._rtts) > _RTT_KEEP:
            del self._rtts[0]
        return rtt

    def on_activity(self, now: float) -> None:
        """Report any inbound frame at *now*: a sign of life."""
        if now > self._activity_at:
            self._activity_at = now

    def on_local_stall(self, now: float, lag: float) -> None:
        """Report that this process's event loop stalled for *lag* seconds up to *now*."""

    def statistics(self) -> DetectorStatistics:
        """A snapshot of the counters and the current window."""
        rtts = sorted(self._rtts)
        return DetectorStatistics(
            pings_sent=self._pings_sent,
            pongs_received=self._pongs_received,
            last_rtt=self._rtts[-1] if self._rtts else None,
            rtt_p50=_quantile(rtts, 0.5),
            rtt_p99=_quantile(rtts, 0.99),
            window=self.window,
            interval=self.interval,
            health=self.health,
        )


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[max(0, index)]
