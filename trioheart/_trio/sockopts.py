"""Apply L4 settings to a raw socket before the handshake, and read them back."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Final

from ..keepalive import AppliedKeepalive, KeepaliveConfig
from ..log import get_logger
from ..tcpinfo import TCP_INFO_SIZE, TcpInfo, parse_tcp_info

if TYPE_CHECKING:
    import trio

__all__ = ["apply_keepalive", "read_tcp_info"]

_log = get_logger("trioheart.socket")
_warned: set[str] = set()

_OPTIONS: Final = ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")


def _warn_once(option: str, why: str) -> None:
    if option not in _warned:
        _warned.add(option)
        _log.warning("socket.option_unsupported", option=option, why=why)


def apply_keepalive(sock: trio.socket.SocketType, config: KeepaliveConfig) -> AppliedKeepalive:
    """Set keepalive and user timeout on *sock*, then read them back.

    Options the platform lacks are logged once (``socket.option_unsupported``)
    and skipped; the others are still applied.

    Args:
      sock: A connected (or listening) TCP socket.
      config: The values to set.

    Returns:
      What ``getsockopt`` reports after setting.
    """
    unsupported: list[str] = []
    if config.enabled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        wanted = {
            "TCP_KEEPIDLE": int(config.idle),
            "TCP_KEEPINTVL": int(config.interval),
            "TCP_KEEPCNT": config.count,
        }
        if config.user_timeout is not None:
            wanted["TCP_USER_TIMEOUT"] = round(config.user_timeout * 1000)
        for name, value in wanted.items():
            number = getattr(socket, name, None)
            if number is None:
                unsupported.append(name)
                _warn_once(name, "not defined on this platform")
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, number, value)
            except OSError as exc:
                unsupported.append(name)
                _warn_once(name, str(exc))
    return _read_back(sock, unsupported)


def _read_back(sock: trio.socket.SocketType, unsupported: list[str]) -> AppliedKeepalive:
    values: dict[str, int | None] = {}
    for name in _OPTIONS:
        number = getattr(socket, name, None)
        if number is None or name in unsupported:
            values[name] = None
            if name not in unsupported:
                unsupported.append(name)
            continue
        try:
            values[name] = sock.getsockopt(socket.IPPROTO_TCP, number)
        except OSError:
            values[name] = None
    user_timeout_ms = values["TCP_USER_TIMEOUT"]
    return AppliedKeepalive(
        keepalive=bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
        idle=values["TCP_KEEPIDLE"],
        interval=values["TCP_KEEPINTVL"],
        count=values["TCP_KEEPCNT"],
        user_timeout=None if user_timeout_ms is None else user_timeout_ms / 1000,
        unsupported=tuple(sorted(unsupported)),
    )


def read_tcp_info(sock: trio.socket.SocketType) -> TcpInfo | None:
    """The kernel's ``TCP_INFO`` for *sock*, or ``None`` where unavailable."""
    number = getattr(socket, "TCP_INFO", None)
    if number is None:
        return None
    try:
        return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, number, TCP_INFO_SIZE))
    except OSError:
        return None
