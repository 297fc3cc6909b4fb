"""The HTTP side of the opening handshake, as plain values.

:class:`HttpRequest` is what a WebSocket handshake (or a plain HTTP request
on the same port) looked like; :class:`HttpResponse` is what an
``http_handler`` or ``authorize`` hook of :func:`~trioheart.serve` returns.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import final
from urllib.parse import parse_qsl, urlsplit

import attrs

__all__ = ["HttpRequest", "HttpResponse", "websocket_key_problem"]


@final
@attrs.frozen(kw_only=True)
class HttpRequest:
    """One parsed HTTP request."""

    #: The method, e.g. ``"GET"``.
    method: str
    #: The path, without the query string.
    path: str
    #: Query parameters; the first value of each name.
    query: Mapping[str, str]
    #: Headers as (lower-case name, value) pairs, in order.
    headers: Sequence[tuple[str, str]]

    @classmethod
    def from_target(
        cls, method: str, target: str, headers: Sequence[tuple[str, str]]
    ) -> HttpRequest:
        """Split *target* into path and query."""
        parts = urlsplit(target)
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(name, value)
        return cls(method=method, path=parts.path or "/", query=query, headers=tuple(headers))

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every *name* header, lower-cased."""
        name = name.lower()
        return {
            token.strip().lower()
            for key, value in self.headers
            if key == name
            for token in value.split(",")
            if token.strip()
        }


@final
@attrs.frozen(kw_only=True)
class HttpResponse:
    """A complete HTTP response to send (the connection closes after it)."""

    #: The status code.
    status: int = 200
    #: The body.
    body: bytes = b""
    #: The Content-Type header.
    content_type: str = "text/plain; charset=utf-8"
    #: Further headers.
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def text(cls, status: int, text: str) -> HttpResponse:
        """A plain-text response."""
        return cls(status=status, body=text.encode())


def websocket_key_problem(request: HttpRequest) -> str | None:
    """What is wrong with *request* as a WebSocket opening handshake, or ``None``.

    Checks RFC 6455 section 4.2.1: ``GET``, ``Upgrade: websocket``,
    ``Connection: upgrade``, ``Sec-WebSocket-Version: 13`` and a
    ``Sec-WebSocket-Key`` that is 16 bytes in base64.
    """
    if request.method != "GET":
        return f"method must be GET; got {request.method!r}"
    if "websocket" not in request.header_tokens("upgrade"):
        return "missing 'Upgrade: websocket'"
    if "upgrade" not in request.header_tokens("connection"):
        return "missing 'Connection: upgrade'"
    version = request.header("sec-websocket-version")
    if version != "13":
        return f"Sec-WebSocket-Version must be 13; got {version!r}"
    key = request.header("sec-websocket-key")
    if key is None:
        return "missing Sec-WebSocket-Key"
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "Sec-WebSocket-Key is not base64"
    if len(raw) != 16:
        return f"Sec-WebSocket-Key must encode 16 bytes; got {len(raw)}"
    return None
