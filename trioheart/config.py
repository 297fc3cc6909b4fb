"""Validated configuration of a connection's runner (pure data)."""

from __future__ import annotations

import math
from typing import Any, final

import attrs

from .detector import DetectorConfig
from .errors import ConfigError
from .keepalive import KeepaliveConfig

__all__ = ["ConnectionConfig"]


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


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name} must be a whole number >= 1; got {value!r}")


def _instance_of(kind: type) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            raise ConfigError(
                f"{attribute.name} must be a {kind.__name__}; got {type(value).__name__} {value!r}"
            )

    return check


@final
@attrs.frozen(kw_only=True)
class ConnectionConfig:
    """How trioheart runs each connection. All durations are float seconds.

    Every queue and buffer a connection has is bounded here, and hitting a
    bound closes that connection with a named :class:`~trioheart.CloseReason`
    (``message_too_big`` or ``slow_consumer``), never grows memory.

    Args:
      heartbeat: The WebSocket ping/pong bounds (:class:`DetectorConfig`).
      keepalive: The L4 settings applied to each socket before the
        handshake (:class:`KeepaliveConfig`).
      app_heartbeat_interval: If set, also send the app-level heartbeat
        ``{"type": "ping", "id": N}`` every this many seconds and close as
        ``heartbeat_timeout`` when ``{"type": "pong", "id": N}`` (or any
        other message) does not follow within the heartbeat's pong window.
        Inbound app-level pings are always answered.
      handshake_timeout: How long the opening handshake (or a plain HTTP
        request) may take before the socket is closed as
        ``handshake_timeout``.
      close_timeout: How long to wait for the peer's answer to our close
        frame, and to flush the close frame itself.
      send_timeout: How long one write to the socket may block before the
        peer is closed as ``slow_consumer``; defaults to the heartbeat's
        ``ping_timeout``.
      max_message_size: The largest inbound message, in bytes; a larger one
        closes the connection as ``message_too_big`` (1009).
      max_request_size: The largest opening handshake request, in bytes.
      max_queued_messages: Inbound messages that may wait for the
        application; one more closes the connection as ``slow_consumer``.
      max_queued_bytes: The same bound in bytes.
      max_send_buffer: Outbound bytes that may wait for the socket; more
        closes the connection as ``slow_consumer``.
      receive_buffer_size: Bytes read from the socket at a time.

    Raises:
      ConfigError: naming the field and the value.
    """

    heartbeat: DetectorConfig = attrs.field(
        factory=DetectorConfig, validator=_instance_of(DetectorConfig)
    )
    keepalive: KeepaliveConfig = attrs.field(
        factory=KeepaliveConfig, validator=_instance_of(KeepaliveConfig)
    )
    app_heartbeat_interval: float | None = attrs.field(
        default=None, validator=_optional_positive_finite
    )
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive_finite)
    close_timeout: float = attrs.field(default=2.0, validator=_positive_finite)
    send_timeout: float = attrs.field(
        default=attrs.Factory(lambda self: self.heartbeat.ping_timeout, takes_self=True),
        validator=_positive_finite,
    )
    max_message_size: int = attrs.field(default=64 * 1024, validator=_positive_int)
    max_request_size: int = attrs.field(default=16 * 1024, validator=_positive_int)
    max_queued_messages: int = attrs.field(default=64, validator=_positive_int)
    max_queued_bytes: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    max_send_buffer: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    receive_buffer_size: int = attrs.field(default=4096, validator=_positive_int)

    def __attrs_post_init__(self) -> None:
        if self.max_queued_bytes < self.max_message_size:
            raise ConfigError(
                "max_queued_bytes must be at least max_message_size, or one message fills "
                f"the queue; got {self.max_queued_bytes!r} < {self.max_message_size!r}"
            )
