"""The HTTP control API of a proxy: h11 over Trio, on loopback only.

The routes and their checks are pure (:mod:`trioheart.proxy._api`); this
module only frames HTTP/1.1. Every limit is bounded: at most
:data:`MAX_CONNECTIONS` control connections at once, request heads of at
most 16 KiB, bodies of at most :data:`MAX_BODY` bytes, and
:data:`IDLE_TIMEOUT` seconds to send each request.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final, NoReturn

import h11
import trio

from ..errors import ConfigError
from ._addr import Address, is_loopback, numeric_host, parse_address
from ._api import ApiResponse, handle_request
from ._proxy import Proxy, _listening_socket
from ._registry import ProxyError

__all__ = ["IDLE_TIMEOUT", "MAX_BODY", "MAX_CONNECTIONS", "serve_control"]

#: The largest request body accepted, in bytes.
MAX_BODY: Final = 64 * 1024
#: Control connections served at once; more wait to be accepted.
MAX_CONNECTIONS: Final = 16
#: Seconds a client has to send each whole request.
IDLE_TIMEOUT: Final = 10.0
_SERVER: Final = b"trioheart-proxy"


async def serve_control(
    proxy: Proxy,
    address: str | Address = ("127.0.0.1", 0),
    *,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve *proxy*'s control API on *address* (loopback only) until cancelled.

    ``await nursery.start(serve_control, proxy, "127.0.0.1:0")`` returns the
    real address once it listens, and sets :attr:`Proxy.control_address`.
    Cancellation closes the listener and every control connection.

    Raises:
      ConfigError: if *address* is not a loopback address.
      ProxyError: if it cannot listen.
    """
    await _serve_control_on(proxy, _control_listener(address), task_status=task_status)


def _control_listener(address: str | Address) -> trio.SocketListener:
    host, port = parse_address(address, field="control")
    if not is_loopback(host):
        raise ConfigError(
            f"control must be a loopback address (127.0.0.0/8, ::1 or localhost); got {host!r}"
        )
    try:
        return _listening_socket((numeric_host(host, field="control"), port))
    except OSError as exc:
        raise ProxyError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


async def _serve_control_on(
    proxy: Proxy,
    listener: trio.SocketListener,
    *,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    bound: Address = listener.socket.getsockname()[:2]
    proxy.control_address = bound
    limiter = trio.Semaphore(MAX_CONNECTIONS)
    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started(bound)
            while True:
                await limiter.acquire()
                try:
                    stream = await listener.accept()
                except BaseException:
                    limiter.release()
                    raise
                nursery.start_soon(_serve_connection, proxy, stream, limiter)
    finally:
        proxy.control_address = None


async def _serve_connection(
    proxy: Proxy, stream: trio.SocketStream, limiter: trio.Semaphore
) -> None:
    try:
        async with stream:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
            while True:
                with trio.move_on_after(IDLE_TIMEOUT):
                    keep_going = await _one_exchange(proxy, conn, stream)
                    if keep_going and conn.our_state is h11.DONE:
                        try:
                            conn.start_next_cycle()
                        except h11.LocalProtocolError:
                            return
                        continue
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        limiter.release()


async def _one_exchange(proxy: Proxy, conn: h11.Connection, stream: trio.SocketStream) -> bool:
    """Read one request and answer it. Returns whether to read another."""
    try:
        request = await _next_event(conn, stream)
        if not isinstance(request, h11.Request):
            return False  # the client closed, or sent something h11 ended on
        body = bytearray()
        too_large = False
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                if len(body) + len(event.data) > MAX_BODY:
                    too_large = True
                else:
                    body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await _respond(
                conn,
                stream,
                ApiResponse(
                    exc.error_status_hint,
                    {"error": f"bad HTTP request: {exc}", "status": exc.error_status_hint},
                ),
            )
        return False
    if too_large:
        response = ApiResponse(
            413, {"error": f"the body must be at most {MAX_BODY} bytes", "status": 413}
        )
    else:
        response = handle_request(
            proxy,
            request.method.decode("ascii", "replace").upper(),
            request.target.decode("ascii", "replace"),
            bytes(body),
        )
    await _respond(conn, stream, response)
    return True


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(16 * 1024)
            conn.receive_data(data)  # b"" is EOF, which h11 understands
            continue
        return event


async def _respond(conn: h11.Connection, stream: trio.SocketStream, response: ApiResponse) -> None:
    body = response.encode()
    headers = [(b"Server", _SERVER)]
    headers += [(name.encode(), value.encode()) for name, value in response.headers]
    if response.status != 204:
        headers.append((b"Content-Length", str(len(body)).encode()))
    if body:
        headers.append((b"Content-Type", b"application/json"))
    try:
        reason = HTTPStatus(response.status).phrase.encode()
    except ValueError:
        reason = b""
    parts = [conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))]
    if body:
        parts.append(conn.send(h11.Data(data=body)))
    parts.append(conn.send(h11.EndOfMessage()))
    await stream.send_all(b"".join(part for part in parts if part))
