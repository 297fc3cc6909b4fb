"""A small Redis client for Trio: hiredis parses, Trio moves the bytes.

Only what the Redis broker needs: connect (with ``AUTH`` and ``SELECT``),
send one command or a pipeline of them, read the replies. Each connection
carries one request at a time (the caller serialises, e.g. with a
:class:`trio.Lock`); a blocking command such as ``XREAD BLOCK`` gets a
connection of its own.

Why not a full client: the broker must know exactly which commands reached
Redis when a connection breaks, and must be cancellable with Trio's own
scopes. Here, every failure of the transport, a timeout or a cancellation
in the middle of a request *breaks* the connection (its reply stream can no
longer be trusted) and is raised as :class:`RedisUnavailable`; the caller
reconnects. Protocol parsing is hiredis, the C parser redis-py uses.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any, Final, cast, final

import attrs
import hiredis
import trio

from ..errors import ConfigError, TrioheartError

__all__ = [
    "RedisAddress",
    "RedisConnection",
    "RedisError",
    "RedisReplyError",
    "RedisUnavailable",
    "parse_redis_url",
]

_READ: Final = 65536
#: Refuse replies larger than this: a bound on what one connection buffers.
MAX_REPLY_BYTES: Final = 64 * 1024 * 1024

Arg = str | bytes | int | float


class RedisError(TrioheartError):
    """Something went wrong talking to Redis."""


class RedisUnavailable(RedisError):
    """Redis could not be reached, or the connection broke; reconnect."""


class RedisReplyError(RedisError):
    """Redis answered a command with an error reply (the connection is fine)."""


@final
@attrs.frozen(kw_only=True)
class RedisAddress:
    """Where a Redis server is, and how to log in.

    Made by :func:`parse_redis_url`; ``password`` stays out of ``repr``.
    """

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    def url(self) -> str:
        """The address as a URL, without the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"redis://{user}{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]`` as a :class:`RedisAddress`.

    Raises:
      ConfigError: for another scheme, a missing host, or a bad port or db.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"redis url must be redis://host[:port][/db]; got {url!r}") from exc
    if parts.scheme != "redis" or not parts.hostname:
        raise ConfigError(f"redis url must be redis://host[:port][/db]; got {url!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"redis url's db must be a number; got {path!r} in {url!r}")
    return RedisAddress(
        host=parts.hostname,
        port=port if port is not None else 6379,
        db=int(path) if path else 0,
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
    )


@final
class RedisConnection:
    """One connection to Redis. Make it with :meth:`connect`.

    Not safe for concurrent use: one request (a command or a pipeline) at a
    time; a second concurrent request raises :class:`trio.BusyResourceError`.
    """

    def __init__(self, stream: trio.SocketStream, address: RedisAddress) -> None:
        self._stream = stream
        self.address = address
        self._reader = hiredis.Reader(replyError=RedisReplyError, encoding="utf-8")
        self._broken: str | None = None
        self._busy = False

    @classmethod
    async def connect(cls, address: RedisAddress) -> RedisConnection:
        """Open a connection, log in and select the db.

        Has no timeout of its own: wrap it in :func:`trio.move_on_after`.
        On cancellation the half-made connection is closed.

        Raises:
          RedisUnavailable: if Redis cannot be reached or the connection breaks.
          RedisReplyError: if Redis refuses ``AUTH`` or ``SELECT``.
        """
        try:
            stream = await trio.open_tcp_stream(address.host, address.port)
        except OSError as exc:
            raise RedisUnavailable(f"cannot connect to {address.url()}: {exc}") from exc
        connection = cls(stream, address)
        try:
            if address.password is not None:
                auth: list[Arg] = ["AUTH"]
                if address.username:
                    auth.append(address.username)
                await connection.execute(*auth, address.password)
            if address.db:
                await connection.execute("SELECT", address.db)
        except BaseException:
            connection.close()
            raise
        return connection

    @property
    def broken(self) -> bool:
        """Whether the connection can no longer be used."""
        return self._broken is not None

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply.

        Raises:
          RedisReplyError: for an error reply.
          RedisUnavailable: if the connection broke, now or before.
        """
        (reply,) = await self.pipeline([args])
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send *commands* in one write and return their replies, in order.

        An error reply is returned in its place as a :class:`RedisReplyError`
        (not raised), so the caller sees which commands succeeded.

        On cancellation (or any failure) midway the connection is broken:
        some commands may have run. Later calls raise :class:`RedisUnavailable`.

        Raises:
          RedisUnavailable: if the connection broke, now or before.
        """
        if self._broken is not None:
            raise RedisUnavailable(f"connection to {self.address.url()} is broken: {self._broken}")
        if self._busy:
            raise trio.BusyResourceError("another request is using this Redis connection")
        self._busy = True
        try:
            payload = b"".join(
                hiredis.pack_command(cast(Any, tuple(command))) for command in commands
            )
            await self._stream.send_all(payload)
            replies: list[Any] = []
            received = 0
            while len(replies) < len(commands):
                reply = self._reader.gets()
                if reply is not False:
                    replies.append(reply)
                    continue
                data = await self._stream.receive_some(_READ)
                if not data:
                    raise RedisUnavailable(f"{self.address.url()} closed the connection")
                received += len(data)
                if received > MAX_REPLY_BYTES:
                    raise RedisUnavailable(f"reply larger than {MAX_REPLY_BYTES} bytes")
                self._reader.feed(data)
            return replies
        except BaseException as exc:
            self._broken = f"{type(exc).__name__}: {exc}"
            self._stream.socket.close()  # no checkpoint: safe inside a cancelled scope
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
                raise RedisUnavailable(f"connection to {self.address.url()} broke: {exc}") from exc
            if isinstance(exc, hiredis.ProtocolError):
                raise RedisUnavailable(f"bad reply from {self.address.url()}: {exc}") from exc
            raise
        finally:
            self._busy = False

    async def aclose(self) -> None:
        """Close the connection. Always a checkpoint; never blocks for long."""
        self._broken = self._broken or "closed"
        await trio.aclose_forcefully(self._stream)

    def close(self) -> None:
        """Close the connection at once, without a checkpoint."""
        self._broken = self._broken or "closed"
        self._stream.socket.close()
