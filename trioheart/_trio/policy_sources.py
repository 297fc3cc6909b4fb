"""Where heartbeat policies come from, and the store that holds the current set.

:class:`PolicyStore` holds the current, validated
:class:`~trioheart.policy.PolicySet`. Sources feed it:

* :class:`TomlFileSource` watches a TOML file (see
  :doc:`/reference/policy-file`) by polling its ``stat()``;
* :class:`EtcdSource` reads the keys under an etcd prefix and then watches
  them, through etcd's v3 HTTP/JSON gateway with :mod:`httpx` (install the
  ``etcd`` extra).

A bad update is rejected whole: the store keeps the set it had, logs
``policy.rejected`` with every problem, and counts it. An accepted one is
logged as ``policy.updated`` with its revision, and wakes every subscriber
(:meth:`PolicyStore.subscribe`, :meth:`PolicyStore.wait_revision`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NoReturn, final

import attrs
import structlog
import trio

from ..errors import ConfigError
from ..policy import (
    MAX_RULES,
    PolicyError,
    PolicyProblem,
    PolicySet,
    load_policy_toml,
    policy_set_from_kv,
)

if TYPE_CHECKING:
    import httpx

__all__ = [
    "EtcdGatewayError",
    "EtcdSource",
    "PolicyStore",
    "PolicyStoreStatistics",
    "PolicySubscription",
    "TomlFileSource",
]

_log = structlog.get_logger("trioheart.policy")


@final
@attrs.frozen
class PolicyStoreStatistics:
    """A snapshot of a :class:`PolicyStore`, from :meth:`PolicyStore.statistics`."""

    #: The revision of the current set (0: the built-in defaults).
    revision: int
    #: The number of rules in the current set.
    rules: int
    #: Updates accepted since the store was made.
    accepted: int
    #: Updates rejected (invalid, or a stale revision).
    rejected: int
    #: Updates that held the current policies already, so changed nothing.
    unchanged: int
    #: The problems of the most recent rejected update, as text.
    last_rejected: tuple[str, ...]


@final
class PolicyStore:
    """Holds the current :class:`~trioheart.policy.PolicySet` and announces changes.

    Only its ``wait_*`` and subscription methods block; the rest never do.

    An update is accepted when it holds different policies from the current
    set and a higher revision. One with the same policies is ignored
    (whatever its revision: a touched file or an etcd reconnect changes
    nothing). One with different policies but a revision that is not higher
    is rejected: the revision a connection reports must name one content.

    Args:
      initial: The set to start with; by default the built-in defaults as
        revision 0.
    """

    def __init__(self, initial: PolicySet | None = None) -> None:
        self._current = PolicySet.builtin() if initial is None else initial
        self._changed = trio.Event()
        self._outcome = trio.Event()
        self._accepted = 0
        self._rejected = 0
        self._unchanged = 0
        self._last_rejected: tuple[str, ...] = ()

    @property
    def current(self) -> PolicySet:
        """The policy set in force."""
        return self._current

    @property
    def revision(self) -> int:
        """The revision of the policy set in force."""
        return self._current.revision

    def update(self, policy_set: PolicySet, *, source: str = "") -> bool:
        """Offer a validated set. Returns whether it became the current one.

        Logs ``policy.updated`` (or ``policy.rejected`` for a stale
        revision) and wakes every subscriber on a change.
        """
        current = self._current
        if policy_set.same_content(current):
            self._unchanged += 1
            self._announce_outcome()
            return False
        if policy_set.revision <= current.revision:
            self.reject(
                PolicyError(
                    [
                        PolicyProblem(
                            "",
                            "revision",
                            "revision must be raised on every change; got "
                            f"{policy_set.revision!r} after {current.revision!r}",
                        )
                    ]
                ),
                source=source,
                revision=policy_set.revision,
            )
            return False
        self._current = policy_set
        self._accepted += 1
        _log.info(
            "policy.updated",
            revision=policy_set.revision,
            previous_revision=current.revision,
            rules=len(policy_set.rules),
            source=source,
        )
        self._changed.set()
        self._changed = trio.Event()
        self._announce_outcome()
        return True

    def reject(self, error: PolicyError, *, source: str = "", revision: int | None = None) -> None:
        """Record an update that failed validation: log ``policy.rejected`` and count it."""
        self._rejected += 1
        self._last_rejected = tuple(str(problem) for problem in error.problems)
        _log.warning(
            "policy.rejected",
            source=source,
            revision=revision,
            running_revision=self._current.revision,
            errors=list(self._last_rejected),
        )
        self._announce_outcome()

    def _announce_outcome(self) -> None:
        self._outcome.set()
        self._outcome = trio.Event()

    def offer(self, load: Callable[[], PolicySet], *, source: str = "") -> bool:
        """Build a set with *load* and :meth:`update`, or :meth:`reject` its error.

        Returns whether the set in force changed.
        """
        try:
            policy_set = load()
        except PolicyError as error:
            self.reject(error, source=source)
            return False
        return self.update(policy_set, source=source)

    async def wait_revision(self, revision: int) -> PolicySet:
        """Wait until the set in force has at least *revision*, and return it.

        Always a checkpoint. Cancelling it loses nothing.
        """
        await trio.lowlevel.checkpoint()
        while self._current.revision < revision:
            await self._changed.wait()
        return self._current

    async def wait_statistics(
        self, predicate: Callable[[PolicyStoreStatistics], bool]
    ) -> PolicyStoreStatistics:
        """Wait until *predicate* holds for :meth:`statistics`, and return them.

        The predicate is evaluated now and after every update offered
        (accepted, rejected or unchanged), e.g.
        ``await store.wait_statistics(lambda s: s.rejected >= 1)``. Always a
        checkpoint; cancelling it loses nothing.
        """
        await trio.lowlevel.checkpoint()
        while not predicate(statistics := self.statistics()):
            await self._outcome.wait()
        return statistics

    def subscribe(self) -> PolicySubscription:
        """An async iterator over the sets in force: the current one, then each change.

        It holds no queue: a subscriber that falls behind skips to the
        newest set, which is all a connection needs. Use it as
        ``async for policy_set in store.subscribe(): ...``.
        """
        return PolicySubscription(self)

    def statistics(self) -> PolicyStoreStatistics:
        """Counters and the current revision."""
        return PolicyStoreStatistics(
            revision=self._current.revision,
            rules=len(self._current.rules),
            accepted=self._accepted,
            rejected=self._rejected,
            unchanged=self._unchanged,
            last_rejected=self._last_rejected,
        )


@final
class PolicySubscription:
    """Iterates over the policy sets in force; made by :meth:`PolicyStore.subscribe`.

    The first :meth:`__anext__` returns the current set at once; each later
    one waits for a newer set and returns the newest. Each is a checkpoint,
    and cancelling one loses nothing.
    """

    __slots__ = ("_seen", "_store")

    def __init__(self, store: PolicyStore) -> None:
        self._store = store
        self._seen: PolicySet | None = None

    def __aiter__(self) -> PolicySubscription:
        return self

    async def __anext__(self) -> PolicySet:
        await trio.lowlevel.checkpoint()
        while self._store.current is self._seen:
            await self._store._changed.wait()
        self._seen = self._store.current
        return self._seen


def _positive(name: str, value: float) -> float:
    if not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a positive, finite number of seconds; got {value!r}")
    return value


# --------------------------------------------------------------------------
# The TOML file


@final
class TomlFileSource:
    """Feeds a :class:`PolicyStore` from a TOML policy file, reloaded on change.

    It polls the file's ``stat()`` every *poll_interval* seconds and reloads
    when the modification time, size, inode or device changed. Polling is
    portable (Trio has no file-watch API, and inotify, kqueue and
    ReadDirectoryChangesW differ), it sees a file replaced by rename and a
    Kubernetes ConfigMap's symlink swap as well as an edit in place, and its
    cost is one ``stat()`` per interval. A change is seen within
    *poll_interval*.

    The ``stat()`` and the read run on the event loop's thread: the file is
    local and at most *max_bytes* (1 MiB by default), which takes well under
    a millisecond. Do not put it on a network filesystem.

    Write the file atomically (to a temporary file, then rename): a
    half-written file is rejected, and the next write is picked up.

    Args:
      path: The policy file.
      store: The store to feed.
      poll_interval: Seconds between two ``stat()`` calls.
      max_bytes: A larger file is rejected without being read whole.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        store: PolicyStore,
        *,
        poll_interval: float = 1.0,
        max_bytes: int = 1 << 20,
    ) -> None:
        self._path = os.fspath(path)
        self._store = store
        self._poll_interval = _positive("poll_interval", poll_interval)
        self._max_bytes = max_bytes
        self._signature: tuple[int, ...] | None = None
        self._digest: bytes | None = None
        self._failure: str | None = None

    @property
    def source(self) -> str:
        """How this source names itself in log events."""
        return f"file:{self._path}"

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Load the file, then keep polling it. Never returns; cancel it to stop.

        With ``await nursery.start(source.run)``, the start returns once the
        file was loaded for the first time (accepted or rejected: check
        :attr:`PolicyStore.revision` if you need a valid file to start).
        """
        await self.check()
        task_status.started()
        while True:
            await trio.sleep(self._poll_interval)
            await self.check()

    async def check(self) -> bool:
        """Poll once: reload the file if it changed. Returns whether the policy changed.

        Always a checkpoint. Useful to reload at once, e.g. on ``SIGHUP``.
        """
        await trio.lowlevel.checkpoint()
        try:
            # Synchronous on purpose: see the class docstring.
            read = _read_if_changed(self._path, self._signature, self._max_bytes)
        except OSError as exc:
            self._signature = None
            if str(exc) != self._failure:  # once per distinct failure, not per poll
                self._failure = str(exc)
                _log.warning("policy.source_failed", source=self.source, error=str(exc))
            return False
        if read is None:
            return False
        signature, data = read
        self._failure = None
        self._signature = signature
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest == self._digest:
            return False
        self._digest = digest
        if len(data) > self._max_bytes:
            self._store.reject(
                PolicyError(
                    [PolicyProblem("", "", f"the file is larger than {self._max_bytes} bytes")]
                ),
                source=self.source,
            )
            return False
        return self._store.offer(lambda: load_policy_toml(data), source=self.source)


def _read_if_changed(
    path: str, signature: tuple[int, ...] | None, max_bytes: int
) -> tuple[tuple[int, ...], bytes] | None:
    """The file's new signature and up to *max_bytes* + 1 bytes, or ``None`` if unchanged."""
    stat = os.stat(path)
    new = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino, stat.st_dev)
    if new == signature:
        return None
    with open(path, "rb") as file:
        return new, file.read(max_bytes + 1)


# --------------------------------------------------------------------------
# etcd


class _Resync(Exception):
    """The watch cannot continue (compacted, cancelled): read the prefix again."""


class EtcdGatewayError(Exception):
    """etcd's gateway answered with an error or something that is not its protocol."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise EtcdGatewayError(f"expected base64 text from etcd; got {text!r}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise EtcdGatewayError(f"bad base64 from etcd: {text[:40]!r}") from exc


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes an etcd range cover every key starting with *prefix*."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


@final
class EtcdSource:
    """Feeds a :class:`PolicyStore` from the keys under an etcd prefix, then watches them.

    The layout under the prefix is ``PREFIX + "default"`` for the default
    policy and ``PREFIX + "rules/" + NAME`` for each rule, each value a TOML
    document (see :func:`~trioheart.policy.policy_set_from_kv`). The set's
    revision is etcd's: the store revision a read saw, then the
    ``mod_revision`` of each watched change. Change several keys in one
    etcd transaction to change them at once: each watched change is
    validated whole, so an inconsistent intermediate state is rejected.

    It talks to etcd's v3 HTTP/JSON gateway with :mod:`httpx`, which runs on
    Trio; no maintained Trio etcd client exists. When the connection fails it
    retries with exponential backoff and full jitter, reading the prefix
    again before watching again, so nothing is missed. A watch that stays
    silent for *watch_idle_timeout* is re-established the same way: a silent
    etcd (or a middlebox that dropped the connection) costs at most that long.

    Args:
      store: The store to feed.
      endpoint: etcd's client URL, e.g. ``http://127.0.0.1:2379``.
      prefix: The key prefix.
      request_timeout: Seconds for connecting and for each plain request.
      watch_idle_timeout: Seconds a watch may stay silent before it is
        re-established.
      retry_base: The first retry waits up to this many seconds ...
      retry_cap: ... and no retry waits more than this.
      max_message_bytes: A longer gateway message is an error.
      client: An :class:`httpx.AsyncClient` to use (for TLS, auth headers
        or a proxy); its ``base_url`` must be etcd's, and the caller closes
        it. By default the source makes its own for *endpoint*, which
        ignores the proxy environment variables.
    """

    def __init__(
        self,
        store: PolicyStore,
        *,
        endpoint: str = "http://127.0.0.1:2379",
        prefix: str = "/trioheart/policy/",
        request_timeout: float = 5.0,
        watch_idle_timeout: float = 60.0,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        max_message_bytes: int = 8 << 20,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not prefix:
            raise ConfigError("prefix must not be empty; got ''")
        self._store = store
        self._endpoint = endpoint
        self._prefix = prefix
        self._key = prefix.encode()
        self._range_end = prefix_range_end(self._key)
        self._request_timeout = _positive("request_timeout", request_timeout)
        self._watch_idle_timeout = _positive("watch_idle_timeout", watch_idle_timeout)
        self._retry_base = _positive("retry_base", retry_base)
        self._retry_cap = _positive("retry_cap", retry_cap)
        self._max_message_bytes = max_message_bytes
        self._client = client
        self._items: dict[str, bytes] = {}
        self._random = random.Random()

    @property
    def source(self) -> str:
        """How this source names itself in log events."""
        return f"etcd:{self._endpoint}{self._prefix}"

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Read the prefix, then watch it. Never returns; cancel it to stop.

        With ``await nursery.start(source.run)``, the start returns once the
        prefix was read for the first time (its set accepted or rejected);
        while etcd cannot be reached it keeps retrying, so bound the start
        with :func:`trio.fail_after` if you must.
        """
        import httpx

        if self._client is not None:
            await self._loop(self._client, task_status)
        else:
            # trust_env=False: a proxy set in the environment for outbound
            # traffic must not capture the connection to etcd.
            async with httpx.AsyncClient(base_url=self._endpoint, trust_env=False) as client:
                await self._loop(client, task_status)

    async def _loop(
        self, client: httpx.AsyncClient, task_status: trio.TaskStatus[None]
    ) -> NoReturn:
        import httpx

        started = False
        failures = 0
        while True:
            try:
                revision = await self._read(client)
                if not started:
                    task_status.started()
                    started = True
                failures = 0
                await self._watch(client, revision)
            except _Resync as exc:
                _log.debug("policy.source_resync", source=self.source, reason=str(exc))
            except (httpx.HTTPError, EtcdGatewayError) as exc:
                delay = self._random.uniform(
                    0, min(self._retry_cap, self._retry_base * 2 ** min(failures, 30))
                )
                failures += 1
                _log.warning(
                    "policy.source_failed",
                    source=self.source,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 3),
                )
                await trio.sleep(delay)

    async def _post(
        self, client: httpx.AsyncClient, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        response = await client.post(path, json=body, timeout=self._request_timeout)
        if response.status_code != 200:
            raise EtcdGatewayError(f"{path}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            reply = response.json()
        except ValueError as exc:
            raise EtcdGatewayError(f"{path}: not JSON: {response.text[:200]!r}") from exc
        if not isinstance(reply, dict):
            raise EtcdGatewayError(f"{path}: expected a JSON object; got {reply!r}"[:200])
        return reply

    async def _read(self, client: httpx.AsyncClient) -> int:
        """Read every key under the prefix; offer the set; return the revision read."""
        limit = MAX_RULES + 2  # MAX_RULES rules, the default, and one to see there are more
        reply = await self._post(
            client,
            "/v3/kv/range",
            {"key": _b64(self._key), "range_end": _b64(self._range_end), "limit": limit},
        )
        revision = _revision(reply.get("header"))
        items = {}
        for kv in reply.get("kvs", []):
            items[_unb64(kv.get("key")).decode("utf-8", "replace")] = _unb64(kv.get("value", ""))
        self._items = items
        if reply.get("more"):
            self._store.reject(
                PolicyError(
                    [PolicyProblem("", "", f"more than {limit - 1} keys under {self._prefix!r}")]
                ),
                source=self.source,
                revision=revision,
            )
        else:
            self._offer(revision)
        return revision

    def _offer(self, revision: int) -> None:
        try:
            policy_set = policy_set_from_kv(self._items, prefix=self._prefix, revision=revision)
        except PolicyError as error:
            self._store.reject(error, source=self.source, revision=revision)
        else:
            self._store.update(policy_set, source=self.source)

    async def _watch(self, client: httpx.AsyncClient, revision: int) -> None:
        """Watch from *revision* + 1 until the watch goes quiet; raises on failure."""
        import httpx

        body = {
            "create_request": {
                "key": _b64(self._key),
                "range_end": _b64(self._range_end),
                "start_revision": revision + 1,
            }
        }
        timeout = httpx.Timeout(self._request_timeout, read=self._watch_idle_timeout)
        try:
            async with client.stream("POST", "/v3/watch", json=body, timeout=timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise EtcdGatewayError(
                        f"/v3/watch: HTTP {response.status_code}: {response.text[:200]}"
                    )
                lines = _json_lines(response.aiter_bytes(), self._max_message_bytes)
                async with contextlib.aclosing(lines):
                    async for message in lines:
                        self._on_watch_message(message)
        except httpx.ReadTimeout:
            raise _Resync(f"no watch message for {self._watch_idle_timeout} s") from None
        raise EtcdGatewayError("etcd ended the watch")

    def _on_watch_message(self, message: Any) -> None:
        if not isinstance(message, dict):
            raise EtcdGatewayError(f"unexpected watch message: {message!r}"[:200])
        if "error" in message:
            raise EtcdGatewayError(f"watch error: {message['error']!r}"[:200])
        result = message.get("result")
        if not isinstance(result, dict):
            raise EtcdGatewayError(f"unexpected watch message: {message!r}"[:200])
        if result.get("canceled") or result.get("compact_revision"):
            raise _Resync(
                f"watch cancelled (compact_revision={result.get('compact_revision')}, "
                f"reason={result.get('cancel_reason', '')!r})"
            )
        events = result.get("events") or []
        if not events:
            return  # created, or a progress notification
        revision = 0
        for event in events:
            kv = event.get("kv") or {}
            key = _unb64(kv.get("key")).decode("utf-8", "replace")
            revision = max(revision, _int(kv.get("mod_revision")))
            if event.get("type") == "DELETE":
                self._items.pop(key, None)
            else:  # PUT is the zero value, which the gateway leaves out
                self._items[key] = _unb64(kv.get("value", ""))
        if len(self._items) > MAX_RULES + 1:
            self._store.reject(
                PolicyError([PolicyProblem("", "", f"too many keys under {self._prefix!r}")]),
                source=self.source,
                revision=revision,
            )
            return
        self._offer(revision)


def _int(value: object) -> int:
    # The gateway writes int64 as JSON strings.
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError) as exc:
        raise EtcdGatewayError(f"expected an integer from etcd; got {value!r}") from exc


def _revision(header: object) -> int:
    if not isinstance(header, dict):
        raise EtcdGatewayError(f"expected a header from etcd; got {header!r}")
    return _int(header.get("revision"))


async def _json_lines(chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncGenerator[Any, None]:
    """Decode newline-delimited JSON, with each line bounded to *max_bytes*."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise EtcdGatewayError(f"watch: not JSON: {line[:200]!r}") from exc
        if len(buffer) > max_bytes:
            raise EtcdGatewayError(f"watch: a message is longer than {max_bytes} bytes")
