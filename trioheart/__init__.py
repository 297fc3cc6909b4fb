"""trioheart: keep WebSocket connections of Trio chat servers honestly alive.

The public API is re-exported here; everything under a leading underscore is
private.
"""

from __future__ import annotations

from ._trio.connection import Connection
from ._trio.server import Server, ServerStatistics, serve, serve_listeners
from .config import ConnectionConfig
from .detector import Action, DetectorConfig, DetectorStatistics, LivenessDetector
from .errors import ConfigError, ConnectionClosed, HandshakeError, TrioheartError
from .http import HttpRequest, HttpResponse
from .keepalive import AppliedKeepalive, KeepaliveConfig
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
    "ConnectionClosed",
    "ConnectionConfig",
    "DetectorConfig",
    "DetectorStatistics",
    "HandshakeError",
    "HttpRequest",
    "HttpResponse",
    "KeepaliveConfig",
    "LivenessDetector",
    "Metrics",
    "Server",
    "ServerStatistics",
    "TcpInfo",
    "TrioheartError",
    "__version__",
    "serve",
    "serve_listeners",
]
