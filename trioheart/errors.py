"""The exception tree: one root, :class:`TrioheartError`.

Like h11 and wsproto, we keep "your fault" apart from "the peer's fault":
:class:`ConfigError` is raised for a bad value a caller passed;
:class:`ConnectionClosed` says a connection ended and carries the
:class:`~trioheart.CloseReason` that ended it. Errors from the network are
translated at the seam with ``raise ... from exc`` so the original stays
attached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reasons import CloseReason

__all__ = ["ConfigError", "ConnectionClosed", "HandshakeError", "TrioheartError"]


class TrioheartError(Exception):
    """The root of every exception trioheart raises on purpose."""


class ConfigError(TrioheartError, ValueError):
    """A configuration value is out of range, of the wrong type, or inconsistent.

    The message names the field and the value, e.g.
    ``ping_interval must be a positive, finite number of seconds; got nan``.
    """


class HandshakeError(TrioheartError):
    """The opening handshake failed (malformed, refused, or timed out)."""


class ConnectionClosed(TrioheartError):
    """The connection is closed; :attr:`reason` says why.

    Raised by :meth:`~trioheart.Connection.send` and
    :meth:`~trioheart.Connection.receive` once the connection has ended,
    whichever side ended it.
    """

    def __init__(self, reason: CloseReason, code: int, detail: str = "") -> None:
        self.reason = reason
        self.code = code
        self.detail = detail
        suffix = f": {detail}" if detail else ""
        super().__init__(f"connection closed: {reason.value} (code {code}){suffix}")
