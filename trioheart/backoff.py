"""Reconnect timing: exponential backoff with jitter, and the server's drain hint. Sans-IO.

When a server drops thousands of clients at once, the clients must not come
back at once. AWS's "Exponential Backoff And Jitter" study is the anchor:
with ``v = min(cap, base * factor ** n)`` for the ``n``-th retry,

================ ======================================
``none``         ``v``
``equal``        ``v / 2 + U(0, v / 2)``
``full``         ``U(0, v)``
``decorrelated`` ``min(cap, U(base, 3 * previous))``
================ ======================================

and full (or decorrelated) jitter spreads a herd best. :class:`Backoff` is
the validated policy, :class:`Retrier` the per-disconnect state that turns
it into delays and gives up after *max_attempts* or past a *deadline*.

A server that is going away can do better than let clients guess: it puts a
:class:`RetryWindow` in the close frame (``server_shutdown;
retry=0.5..30.0``), and each client reconnects at a time drawn uniformly
from it, so the herd arrives at a rate the server chose.

Randomness always comes from a :class:`random.Random` the caller passes, so
a test or a benchmark seeds it and gets the same delays every run.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from typing import Any, Final, final

import attrs

from .errors import ConfigError
from .reasons import CloseReason

__all__ = ["Backoff", "Jitter", "Retrier", "RetryWindow"]

#: The multiplier of decorrelated jitter, as in the AWS study.
DECORRELATED_MULTIPLIER: Final = 3.0
#: The longest retry window a server may suggest, in seconds (one hour).
MAX_RETRY_WINDOW: Final = 3600.0
_CLOSE_TEXT_MAX: Final = 123  # bytes of reason text a close frame can carry


class Jitter(enum.StrEnum):
    """How a delay is randomised around the exponential curve."""

    #: No randomness, ``v``. Every client of a herd comes back together.
    NONE = "none"
    #: Half the curve plus up to half again, ``v / 2 + U(0, v / 2)``.
    EQUAL = "equal"
    #: Anywhere up to the curve, ``U(0, v)``. The AWS study's choice, and our default.
    FULL = "full"
    #: Grows from the previous delay, not the attempt, ``min(cap, U(base, 3 * previous))``.
    DECORRELATED = "decorrelated"


def _seconds(field: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field} must be a finite number of seconds; got {value!r}")
    ok = (0 <= value if allow_zero else 0 < value) and value < math.inf
    if not ok:  # NaN fails this too
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{field} must be a {kind}, finite number of seconds; got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float (JSON allows it)
        raise ConfigError(
            f"{field} must be a finite number of seconds; got an integer of "
            f"{len(str(abs(value)))} digits"
        ) from None


def _positive_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _seconds(attribute.name, value)


def _optional_positive_seconds(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None:
        _seconds(attribute.name, value)


def _factor(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value < math.inf:
        raise ConfigError(f"{attribute.name} must be a finite number >= 1; got {value!r}")


def _optional_positive_int(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{attribute.name} must be a positive integer or None; got {value!r}")


def _to_jitter(value: object) -> Jitter:
    try:
        return Jitter(value)  # type: ignore[arg-type]  # a wrong type is caught below
    except (ValueError, TypeError):
        choices = ", ".join(j.value for j in Jitter)
        raise ConfigError(f"jitter must be one of {choices}; got {value!r}") from None


@final
@attrs.frozen(kw_only=True)
class Backoff:
    """A reconnect policy: how long to wait before each retry, and when to stop.

    All durations are float seconds.

    Args:
      base: The first step of the curve (and the floor of decorrelated jitter).
      cap: No delay is longer than this.
      factor: The curve grows by this per attempt (``>= 1``). Decorrelated
        jitter ignores it and grows by up to 3x the previous delay, as in the
        AWS study.
      jitter: A :class:`Jitter` (or its value, e.g. ``"full"``).
      max_attempts: Give up after this many retries (``None``: never).
      deadline: Give up rather than start a retry more than this many seconds
        after the first failure (``None``: never).

    Raises:
      ConfigError: naming the field and the value, for a non-positive,
        non-finite or inconsistent value (``cap < base``, ``factor < 1``).
    """

    base: float = attrs.field(default=0.5, validator=_positive_seconds)
    cap: float = attrs.field(default=30.0, validator=_positive_seconds)
    factor: float = attrs.field(default=2.0, validator=_factor)
    jitter: Jitter = attrs.field(default=Jitter.FULL, converter=_to_jitter)
    max_attempts: int | None = attrs.field(default=None, validator=_optional_positive_int)
    deadline: float | None = attrs.field(default=None, validator=_optional_positive_seconds)

    def __attrs_post_init__(self) -> None:
        if self.cap < self.base:
            raise ConfigError(
                f"cap must not be below base; got cap={self.cap!r} < base={self.base!r}"
            )

    def ceiling(self, attempt: int) -> float:
        """``min(cap, base * factor ** attempt)``, without overflow for any *attempt*.

        Raises:
          ConfigError: if *attempt* is negative.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ConfigError(f"attempt must be a non-negative integer; got {attempt!r}")
        if self.factor > 1:
            # base * factor**n >= cap  <=>  n >= log(cap / base) / log(factor); an int
            # compared with a float is exact and never overflows.
            if attempt >= math.log(self.cap / self.base) / math.log(self.factor):
                return self.cap
            return min(self.cap, self.base * self.factor**attempt)
        return self.base

    def delay(self, attempt: int, rng: random.Random, *, previous: float | None = None) -> float:
        """The delay before retry number *attempt* (0 for the first retry).

        Args:
          attempt: How many retries came before this one.
          rng: The source of randomness (seed it in tests).
          previous: The previous delay, for decorrelated jitter (defaults to
            *base*); the other kinds ignore it.

        Returns:
          A delay in ``[0, cap]``: exactly ``ceiling(attempt)`` for no jitter,
          in ``[v / 2, v]`` for equal, ``[0, v]`` for full, and
          ``[base, min(cap, 3 * previous)]`` for decorrelated.
        """
        v = self.ceiling(attempt)
        if self.jitter is Jitter.NONE:
            return v
        if self.jitter is Jitter.FULL:
            return min(v, rng.uniform(0.0, v))
        if self.jitter is Jitter.EQUAL:
            return min(v, v / 2 + rng.uniform(0.0, v / 2))
        prev = self.base if previous is None else max(self.base, previous)
        high = min(self.cap, DECORRELATED_MULTIPLIER * prev)
        return min(high, max(self.base, rng.uniform(self.base, high)))

    def retrier(self, *, rng: random.Random, now: float) -> Retrier:
        """A :class:`Retrier` for a connection that failed at *now*."""
        return Retrier(self, rng=rng, now=now)


@final
class Retrier:
    """The retries after one disconnect: delays from a :class:`Backoff`, then give up.

    Make one when a connection is lost (or a first connect fails); ask
    :meth:`next_delay` after each failure; drop it once a connection works.

    Args:
      policy: The backoff policy.
      rng: The source of randomness.
      now: When the first failure happened (the deadline counts from here).
    """

    __slots__ = ("_attempts", "_policy", "_previous", "_rng", "_started_at")

    def __init__(self, policy: Backoff, *, rng: random.Random, now: float) -> None:
        self._policy = policy
        self._rng = rng
        self._started_at = _finite(now)
        self._attempts = 0
        self._previous: float | None = None

    @property
    def attempts(self) -> int:
        """How many retries were scheduled so far."""
        return self._attempts

    @property
    def started_at(self) -> float:
        """When the first failure happened."""
        return self._started_at

    @property
    def give_up_at(self) -> float | None:
        """No retry starts after this time; ``None`` when there is no deadline."""
        deadline = self._policy.deadline
        return None if deadline is None else self._started_at + deadline

    def next_delay(self, *, now: float, window: RetryWindow | None = None) -> float | None:
        """How long to wait, from *now*, before the next retry; ``None`` to give up.

        Args:
          now: The current time (a failure just happened).
          window: A server's drain hint; when given, the delay is drawn
            uniformly from it instead of from the backoff curve.

        Returns:
          The delay, or ``None`` once *max_attempts* retries were scheduled
          or when the retry would start after the deadline.
        """
        now = _finite(now)
        policy = self._policy
        if policy.max_attempts is not None and self._attempts >= policy.max_attempts:
            return None
        if window is not None:
            delay = window.choose(self._rng)
        else:
            delay = policy.delay(self._attempts, self._rng, previous=self._previous)
        give_up_at = self.give_up_at
        if give_up_at is not None and now + delay > give_up_at:
            return None
        self._attempts += 1
        self._previous = delay
        return delay


def _finite(now: object) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ConfigError(f"now must be a finite number of seconds; got {now!r}")
    return float(now)


@final
@attrs.frozen(kw_only=True)
class RetryWindow:
    """A server's hint: "come back between *earliest* and *latest* seconds from now".

    Each client draws its reconnect time uniformly from the window
    (:meth:`choose`), so N clients arrive at about ``N / (latest -
    earliest)`` per second. It travels in the close frame's reason text
    (:meth:`close_text`, e.g. ``server_shutdown; retry=0.5..30.0``) and,
    for clients that only see messages, in a ``{"type": "drain"}`` message
    (:meth:`message`).

    Args:
      earliest: Seconds from receipt before which the client should not come back.
      latest: Seconds from receipt by which it should have come back; at
        most :data:`MAX_RETRY_WINDOW`.

    Raises:
      ConfigError: for negative or non-finite values, ``latest < earliest``,
        or ``latest`` above an hour.
    """

    earliest: float = attrs.field()
    latest: float = attrs.field()

    @earliest.validator
    def _check_earliest(self, attribute: attrs.Attribute[float], value: float) -> None:
        _seconds("earliest", value, allow_zero=True)

    @latest.validator
    def _check_latest(self, attribute: attrs.Attribute[float], value: float) -> None:
        _seconds("latest", value, allow_zero=True)
        if value < self.earliest:
            raise ConfigError(
                f"latest must not be before earliest; got latest={value!r} < "
                f"earliest={self.earliest!r}"
            )
        if value > MAX_RETRY_WINDOW:
            raise ConfigError(f"latest must be at most {MAX_RETRY_WINDOW} seconds; got {value!r}")

    @classmethod
    def spread(cls, *, clients: int, rate: float, earliest: float = 0.0) -> RetryWindow:
        """A window wide enough that *clients* arrive at about *rate* per second.

        Args:
          clients: How many clients are being sent away.
          rate: The reconnects per second the server wants to accept at most.
          earliest: When the window opens.

        Raises:
          ConfigError: for a negative *clients*, a non-positive *rate*, or a
            window that would be longer than :data:`MAX_RETRY_WINDOW`.
        """
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 0:
            raise ConfigError(f"clients must be a non-negative integer; got {clients!r}")
        rate = _seconds("rate", rate)
        start = _seconds("earliest", earliest, allow_zero=True)
        return cls(earliest=start, latest=start + clients / rate)

    def choose(self, rng: random.Random) -> float:
        """A reconnect delay drawn uniformly from ``[earliest, latest]``."""
        return min(self.latest, max(self.earliest, rng.uniform(self.earliest, self.latest)))

    def close_text(self, reason: CloseReason = CloseReason.SERVER_SHUTDOWN) -> str:
        """The close frame's reason text: ``"<reason>; retry=<earliest>..<latest>"``.

        Always fits the 123 bytes a close frame allows.
        """
        text = f"{reason.value}; retry={self.earliest!r}..{self.latest!r}"
        assert len(text.encode()) <= _CLOSE_TEXT_MAX, text
        return text

    @classmethod
    def from_close_text(cls, text: str) -> RetryWindow | None:
        """The window in a close frame's reason text, or ``None`` if it has none (or a bad one)."""
        for part in text.split(";")[1:]:
            key, sep, value = part.strip().partition("=")
            if key != "retry" or not sep:
                continue
            low, sep, high = value.partition("..")
            try:
                return cls(earliest=float(low), latest=float(high)) if sep else None
            except (ValueError, ConfigError):
                return None
        return None

    def message(self) -> dict[str, Any]:
        """The ``{"type": "drain", "retry": [earliest, latest]}`` message."""
        return {"type": "drain", "retry": [self.earliest, self.latest]}

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> RetryWindow | None:
        """The window in a ``drain`` message, or ``None`` if it is not one (or a bad one)."""
        if message.get("type") != "drain":
            return None
        retry = message.get("retry")
        if not isinstance(retry, list) or len(retry) != 2:
            return None
        try:
            return cls(earliest=retry[0], latest=retry[1])
        except ConfigError:
            return None
