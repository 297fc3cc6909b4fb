"""Admission limits for a server, sans-IO: how many, from where, how fast.

A public chat server must refuse work before it costs anything. Each limit
here has a named :class:`~trioheart.CloseReason` and is counted in
``trioheart_connections_closed_total{reason=...}`` when it refuses a
connection:

* ``max_connections``: ``connection_limit``, HTTP 503;
* ``max_connections_per_address``: ``address_limit``, HTTP 429;
* ``handshake_rate`` and ``handshake_burst``: ``rate_limited``, HTTP 429;
* ``allowed_origins``: ``origin_refused``, HTTP 403.

Time is passed in (``now``); nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, final

import attrs

from .errors import ConfigError
from .reasons import CloseReason

__all__ = ["Admission", "ServerLimits", "TokenBucket"]


def _optional_positive_int(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name} must be a whole number >= 1, or None; got {value!r}")


def _optional_positive_rate(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(
            f"{attribute.name} must be a positive, finite number per second, or None; got {value!r}"
        )


def _origins(value: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(
            f"allowed_origins must be a collection of origins, not a string; got {value!r}"
        )
    origins = frozenset(value)
    for origin in origins:
        if not isinstance(origin, str) or not origin or origin != origin.strip():
            raise ConfigError(f"allowed_origins holds a bad origin: {origin!r}")
    return frozenset(origin.lower().rstrip("/") for origin in origins)


@final
@attrs.frozen(kw_only=True)
class ServerLimits:
    """What a server admits. ``None`` means no limit.

    Args:
      max_connections: Open connections (handshakes in progress included).
      max_connections_per_address: The same, per client IP address.
      handshake_rate: New connections accepted per second, on average.
      handshake_burst: How many may come at once above that rate.
      allowed_origins: The ``Origin`` headers a WebSocket handshake may
        carry (e.g. ``{"https://chat.example.com"}``); a handshake with
        another origin is refused. A handshake without ``Origin`` (not from
        a browser) is admitted. ``None`` admits every origin.

    Raises:
      ConfigError: naming the field and the value.
    """

    max_connections: int | None = attrs.field(default=None, validator=_optional_positive_int)
    max_connections_per_address: int | None = attrs.field(
        default=None, validator=_optional_positive_int
    )
    handshake_rate: float | None = attrs.field(default=None, validator=_optional_positive_rate)
    handshake_burst: int = attrs.field(default=100, validator=_optional_positive_int)
    allowed_origins: frozenset[str] | None = attrs.field(default=None, converter=_origins)


@final
class TokenBucket:
    """A token bucket: *rate* tokens per second, at most *burst* saved up.

    Args:
      rate: Tokens added per second.
      burst: The bucket's size; it starts full.
      now: The current time.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, *, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Take one token at *now* if there is one."""
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next token, from the last time seen."""
        return max(0.0, (1.0 - self._tokens) / self._rate)


@final
class Admission:
    """Decides whether to admit a new connection, and counts the admitted.

    The caller calls :meth:`admit` when a socket is accepted and
    :meth:`release` when it is gone (whatever happened), and
    :meth:`check_origin` once the handshake's ``Origin`` is known.
    """

    __slots__ = ("_bucket", "_by_address", "_limits", "_open")

    def __init__(self, limits: ServerLimits, *, now: float) -> None:
        self._limits = limits
        self._open = 0
        self._by_address: dict[str, int] = {}
        self._bucket = (
            TokenBucket(limits.handshake_rate, limits.handshake_burst, now=now)
            if limits.handshake_rate is not None
            else None
        )

    @property
    def open(self) -> int:
        """Connections admitted and not yet released."""
        return self._open

    def admit(self, address: str, *, now: float) -> CloseReason | None:
        """Admit a connection from *address* at *now*, or say which limit refuses it.

        An admitted connection must be released; a refused one must not.
        """
        limits = self._limits
        if limits.max_connections is not None and self._open >= limits.max_connections:
            return CloseReason.CONNECTION_LIMIT
        per_address = self._by_address.get(address, 0)
        if (
            limits.max_connections_per_address is not None
            and per_address >= limits.max_connections_per_address
        ):
            return CloseReason.ADDRESS_LIMIT
        if self._bucket is not None and not self._bucket.take(now):
            return CloseReason.RATE_LIMITED
        self._open += 1
        self._by_address[address] = per_address + 1
        return None

    def release(self, address: str) -> None:
        """Forget one admitted connection from *address*."""
        count = self._by_address.get(address, 0)
        if count <= 0:
            raise ValueError(f"no admitted connection from {address!r} to release")
        if count == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = count - 1
        self._open -= 1

    def check_origin(self, origin: str | None) -> CloseReason | None:
        """``origin_refused`` if *origin* is not allowed, else ``None``."""
        allowed = self._limits.allowed_origins
        if allowed is None or origin is None:
            return None
        return None if origin.lower().rstrip("/") in allowed else CloseReason.ORIGIN_REFUSED

    def retry_after(self) -> float:
        """Seconds until the rate limit admits again (0 without one)."""
        return self._bucket.retry_after() if self._bucket is not None else 0.0
