"""The health score of one connection and the ping interval it implies, pure.

A score is a number in [0, 1]: 1 is a steady, fast path that answers every
ping on time; 0 is a path that misses or delays every pong. It is built
from four *penalties*, each in [0, 1] and each weighted:

========================  =======  ==============================================
penalty                   weight   value
========================  =======  ==============================================
``late`` (missed, late)   0.50     EWMA of 1 per missed or late pong, 0 per
                                   pong within its expected time
``irregularity``          0.20     EWMA of ``min(1, |gap - interval| / interval)``
                                   over gaps between pong arrivals
``spread``                0.15     ``(rtt_hi - rtt_p50) / rtt_hi`` (0 if no RTT)
``level``                 0.15     ``rtt_p50 / (rtt_p50 + LEVEL_REFERENCE)``
========================  =======  ==============================================

``score = 1 - sum(weight * penalty)``, so it stays in [0, 1] whatever the
inputs (each penalty is clipped to [0, 1] and the weights add up to 1).
A missed pong pushes ``late`` towards 1 and changes nothing else, so it can
never raise the score.

:func:`interval_for` maps the score to a ping interval, piecewise linearly:
score 0 gives *min_interval*, :data:`STEADY_SCORE` gives *ping_interval*,
and 1 gives *max_interval*; the result never exceeds half the path's idle
timeout (so NAT and load-balancer mappings stay alive) and always lies in
[*min_interval*, *max_interval*]. A shaky connection is probed more often,
a steady one less.
"""

from __future__ import annotations

from typing import Final, final

import attrs

__all__ = [
    "LATE_WEIGHT",
    "LEVEL_REFERENCE",
    "STEADY_SCORE",
    "HealthScore",
    "interval_for",
    "score",
]

#: Weight of the missed/late penalty.
LATE_WEIGHT: Final = 0.50
#: Weight of the irregularity penalty.
IRREGULARITY_WEIGHT: Final = 0.20
#: Weight of the RTT spread penalty.
SPREAD_WEIGHT: Final = 0.15
#: Weight of the RTT level penalty.
LEVEL_WEIGHT: Final = 0.15
#: The RTT, in seconds, at which the level penalty is one half.
LEVEL_REFERENCE: Final = 1.0
#: The score at which :func:`interval_for` answers the configured base interval.
STEADY_SCORE: Final = 0.8
#: The EWMA gain of the late and irregularity penalties (one sample moves
#: them by a quarter of the way).
GAIN: Final = 0.25


def _clip(value: float) -> float:
    # NaN compares false both ways and ends up 0.0: no input can leave [0, 1].
    if value >= 1.0:
        return 1.0
    if value > 0.0:
        return value
    return 0.0


def score(*, late: float, irregularity: float, rtt_p50: float, rtt_hi: float) -> float:
    """The health score in [0, 1] from its four inputs.

    Args:
      late: The missed/late EWMA, in [0, 1].
      irregularity: The pong-gap irregularity EWMA, in [0, 1].
      rtt_p50: The median RTT, in seconds (NaN if unknown: no penalty).
      rtt_hi: The high RTT quantile the window uses, in seconds.

    Returns:
      ``1 - (0.5 late + 0.2 irregularity + 0.15 spread + 0.15 level)``,
      with every penalty clipped to [0, 1].
    """
    spread = _clip((rtt_hi - rtt_p50) / rtt_hi) if rtt_hi > 0.0 else 0.0
    level = _clip(rtt_p50 / (rtt_p50 + LEVEL_REFERENCE)) if rtt_p50 > 0.0 else 0.0
    penalty = (
        LATE_WEIGHT * _clip(late)
        + IRREGULARITY_WEIGHT * _clip(irregularity)
        + SPREAD_WEIGHT * spread
        + LEVEL_WEIGHT * level
    )
    return _clip(1.0 - penalty)


def interval_for(
    health: float,
    *,
    ping_interval: float,
    min_interval: float,
    max_interval: float,
    idle_timeout: float | None = None,
) -> float:
    """The ping interval for a connection of this *health*.

    Args:
      health: The score, in [0, 1] (clipped).
      ping_interval: The base interval, answered at :data:`STEADY_SCORE`.
      min_interval: Answered at score 0.
      max_interval: Answered at score 1.
      idle_timeout: The smallest idle timeout on the path, if known.

    Returns:
      The interval, in [*min_interval*, *max_interval*] and at most
      ``idle_timeout / 2``.
    """
    h = _clip(health)
    if h >= STEADY_SCORE:
        interval = ping_interval + (max_interval - ping_interval) * (h - STEADY_SCORE) / (
            1.0 - STEADY_SCORE
        )
    else:
        interval = min_interval + (ping_interval - min_interval) * h / STEADY_SCORE
    if idle_timeout is not None and interval > idle_timeout / 2:
        interval = idle_timeout / 2
    if interval > max_interval:
        interval = max_interval
    if interval < min_interval:
        interval = min_interval
    return interval


@final
@attrs.frozen(kw_only=True)
class HealthScore:
    """An immutable health score, updated by returning a new one.

    The :class:`~trioheart.LivenessDetector` keeps the same inputs in its
    own slots for speed and calls :func:`score`; this class is the same
    model for callers that want to score pongs they track themselves.
    """

    #: The missed/late EWMA, in [0, 1].
    late: float = 0.0
    #: The irregularity EWMA, in [0, 1].
    irregularity: float = 0.0
    #: The median RTT, in seconds (0 if unknown).
    rtt_p50: float = 0.0
    #: The high RTT quantile, in seconds (0 if unknown).
    rtt_hi: float = 0.0

    @property
    def value(self) -> float:
        """The score, in [0, 1]."""
        return score(
            late=self.late,
            irregularity=self.irregularity,
            rtt_p50=self.rtt_p50,
            rtt_hi=self.rtt_hi,
        )

    def with_pong(self, *, late: bool, irregularity: float | None = None) -> HealthScore:
        """The score after a pong; *late* if it came later than expected.

        Args:
          late: Whether the pong came later than the window's RTT quantile
            plus one retransmission timeout.
          irregularity: This pong's gap irregularity in [0, 1], if known.
        """
        irr = self.irregularity
        if irregularity is not None:
            irr += GAIN * (_clip(irregularity) - irr)
        return attrs.evolve(
            self, late=self.late + GAIN * ((1.0 if late else 0.0) - self.late), irregularity=irr
        )

    def with_missed_pong(self) -> HealthScore:
        """The score after a pong that never came: never higher than before."""
        return attrs.evolve(self, late=self.late + GAIN * (1.0 - self.late))

    def with_rtts(self, *, rtt_p50: float, rtt_hi: float) -> HealthScore:
        """The score with new RTT quantiles (seconds)."""
        return attrs.evolve(self, rtt_p50=rtt_p50, rtt_hi=rtt_hi)
