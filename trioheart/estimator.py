"""A bounded-memory streaming quantile estimator for RTT samples, sans-IO.

:class:`SlidingQuantiles` keeps the last *size* samples twice: once in
arrival order (a ring, so the oldest can be dropped) and once sorted (so a
quantile is one index lookup). Adding a sample is a binary search plus a
``memmove`` of at most *size* doubles, done in C by :mod:`bisect` and
:mod:`array`; reading a quantile is O(1).

Why this and not a sketch:

* **It forgets.** A path's RTT changes (Wi-Fi to LTE, a congested hour);
  the window must follow within *size* samples. P² (Jain & Chlamtac) and
  DDSketch summarise the whole history unless one adds decay, and a decayed
  sketch answers with a bucket's relative error (DDSketch: 1 % at best)
  where this answers an exact order statistic of the recent samples.
* **It is small and exact where it matters.** 64 doubles in two
  ``array('d')`` are about 1.2 KB; the high quantile of 64 recent samples is
  as precise as that many samples allow, with no bucket rounding.
* **It is cheap in CPython.** About a microsecond per sample, no
  dependency; the ``ddsketch`` package is pure Python, keeps a dict of
  buckets, and costs several microseconds per sample and query.

Quantiles are order statistics: ``quantile(q)`` returns the smallest kept
sample ``x`` such that at least a fraction *q* of the kept samples are
``<= x`` (the "inverted CDF" definition, NumPy's ``method="inverted_cdf"``).
So the value returned for *q* is never below the empirical *q*-quantile of
the kept samples, which is what the detector's window claims.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Final, final

__all__ = ["SlidingQuantiles"]

#: The smallest and largest sample count a :class:`SlidingQuantiles` accepts.
MIN_SIZE: Final = 2
MAX_SIZE: Final = 4096


@final
class SlidingQuantiles:
    """Exact quantiles of the last *size* samples, in bounded memory.

    Args:
      size: How many recent samples to keep (2 to 4096).

    Raises:
      ValueError: if *size* is out of range.
    """

    __slots__ = ("_next", "_ring", "_size", "_sorted")

    def __init__(self, size: int = 64) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}]; got {size!r}")
        self._size = size
        self._ring = array("d")
        self._sorted = array("d")
        self._next = 0

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def size(self) -> int:
        """How many samples are kept at most."""
        return self._size

    def add(self, value: float) -> None:
        """Add one sample, dropping the oldest if *size* are kept already.

        Raises:
          ValueError: if *value* is NaN (it would corrupt the order).
        """
        if value != value:  # NaN; cheaper than math.isnan in the hot path
            raise ValueError("a sample must not be NaN")
        ring = self._ring
        if len(ring) < self._size:
            ring.append(value)
        else:
            index = self._next
            old = ring[index]
            ring[index] = value
            self._next = index + 1 if index + 1 < self._size else 0
            srt = self._sorted
            del srt[bisect_left(srt, old)]
        insort(self._sorted, value)

    def quantile(self, q: float) -> float:
        """The smallest kept sample with at least a fraction *q* of samples at or below it.

        Args:
          q: The quantile, in [0, 1].

        Returns:
          The order statistic, or NaN when no sample was added yet.
        """
        srt = self._sorted
        n = len(srt)
        if n == 0:
            return math.nan
        index = math.ceil(q * n) - 1
        if index < 0:
            index = 0
        elif index >= n:
            index = n - 1
        return srt[index]

    def mean_up_to(self, q: float) -> float:
        """The mean of the kept samples up to the *q*-quantile (a trimmed mean).

        Returns:
          The mean of the smallest ``ceil(q * n)`` samples (at least one),
          or NaN when no sample was added yet.
        """
        srt = self._sorted
        n = len(srt)
        if n == 0:
            return math.nan
        count = math.ceil(q * n)
        if count < 1:
            count = 1
        elif count > n:
            count = n
        return _bounded_mean(srt, count)

    def summary(self, q: float) -> tuple[float, float, float, float, float]:
        """``(q_25, q_50, q_75, q_q, mean up to q_q)`` in one call (the detector's hot path).

        The same values as :meth:`quantile` and :meth:`mean_up_to` give;
        all NaN when no sample was added yet.
        """
        srt = self._sorted
        n = len(srt)
        if n == 0:
            nan = math.nan
            return nan, nan, nan, nan, nan
        last = n - 1
        i25 = math.ceil(0.25 * n) - 1
        i50 = math.ceil(0.5 * n) - 1
        i75 = math.ceil(0.75 * n) - 1
        count = math.ceil(q * n)
        if count < 1:
            count = 1
        elif count > n:
            count = n
        return (
            srt[i25 if i25 > 0 else 0],
            srt[i50 if i50 > 0 else 0],
            srt[i75 if i75 < last else last],
            srt[count - 1],
            _bounded_mean(srt, count),
        )

    def values(self) -> list[float]:
        """The kept samples, oldest first (a copy)."""
        if len(self._ring) < self._size:
            return list(self._ring)
        return list(self._ring[self._next :]) + list(self._ring[: self._next])


def _bounded_mean(srt: Sequence[float], count: int) -> float:
    """The mean of the *count* smallest of *srt*, kept within their range.

    A float sum divided by the count can land a rounding step outside
    ``[srt[0], srt[count - 1]]`` (three samples of 0.025 average to
    0.025000000000000005); clamping keeps the documented bound exact.
    """
    mean = sum(srt[:count]) / count
    low, high = srt[0], srt[count - 1]
    return low if mean < low else high if mean > high else mean
