"""Why a connection closed: one vocabulary for the API, the wire, logs and metrics.

Every connection trioheart runs ends with exactly one :class:`CloseReason`.
The same member is what :attr:`Connection.close_reason
<trioheart.Connection.close_reason>` returns, the ``reason`` field of the
``connection.closed`` log event, the ``reason`` label of
``trioheart_connections_closed_total``, and (through :attr:`CloseReason.code`
and the reason text) what the close frame says when one can still be sent.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["CloseReason"]


class CloseReason(enum.StrEnum):
    """Why a connection closed. The value is the stable, snake_case name."""

    #: The peer sent a close frame (any code); we answered and closed.
    PEER_CLOSED = "peer_closed"
    #: The application on this side closed the connection (handler returned
    #: or called :meth:`~trioheart.Connection.aclose`).
    APP_CLOSED = "app_closed"
    #: A WebSocket ping went unanswered, and nothing else arrived, within
    #: the pong window. L7 noticed the peer is gone or frozen.
    PONG_TIMEOUT = "pong_timeout"
    #: The app-level heartbeat ping (a JSON text message) went unanswered.
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    #: The kernel gave up on the TCP connection, because keepalive probes
    #: or ``TCP_USER_TIMEOUT`` expired (``ETIMEDOUT``).
    TCP_TIMEOUT = "tcp_timeout"
    #: The peer reset the connection, or the transport broke without a close
    #: frame (``ECONNRESET``, ``EPIPE``, EOF without close).
    CONNECTION_RESET = "connection_reset"
    #: The peer broke the WebSocket protocol (bad framing, masking, opcodes).
    PROTOCOL_ERROR = "protocol_error"
    #: A text message was not valid UTF-8.
    INVALID_DATA = "invalid_data"
    #: A message was larger than the configured maximum.
    MESSAGE_TOO_BIG = "message_too_big"
    #: The opening handshake did not finish within its timeout.
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    #: The opening handshake was malformed or refused (HTTP 4xx sent).
    HANDSHAKE_FAILED = "handshake_failed"
    #: The peer did not read fast enough, so its bounded send queue (or our
    #: bounded receive queue for it) was full.
    SLOW_CONSUMER = "slow_consumer"
    #: The server is shutting down (close code 1001, "going away").
    SERVER_SHUTDOWN = "server_shutdown"
    #: A bug on this side (the handler raised, or trioheart itself failed).
    INTERNAL_ERROR = "internal_error"
    #: The client asked to resume with a request the server refused
    #: (malformed, a forged or foreign token, an impossible seq); the
    #: ``refused`` message before the close says which. The client should
    #: reconnect without resuming.
    RESUME_REFUSED = "resume_refused"
    #: Refused at admission because the server holds ``max_connections``
    #: (HTTP 503).
    CONNECTION_LIMIT = "connection_limit"
    #: Refused at admission because the client's address holds
    #: ``max_connections_per_address`` (HTTP 429).
    ADDRESS_LIMIT = "address_limit"
    #: Refused at admission by the handshake rate limit (HTTP 429).
    RATE_LIMITED = "rate_limited"
    #: Refused because the handshake's ``Origin`` is not allowed (HTTP 403).
    ORIGIN_REFUSED = "origin_refused"
    #: Refused by the application's ``authorize`` hook (its HTTP status).
    AUTH_REFUSED = "auth_refused"

    @property
    def code(self) -> int:
        """The WebSocket close code for this reason.

        1006 ("abnormal closure") is never sent on the wire; it is what the
        RFC tells an endpoint to report when no close frame could be
        exchanged, which is the case for transport-level reasons.
        """
        return _CODES[self]

    @property
    def sends_close_frame(self) -> bool:
        """Whether trioheart tries to send a close frame for this reason."""
        return _CODES[self] != 1006 and self is not CloseReason.PEER_CLOSED

    @classmethod
    def from_close_frame(cls, code: int, text: str) -> CloseReason | None:
        """The reason a trioheart peer named in a close frame, if it named one.

        Args:
          code: The close code received.
          text: The close reason text received.

        Returns:
          The member whose value is *text* and whose code is *code*, or
          ``None`` when the frame did not come from a trioheart peer.
        """
        try:
            reason = cls(text.split(";", 1)[0])
        except ValueError:
            return None
        return reason if reason.code == code else None


_CODES: Final[dict[CloseReason, int]] = {
    CloseReason.PEER_CLOSED: 1000,
    CloseReason.APP_CLOSED: 1000,
    CloseReason.PONG_TIMEOUT: 4001,
    CloseReason.HEARTBEAT_TIMEOUT: 4002,
    CloseReason.TCP_TIMEOUT: 1006,
    CloseReason.CONNECTION_RESET: 1006,
    CloseReason.PROTOCOL_ERROR: 1002,
    CloseReason.INVALID_DATA: 1007,
    CloseReason.MESSAGE_TOO_BIG: 1009,
    CloseReason.HANDSHAKE_TIMEOUT: 1006,
    CloseReason.HANDSHAKE_FAILED: 1006,
    CloseReason.SLOW_CONSUMER: 4008,
    CloseReason.SERVER_SHUTDOWN: 1001,
    CloseReason.INTERNAL_ERROR: 1011,
    CloseReason.RESUME_REFUSED: 4009,
    CloseReason.CONNECTION_LIMIT: 1006,
    CloseReason.ADDRESS_LIMIT: 1006,
    CloseReason.RATE_LIMITED: 1006,
    CloseReason.ORIGIN_REFUSED: 1006,
    CloseReason.AUTH_REFUSED: 1006,
}
