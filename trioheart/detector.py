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
``max(ping sent, last inbound frame) + window (+ stall allowance)``, so a
pong stuck behind bulk data never gets a busy connection killed.

The window adapts (``adaptive=True``, the default) to the RTTs measured::

    q_hi   = RTT quantile rtt_quantile (0.95) of the last rtt_samples (64) pongs
    q_50   = RTT median of the same samples
    J      = q_hi - q_50                                (jitter)
    SRTT   = mean of the samples up to q_hi             (outliers left out, as TCP's
                                                         Karn rule leaves out
                                                         retransmitted samples)
    RTO    = SRTT + max(rto_min, 2.36 (q_75 - q_25))    (Linux: SRTT + max(200 ms,
                                                         4 mdev); mdev = 0.59 IQR)
    k      = loss_allowance                             (3: survives 3 losses in a row)
    window = clamp(q_hi + jitter_factor * J + RTO * (2**k - 1),
                   min_window, ping_timeout)

``RTO * (2**k - 1)`` is the delay TCP adds when a segment is lost *k*
times in a row: over TCP a lost ping arrives late, not never. Until
``MIN_RTT_SAMPLES`` pongs have been measured the window is *ping_timeout*.
The interval follows the health score (:mod:`trioheart.health`).

Stall compensation (``stall_compensation=True``): when this process's own
event loop stalled (:meth:`~LivenessDetector.on_local_stall`, or a
:meth:`~LivenessDetector.poll` that came more than *stall_threshold* late),
the part of the stall that overlapped the running deadline is added to it,
and no conviction happens before *stall_grace* after the stall ended, so
the peer always gets one more chance to be heard after a stall. A peer
that goes silent is convicted at the latest ``interval + ping_timeout``
after its last sign of life, plus the stalls reported while it was silent,
plus *stall_grace* once if any stall was reported.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Final, final

import attrs

from .errors import ConfigError
from .estimator import SlidingQuantiles
from .health import GAIN, interval_for, score

__all__ = ["Action", "DetectorConfig", "DetectorStatistics", "LivenessDetector"]

#: Pongs measured before the window adapts; until then it is ``ping_timeout``.
MIN_RTT_SAMPLES: Final = 4


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


def _non_negative_finite(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(f"{attribute.name} must be a non-negative, finite number; got {value!r}")


def _quantile_level(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value <= 1:
        raise ConfigError(f"{attribute.name} must be a number in [0.5, 1]; got {value!r}")


def _loss_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
        raise ConfigError(
            f"{attribute.name} must be a number of consecutive losses in [0, 10]; got {value!r}"
        )


def _sample_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 1024:
        raise ConfigError(f"{attribute.name} must be an integer in [8, 1024]; got {value!r}")


def _boolean(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be True or False; got {value!r}")


@final
@attrs.frozen(kw_only=True)
class DetectorConfig:
    """Bounds for one connection's heartbeat. All durations are float seconds.

    Args:
      ping_interval: The base interval between pings (what a connection of
        steady health gets).
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
      adaptive: Derive the window from measured RTTs and the interval from
        the health score; if false, the window is *ping_timeout* and the
        interval *ping_interval*, always.
      stall_compensation: Extend running deadlines by this process's own
        event-loop stalls instead of blaming the peer.
      rtt_quantile: The RTT quantile the window covers, in [0.5, 1].
      rtt_samples: How many recent RTT samples the estimator keeps.
      jitter_factor: How many times the jitter ``q_hi - q_50`` the window
        adds on top of ``q_hi``.
      rto_min: The smallest TCP retransmission timeout assumed (Linux:
        200 ms).
      loss_allowance: How many consecutive TCP losses of one ping or pong
        the window survives, through ``RTO * (2**k - 1)``.
      stall_grace: After a local stall, no conviction before this long has
        passed, so the peer gets one more chance to be heard.
      stall_threshold: A :meth:`LivenessDetector.poll` more than this much
        later than :meth:`LivenessDetector.wake_at`, for an outstanding ping,
        is taken as a local stall (once per ping): the stall monitor may not
        have reported yet. After the first such poll for a ping, only a
        poll more than *stall_grace* late counts.

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
    adaptive: bool = attrs.field(default=True, validator=_boolean)
    stall_compensation: bool = attrs.field(default=True, validator=_boolean)
    rtt_quantile: float = attrs.field(default=0.95, validator=_quantile_level)
    rtt_samples: int = attrs.field(default=64, validator=_sample_count)
    jitter_factor: float = attrs.field(default=1.0, validator=_non_negative_finite)
    rto_min: float = attrs.field(default=0.2, validator=_positive_finite)
    loss_allowance: float = attrs.field(default=3.0, validator=_loss_count)
    stall_grace: float = attrs.field(default=0.05, validator=_non_negative_finite)
    stall_threshold: float = attrs.field(default=0.001, validator=_positive_finite)

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
    #: The RTT quantile (``rtt_quantile``) the window covers, or ``None``.
    rtt_quantile: float | None = None
    #: The jitter ``q_hi - q_50``, in seconds, or ``None``.
    jitter: float | None = None
    #: The TCP retransmission timeout estimate, in seconds, or ``None``.
    rto: float | None = None
    #: Pongs that came later than ``q_hi + RTO``.
    late_pongs: int = 0
    #: Local stalls reported with :meth:`LivenessDetector.on_local_stall`.
    local_stalls: int = 0
    #: Their total duration, in seconds.
    local_stall_total: float = 0.0
    #: The longest of them, in seconds.
    local_stall_max: float = 0.0
    #: Seconds added to running deadlines by stall compensation.
    stall_extension_total: float = 0.0
    #: Polls that came more than ``stall_threshold`` late for an outstanding
    #: ping, taken as local stalls.
    late_polls: int = 0


@final
class LivenessDetector:
    """Decides when to ping and when to give up on the peer.

    Every method is synchronous, never blocks and does no I/O; each event
    costs a few microseconds and the state is about 2 KB.

    Args:
      config: The bounds this detector works within.
      now: The current time, on whatever clock the caller uses throughout.
    """

    __slots__ = (
        "_activity_at",
        "_config",
        "_graced",
        "_health",
        "_interval",
        "_irregularity",
        "_jitter",
        "_last_pong_at",
        "_last_rtt",
        "_late",
        "_late_polls",
        "_late_pongs",
        "_next_ping_at",
        "_not_before",
        "_ping_id",
        "_ping_sent_at",
        "_ping_stall",
        "_pings_sent",
        "_pongs_received",
        "_q50",
        "_qhi",
        "_rto",
        "_rtts",
        "_shift",
        "_stall_count",
        "_stall_extension",
        "_stall_max",
        "_stall_total",
        "_stalled_until",
        "_window",
    )

    def __init__(self, config: DetectorConfig, *, now: float) -> None:
        self._config = config
        self._ping_sent_at: float | None = None
        self._activity_at = now
        self._last_pong_at: float | None = None
        self._ping_id = 0
        self._pings_sent = 0
        self._pongs_received = 0
        self._late_pongs = 0
        self._late_polls = 0
        self._last_rtt: float | None = None
        self._rtts = SlidingQuantiles(config.rtt_samples)
        self._q50 = math.nan
        self._qhi = math.nan
        self._jitter = math.nan
        self._rto = math.nan
        self._late = 0.0
        self._irregularity = 0.0
        self._health = 1.0
        # Stall compensation: _shift is added to the running deadline,
        # _ping_stall is the stall time inside the outstanding ping's RTT,
        # _stalled_until is how far stalls have been accounted for, and no
        # conviction happens before _not_before.
        self._shift = 0.0
        self._ping_stall = 0.0
        self._stalled_until = -math.inf
        self._not_before = -math.inf
        self._graced = False
        self._stall_count = 0
        self._stall_total = 0.0
        self._stall_max = 0.0
        self._stall_extension = 0.0
        self._window = config.ping_timeout
        self._interval = config.ping_interval
        self._next_ping_at = now + self._interval
        self._recompute()

    @property
    def config(self) -> DetectorConfig:
        """The bounds in force."""
        return self._config

    def reconfigure(self, config: DetectorConfig, *, now: float) -> None:
        """Take new bounds: the window and interval are recomputed at once.

        The measured RTTs are kept unless *rtt_samples* changed. If no ping
        is outstanding, the next one is due no later than one new interval
        from *now*; an outstanding ping keeps its anchor but gets the new
        window.
        """
        old = self._config
        self._config = config
        if config.rtt_samples != old.rtt_samples:
            rtts = SlidingQuantiles(config.rtt_samples)
            for value in self._rtts.values()[-config.rtt_samples :]:
                rtts.add(value)
            self._rtts = rtts
        self._recompute()
        if self._ping_sent_at is None:
            self._next_ping_at = min(self._next_ping_at, now + self._interval)

    @property
    def window(self) -> float:
        """The current pong window, in seconds, within [min_window, ping_timeout]."""
        return self._window

    @property
    def interval(self) -> float:
        """The current ping interval, in seconds, within [min_interval, max_interval]."""
        return self._interval

    @property
    def health(self) -> float:
        """The health score in [0, 1] (see :mod:`trioheart.health`)."""
        return self._health

    @property
    def ping_outstanding(self) -> bool:
        """Whether a ping is waiting for its pong."""
        return self._ping_sent_at is not None

    @property
    def ping_id(self) -> int:
        """The id of the most recent ping; the caller puts it in the payload."""
        return self._ping_id

    def deadline(self) -> float | None:
        """The conviction deadline of the outstanding ping, or ``None``."""
        sent = self._ping_sent_at
        if sent is None:
            return None
        anchor = sent if sent > self._activity_at else self._activity_at
        due = anchor + self._window + self._shift
        return due if due > self._not_before else self._not_before

    def wake_at(self) -> float:
        """The time at which :meth:`poll` must be called at the latest."""
        sent = self._ping_sent_at
        if sent is None:
            return self._next_ping_at
        anchor = sent if sent > self._activity_at else self._activity_at
        due = anchor + self._window + self._shift
        return due if due > self._not_before else self._not_before

    def poll(self, now: float) -> Action | None:
        """What to do at *now*: ping, convict, or nothing.

        With stall compensation, a poll that comes more than
        *stall_threshold* after :meth:`wake_at` for an outstanding ping is
        taken as a local stall from :meth:`wake_at` to *now* (the caller was
        asleep when it should have been awake), and the peer gets
        *stall_grace* more to be heard instead of a conviction. After the
        first time for a ping, only a poll more than *stall_grace* late
        counts, so a caller that is always a little late still convicts.
        """
        if self._ping_sent_at is None:
            return Action.SEND_PING if now >= self._next_ping_at else None
        due = self.wake_at()
        if now < due:
            return None
        config = self._config
        threshold = config.stall_threshold
        if self._graced and threshold < config.stall_grace:
            threshold = config.stall_grace
        if config.stall_compensation and now - due > threshold:
            # We were asleep when we should have been awake: whatever the
            # peer sent meanwhile waits unread in our socket buffer, and the
            # stall monitor may not have reported yet. Treat it as a stall
            # and give the peer one more chance. After the first time for
            # this ping, only a lateness beyond stall_grace counts, so a
            # caller that is always a little late still convicts.
            self._graced = True
            self._late_polls += 1
            self._stall(now, now - due, counted=False)
            if now < self.wake_at():
                return None
        return Action.CONVICT

    def on_ping_sent(self, now: float) -> int:
        """Report that a ping was sent at *now*. Returns its id.

        If a ping was still outstanding, it is abandoned: its pong will no
        longer count (its id no longer matches).
        """
        self._ping_id += 1
        self._pings_sent += 1
        self._ping_sent_at = now
        self._shift = 0.0
        self._ping_stall = 0.0
        self._graced = False
        return self._ping_id

    def on_pong(self, now: float, ping_id: int) -> float | None:
        """Report a pong carrying *ping_id*. Returns the RTT sample, if it answered.

        The RTT sample excludes the local stall time reported while the
        ping was outstanding (the pong sat in our socket buffer, not on the
        path). A pong that does not answer the outstanding ping still counts
        as activity.
        """
        if now > self._activity_at:
            self._activity_at = now
        sent = self._ping_sent_at
        if sent is None or ping_id != self._ping_id:
            return None
        rtt = now - sent - self._ping_stall
        if rtt < 0.0:
            rtt = 0.0
        self._ping_sent_at = None
        self._pongs_received += 1
        self._last_rtt = rtt
        qhi = self._qhi
        # Late: beyond the quantile by at least one retransmission timeout.
        late = qhi == qhi and rtt > qhi + self._rto
        if late:
            self._late_pongs += 1
            self._late += GAIN * (1.0 - self._late)
        else:
            self._late -= GAIN * self._late
        last = self._last_pong_at
        if last is not None:
            gap = now - last
            irr = abs(gap - self._interval) / self._interval
            self._irregularity += GAIN * ((irr if irr < 1.0 else 1.0) - self._irregularity)
        self._last_pong_at = now
        self._rtts.add(rtt)
        self._recompute()
        self._next_ping_at = sent + self._interval
        return rtt

    def on_activity(self, now: float) -> None:
        """Report any inbound frame at *now*: a sign of life.

        While a ping is outstanding, its deadline restarts from *now*
        (stalls before *now* no longer count towards it).
        """
        if now > self._activity_at:
            self._activity_at = now
            self._shift = 0.0

    def on_local_stall(self, now: float, lag: float) -> None:
        """Report that this process's event loop stalled for *lag* seconds up to *now*.

        The part of ``[now - lag, now]`` that overlaps the running deadline
        and was not accounted for yet extends it; no conviction happens
        before ``now + stall_grace``. Non-positive or non-finite *lag*
        values are ignored.
        """
        if not 0.0 < lag < math.inf:
            return
        self._stall(now, lag, counted=True)

    def _stall(self, now: float, lag: float, *, counted: bool) -> None:
        if counted:
            self._stall_count += 1
            self._stall_total += lag
            if lag > self._stall_max:
                self._stall_max = lag
        sent = self._ping_sent_at
        if sent is None or not self._config.stall_compensation:
            return
        anchor = sent if sent > self._activity_at else self._activity_at
        start = now - lag
        if start < anchor:
            start = anchor
        if start < self._stalled_until:
            start = self._stalled_until
        overlap = now - start
        if overlap <= 0.0:
            return
        self._shift += overlap
        self._ping_stall += overlap
        self._stall_extension += overlap
        self._stalled_until = now
        grace = now + self._config.stall_grace
        if grace > self._not_before:
            self._not_before = grace

    def _recompute(self) -> None:
        """Recompute quantiles, window, health and interval from the samples."""
        config = self._config
        rtts = self._rtts
        if len(rtts):
            q25, q50, q75, qhi, srtt = rtts.summary(config.rtt_quantile)
            jitter = qhi - q50
            # Linux: RTO = SRTT + max(TCP_RTO_MIN, 4 * mdev). SRTT is a mean:
            # here the mean of the samples up to q_hi, so that pongs delayed
            # by retransmissions (TCP leaves them out: Karn's rule) do not
            # count; mdev of a normal is 0.59 times its interquartile range.
            mdev4 = 2.36 * (q75 - q25)
            self._rto = srtt + (mdev4 if mdev4 > config.rto_min else config.rto_min)
            self._q50 = q50
            self._qhi = qhi
            self._jitter = jitter
        health = score(
            late=self._late, irregularity=self._irregularity, rtt_p50=self._q50, rtt_hi=self._qhi
        )
        self._health = health
        if not config.adaptive:
            self._window = config.ping_timeout
            self._interval = config.ping_interval
            return
        if len(rtts) < MIN_RTT_SAMPLES:
            window = config.ping_timeout
        else:
            window = (
                self._qhi
                + config.jitter_factor * self._jitter
                + self._rto * (2.0**config.loss_allowance - 1.0)
            )
            if window > config.ping_timeout:
                window = config.ping_timeout
            if window < config.min_window:
                window = config.min_window
        self._window = window
        if config.min_interval == config.max_interval:
            self._interval = config.ping_interval
        else:
            self._interval = interval_for(
                health,
                ping_interval=config.ping_interval,
                min_interval=config.min_interval,
                max_interval=config.max_interval,
                idle_timeout=config.idle_timeout,
            )

    def statistics(self) -> DetectorStatistics:
        """A snapshot of the counters, the RTT estimate and the current window."""
        have = len(self._rtts) > 0
        return DetectorStatistics(
            pings_sent=self._pings_sent,
            pongs_received=self._pongs_received,
            last_rtt=self._last_rtt,
            rtt_p50=self._q50 if have else None,
            rtt_p99=self._rtts.quantile(0.99) if have else None,
            window=self._window,
            interval=self._interval,
            health=self._health,
            rtt_quantile=self._qhi if have else None,
            jitter=self._jitter if have else None,
            rto=self._rto if have else None,
            late_pongs=self._late_pongs,
            local_stalls=self._stall_count,
            local_stall_total=self._stall_total,
            local_stall_max=self._stall_max,
            stall_extension_total=self._stall_extension,
            late_polls=self._late_polls,
        )
