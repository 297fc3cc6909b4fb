"""trioheart: keep WebSocket connections of Trio chat servers honestly alive.

The public API is re-exported here; everything under a leading underscore is
private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._trio.broker import EmbeddedBroker
from ._trio.connection import Connection
from ._trio.policy_sources import EtcdSource, PolicyStore, TomlFileSource
from ._trio.rooms import join_room
from ._trio.server import (
    Server,
    ServerStatistics,
    attributes_from_request,
    serve,
    serve_listeners,
)
from ._trio.stalls import StallMonitor, StallStatistics, monitor_stalls
from .broker import Broker, BrokerStatistics, BrokerUnavailable, OutboxLimits
from .config import ConnectionConfig
from .detector import Action, DetectorConfig, DetectorStatistics, LivenessDetector
from .errors import ConfigError, ConnectionClosed, HandshakeError, TrioheartError
from .http import HttpRequest, HttpResponse
from .keepalive import AppliedKeepalive, KeepaliveConfig
from .limits import ServerLimits
from .policy import ConnectionAttributes, PolicyError, PolicySet, ResolvedPolicy
from .prometheus import Metrics
from .reasons import CloseReason
from .tcpinfo import TcpInfo

if TYPE_CHECKING:
    from ._trio.redis_broker import RedisBroker, open_redis_broker

__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> Any:
    # The Redis broker needs the optional extra ``trioheart[redis]`` (hiredis),
    # so it is imported only when asked for.
    if name in ("RedisBroker", "open_redis_broker"):
        from ._trio import redis_broker

        return getattr(redis_broker, name)
    raise AttributeError(f"module 'trioheart' has no attribute {name!r}")


__all__ = [
    "Action",
    "AppliedKeepalive",
    "Broker",
    "BrokerStatistics",
    "BrokerUnavailable",
    "CloseReason",
    "ConfigError",
    "Connection",
    "ConnectionAttributes",
    "ConnectionClosed",
    "ConnectionConfig",
    "DetectorConfig",
    "DetectorStatistics",
    "EmbeddedBroker",
    "EtcdSource",
    "HandshakeError",
    "HttpRequest",
    "HttpResponse",
    "KeepaliveConfig",
    "LivenessDetector",
    "Metrics",
    "OutboxLimits",
    "PolicyError",
    "PolicySet",
    "PolicyStore",
    "RedisBroker",
    "ResolvedPolicy",
    "Server",
    "ServerLimits",
    "ServerStatistics",
    "StallMonitor",
    "StallStatistics",
    "TcpInfo",
    "TomlFileSource",
    "TrioheartError",
    "__version__",
    "attributes_from_request",
    "join_room",
    "monitor_stalls",
    "open_redis_broker",
    "serve",
    "serve_listeners",
]
