"""Event-loop stall monitor: a Trio Instrument that notices when this process froze.

A stall is time during which Trio could not run anything else: a task step
that held the loop (a GIL-holding call, a blocking call, a long full GC),
or an I/O wait that returned much later than asked (the process was stopped
or descheduled). While it lasts, no pong can be read and no deadline can be
checked, so every connection's detector would blame its peer for our own
pause. :class:`StallMonitor` measures stalls and tells its subscribers
(typically :meth:`trioheart.LivenessDetector.on_local_stall`), logs
``loop.stalled`` (fields ``lag_s`` and ``at``) and counts them.

Why an Instrument and not a lag-sampling task:

* **Order.** The Instrument reports from the scheduler, at the end of the
  batch that stalled (``before_io_wait``) or right after an I/O wait that
  overslept (``after_io_wait``): always *before* the next batch runs, so a
  detector learns of the stall before its heartbeat task can wake up and
  convict. A sampling task wakes in the same batch as the heartbeat task,
  in an order Trio randomises.
* **Cost.** Two hooks per run-loop iteration, a ``perf_counter()`` each,
  and no task: an idle server is not woken up every sampling period, and
  a MockClock test is not forced through every period of virtual time.
* **Resolution.** It sees every stall above the threshold, not only those
  that overlap a sampler's deadline.

Lags are measured on the real clock (:func:`time.perf_counter`), so a
:class:`trio.testing.MockClock` jumping ahead (autojump, or
:meth:`~trio.testing.MockClock.jump`) is never mistaken for a stall, while
a blocking call in a test still is. With Trio's default clock both clocks
run at the same rate; the ``at`` passed to subscribers is
:func:`trio.current_time`, the detector's clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final, final

import attrs
import structlog
import trio

from ..errors import ConfigError

__all__ = ["StallMonitor", "StallStatistics", "StallSubscription", "monitor_stalls"]

#: The default threshold: a batch or an oversleep longer than this is a stall.
DEFAULT_THRESHOLD: Final = 0.05

StallCallback = Callable[[float, float], None]


@final
@attrs.frozen
class StallStatistics:
    """A snapshot of a :class:`StallMonitor`, from :meth:`StallMonitor.statistics`."""

    #: Stalls seen since the monitor was created.
    count: int
    #: Their total duration, in seconds.
    total: float
    #: The longest, in seconds (0 before the first).
    max: float
    #: When the last one ended (:func:`trio.current_time`), or ``None``.
    last_at: float | None
    #: Callbacks currently subscribed.
    subscribers: int
    #: The threshold in force, in seconds.
    threshold: float


@final
class StallSubscription:
    """A subscription to stall reports; closing it (or leaving its ``with``) unsubscribes.

    Entering and leaving the context manager are synchronous, not checkpoints.
    """

    __slots__ = ("_callback", "_monitor")

    def __init__(self, monitor: StallMonitor, callback: StallCallback) -> None:
        self._monitor: StallMonitor | None = monitor
        self._callback = callback

    @property
    def active(self) -> bool:
        """Whether stalls are still reported to the callback."""
        return self._monitor is not None and self in self._monitor._subscribers

    def close(self) -> None:
        """Stop reporting to the callback. Idempotent."""
        if self._monitor is not None:
            self._monitor._subscribers.pop(self, None)
            self._monitor = None

    def __enter__(self) -> StallSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@final
class StallMonitor(trio.abc.Instrument):
    """Measures event-loop stalls and reports each to its subscribers.

    Install it with :func:`monitor_stalls` (or
    :func:`trio.lowlevel.add_instrument`). Subscriber callbacks are called
    as ``callback(at, lag)`` from inside the scheduler, so they must be
    quick and must not touch Trio (no checkpoints, no spawning): pure
    bookkeeping such as :meth:`trioheart.LivenessDetector.on_local_stall`.
    A callback that raises is unsubscribed and logged
    (``loop.stall_subscriber_failed``); the monitor keeps running.

    Args:
      threshold: The shortest stall reported, in seconds.
      logger: A structlog logger; defaults to ``structlog.get_logger("trioheart.loop")``.

    Raises:
      ConfigError: if *threshold* is not a positive, finite number.
    """

    def __init__(self, *, threshold: float = DEFAULT_THRESHOLD, logger: Any = None) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 < threshold < math.inf
        ):
            raise ConfigError(
                f"threshold must be a positive, finite number of seconds; got {threshold!r}"
            )
        self._threshold = float(threshold)
        self._log = logger if logger is not None else structlog.get_logger("trioheart.loop")
        self._subscribers: dict[StallSubscription, None] = {}
        self._batch_started: float | None = None
        self._wait_started = 0.0
        self._wait_timeout = math.inf
        self._count = 0
        self._total = 0.0
        self._max = 0.0
        self._last_at: float | None = None

    @property
    def threshold(self) -> float:
        """The shortest stall reported, in seconds."""
        return self._threshold

    def subscribe(self, callback: StallCallback) -> StallSubscription:
        """Call ``callback(at, lag)`` for every stall from now on.

        Returns:
          The subscription; use it as a context manager or call
          :meth:`~StallSubscription.close` so a finished connection does not
          stay subscribed.
        """
        subscription = StallSubscription(self, callback)
        self._subscribers[subscription] = None
        return subscription

    def statistics(self) -> StallStatistics:
        """Counters since the monitor was created."""
        return StallStatistics(
            count=self._count,
            total=self._total,
            max=self._max,
            last_at=self._last_at,
            subscribers=len(self._subscribers),
            threshold=self._threshold,
        )

    # -- trio.abc.Instrument hooks -----------------------------------------

    def before_io_wait(self, timeout: float) -> None:
        """The batch of tasks is over: was it a stall?"""
        now = time.perf_counter()
        started = self._batch_started
        if started is not None and now - started > self._threshold:
            self._report(now - started)
        self._wait_started = now
        self._wait_timeout = timeout

    def after_io_wait(self, timeout: float) -> None:
        """The I/O wait is over: did it oversleep?"""
        now = time.perf_counter()
        overslept = now - self._wait_started - self._wait_timeout
        if overslept > self._threshold:
            self._report(overslept)
        self._batch_started = now

    # -- reporting ---------------------------------------------------------

    def _report(self, lag: float) -> None:
        at = trio.current_time()
        self._count += 1
        self._total += lag
        if lag > self._max:
            self._max = lag
        self._last_at = at
        self._log.warning("loop.stalled", lag_s=lag, at=at)
        for subscription in list(self._subscribers):
            try:
                subscription._callback(at, lag)
            except Exception as exc:  # a subscriber's bug must not disable the monitor
                subscription.close()
                self._log.error(
                    "loop.stall_subscriber_failed",
                    callback=repr(subscription._callback),
                    error=repr(exc),
                )


@contextmanager
def monitor_stalls(
    *, threshold: float = DEFAULT_THRESHOLD, logger: Any = None
) -> Iterator[StallMonitor]:
    """Install a :class:`StallMonitor` in the running Trio loop for the ``with`` block.

    Entering and leaving are synchronous (not checkpoints). Must be used
    inside :func:`trio.run`.

    Yields:
      The installed monitor; subscribe detectors to it.
    """
    monitor = StallMonitor(threshold=threshold, logger=logger)
    trio.lowlevel.add_instrument(monitor)
    try:
        yield monitor
    finally:
        with suppress(KeyError):  # trio already removed it
            trio.lowlevel.remove_instrument(monitor)
