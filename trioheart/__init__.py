"""trioheart: keep WebSocket connections of Trio chat servers honestly alive.

The public API is re-exported here; everything under a leading underscore is
private.
"""

from __future__ import annotations

from ._trio.connection import Connection
from ._trio.policy_sources import EtcdSource, PolicyStore, TomlFileSource
from ._trio.server import (
    Server,
    ServerStatistics,
    attributes_from_request,
    serve,
    serve_listeners,
)
from ._trio.stalls import StallMonitor, StallStatistics, monitor_stalls
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

__version__ = "0.1.0.dev0"

__all__ = [
    "Action",
    "AppliedKeepalive",
    "CloseReason",
    "ConfigError",
    "Connection",
    "ConnectionAttributes",
    "ConnectionClosed",
    "ConnectionConfig",
    "DetectorConfig",
    "DetectorStatistics",
    "EtcdSource",
    "HandshakeError",
    "HttpRequest",
    "HttpResponse",
    "KeepaliveConfig",
    "LivenessDetector",
    "Metrics",
    "PolicyError",
    "PolicySet",
    "PolicyStore",
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
    "monitor_stalls",
    "serve",
    "serve_listeners",
]
