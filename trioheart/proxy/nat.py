"""The state of one NAT mapping that forgets idle connections, sans-IO.

A home router, a carrier-grade NAT or the Azure load balancer keeps one
mapping per TCP connection and forgets it after some time without traffic.
It says nothing when it does: the next packet, in either direction, is
dropped. :class:`NatMapping` is that rule with the clock passed in; the
proxy's ``nat_idle`` toxic keeps one per connection.

This module never imports trio.
"""

from __future__ import annotations

import math
from typing import final

from ..errors import ConfigError

__all__ = ["NatMapping"]


def _check_timeout(idle_timeout: float) -> None:
    if not isinstance(idle_timeout, int | float) or not 0 < idle_timeout < math.inf:
        raise ConfigError(
            f"idle_timeout must be a positive, finite number of seconds; got {idle_timeout!r}"
        )


@final
class NatMapping:
    """One mapping: alive while packets come less than *idle_timeout* apart.

    Args:
      idle_timeout: Seconds without a packet after which the mapping is forgotten.
      now: When the mapping was made (the last packet, as far as it knows).
    """

    __slots__ = ("_forgotten_at", "_idle_timeout", "_last_packet_at")

    def __init__(self, *, idle_timeout: float, now: float) -> None:
        _check_timeout(idle_timeout)
        self._idle_timeout = idle_timeout
        self._last_packet_at = now
        self._forgotten_at: float | None = None

    @property
    def idle_timeout(self) -> float:
        """The idle timeout in force, in seconds."""
        return self._idle_timeout

    @property
    def last_packet_at(self) -> float:
        """When the last packet passed (or the mapping was made)."""
        return self._last_packet_at

    @property
    def expires_at(self) -> float:
        """When the mapping is (or was) forgotten unless a packet passes first."""
        return self._last_packet_at + self._idle_timeout

    @property
    def forgotten_at(self) -> float | None:
        """When the mapping expired, once a packet has found it expired; else ``None``."""
        return self._forgotten_at

    def is_forgotten(self, now: float) -> bool:
        """Whether a packet at *now* would be dropped."""
        return self._forgotten_at is not None or now >= self.expires_at

    def on_packet(self, now: float) -> bool:
        """A packet (either direction) reaches the NAT at *now*.

        Returns:
          ``True`` if it passes (and refreshes the mapping), ``False`` if
          the mapping is forgotten and the packet is dropped. Once forgotten,
          a mapping stays forgotten.
        """
        if self.is_forgotten(now):
            if self._forgotten_at is None:
                self._forgotten_at = self.expires_at
            return False
        self._last_packet_at = max(self._last_packet_at, now)
        return True

    def reconfigure(self, *, idle_timeout: float) -> None:
        """Change the idle timeout from now on; a forgotten mapping stays forgotten."""
        _check_timeout(idle_timeout)
        self._idle_timeout = idle_timeout
