"""L4 liveness: TCP keepalive and ``TCP_USER_TIMEOUT``, as validated values.

This module only describes and checks the settings; the Trio layer applies
them to each socket before the WebSocket handshake and reads them back
(:class:`AppliedKeepalive`), so what a user sees is what the kernel took.

Linux semantics, which the validation follows:

* ``TCP_KEEPIDLE``: seconds of idleness before the first probe (1..32767);
* ``TCP_KEEPINTVL``: seconds between probes (1..32767);
* ``TCP_KEEPCNT``: unanswered probes before the kernel gives up (1..127);
* ``TCP_USER_TIMEOUT``: milliseconds that sent data (or a probe) may stay
  unacknowledged before the kernel gives up (0 means "the system default").

An idle peer that vanished is noticed after ``idle + interval * count``
seconds; a peer that vanished while data was in flight after
``user_timeout`` seconds. The user timeout must cover the keepalive probing,
or it cuts the probing short (Cloudflare, "When TCP sockets refuse to die").
"""

from __future__ import annotations

import math
from typing import Any, Final, final

import attrs

from .errors import ConfigError

__all__ = ["AppliedKeepalive", "KeepaliveConfig"]

#: The kernel's upper bounds (include/net/tcp.h: MAX_TCP_KEEPIDLE,
#: MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT), and INT_MAX milliseconds.
MAX_KEEPIDLE: Final = 32767
MAX_KEEPINTVL: Final = 32767
MAX_KEEPCNT: Final = 127
MAX_USER_TIMEOUT: Final = (2**31 - 1) / 1000


def _whole_seconds(limit: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value != int(value)
            or not 1 <= value <= limit
        ):
            raise ConfigError(
                f"{attribute.name} must be a whole number of seconds from 1 to {limit} "
                f"(the kernel's limit); got {value!r}"
            )

    return check


def _count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEEPCNT:
        raise ConfigError(
            f"{attribute.name} must be a whole number from 1 to {MAX_KEEPCNT} "
            f"(the kernel's limit); got {value!r}"
        )


def _user_timeout(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0.001 <= value <= MAX_USER_TIMEOUT
    ):
        raise ConfigError(
            f"{attribute.name} must be a number of seconds from 0.001 to {MAX_USER_TIMEOUT} "
            f"(the kernel takes whole milliseconds), or None; got {value!r}"
        )


@final
@attrs.frozen(kw_only=True)
class KeepaliveConfig:
    """TCP keepalive and user-timeout settings for one socket.

    The defaults probe an idle connection after 30 s (under the 60 s idle
    timeout of AWS ALB and nginx), every 10 s, and give up after 3
    unanswered probes: a vanished idle peer is noticed after 60 s instead
    of Linux's 7875 s. The user timeout defaults to the same 60 s.

    Args:
      enabled: Whether to turn ``SO_KEEPALIVE`` on at all. With ``False``
        nothing is set and the other fields are not used.
      idle: ``TCP_KEEPIDLE``, whole seconds.
      interval: ``TCP_KEEPINTVL``, whole seconds.
      count: ``TCP_KEEPCNT``.
      user_timeout: ``TCP_USER_TIMEOUT`` in seconds (millisecond
        resolution), or ``None`` to leave the kernel's default. Defaults to
        ``idle + interval * count`` (``None`` if that exceeds the kernel's
        limit of 2**31 - 1 ms).

    Raises:
      ConfigError: naming the field and the value, for a value that is not
        a number, out of the kernel's range, or (for *user_timeout*) shorter
        than the keepalive probing it should cover.
    """

    enabled: bool = True
    idle: int = attrs.field(default=30, validator=_whole_seconds(MAX_KEEPIDLE))
    interval: int = attrs.field(default=10, validator=_whole_seconds(MAX_KEEPINTVL))
    count: int = attrs.field(default=3, validator=_count)
    user_timeout: float | None = attrs.field(
        default=attrs.Factory(lambda self: _default_user_timeout(self), takes_self=True),
        validator=_user_timeout,
    )

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"enabled must be True or False; got {self.enabled!r}")
        if self.user_timeout is not None and self.user_timeout < self.probing_time:
            raise ConfigError(
                f"user_timeout must cover the keepalive probing (idle + interval * count = "
                f"{self.probing_time!r} s), or the kernel cuts the probing short; "
                f"got {self.user_timeout!r}"
            )

    @property
    def probing_time(self) -> float:
        """Seconds from the last data until keepalive declares an idle peer dead."""
        return float(self.idle + self.interval * self.count)


def _default_user_timeout(config: KeepaliveConfig) -> float | None:
    # Runs before the validators: a bad idle/interval/count is theirs to report.
    try:
        probing = config.probing_time
    except TypeError:
        return None
    return probing if probing <= MAX_USER_TIMEOUT else None


@final
@attrs.frozen(kw_only=True)
class AppliedKeepalive:
    """What the kernel reported back after the options were set.

    Every field is the value read with ``getsockopt`` after setting it, or
    ``None`` where the platform lacks the option (its name is then listed
    in :attr:`unsupported`).
    """

    #: ``SO_KEEPALIVE`` as read back.
    keepalive: bool
    #: ``TCP_KEEPIDLE`` in seconds.
    idle: int | None
    #: ``TCP_KEEPINTVL`` in seconds.
    interval: int | None
    #: ``TCP_KEEPCNT``.
    count: int | None
    #: ``TCP_USER_TIMEOUT`` in seconds (``0.0`` is the kernel's default).
    user_timeout: float | None
    #: Names of the options this platform does not have.
    unsupported: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """The fields as a plain dict, for log events and JSON."""
        return attrs.asdict(self)
