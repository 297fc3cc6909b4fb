"""The control API's routes: a request in, a JSON response out; sans-IO.

:func:`handle_request` checks a whole request before it changes anything,
so a bad request gets a 4xx answer and leaves the proxy as it was. The
HTTP framing (h11 over Trio) lives in :mod:`trioheart.proxy._control`.

This module never imports trio.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final, Protocol, final
from urllib.parse import unquote

import attrs

from ..errors import ConfigError
from ._registry import ProxyError, ToxicExists, ToxicNotFound
from .toxics import Toxic, ToxicAttributes, toxic_from_json, toxic_to_json, updated_toxic

__all__ = ["API_VERSION", "ApiResponse", "ControlTarget", "handle_request"]

#: The version the API reports at ``GET /version``.
API_VERSION: Final = "1"


class ControlTarget(Protocol):
    """What the control API drives: a :class:`~trioheart.proxy.Proxy`."""

    @property
    def toxics(self) -> tuple[Toxic, ...]: ...

    def describe(self) -> dict[str, object]: ...

    def get_toxic(self, name: str) -> Toxic: ...

    def add_toxic(self, toxic: Toxic) -> Toxic: ...

    def update_toxic(
        self,
        name: str,
        *,
        attributes: ToxicAttributes | None = None,
        toxicity: float | None = None,
    ) -> Toxic: ...

    def remove_toxic(self, name: str) -> None: ...

    def set_enabled(self, enabled: bool) -> None: ...

    def reset(self) -> None: ...


@final
@attrs.frozen
class ApiResponse:
    """An HTTP status, a JSON-ready body (``None``: no body) and extra headers."""

    status: int
    body: object = None
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        """The body as UTF-8 JSON (empty when there is none)."""
        if self.body is None:
            return b""
        return json.dumps(self.body, indent=2, sort_keys=False).encode() + b"\n"


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.headers = headers


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> ApiResponse:
    return ApiResponse(status, {"error": message, "status": status}, headers)


def _json_body(body: bytes) -> object:
    if not body.strip():
        raise _BadRequest(400, "the request needs a JSON body")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadRequest(400, "the body must be UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise _BadRequest(400, f"the body is not valid JSON: {exc}") from None


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise _BadRequest(
            405,
            f"{method} is not allowed here; use {' or '.join(allowed)}",
            (("Allow", ", ".join(allowed)),),
        )


def handle_request(target: ControlTarget, method: str, path: str, body: bytes) -> ApiResponse:
    """Answer one control request.

    Args:
      target: The proxy to read and change.
      method: The HTTP method, upper case.
      path: The request target; a query string is ignored.
      body: The request body (JSON where one is needed).

    Returns:
      The response. Any 4xx response left *target* unchanged.
    """
    try:
        return _route(target, method, path.split("?", 1)[0], body)
    except _BadRequest as exc:
        return _error(exc.status, str(exc), exc.headers)
    except ConfigError as exc:
        return _error(400, str(exc))
    except ToxicNotFound as exc:
        return _error(404, str(exc.args[0]))
    except ToxicExists as exc:
        return _error(409, str(exc))
    except ProxyError as exc:
        return _error(409, str(exc))


def _route(target: ControlTarget, method: str, path: str, body: bytes) -> ApiResponse:
    if path == "/version":
        _allow(method, ("GET",))
        return ApiResponse(200, {"version": API_VERSION})
    if path == "/proxy":
        _allow(method, ("GET", "POST"))
        if method == "POST":
            changes = _json_body(body)
            if not isinstance(changes, Mapping):
                raise ConfigError(f"the body must be a JSON object; got {changes!r}")
            unknown = sorted(str(key) for key in changes if key != "enabled")
            if unknown:
                raise ConfigError(
                    f"unknown field {unknown[0]!r}; only 'enabled' can be changed "
                    "(restart the proxy to change listen or upstream)"
                )
            enabled = changes.get("enabled")
            if not isinstance(enabled, bool):
                raise ConfigError(f"enabled must be true or false; got {enabled!r}")
            target.set_enabled(enabled)
        return ApiResponse(200, target.describe())
    if path == "/reset":
        _allow(method, ("POST",))
        target.reset()
        return ApiResponse(204)
    if path == "/toxics":
        _allow(method, ("GET", "POST"))
        if method == "GET":
            return ApiResponse(200, [toxic_to_json(toxic) for toxic in target.toxics])
        toxic = target.add_toxic(toxic_from_json(_json_body(body)))
        return ApiResponse(201, toxic_to_json(toxic))
    if path.startswith("/toxics/"):
        name = unquote(path[len("/toxics/") :])
        _allow(method, ("GET", "POST", "DELETE"))
        current = target.get_toxic(name)
        if method == "GET":
            return ApiResponse(200, toxic_to_json(current))
        if method == "DELETE":
            target.remove_toxic(name)
            return ApiResponse(204)
        changed = updated_toxic(current, _json_body(body))
        toxic = target.update_toxic(name, attributes=changed.attributes, toxicity=changed.toxicity)
        return ApiResponse(200, toxic_to_json(toxic))
    raise _BadRequest(
        404,
        f"no endpoint {path!r}; the endpoints are /proxy, /toxics, /toxics/NAME, "
        "/reset and /version",
    )
