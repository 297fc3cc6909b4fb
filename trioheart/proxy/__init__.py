"""A fault-injecting TCP proxy that understands WebSocket heartbeats.

Toxiproxy's toxics (``latency``, ``bandwidth``, ``slow_close``, ``timeout``,
``reset_peer``, ``slicer``, ``limit_data``, and ``down`` as
:meth:`Proxy.set_enabled`), plus the failures chat connections really die
of: ``blackhole``, ``nat_idle``, ``stall``, and frame-aware ``ws_drop`` and
``ws_delay`` that single out pings, pongs or data frames. Toxics are added,
changed and removed while connections are open, from Python or from the
HTTP control API (:func:`serve_control`, or ``control=`` of
:func:`open_proxy`).

Pure parts (:mod:`~trioheart.proxy.toxics`, :mod:`~trioheart.proxy.frames`,
:mod:`~trioheart.proxy.nat`, and the engine that applies the toxics) never
import trio; the Trio shell only moves bytes.
"""

from __future__ import annotations

from ._control import serve_control
from ._proxy import Proxy, ProxyStatistics, open_proxy
from ._registry import ProxyError, ToxicExists, ToxicNotFound
from .toxics import (
    Bandwidth,
    Blackhole,
    FrameKind,
    Latency,
    LimitData,
    NatIdle,
    ResetPeer,
    Slicer,
    SlowClose,
    Stall,
    Stream,
    Timeout,
    Toxic,
    ToxicAttributes,
    WsDelay,
    WsDrop,
)

__all__ = [
    "Bandwidth",
    "Blackhole",
    "FrameKind",
    "Latency",
    "LimitData",
    "NatIdle",
    "Proxy",
    "ProxyError",
    "ProxyStatistics",
    "ResetPeer",
    "Slicer",
    "SlowClose",
    "Stall",
    "Stream",
    "Timeout",
    "Toxic",
    "ToxicAttributes",
    "ToxicExists",
    "ToxicNotFound",
    "WsDelay",
    "WsDrop",
    "open_proxy",
    "serve_control",
]
