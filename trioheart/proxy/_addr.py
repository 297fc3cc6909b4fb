"""``HOST:PORT`` parsing for the proxy and its control API; sans-IO."""

from __future__ import annotations

import ipaddress

from ..errors import ConfigError

__all__ = ["Address", "format_address", "parse_address"]

#: A numeric host (or ``localhost``) and a port.
Address = tuple[str, int]


def parse_address(value: str | tuple[str, int], *, field: str = "address") -> Address:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"`` or ``("127.0.0.1", 8080)`` to a tuple.

    Raises:
      ConfigError: naming *field*, for anything else or a port outside 0-65535.
    """
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ConfigError(f"{field} must be (host, port); got {value!r}")
        host, port = value
    elif isinstance(value, str):
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ConfigError(f"{field} must be HOST:PORT; got {value!r}")
        port = int(port_text)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    else:
        raise ConfigError(f"{field} must be HOST:PORT; got {value!r}")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{field} must name a host; got {value!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"{field} port must be in 0-65535; got {value!r}")
    return host, port


def numeric_host(host: str, *, field: str = "address") -> str:
    """*host* as a numeric IP address (``localhost`` is ``127.0.0.1``).

    Raises:
      ConfigError: for a name other than ``localhost``.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(
            f"{field} host must be a numeric IP address or localhost; got {host!r}"
        ) from None


def is_loopback(host: str) -> bool:
    """Whether *host* is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_address(address: Address) -> str:
    """``("::1", 80)`` to ``"[::1]:80"``; IPv4 and names as ``host:port``."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
