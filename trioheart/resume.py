"""Resume by sequence number: exactly once, in order, or an explicit reset. Sans-IO.

A chat client that reconnects must receive every message it missed, once and
in order, or be told plainly that it cannot (Centrifugo's offset + epoch,
Socket.IO's connection state recovery and SignalR's stateful reconnect are
the peers; see :doc:`/explanation/resume`). This module holds the whole
protocol and does no I/O: nothing here imports trio, reads a clock or opens a
socket. The caller passes ``now`` and moves the texts.

The pieces, from the bottom up:

* :class:`RoomLog`: a per-room log bounded by count, bytes and age
  (:class:`LogLimits`) that gives each message the room's next sequence
  number, under an *epoch* that names this instance of the log;
* :class:`ResumeServer`: issues :class:`Session` tokens (random, HMAC-bound
  to room, epoch and identity) and decides a resume request:
  :class:`ResumeAccepted`, :class:`ResumeReset` or :class:`ResumeRefused`;
* :class:`Room`: a log plus its live subscribers; it joins and resumes a
  subscriber in the same step that reads the log's head, which is what makes
  "replay, then live" free of gaps and duplicates;
* :class:`ResumeClient`: the client's side: last seq, dedup, gap detection,
  and the events the application sees.

The wire messages are JSON text frames; :doc:`/reference/resume` has the
table.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import itertools
import json
import math
import secrets
import struct
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Generic, TypeAlias, TypeVar, final

import attrs

from .errors import ConfigError, TrioheartError
from .reasons import CloseReason

__all__ = [
    "RESUME_QUERY_PARAM",
    "ClientEvent",
    "ClientState",
    "ClientStatistics",
    "GapDetected",
    "LogEntry",
    "LogLimits",
    "LogStatistics",
    "MessageReceived",
    "NewSession",
    "Publication",
    "RefuseReason",
    "ResetReason",
    "ResumeAccepted",
    "ResumeClient",
    "ResumeOutcome",
    "ResumeProtocolError",
    "ResumeRefused",
    "ResumeReset",
    "ResumeServer",
    "ResumeStateError",
    "ResumeStatistics",
    "ResyncRequired",
    "Room",
    "RoomLog",
    "Session",
    "SessionResumed",
    "SessionStarted",
    "encode_message",
]

#: The query parameter a reconnecting client adds to the WebSocket URL
#: (``...&resume=1``). It tells the server to wait for a ``resume`` message
#: as the first frame instead of starting a fresh session at once; the token
#: itself never travels in the URL, where proxies would log it.
RESUME_QUERY_PARAM: Final = "resume"

_TOKEN_VERSION: Final = 1
_SESSION_ID_BYTES: Final = 16  # 128 bits from `secrets`
_MAC_BYTES: Final = 32  # HMAC-SHA256, untruncated
_TOKEN_BODY: Final = struct.Struct(">B16sdQ")  # version, session id, expires_at, since_seq
_TOKEN_BYTES: Final = _TOKEN_BODY.size + _MAC_BYTES
_TOKEN_TEXT_MAX: Final = 128  # base64 of 65 bytes is 87 characters
_MAC_DOMAIN: Final = b"trioheart.resume.token.v1\x00"
_MIN_KEY_BYTES: Final = 16
_EPOCH_MAX: Final = 64
_SEQ_MAX: Final = 2**63 - 1


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ResumeProtocolError(TrioheartError, ValueError):
    """The peer sent a resume-protocol message that breaks the protocol.

    Raised by :meth:`ResumeClient.receive` for a server message that is not
    JSON, lacks a field, or arrives in a state where it cannot (a sequenced
    message before ``hello``, say). The caller should close the connection
    (:attr:`CloseReason.PROTOCOL_ERROR <trioheart.CloseReason.PROTOCOL_ERROR>`)
    and reconnect; the client's last seq is untouched, so the next connection
    resumes where this one stopped. The server side never raises this: a
    bad request from a client is a :class:`ResumeRefused` outcome.
    """


class ResumeStateError(TrioheartError, RuntimeError):
    """This side called the resume API out of order.

    For example, :meth:`Room.join` for a subscriber that is already in the
    room, or :meth:`ResumeClient.start_connection` while a connection is
    still open. Like h11's ``LocalProtocolError``: a bug in the caller.
    """


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name} must be a positive integer; got {value!r}")


def _positive_finite(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(
            f"{attribute.name} must be a positive, finite number of seconds; got {value!r}"
        )


def _check_now(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ConfigError(f"now must be a finite number of seconds; got {now!r}")
    return float(now)


def _check_epoch(epoch: str) -> str:
    if not isinstance(epoch, str) or not 0 < len(epoch) <= _EPOCH_MAX or not epoch.isprintable():
        raise ConfigError(
            f"epoch must be a printable string of 1 to {_EPOCH_MAX} characters; got {epoch!r}"
        )
    return epoch


def _check_name(field: str, value: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a string; got {value!r}")
    return value


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _SEQ_MAX


def encode_message(message: Mapping[str, Any]) -> str:
    """The wire text of *message*: compact JSON, UTF-8 kept as is, no NaN.

    Every text this module produces goes through this function, so a
    replayed message is byte for byte what was sent live.

    Raises:
      ConfigError: if *message* cannot be encoded as strict JSON.
    """
    try:
        return json.dumps(dict(message), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"message must be JSON-serialisable; got {message!r}: {exc}") from exc


# --------------------------------------------------------------------------
# The room log
# --------------------------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class LogLimits:
    """How much of a room's history the server keeps for resuming clients.

    All three bounds hold at once: a message is dropped from the log as soon
    as any one of them says so (oldest first). A client that missed a
    dropped message gets a ``reset`` with reason ``trimmed``, never silence.

    Args:
      max_messages: At most this many messages per room.
      max_bytes: At most this many bytes of message text (UTF-8) per room.
        A single message larger than this is sent live but never kept.
      max_age: Messages older than this many seconds are dropped. Socket.IO's
        connection state recovery keeps 120 s by default; so do we.

    Raises:
      ConfigError: naming the field and the value, for a non-positive,
        non-integer (counts) or non-finite (age) value.
    """

    max_messages: int = attrs.field(default=1000, validator=_positive_int)
    max_bytes: int = attrs.field(default=1_000_000, validator=_positive_int)
    max_age: float = attrs.field(default=120.0, validator=_positive_finite)


@final
@attrs.frozen(kw_only=True)
class LogEntry:
    """One message as the log keeps it."""

    #: The room's sequence number of this message (1, 2, 3, ...).
    seq: int
    #: When it was appended, on the caller's clock.
    at: float
    #: The exact wire text, ``"seq"`` included; replay sends these bytes.
    text: str
    #: What it counts against :attr:`LogLimits.max_bytes`, ``len(text.encode())``.
    size: int


@final
@attrs.frozen(kw_only=True)
class LogStatistics:
    """A snapshot of one :class:`RoomLog`, as returned by :meth:`RoomLog.statistics`."""

    #: The log's epoch.
    epoch: str
    #: The sequence number of the newest message (0 before the first).
    last_seq: int
    #: The oldest sequence number still kept (``last_seq + 1`` when empty).
    first_seq: int
    #: Messages kept now.
    messages: int
    #: Bytes of message text kept now.
    bytes: int
    #: Messages appended since the log was created.
    appended_total: int
    #: Messages dropped by any of the three bounds since the log was created.
    trimmed_total: int


@final
class RoomLog:
    r"""The bounded, sequenced history of one room.

    Sequence numbers start at 1 and increase by one per :meth:`append`, with
    no holes: trimming drops messages from the log, never numbers from the
    sequence. The *epoch* names this instance of the log; a new log (a
    server restart, or a room that was dropped and made again) has a new
    epoch, so a client can never confuse its seq 7 with another log's seq 7.

    Args:
      limits: The bounds; :class:`LogLimits` defaults when omitted.
      epoch: A name for this instance. Defaults to 64 random bits in hex,
        which differ from one process (and one log) to the next.
      last_seq: The head to start from, 0 for a new log. A node that mirrors
        a log kept elsewhere (:mod:`trioheart.broker`) starts its copy at
        the first kept entry's ``seq - 1`` and :meth:`add`\ s the entries.

    Raises:
      ConfigError: for an *epoch* that is empty, too long or not printable,
        or a *last_seq* that is not a non-negative integer.
    """

    __slots__ = ("_appended", "_bytes", "_entries", "_epoch", "_last_seq", "_limits", "_trimmed")

    def __init__(
        self, limits: LogLimits | None = None, *, epoch: str | None = None, last_seq: int = 0
    ) -> None:
        self._limits = LogLimits() if limits is None else limits
        self._epoch = secrets.token_hex(8) if epoch is None else _check_epoch(epoch)
        if not _is_seq(last_seq):
            raise ConfigError(f"last_seq must be an integer in [0, {_SEQ_MAX}]; got {last_seq!r}")
        self._entries: deque[LogEntry] = deque()
        self._bytes = 0
        self._last_seq = last_seq
        self._appended = 0
        self._trimmed = 0

    @property
    def limits(self) -> LogLimits:
        """The bounds in force."""
        return self._limits

    @property
    def epoch(self) -> str:
        """The name of this instance of the log."""
        return self._epoch

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest message, or 0 before the first."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """The oldest sequence number still kept; ``last_seq + 1`` when none is."""
        return self._entries[0].seq if self._entries else self._last_seq + 1

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, message: Mapping[str, Any], *, now: float) -> LogEntry:
        """Give *message* the next sequence number, keep it, and trim.

        Args:
          message: The message without its ``"seq"``, e.g.
            ``{"type": "chat", "text": "hi", "from": "ann"}``.
          now: The current time; it dates the entry for :attr:`LogLimits.max_age`.

        Returns:
          The entry; send :attr:`LogEntry.text` to every subscriber. It is
          returned even when the bounds dropped it at once (a message larger
          than :attr:`LogLimits.max_bytes`).

        Raises:
          ConfigError: if *message* already has a ``"seq"``, is not
            JSON-serialisable, or *now* is not finite.
        """
        now = _check_now(now)
        if "seq" in message:
            raise ConfigError(
                f"message must not carry its own seq; the log assigns it; got {message!r}"
            )
        if self._last_seq >= _SEQ_MAX:  # pragma: no cover - 2**63 messages
            raise ConfigError(f"seq would exceed {_SEQ_MAX} in epoch {self._epoch!r}")
        seq = self._last_seq + 1
        text = encode_message({**message, "seq": seq})
        entry = LogEntry(seq=seq, at=now, text=text, size=len(text.encode("utf-8")))
        self._last_seq = seq
        self._appended += 1
        self._entries.append(entry)
        self._bytes += entry.size
        self._trim_to_limits(now)
        return entry

    def add(self, entry: LogEntry, *, now: float) -> None:
        """Keep an entry that was sequenced elsewhere, then trim.

        :meth:`append` numbers messages itself; a node that mirrors a log
        kept by a broker receives them numbered, in order, and adds them
        here so that :meth:`since` can replay them.

        Args:
          entry: The next entry: its seq must be :attr:`last_seq` ``+ 1``.
          now: The current time, for :attr:`LogLimits.max_age`.

        Raises:
          ConfigError: if *entry* is not the next one, or *now* is not finite.
        """
        now = _check_now(now)
        if entry.seq != self._last_seq + 1:
            raise ConfigError(
                f"entry.seq must be {self._last_seq + 1}, the next in epoch {self._epoch!r}; "
                f"got {entry.seq!r}"
            )
        self._last_seq = entry.seq
        self._appended += 1
        self._entries.append(entry)
        self._bytes += entry.size
        self._trim_to_limits(now)

    def trim(self, *, now: float) -> int:
        """Drop what the bounds no longer allow at *now*. Returns how many were dropped."""
        return self._trim_to_limits(_check_now(now))

    def _trim_to_limits(self, now: float) -> int:
        limits, entries, dropped = self._limits, self._entries, 0
        while entries and (
            len(entries) > limits.max_messages
            or self._bytes > limits.max_bytes
            or now - entries[0].at > limits.max_age
        ):
            self._bytes -= entries.popleft().size
            dropped += 1
        self._trimmed += dropped
        return dropped

    def since(self, seq: int) -> tuple[LogEntry, ...] | None:
        """Every message after *seq*, oldest first, or ``None`` if some are gone.

        Args:
          seq: The last sequence number the client has, ``0 <= seq <= last_seq``.

        Returns:
          The entries ``seq + 1 .. last_seq`` (empty when *seq* is the head),
          or ``None`` when the bounds already dropped one of them.

        Raises:
          ConfigError: if *seq* is negative or beyond :attr:`last_seq`.
        """
        if not _is_seq(seq) or seq > self._last_seq:
            raise ConfigError(f"seq must be an integer in [0, {self._last_seq}]; got {seq!r}")
        first = self.first_seq
        if seq + 1 < first:
            return None
        return tuple(itertools.islice(self._entries, seq + 1 - first, None))

    def statistics(self) -> LogStatistics:
        """A snapshot of the counters and the current size."""
        return LogStatistics(
            epoch=self._epoch,
            last_seq=self._last_seq,
            first_seq=self.first_seq,
            messages=len(self._entries),
            bytes=self._bytes,
            appended_total=self._appended,
            trimmed_total=self._trimmed,
        )


# --------------------------------------------------------------------------
# Sessions and the server's decisions
# --------------------------------------------------------------------------


class ResetReason(enum.StrEnum):
    """Why the gap cannot be filled; the client must resync from elsewhere."""

    #: The log no longer holds every message after the client's seq
    #: (:class:`LogLimits` dropped one by count, bytes or age).
    TRIMMED = "trimmed"
    #: The client's epoch is not the log's. The server restarted or the room's
    #: log was made anew, so its seq numbers mean nothing here.
    EPOCH_CHANGED = "epoch_changed"
    #: The token was genuine but its lifetime is over.
    TOKEN_EXPIRED = "token_expired"


class RefuseReason(enum.StrEnum):
    """Why a resume request was refused. Sent to the client; then the connection closes."""

    #: The request is not a well-formed ``resume`` message.
    MALFORMED = "malformed"
    #: The token was not issued by this server for this room and identity
    #: (forged, tampered with, or another session's). Which of these it was
    #: is deliberately not said.
    INVALID_TOKEN = "invalid_token"
    #: The seq lies before the session's first message or after the room's
    #: newest: the client claims what it cannot have.
    INVALID_SEQ = "invalid_seq"


@final
@attrs.frozen(kw_only=True)
class Session:
    """A client's right to resume: who, where, since when, until when.

    Made by :meth:`ResumeServer.new_session`, renewed by
    :meth:`ResumeServer.refresh` and by every accepted resume. The server
    keeps no table of sessions: everything it needs is in the token, and the
    HMAC makes the token impossible to forge or to move to another room,
    epoch or identity. So any server holding the key can resume it.
    """

    #: 128 random bits in hex; stable across resumes (for logs).
    id: str
    #: The room the session belongs to.
    room: str
    #: Who the server says the client is (``""`` for anonymous clients).
    identity: str
    #: The epoch of the room log the session started in.
    epoch: str
    #: The room's head when the session started. The session may resume from
    #: here on, never from before (it must not read history it never had).
    since_seq: int
    #: When the token was issued (caller's clock).
    issued_at: float
    #: When the token stops working (caller's clock).
    expires_at: float
    #: The opaque token the client presents to resume. A bearer secret, so it
    #: is kept out of ``repr`` and does not end up in logs.
    token: str = attrs.field(repr=False)

    @property
    def refresh_at(self) -> float:
        """When to send the client a fresh token, halfway through its lifetime."""
        return self.issued_at + (self.expires_at - self.issued_at) / 2

    def token_message(self) -> str:
        """The ``{"type": "token"}`` message that hands the client this token."""
        return encode_message({"type": "token", "token": self.token})


@final
@attrs.frozen(kw_only=True)
class NewSession:
    """A fresh session: live from ``seq + 1`` on. Send :meth:`messages`, then live."""

    session: Session
    #: The room's head when the subscriber went live; it receives ``seq + 1`` onwards.
    seq: int

    @property
    def goes_live(self) -> bool:
        """Always ``True``; the subscriber is in the room."""
        return True

    def messages(self) -> tuple[str, ...]:
        """The wire texts to send, in order, before any live message."""
        s = self.session
        hello = {"type": "hello", "session": s.id, "token": s.token, "epoch": s.epoch}
        return (encode_message({**hello, "seq": self.seq}),)


@final
@attrs.frozen(kw_only=True)
class ResumeAccepted:
    """The gap can be filled: send ``resumed``, the replay, then live from ``seq + 1``."""

    session: Session
    #: The seq the client presented (the last it has).
    from_seq: int
    #: The room's head when the subscriber went live; the replay ends here.
    seq: int
    #: The messages ``from_seq + 1 .. seq``, oldest first.
    replay: tuple[LogEntry, ...]

    @property
    def goes_live(self) -> bool:
        """Always ``True``; the subscriber is in the room."""
        return True

    def messages(self) -> tuple[str, ...]:
        """``resumed``, then each replayed message, in order."""
        s = self.session
        resumed = encode_message(
            {
                "type": "resumed",
                "session": s.id,
                "token": s.token,
                "epoch": s.epoch,
                "seq": self.seq,
                "replay": len(self.replay),
            }
        )
        return (resumed, *(entry.text for entry in self.replay))


@final
@attrs.frozen(kw_only=True)
class ResumeReset:
    """The gap cannot be filled: the client must resync; it gets a fresh session."""

    reason: ResetReason
    #: The fresh session the client continues with (live from ``fresh.seq + 1``).
    fresh: NewSession

    @property
    def goes_live(self) -> bool:
        """Always ``True``; the subscriber is in the room, on a fresh session."""
        return True

    @property
    def session(self) -> Session:
        """The fresh session."""
        return self.fresh.session

    @property
    def seq(self) -> int:
        """The room's head when the subscriber went live."""
        return self.fresh.seq

    def messages(self) -> tuple[str, ...]:
        """``reset``, then ``hello`` for the fresh session."""
        reset = encode_message({"type": "reset", "reason": self.reason.value})
        return (reset, *self.fresh.messages())


@final
@attrs.frozen(kw_only=True)
class ResumeRefused:
    """The request is refused: send :meth:`messages`, then close with :attr:`close_reason`."""

    reason: RefuseReason
    #: A human-readable sentence about the *request* (never about other sessions).
    detail: str

    @property
    def goes_live(self) -> bool:
        """Always ``False``; the subscriber is not in the room."""
        return False

    @property
    def close_reason(self) -> CloseReason:
        """The reason to close the connection with."""
        return CloseReason.RESUME_REFUSED

    def messages(self) -> tuple[str, ...]:
        """The ``refused`` message."""
        return (
            encode_message({"type": "refused", "reason": self.reason.value, "detail": self.detail}),
        )


#: What :meth:`ResumeServer.resume` and :meth:`Room.resume` answer.
ResumeOutcome: TypeAlias = ResumeAccepted | ResumeReset | ResumeRefused


@final
@attrs.frozen(kw_only=True)
class ResumeStatistics:
    """A snapshot of one :class:`ResumeServer`, for metrics."""

    #: Sessions started fresh (first connections, and after each reset).
    new_sessions: int
    #: Resume requests accepted.
    resumed: int
    #: Messages handed out in replays.
    replayed: int
    #: Resets by reason.
    resets: Mapping[ResetReason, int]
    #: Refusals by reason.
    refusals: Mapping[RefuseReason, int]


@attrs.frozen
class _Request:
    token: str
    epoch: str
    seq: int


def _parse_request(request: str | Mapping[str, Any]) -> _Request | str:
    """The request, or a sentence saying what is wrong with it."""
    if isinstance(request, str):
        try:
            request = json.loads(request)
        except (ValueError, RecursionError):
            return "request is not valid JSON"
    if not isinstance(request, Mapping):
        return "request must be a JSON object"
    if request.get("type") != "resume":
        return 'request must have "type": "resume"'
    token, epoch, seq = request.get("token"), request.get("epoch"), request.get("seq")
    if not isinstance(token, str) or not 0 < len(token) <= _TOKEN_TEXT_MAX:
        return f"token must be a string of 1 to {_TOKEN_TEXT_MAX} characters"
    if not isinstance(epoch, str) or not 0 < len(epoch) <= _EPOCH_MAX:
        return f"epoch must be a string of 1 to {_EPOCH_MAX} characters"
    if not _is_seq(seq):
        return f"seq must be an integer in [0, {_SEQ_MAX}]"
    assert isinstance(seq, int)
    return _Request(token=token, epoch=epoch, seq=seq)


def _fits(replay: tuple[LogEntry, ...], limits: LogLimits, *, now: float) -> bool:
    """Whether *replay* is within *limits*: count, bytes, and the oldest entry's age."""
    if len(replay) > limits.max_messages:
        return False
    if replay and now - replay[0].at > limits.max_age:
        return False
    return sum(entry.size for entry in replay) <= limits.max_bytes


def _length_prefixed(*parts: str) -> bytes:
    out = bytearray()
    for part in parts:
        raw = part.encode("utf-8", "surrogatepass")
        out += struct.pack(">I", len(raw)) + raw
    return bytes(out)


def _encode_token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _check_key(field: str, key: object) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) < _MIN_KEY_BYTES:
        shown = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ConfigError(f"{field} must be at least {_MIN_KEY_BYTES} bytes; got {shown}")
    return bytes(key)


@final
class ResumeServer:
    """Issues session tokens and decides resume requests. No I/O, no clock.

    One per server process (or one per cluster key). It keeps no per-session
    state, only counters: a token carries the session id (128 bits from
    :mod:`secrets`), the seq the session started at and its expiry, all
    bound by HMAC-SHA256 under *key* to the room, the log's epoch and the
    client's identity. Tokens are checked with :func:`hmac.compare_digest`.

    Use the same clock for *now* everywhere; if tokens must be accepted by
    other processes (several nodes on one key), make it the wall clock.

    Args:
      key: The HMAC key, at least 16 bytes. Defaults to 32 random bytes, so
        tokens die with the process (the epochs do too).
      previous_keys: Keys still accepted for verification (key rotation);
        new tokens are always signed with *key*.
      token_ttl: How long a token works after it is issued, in seconds.
        Send a fresh one at :attr:`Session.refresh_at` so a connection that
        lives longer than this can still resume.

    Raises:
      ConfigError: for a short or non-bytes key (the message gives its length,
        never its value) or a non-positive *token_ttl*.
    """

    __slots__ = ("_keys", "_new_sessions", "_refusals", "_replayed", "_resets", "_resumed", "_ttl")

    def __init__(
        self,
        *,
        key: bytes | None = None,
        previous_keys: Sequence[bytes] = (),
        token_ttl: float = 300.0,
    ) -> None:
        signing = secrets.token_bytes(32) if key is None else _check_key("key", key)
        self._keys = (signing, *(_check_key("previous_keys[]", k) for k in previous_keys))
        if (
            isinstance(token_ttl, bool)
            or not isinstance(token_ttl, int | float)
            or not 0 < token_ttl < math.inf
        ):
            raise ConfigError(
                f"token_ttl must be a positive, finite number of seconds; got {token_ttl!r}"
            )
        self._ttl = float(token_ttl)
        self._new_sessions = 0
        self._resumed = 0
        self._replayed = 0
        self._resets = dict.fromkeys(ResetReason, 0)
        self._refusals = dict.fromkeys(RefuseReason, 0)

    @property
    def token_ttl(self) -> float:
        """How long a token works after it is issued, in seconds."""
        return self._ttl

    def _mac(self, key: bytes, body: bytes, *, room: str, epoch: str, identity: str) -> bytes:
        context = _length_prefixed(room, epoch, identity)
        return hmac.new(key, _MAC_DOMAIN + body + context, hashlib.sha256).digest()

    def _issue(
        self, *, session_id: bytes, room: str, identity: str, epoch: str, since_seq: int, now: float
    ) -> Session:
        expires_at = now + self._ttl
        body = _TOKEN_BODY.pack(_TOKEN_VERSION, session_id, expires_at, since_seq)
        mac = self._mac(self._keys[0], body, room=room, epoch=epoch, identity=identity)
        token = _encode_token(body + mac)
        return Session(
            id=session_id.hex(),
            room=room,
            identity=identity,
            epoch=epoch,
            since_seq=since_seq,
            issued_at=now,
            expires_at=expires_at,
            token=token,
        )

    def _open(
        self, token: str, *, room: str, identity: str, epoch: str
    ) -> tuple[bytes, float, int] | None:
        """The token's (session id, expires_at, since_seq) if genuine here, else ``None``."""
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _TOKEN_BYTES or _encode_token(raw) != token:
            return None  # the length, and only the canonical spelling of those bytes
        body, mac = raw[: _TOKEN_BODY.size], raw[_TOKEN_BODY.size :]
        genuine = False
        for key in self._keys:  # every key, always: the time taken does not say which matched
            expected = self._mac(key, body, room=room, epoch=epoch, identity=identity)
            genuine |= hmac.compare_digest(expected, mac)
        if not genuine:
            return None
        version, session_id, expires_at, since_seq = _TOKEN_BODY.unpack(body)
        if version != _TOKEN_VERSION:  # pragma: no cover - only v1 is ever signed
            return None
        return session_id, expires_at, since_seq

    def new_session(self, log: RoomLog, *, room: str, identity: str = "", now: float) -> NewSession:
        """Start a fresh session in *room*, live from the log's head.

        The caller must make the subscriber live in the same step, with no
        checkpoint in between (:class:`Room` does exactly this).

        Args:
          log: The room's log; its head is where the session starts.
          room: The room's name, bound into the token.
          identity: Who the client is, as the application knows it
            (``""`` for anonymous), bound into the token.
          now: The current time.
        """
        now = _check_now(now)
        _check_name("room", room)
        _check_name("identity", identity)
        session = self._issue(
            session_id=secrets.token_bytes(_SESSION_ID_BYTES),
            room=room,
            identity=identity,
            epoch=log.epoch,
            since_seq=log.last_seq,
            now=now,
        )
        self._new_sessions += 1
        return NewSession(session=session, seq=log.last_seq)

    def refresh(self, session: Session, *, now: float) -> Session:
        """The same session with a fresh token and expiry.

        Send :meth:`Session.token_message` of the result to the client.
        """
        return self._issue(
            session_id=bytes.fromhex(session.id),
            room=session.room,
            identity=session.identity,
            epoch=session.epoch,
            since_seq=session.since_seq,
            now=_check_now(now),
        )

    def resume(
        self,
        request: str | Mapping[str, Any],
        log: RoomLog,
        *,
        room: str,
        identity: str = "",
        now: float,
        replay_limits: LogLimits | None = None,
    ) -> ResumeOutcome:
        """Decide a resume request against *log* at *now*.

        The checks, in order (the first that fails decides):

        1. the request is a well-formed ``resume`` message, else refused
           ``malformed``;
        2. its epoch is the log's, else reset ``epoch_changed`` (epochs are
           public, so this says nothing about any session);
        3. the token is genuine for this room, epoch and identity, else
           refused ``invalid_token``;
        4. the token has not expired, else reset ``token_expired``;
        5. ``since_seq <= seq <= last_seq``, else refused ``invalid_seq``;
        6. the log still holds every message after seq, else reset
           ``trimmed`` (the log is trimmed to its bounds at *now* first,
           whatever the outcome);
        7. the replay fits *replay_limits*, when given, else reset
           ``trimmed``: this connection's own, narrower bounds (a
           heartbeat policy's ``resume_*`` keys) on what it may be replayed;

        and then the resume is accepted with the replay of ``seq + 1 ..
        last_seq`` and a renewed token. A reset carries a fresh session, so
        the client is live again at once. The caller must make the
        subscriber live in the same step as this call when
        :attr:`~ResumeAccepted.goes_live` (:meth:`Room.resume` does).

        Args:
          request: The client's first message, as text or parsed JSON.
          log: The room's log.
          room: The room of this connection.
          identity: Who the client is, as the application knows it.
          now: The current time.
          replay_limits: At most this much may be replayed to this client:
            that many messages, that many bytes, none older than that;
            beyond it the client is told ``reset``. ``None``: the log's
            bounds only.
        """
        now = _check_now(now)
        _check_name("room", room)
        _check_name("identity", identity)
        log.trim(now=now)  # first, so no outcome hands out what the bounds already dropped
        parsed = _parse_request(request)
        if isinstance(parsed, str):
            return self._refuse(RefuseReason.MALFORMED, parsed)
        if parsed.epoch != log.epoch:
            return self._reset(
                ResetReason.EPOCH_CHANGED, log, room=room, identity=identity, now=now
            )
        opened = self._open(parsed.token, room=room, identity=identity, epoch=parsed.epoch)
        if opened is None:
            return self._refuse(
                RefuseReason.INVALID_TOKEN, "the token is not valid for this room and identity"
            )
        session_id, expires_at, since_seq = opened
        if not now < expires_at:
            return self._reset(
                ResetReason.TOKEN_EXPIRED, log, room=room, identity=identity, now=now
            )
        if not since_seq <= parsed.seq <= log.last_seq:
            return self._refuse(
                RefuseReason.INVALID_SEQ,
                f"seq {parsed.seq} is outside what this session can have",
            )
        replay = log.since(parsed.seq)
        if replay is None or (
            replay_limits is not None and not _fits(replay, replay_limits, now=now)
        ):
            return self._reset(ResetReason.TRIMMED, log, room=room, identity=identity, now=now)
        session = self._issue(
            session_id=session_id,
            room=room,
            identity=identity,
            epoch=log.epoch,
            since_seq=since_seq,
            now=now,
        )
        self._resumed += 1
        self._replayed += len(replay)
        return ResumeAccepted(session=session, from_seq=parsed.seq, seq=log.last_seq, replay=replay)

    def _refuse(self, reason: RefuseReason, detail: str) -> ResumeRefused:
        self._refusals[reason] += 1
        return ResumeRefused(reason=reason, detail=detail)

    def _reset(
        self, reason: ResetReason, log: RoomLog, *, room: str, identity: str, now: float
    ) -> ResumeReset:
        self._resets[reason] += 1
        return ResumeReset(
            reason=reason, fresh=self.new_session(log, room=room, identity=identity, now=now)
        )

    def statistics(self) -> ResumeStatistics:
        """A snapshot of the counters (for ``trioheart_resumes_total`` and friends)."""
        return ResumeStatistics(
            new_sessions=self._new_sessions,
            resumed=self._resumed,
            replayed=self._replayed,
            resets=MappingProxyType(dict(self._resets)),
            refusals=MappingProxyType(dict(self._refusals)),
        )


# --------------------------------------------------------------------------
# A room: the log plus its live subscribers
# --------------------------------------------------------------------------

T = TypeVar("T", bound=Hashable)


@final
@attrs.frozen(kw_only=True)
class Publication(Generic[T]):
    """What :meth:`Room.publish` answers: send ``entry.text`` to each recipient."""

    entry: LogEntry
    #: The live subscribers at the moment of publishing, in join order.
    recipients: tuple[T, ...]


@final
class Room(Generic[T]):
    """One room's log and the subscribers that are live in it.

    The subscribers are whatever the caller uses for a connection (any
    hashable object, e.g. its send channel). :meth:`join` and :meth:`resume`
    read the log's head *and* add the subscriber in one call, so a
    subscriber is live from exactly ``head + 1``: every message up to the
    head reaches it through the outcome's :meth:`messages`, every later one
    through :meth:`publish`'s recipients. The caller keeps this true by
    queueing the outcome's messages before any later publication's, e.g. by
    doing both with no checkpoint in between (``send_nowait`` into the
    connection's queue, in the same synchronous step).

    Args:
      name: The room's name (bound into its tokens).
      server: The :class:`ResumeServer` that signs and checks tokens.
      limits: The log's bounds.
      epoch: The log's epoch (random by default).
    """

    __slots__ = ("_log", "_name", "_server", "_subscribers")

    def __init__(
        self,
        name: str,
        server: ResumeServer,
        limits: LogLimits | None = None,
        *,
        epoch: str | None = None,
    ) -> None:
        self._name = _check_name("name", name)
        self._server = server
        self._log = RoomLog(limits, epoch=epoch)
        self._subscribers: dict[T, None] = {}

    @property
    def name(self) -> str:
        """The room's name."""
        return self._name

    @property
    def log(self) -> RoomLog:
        """The room's log."""
        return self._log

    @property
    def subscribers(self) -> tuple[T, ...]:
        """The live subscribers, in join order."""
        return tuple(self._subscribers)

    def __contains__(self, subscriber: object) -> bool:
        return subscriber in self._subscribers

    def _check_absent(self, subscriber: T) -> None:
        if subscriber in self._subscribers:
            raise ResumeStateError(f"{subscriber!r} is already live in room {self._name!r}")

    def join(self, subscriber: T, *, identity: str = "", now: float) -> NewSession:
        """Start a fresh session for *subscriber* and make it live.

        Raises:
          ResumeStateError: if *subscriber* is already live here.
        """
        self._check_absent(subscriber)
        outcome = self._server.new_session(self._log, room=self._name, identity=identity, now=now)
        self._subscribers[subscriber] = None
        return outcome

    def resume(
        self,
        subscriber: T,
        request: str | Mapping[str, Any],
        *,
        identity: str = "",
        now: float,
        replay_limits: LogLimits | None = None,
    ) -> ResumeOutcome:
        """Decide *request* and, unless it is refused, make *subscriber* live.

        *replay_limits* bounds what this subscriber may be replayed
        (:meth:`ResumeServer.resume`).

        Returns:
          The outcome; send its :meth:`messages` to the subscriber before
          anything published after this call. On :class:`ResumeRefused`,
          close the connection with :attr:`ResumeRefused.close_reason`.

        Raises:
          ResumeStateError: if *subscriber* is already live here.
        """
        self._check_absent(subscriber)
        outcome = self._server.resume(
            request,
            self._log,
            room=self._name,
            identity=identity,
            now=now,
            replay_limits=replay_limits,
        )
        if outcome.goes_live:
            self._subscribers[subscriber] = None
        return outcome

    def leave(self, subscriber: T) -> None:
        """Stop sending to *subscriber* (idempotent). Its session stays resumable."""
        self._subscribers.pop(subscriber, None)

    def publish(self, message: Mapping[str, Any], *, now: float) -> Publication[T]:
        """Append *message* to the log and say whom to send it to.

        Raises:
          ConfigError: as :meth:`RoomLog.append`.
        """
        entry = self._log.append(message, now=now)
        return Publication(entry=entry, recipients=tuple(self._subscribers))

    def refresh(self, session: Session, *, now: float) -> Session:
        """A fresh token for *session* (see :meth:`ResumeServer.refresh`)."""
        return self._server.refresh(session, now=now)


# --------------------------------------------------------------------------
# The client's side
# --------------------------------------------------------------------------


class ClientState(enum.Enum):
    """Where a :class:`ResumeClient` stands on its current connection."""

    #: No connection; call :meth:`ResumeClient.start_connection`.
    IDLE = "idle"
    #: A fresh connection is open; waiting for ``hello``.
    AWAITING_HELLO = "awaiting_hello"
    #: A ``resume`` was sent; waiting for ``resumed``, ``reset`` or ``refused``.
    RESUMING = "resuming"
    #: In the room; sequenced messages are delivered, deduplicated.
    LIVE = "live"
    #: The server refused the resume and will close; the next connection is fresh.
    REFUSED = "refused"
    #: A gap was seen. Close this connection and open a new one, which resumes
    #: from the last message delivered; nothing more is delivered from this one.
    BROKEN = "broken"


@final
@attrs.frozen(kw_only=True)
class SessionStarted:
    """A fresh session began; messages after :attr:`seq` follow.

    On a first connection this is simply "you are in". After a
    :class:`ResyncRequired` it is where the new, resynced history starts.
    """

    session: str
    epoch: str
    #: The room's head at the start; the application gets ``seq + 1`` onwards.
    seq: int


@final
@attrs.frozen(kw_only=True)
class SessionResumed:
    """The session resumed: :attr:`replayed` missed messages follow, then live ones."""

    session: str
    epoch: str
    #: The room's head when the server resumed us; the replay ends there.
    seq: int
    #: How many missed messages the server is replaying.
    replayed: int


@final
@attrs.frozen(kw_only=True)
class ResyncRequired:
    """The gap cannot be filled: the application must fetch its state afresh.

    Messages already delivered stay valid; some after them are lost to this
    client. A :class:`SessionStarted` follows (at once after a reset, on the
    next connection after a refusal) and says where the new history starts.
    """

    reason: ResetReason | RefuseReason


@final
@attrs.frozen(kw_only=True)
class MessageReceived:
    """A message for the application, delivered once, in order."""

    #: The room's sequence number, or ``None`` for a message that has none.
    seq: int | None
    #: The parsed JSON object, ``"seq"`` included.
    message: Mapping[str, Any]


@final
@attrs.frozen(kw_only=True)
class GapDetected:
    """A sequenced message skipped ahead: close and reconnect to fill the gap.

    Never happens with a correct server over one ordered connection; it is
    the client's guard against silent loss. Nothing is delivered from this
    connection any more; the next one resumes from :attr:`expected` ``- 1``,
    and the server either replays the gap or says ``reset``.
    """

    expected: int
    received: int


#: What :meth:`ResumeClient.receive` returns a list of.
ClientEvent: TypeAlias = (
    SessionStarted | SessionResumed | ResyncRequired | MessageReceived | GapDetected
)


@final
@attrs.frozen(kw_only=True)
class ClientStatistics:
    """A snapshot of one :class:`ResumeClient`."""

    #: Sequenced messages handed to the application.
    delivered: int
    #: Sequenced messages dropped because they were at or below the last seq.
    duplicates: int
    #: Gaps detected (each leads to a reconnect).
    gaps: int
    #: Fresh sessions (hellos).
    sessions: int
    #: Resumes accepted.
    resumes: int
    #: Resyncs required (resets and refusals).
    resyncs: int


_CONTROL_TYPES: Final = frozenset({"hello", "resumed", "reset", "refused", "token"})


def _field(message: Mapping[str, Any], name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ResumeProtocolError(
            f"{message.get('type')!r} message needs {name!r} of type {kind.__name__}; got {value!r}"
        )
    return value


def _seq_field(message: Mapping[str, Any]) -> int:
    seq = message.get("seq")
    if not _is_seq(seq):
        raise ResumeProtocolError(
            f"{message.get('type')!r} message needs a non-negative integer 'seq'; got {seq!r}"
        )
    assert isinstance(seq, int)
    return seq


@final
class ResumeClient:
    """The client's side of the resume protocol, for one room.

    Feed it every text frame the server sends (:meth:`receive`) and tell it
    when a connection opens (:meth:`start_connection`) and ends
    (:meth:`connection_lost`). It keeps the session's token and epoch and
    the last seq delivered, drops anything at or below that seq, and turns
    the server's control messages into events. A client in several rooms
    keeps one of these per room.
    """

    __slots__ = (
        "_delivered",
        "_duplicates",
        "_epoch",
        "_gaps",
        "_last_seq",
        "_resumes",
        "_resyncs",
        "_session",
        "_sessions",
        "_state",
        "_token",
    )

    def __init__(self) -> None:
        self._state = ClientState.IDLE
        self._session: str | None = None
        self._token: str | None = None
        self._epoch: str | None = None
        self._last_seq: int | None = None
        self._delivered = 0
        self._duplicates = 0
        self._gaps = 0
        self._sessions = 0
        self._resumes = 0
        self._resyncs = 0

    @property
    def state(self) -> ClientState:
        """Where the client stands on its current connection."""
        return self._state

    @property
    def session(self) -> str | None:
        """The id of the session it would resume, or ``None``."""
        return self._session

    @property
    def epoch(self) -> str | None:
        """The epoch of its session, or ``None``."""
        return self._epoch

    @property
    def last_seq(self) -> int | None:
        """The last sequence number delivered (or the session's start), or ``None``."""
        return self._last_seq

    @property
    def can_resume(self) -> bool:
        """Whether the next connection will ask to resume."""
        return self._token is not None

    def start_connection(self) -> str | None:
        """Call when a new connection opens; says how to open it.

        Returns:
          ``None`` for a fresh connection; otherwise the ``resume`` message
          to send as the very first frame, on a connection whose URL has
          ``resume=1`` (:data:`RESUME_QUERY_PARAM`).

        Raises:
          ResumeStateError: if a connection is still open
            (call :meth:`connection_lost` first).
        """
        if self._state is not ClientState.IDLE:
            raise ResumeStateError(
                f"start_connection() called in state {self._state.value}; "
                "call connection_lost() for the old connection first"
            )
        if self._token is None:
            self._state = ClientState.AWAITING_HELLO
            return None
        self._state = ClientState.RESUMING
        assert self._epoch is not None
        assert self._last_seq is not None
        return encode_message(
            {"type": "resume", "token": self._token, "epoch": self._epoch, "seq": self._last_seq}
        )

    def connection_lost(self) -> None:
        """Call when the connection ends, however it ended. Idempotent."""
        self._state = ClientState.IDLE

    def receive(self, message: str | Mapping[str, Any]) -> list[ClientEvent]:
        """Take one message from the server; return what the application should see.

        Args:
          message: A text frame as received, or its parsed JSON object.

        Returns:
          Zero or more events, in order.

        Raises:
          ResumeProtocolError: for a message the server should never send
            here; close the connection (``protocol_error``) and reconnect.
          ResumeStateError: if no connection was started.
        """
        if self._state is ClientState.IDLE:
            raise ResumeStateError("receive() called with no connection; call start_connection()")
        if isinstance(message, str):
            try:
                message = json.loads(message)
            except (ValueError, RecursionError) as exc:
                raise ResumeProtocolError("server message is not valid JSON") from exc
        if not isinstance(message, Mapping):
            raise ResumeProtocolError(f"server message must be a JSON object; got {message!r}")
        kind = message.get("type")
        if self._state in (ClientState.BROKEN, ClientState.REFUSED):
            return []  # this connection is done; the next one fixes things
        if kind in _CONTROL_TYPES:
            return self._control(kind, message)
        if "seq" not in message:
            return [MessageReceived(seq=None, message=message)]
        return self._sequenced(message)

    def _control(self, kind: str, message: Mapping[str, Any]) -> list[ClientEvent]:
        state = self._state
        if kind == "hello" and state is ClientState.AWAITING_HELLO:
            # Every field is checked before any is kept: a hello that lacks
            # one must leave no half-made session behind.
            seq = _seq_field(message)
            session = _field(message, "session", str)
            token = _field(message, "token", str)
            epoch = _field(message, "epoch", str)
            self._session, self._token, self._epoch, self._last_seq = session, token, epoch, seq
            self._state = ClientState.LIVE
            self._sessions += 1
            return [SessionStarted(session=session, epoch=epoch, seq=seq)]
        if kind == "resumed" and state is ClientState.RESUMING:
            seq = _seq_field(message)
            replayed = _seq_field({"type": "resumed", "seq": message.get("replay")})
            epoch = _field(message, "epoch", str)
            session = _field(message, "session", str)
            assert self._last_seq is not None
            if epoch != self._epoch or session != self._session or seq < self._last_seq:
                raise ResumeProtocolError(
                    f"resumed names session {session!r}, epoch {epoch!r} and seq {seq}, but we "
                    f"asked for {self._session!r}, {self._epoch!r} from seq {self._last_seq}"
                )
            if replayed != seq - self._last_seq:
                raise ResumeProtocolError(
                    f"resumed promises {replayed} messages for seq {self._last_seq}..{seq}"
                )
            self._token = _field(message, "token", str)
            self._state = ClientState.LIVE
            self._resumes += 1
            return [SessionResumed(session=session, epoch=epoch, seq=seq, replayed=replayed)]
        if kind in ("reset", "refused") and state is ClientState.RESUMING:
            reason_text = _field(message, "reason", str)
            try:
                reason: ResetReason | RefuseReason = (
                    ResetReason(reason_text) if kind == "reset" else RefuseReason(reason_text)
                )
            except ValueError as exc:
                raise ResumeProtocolError(f"unknown {kind} reason {reason_text!r}") from exc
            self._session = self._token = self._epoch = None
            self._last_seq = None
            self._state = ClientState.AWAITING_HELLO if kind == "reset" else ClientState.REFUSED
            self._resyncs += 1
            return [ResyncRequired(reason=reason)]
        if kind == "token" and state is ClientState.LIVE:
            self._token = _field(message, "token", str)
            return []
        raise ResumeProtocolError(f"{kind!r} message is not expected in state {state.value}")

    def _sequenced(self, message: Mapping[str, Any]) -> list[ClientEvent]:
        seq = _seq_field(message)
        if self._state is not ClientState.LIVE:
            raise ResumeProtocolError(
                f"sequenced message (seq {seq}) before the session is live "
                f"(state {self._state.value})"
            )
        last = self._last_seq
        assert last is not None
        if seq <= last:
            self._duplicates += 1
            return []
        if seq != last + 1:
            self._gaps += 1
            self._state = ClientState.BROKEN
            return [GapDetected(expected=last + 1, received=seq)]
        self._last_seq = seq
        self._delivered += 1
        return [MessageReceived(seq=seq, message=message)]

    def statistics(self) -> ClientStatistics:
        """A snapshot of the counters."""
        return ClientStatistics(
            delivered=self._delivered,
            duplicates=self._duplicates,
            gaps=self._gaps,
            sessions=self._sessions,
            resumes=self._resumes,
            resyncs=self._resyncs,
        )
