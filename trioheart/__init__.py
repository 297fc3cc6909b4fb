"""trioheart: keep WebSocket connections of Trio chat servers honestly alive.

The public API is re-exported here; everything under a leading underscore is
private.
"""

from __future__ import annotations

from .detector import Action, DetectorConfig, DetectorStatistics, LivenessDetector
from .errors import ConfigError, ConnectionClosed, HandshakeError, TrioheartError
from .reasons import CloseReason

__version__ = "0.1.0.dev0"

__all__ = [
    "Action",
    "CloseReason",
    "ConfigError",
    "ConnectionClosed",
    "DetectorConfig",
    "DetectorStatistics",
    "HandshakeError",
    "LivenessDetector",
    "TrioheartError",
    "__version__",
]
