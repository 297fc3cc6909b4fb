"""Fuzz targets: what is fed to trioheart, and the invariants that must hold.

Each :class:`Target` has one ``check(input)`` that runs the code under test
on one input and raises :class:`Finding` (an ``AssertionError``) when an
invariant breaks; any other exception escaping ``check`` is a finding too.
Two drivers share it:

* atheris (``python -m tests.fuzz.run``) hands raw bytes to ``from_bytes``,
  which decodes them into an input; libFuzzer's coverage feedback then
  finds the byte patterns that reach new code;
* hypothesis (``tests/fuzz/test_targets.py``) draws inputs from
  ``strategy()``, which builds them from the structure (frames, JSON, TOML,
  tokens) so that a short seeded run already gets deep.

The code under test is trioheart's own, not a copy: the handshake is
``Server._handshake`` and the frames go through ``Connection._reader``
(the connection's real read loop), both driven by :func:`drive` over a
:class:`FakeStream` that never blocks. That needs a Trio run context (for
``trio.current_time`` and cancel scopes) but no scheduling: a target with
``needs_trio`` runs inside ``trio.run`` on a MockClock, once per process for
atheris (:func:`in_trio`) and once per example for hypothesis.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import random
import socket
import string
import unittest.mock
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar, cast

import attrs
import trio
import trio.testing
from hypothesis import strategies as st
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, Pong, TextMessage

import trioheart.resume
from trioheart import ConnectionConfig, ServerLimits
from trioheart._trio.connection import Connection
from trioheart._trio.server import Server
from trioheart.backoff import MAX_RETRY_WINDOW, RetryWindow
from trioheart.errors import ConfigError
from trioheart.policy import (
    ConnectionAttributes,
    PolicyError,
    PolicySet,
    load_policy_toml,
    policy_set_from_kv,
)
from trioheart.reasons import CloseReason
from trioheart.resume import (
    GapDetected,
    LogLimits,
    MessageReceived,
    ResumeAccepted,
    ResumeClient,
    ResumeProtocolError,
    ResumeRefused,
    ResumeReset,
    ResumeServer,
    ResyncRequired,
    Room,
    Session,
    SessionResumed,
    SessionStarted,
)

from . import wire

T = TypeVar("T")


class Finding(AssertionError):
    """An invariant broke: the message says which, and how."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Finding(message)


@attrs.frozen
class Target:
    """One fuzz target: decode bytes (atheris) or draw (hypothesis), then check."""

    name: str
    #: What is fuzzed and what must hold, one line.
    doc: str
    from_bytes: Callable[[bytes], Any]
    strategy: Callable[[], st.SearchStrategy[Any]]
    check: Callable[[Any], None]
    #: Seed inputs (bytes) for the atheris corpus.
    seeds: Callable[[], list[bytes]]
    #: Whether ``check`` needs a Trio run context.
    needs_trio: bool = False
    #: libFuzzer's -max_len for this target.
    max_len: int = 4096
    #: Tokens for libFuzzer's -dict: words the code compares input against.
    dictionary: tuple[bytes, ...] = ()

    def run_bytes(self, data: bytes) -> None:
        """Decode and check *data*; the atheris entry point (inside :func:`in_trio`)."""
        try:
            self.check(self.from_bytes(data))
        finally:
            if self.needs_trio:
                _prune_deadlines()

    def run(self, value: Any) -> None:
        """Check one input, entering Trio if needed (the hypothesis entry point)."""
        if self.needs_trio:
            in_trio(self.check, value)
        else:
            self.check(value)


def _prune_deadlines() -> None:
    """Let Trio forget the deadlines of cancel scopes that have exited.

    Trio drops them lazily, from its run loop; the targets run millions of
    cancel scopes in one task that never returns to the loop, so without
    this the heap (and every connection it references) grows per input.
    Private API, hence the guard: without it a long run only uses more memory.
    """
    runner = getattr(trio._core._run.GLOBAL_RUN_CONTEXT, "runner", None)
    deadlines = getattr(runner, "deadlines", None)
    heap = getattr(deadlines, "_heap", None)
    if heap is not None and len(heap) > 2 * deadlines._active + 1000:  # type: ignore[union-attr]
        deadlines._prune()  # type: ignore[union-attr]


def in_trio(fn: Callable[[T], None], value: T) -> None:
    """Call ``fn(value)`` synchronously inside a fresh ``trio.run`` on a MockClock."""

    async def main() -> None:
        fn(value)

    trio.run(main, clock=trio.testing.MockClock())


def quiet_logs() -> None:
    """Drop every log event (the atheris child would print millions)."""
    import structlog

    def drop(logger: object, method: str, event: object) -> object:
        raise structlog.DropEvent

    structlog.configure(processors=[drop])


# --------------------------------------------------------------------------
# Driving trioheart's async code without I/O
# --------------------------------------------------------------------------


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* to completion without a scheduler; it must never block.

    The streams given to the code under test answer at once, so a coroutine
    that yields to Trio is waiting on something else (a lock, a parking
    lot): that is a hang in the making, reported as a finding.
    """
    try:
        trap = coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise Finding(f"the code under test blocked on {trap!r} with a stream that never blocks")


_SOCKETS: list[socket.socket] = []


def _a_socket() -> socket.socket:
    """A real (AF_UNIX) socket for the code that reads options from ``stream.socket``."""
    if not _SOCKETS:
        _SOCKETS.extend(socket.socketpair())
    return _SOCKETS[0]


class FakeStream:
    """A stream that hands out *chunks*, then EOF, and records what was sent."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = deque(chunks)
        self.sent = bytearray()
        self.socket = _a_socket()
        self.eof_sent = False
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.closed:
            raise trio.ClosedResourceError
        if not self.chunks:
            return b""
        chunk = self.chunks.popleft()
        if max_bytes is not None and len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise trio.ClosedResourceError
        self.sent += data

    async def send_eof(self) -> None:
        self.eof_sent = True

    async def aclose(self) -> None:
        self.closed = True


class Reader:
    """Consumes fuzz bytes as numbers, choices and strings; zeros once exhausted."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            return 0
        self.at += 1
        return self.data[self.at - 1]

    def int(self, size: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(size)), "big")

    def choice(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def take(self, size: int) -> bytes:
        out = self.data[self.at : self.at + size]
        self.at += len(out)
        return out

    def rest(self) -> bytes:
        out = self.data[self.at :]
        self.at = len(self.data)
        return out


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, which JSON does not have."""

    def refuse(name: str) -> Any:
        raise Finding(f"the server sent {name}, which is not JSON: {text!r}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------
# 1. The HTTP upgrade request, as Server._handshake reads it
# --------------------------------------------------------------------------

HANDSHAKE_CONFIG = ConnectionConfig(max_request_size=2048)
HANDSHAKE_LIMITS = ServerLimits(allowed_origins={"https://chat.example"})
#: Ends of a handshake that refuse the connection, each with a named reason.
HANDSHAKE_REFUSALS = frozenset(
    {
        CloseReason.HANDSHAKE_FAILED,
        CloseReason.ORIGIN_REFUSED,
        CloseReason.CONNECTION_RESET,  # EOF before a complete request
    }
)


@attrs.frozen
class HttpInput:
    data: bytes
    #: How the bytes arrive: chunk sizes, cycled (TCP may cut anywhere).
    chunks: tuple[int, ...] = ()


def _server() -> Server:
    async def handler(conn: Connection) -> None:  # never called here
        raise AssertionError

    return Server(
        handler,
        [],
        HANDSHAKE_CONFIG,
        http_handler=None,
        authorize=None,
        websocket_paths=frozenset({"/ws", "/chat"}),
        metrics=None,
        drain_timeout=1.0,
        limits=HANDSHAKE_LIMITS,
    )


def check_http(value: HttpInput) -> None:
    """Server._handshake on these bytes: it returns (never raises) and says why it refused.

    A handshake it accepts must be a real WebSocket upgrade: GET, the
    headers, a 16-byte key, an allowed origin, a 101 with the right accept
    token. A refused one counts exactly one named reason and answers with
    a complete HTTP response (or nothing, for a reset). Never both.
    """
    server = _server()
    stream = FakeStream(wire.split(value.data, value.chunks))
    stream_any = cast(trio.SocketStream, stream)
    opened = drive(server._handshake(stream_any, "fuzz"))
    closed = server.statistics().closed
    if opened is None:
        expect(sum(closed.values()) <= 1, f"one handshake counted {closed} closes (at most one)")
        for name in closed:
            expect(CloseReason(name) in HANDSHAKE_REFUSALS, f"handshake ended as {name}")
        if closed:
            expect(stream.closed, f"refused ({closed}) but the socket was left open")
        if stream.sent:
            head = bytes(stream.sent).split(b"\r\n", 1)[0]
            expect(head.startswith(b"HTTP/1.1 "), f"a refusal answered {head!r}")
            status = int(head.split(b" ")[1])
            expect(status != 101, "refused, yet answered 101 Switching Protocols")
        return
    _proto, request, trailing = opened
    expect(not closed, f"accepted, yet counted a close: {closed}")
    expect(request.method == "GET", f"accepted method {request.method!r}")
    expect(request.path in {"/ws", "/chat"}, f"accepted path {request.path!r}")
    tokens = request.header_tokens("upgrade"), request.header_tokens("connection")
    expect("websocket" in tokens[0] and "upgrade" in tokens[1], f"accepted {tokens}")
    expect(request.header("sec-websocket-version") == "13", "accepted another version")
    key = request.header("sec-websocket-key")
    expect(key is not None, "accepted without Sec-WebSocket-Key")
    assert key is not None
    expect(len(base64.b64decode(key.strip(), validate=True)) == 16, f"accepted key {key!r}")
    origin = request.header("origin")
    expect(
        origin is None or origin.lower().rstrip("/") == "https://chat.example",
        f"accepted origin {origin!r}",
    )
    digest = hashlib.sha1(key.strip().encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    accept = base64.b64encode(digest.digest())
    sent = bytes(stream.sent)
    expect(sent.startswith(b"HTTP/1.1 101 "), f"accepted with {sent[:40]!r}")
    expect(b"Sec-WebSocket-Accept: " + accept + b"\r\n" in sent, "wrong Sec-WebSocket-Accept")
    expect(not stream.closed, "accepted, yet closed the socket")
    expect(len(trailing) <= len(value.data), "trailing data larger than what was sent")


def _header_variants(r: Reader) -> list[tuple[str, str]]:
    headers = list(wire.UPGRADE_HEADERS)
    for _ in range(r.byte() % 4):
        op = r.byte() % 6
        at = r.byte() % (len(headers) + 1)
        if op == 0 and headers:
            headers.pop(at % len(headers))
        elif op == 1:
            headers.insert(at, ("Origin", r.choice(["https://chat.example", "https://evil", ""])))
        elif op == 2:
            headers.insert(at, (r.take(8).decode("latin-1"), r.take(16).decode("latin-1")))
        elif op == 3 and headers:
            name, _ = headers[at % len(headers)]
            headers[at % len(headers)] = (name, r.take(24).decode("latin-1"))
        elif op == 4:
            headers.insert(at, ("Sec-WebSocket-Key", wire.websocket_key(r.byte())))
        else:
            headers.insert(at, ("X-Pad", "a" * (r.int(2) % 3000)))
    return headers


def http_from_bytes(data: bytes) -> HttpInput:
    r = Reader(data)
    chunks = tuple(r.byte() + 1 for _ in range(r.byte() % 4))
    if r.byte() % 2:  # raw bytes
        return HttpInput(r.rest(), chunks)
    method = r.choice(["GET", "GET", "POST", "get", "CONNECT"])
    target = r.choice(["/ws", "/chat?room=a&name=b", "/", "*", "http://x/ws", "/ws?%zz=1&a"])
    headers = _header_variants(r)
    body = wire.upgrade_request(target, headers, method=method) + r.rest()
    return HttpInput(body, chunks)


@st.composite
def http_inputs(draw: st.DrawFn) -> HttpInput:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "get", "G\x00T", "CONNECT"]))
    target = draw(
        st.one_of(
            st.sampled_from(["/ws", "/chat?room=x", "/", "*", "/ws#frag", "//ws", "/ws?a=%ff"]),
            st.text(alphabet=string.printable, max_size=40).map(lambda s: "/ws?" + s),
        )
    )
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1"]))
    base = list(wire.UPGRADE_HEADERS)
    headers = draw(st.permutations(base).map(list))
    if draw(st.booleans()):
        headers = draw(st.lists(st.sampled_from(base), max_size=8))
    extra_value = st.one_of(
        st.sampled_from(
            [
                "websocket",
                "Upgrade, keep-alive",
                "13",
                "8",
                "https://chat.example",
                "https://chat.example/",
                "HTTPS://CHAT.EXAMPLE",
                "https://evil",
                "x" * 3000,
                wire.websocket_key(1),
                "dGhlIHNhbXBsZSBub25jZQ",  # no padding
                "  dGhlIHNhbXBsZSBub25jZQ==  ",
                "AAAAAAAAAAAAAAAAAAAAAA==",
                "AAAAAAAAAAAAAAAAAAAAAAA=",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=30),
    )
    extra_name = st.sampled_from(
        ["Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin",
         "Content-Length", "Transfer-Encoding", "Host", "X"]
    )  # fmt: skip
    for _ in range(draw(st.integers(0, 3))):
        headers.insert(draw(st.integers(0, len(headers))), (draw(extra_name), draw(extra_value)))
    data = wire.upgrade_request(target, headers, method=method, version=version)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=40)) + data[cut:]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    data += draw(st.binary(max_size=30))  # frames that came in the same packet
    chunks = tuple(draw(st.lists(st.integers(1, 64), max_size=3)))
    return HttpInput(data, chunks)


def http_seeds() -> list[bytes]:
    good = b"\x00\x00" + wire.upgrade_request()
    return [
        b"\x00\x00\x01" + b"\x00" * 8,
        b"\x00\x01" + wire.upgrade_request(),
        good,
        b"\x02\x05\x11\x00" + wire.upgrade_request("/chat?room=a"),
        b"\x00\x01" + wire.upgrade_request(headers=[("Host", "x")]),
        b"\x00\x01GET /ws HTTP/1.1\r\nHost: x\r\n",
    ]


# --------------------------------------------------------------------------
# 2. WebSocket frames after the handshake, through Connection's read loop
# --------------------------------------------------------------------------

FRAMES_CONFIG = ConnectionConfig(
    max_message_size=1024,
    max_queued_bytes=4096,
    max_queued_messages=8,
    max_send_buffer=4096,
    receive_buffer_size=512,
)
FRAMES_CONFIG_APP = attrs.evolve(FRAMES_CONFIG, app_heartbeat_interval=10.0)
#: How a connection may end on frames alone (EOF at the end of the input
#: is ``connection_reset``).
FRAME_REASONS = frozenset(
    {
        CloseReason.PEER_CLOSED,
        CloseReason.PROTOCOL_ERROR,
        CloseReason.INVALID_DATA,
        CloseReason.MESSAGE_TOO_BIG,
        CloseReason.SLOW_CONSUMER,
        CloseReason.CONNECTION_RESET,
    }
)
#: The largest frame the server writes on its own (a control frame: close or pong).
CONTROL_FRAME_MAX = 2 + 125
APP_PONG_MAX = 2 + 8 + 400  # an app-level pong echoes an id from a <= 256-character ping


@attrs.frozen
class FramesInput:
    data: bytes
    chunks: tuple[int, ...] = ()
    #: Also answer app-level heartbeats ({"type": "pong"} counts as activity).
    app_heartbeat: bool = False
    #: A write is in progress and does not finish (the peer does not read):
    #: bytes the server wants to send pile up in its bounded send buffer.
    writer_blocked: bool = False
    #: The first chunk came in the same packet as the handshake.
    initial: bool = False


def _connection(stream: FakeStream, config: ConnectionConfig, initial: bytes) -> Connection:
    return Connection(
        cast(trio.SocketStream, stream),
        WSProtoConnection(ConnectionType.SERVER),
        config,
        path="/ws",
        query={},
        headers=(),
        keepalive=None,
        metrics=None,
        conn_id="fuzz",
        initial_data=initial,
    )


@attrs.frozen
class ServerOutput:
    pongs: list[bytes]
    texts: list[str]
    close: CloseConnection | None
    frames_after_close: int


def parse_server_output(data: bytes) -> ServerOutput:
    """What a client makes of the server's bytes; a frame it cannot parse is a finding."""
    client = WSProtoConnection(ConnectionType.CLIENT)
    client.receive_data(bytes(data))
    pongs: list[bytes] = []
    texts: list[str] = []
    partial: list[str] = []
    close: CloseConnection | None = None
    after = 0
    for event in client.events():
        if close is not None:
            after += 1
        if isinstance(event, CloseConnection):
            if client.state is ConnectionState.OPEN:  # wsproto's way to report a bad frame
                raise Finding(f"a client cannot parse the server's frames: {event.reason}")
            close = close or event
        elif isinstance(event, Pong):
            pongs.append(bytes(event.payload))
        elif isinstance(event, Ping):
            raise Finding("the server pinged during a read that never waited")
        elif isinstance(event, TextMessage):
            partial.append(event.data)
            if event.message_finished:
                texts.append("".join(partial))
                partial = []
        elif isinstance(event, Message):
            raise Finding("the server sent a binary message of its own")
    return ServerOutput(pongs=pongs, texts=texts, close=close, frames_after_close=after)


def _check_bounds(conn: Connection, config: ConnectionConfig) -> None:
    inbox = list(conn._inbox or ())
    expect(len(inbox) <= config.max_queued_messages, f"inbox holds {len(inbox)} messages")
    size = sum(len(m) for m in inbox)
    expect(size == conn._inbox_bytes, f"inbox accounting {conn._inbox_bytes} != {size}")
    expect(size <= config.max_queued_bytes, f"inbox holds {size} bytes")
    expect(
        conn._partial_size <= config.max_message_size or conn.closed,
        f"a partial message of {conn._partial_size} bytes is kept",
    )
    bound = config.max_send_buffer + CONTROL_FRAME_MAX + APP_PONG_MAX
    expect(
        len(conn._pending) <= bound,
        f"{len(conn._pending)} bytes wait to be sent (max_send_buffer={config.max_send_buffer})",
    )
    for message in inbox:
        if isinstance(message, str):
            message.encode("utf-8")  # a lone surrogate would raise: not valid text
        else:
            expect(isinstance(message, bytes), f"inbox holds {type(message).__name__}")


@attrs.frozen
class FramesResult:
    reason: CloseReason | None
    #: What the application would have received (the inbox when reading stopped).
    inbox: list[str | bytes]
    output: ServerOutput
    peer_close_code: int | None


def run_frames(value: FramesInput) -> FramesResult:
    """Feed the input to a connection's read loop, close it, and parse what it sent."""
    config = FRAMES_CONFIG_APP if value.app_heartbeat else FRAMES_CONFIG
    chunks = wire.split(value.data, value.chunks)
    initial = chunks.pop(0) if value.initial and chunks else b""
    stream = FakeStream(chunks)
    conn = _connection(stream, config, initial)
    if value.writer_blocked:
        conn._writing = True  # the write in progress never returns
        now = trio.current_time()
        for chunk in ([initial] if initial else []) + chunks:
            stop = conn._on_bytes(chunk, now)
            _check_bounds(conn, config)
            if stop:
                expect(conn.close_reason is not None, "stopped reading without a reason")
                break
            expect(conn.close_reason is None, f"closed as {conn.close_reason} but kept reading")
        return FramesResult(
            conn.close_reason,
            list(conn._inbox or ()),
            parse_server_output(b""),
            conn.peer_close_code,
        )
    drive(conn._reader())
    reason = conn.close_reason
    expect(reason in FRAME_REASONS, f"frames alone ended the connection as {reason}")
    _check_bounds(conn, config)
    inbox = list(conn._inbox or ())
    drive(conn._finish())
    expect(stream.closed, "the socket was not closed")
    expect(conn.closed_at is not None, "closed_at not set")
    output = parse_server_output(bytes(stream.sent))
    assert reason is not None
    if output.close is not None:
        expect(output.frames_after_close == 0, "the server sent frames after its close frame")
        if reason is CloseReason.PEER_CLOSED:
            # The peer's code is echoed; an empty close frame (1005, which must
            # never be sent) is answered with 1000.
            echo = {conn.peer_close_code or 1000, 1000 if conn.peer_close_code == 1005 else 0}
            expect(output.close.code in echo, f"peer's close {conn.peer_close_code} not echoed")
        else:
            expect(output.close.code == reason.code, f"close code {output.close.code} for {reason}")
    elif reason.sends_close_frame:
        raise Finding(f"closed as {reason} without a close frame")
    return FramesResult(reason, inbox, output, conn.peer_close_code)


def check_frames(value: FramesInput) -> None:
    """Frames after the handshake: the connection ends with one named reason, buffers bounded.

    Never an exception out of the read loop; the reason is one frames can
    cause; the inbox, the partial message and the send buffer stay within
    their configured bounds (the last with a write blocked, too); every
    message handed to the application is valid text or bytes; and what the
    server writes back parses as WebSocket frames with one close frame,
    last, whose code is the reason's.
    """
    run_frames(value)


def frames_from_bytes(data: bytes) -> FramesInput:
    r = Reader(data)
    flags = r.byte()
    chunks = tuple(r.byte() + 1 for _ in range(r.byte() % 4))
    return FramesInput(
        data=r.rest(),
        chunks=chunks,
        app_heartbeat=bool(flags & 1),
        writer_blocked=bool(flags & 2),
        initial=bool(flags & 4),
    )


_MASKS = st.one_of(st.just(b"\x00\x00\x00\x00"), st.binary(min_size=4, max_size=4), st.none())


@st.composite
def frames(draw: st.DrawFn, *, valid_only: bool = False) -> wire.Frame:
    """One frame; mostly plausible, sometimes breaking exactly one rule."""
    kind = draw(st.sampled_from(["text", "binary", "cont", "ping", "pong", "close"]))
    opcode = {"text": 1, "binary": 2, "cont": 0, "ping": 9, "pong": 10, "close": 8}[kind]
    if kind == "text":
        payload = draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    elif kind == "close":
        code = draw(
            st.one_of(
                st.none(),
                st.sampled_from([1000, 1001, 1002, 1005, 1006, 1011, 1015, 3000, 4999, 5000, 0]),
                st.integers(0, 65535),
            )
        )
        reason = draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
        payload = wire.close_payload(code, reason)
    elif kind in ("ping", "pong"):
        payload = draw(st.binary(max_size=130))
    else:
        payload = draw(st.binary(max_size=1500))
    fin = draw(st.booleans()) if kind in ("text", "binary", "cont") else True
    frame = wire.Frame(
        opcode=opcode, payload=payload, fin=fin, mask=draw(st.binary(min_size=4, max_size=4))
    )
    if valid_only:
        return frame
    rule = draw(st.integers(0, 12))
    if rule == 0:
        frame = attrs.evolve(frame, mask=None)
    elif rule == 1:
        frame = attrs.evolve(frame, rsv=draw(st.integers(1, 7)))
    elif rule == 2:
        frame = attrs.evolve(frame, opcode=draw(st.sampled_from([3, 4, 7, 11, 15])))
    elif rule == 3:
        frame = attrs.evolve(frame, length_form=draw(st.sampled_from([16, 64])))
    elif rule == 4:
        frame = attrs.evolve(
            frame,
            announced=draw(st.one_of(st.integers(0, 2**16), st.just(2**63), st.just(2**64 - 1))),
        )
    elif rule == 5:
        frame = attrs.evolve(frame, fin=False)  # a fragmented control frame, or an open message
    elif rule == 6:
        frame = attrs.evolve(frame, payload=draw(st.binary(min_size=1, max_size=40)))  # bad UTF-8
    return frame


@st.composite
def frames_inputs(draw: st.DrawFn) -> FramesInput:
    data = wire.encode_frames(draw(st.lists(frames(), max_size=12)))
    if draw(st.integers(0, 4)) == 0 and data:  # one flipped byte
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return FramesInput(
        data=data,
        chunks=tuple(draw(st.lists(st.integers(1, 700), max_size=3))),
        app_heartbeat=draw(st.booleans()),
        writer_blocked=draw(st.integers(0, 3)) == 0,
        initial=draw(st.booleans()),
    )


def frames_seeds() -> list[bytes]:
    m = b"\x11\x22\x33\x44"
    seeds = [
        wire.encode_frames([wire.Frame(opcode=1, payload=b"hello", mask=m)]),
        wire.encode_frames(
            [
                wire.Frame(opcode=1, payload=b"he", fin=False, mask=m),
                wire.Frame(opcode=9, payload=b"12345678", mask=m),
                wire.Frame(opcode=0, payload=b"llo", mask=m),
            ]
        ),
        wire.encode_frames([wire.Frame(opcode=9, payload=b"p" * 125, mask=m)] * 40),
        wire.encode_frames([wire.Frame(opcode=2, payload=bytes(300), mask=m)] * 5),
        wire.encode_frames(
            [wire.Frame(opcode=8, payload=wire.close_payload(1000, b"bye"), mask=m)]
        ),
        wire.encode_frames([wire.Frame(opcode=1, payload=b"\xc3\x28", mask=m)]),
        wire.encode_frames([wire.Frame(opcode=1, payload=b'{"type":"ping","id":1}', mask=m)]),
        wire.Frame(opcode=1, payload=b"x", announced=2**63, length_form=64, mask=m).encode(),
    ]
    return [bytes([flags, 0]) + seed for seed in seeds for flags in (0, 3, 4)]


# --------------------------------------------------------------------------
# 3. App-level messages: heartbeat and chat
# --------------------------------------------------------------------------

APP_CONFIG = attrs.evolve(
    FRAMES_CONFIG_APP, max_message_size=4096, max_queued_bytes=65536, max_queued_messages=64
)


@attrs.frozen
class AppInput:
    texts: tuple[str, ...]
    app_heartbeat: bool = True


def check_app(value: AppInput) -> None:
    """App-level heartbeat and chat messages, each in a valid text frame.

    Nothing is lost or invented: every text is either handed to the
    application, in order, or was a heartbeat (a JSON object whose type is
    ``ping``, or ``pong`` with the app heartbeat on). Each ``ping`` gets
    one ``pong`` echoing its id, and every text the server sends is strict
    JSON. The chat handler (the demo) answers each delivered text with
    ``None`` or an error sentence, never an exception, and what it
    publishes is strict JSON.
    """
    from trioheart import EmbeddedBroker
    from trioheart.demo.app import ChatApp

    data = b"".join(wire.text_frame(text) for text in value.texts)
    result = run_frames(FramesInput(data=data, chunks=(1500,), app_heartbeat=value.app_heartbeat))
    replies = [strict_json(text) for text in result.output.texts]
    for reply in replies:
        expect(isinstance(reply, dict) and reply.get("type") == "pong", f"sent {reply!r}")
    if result.reason is not CloseReason.CONNECTION_RESET:
        return  # closed before the end (too big, slow consumer): the rest was not read
    inbox = result.inbox
    delivered = 0
    pings: list[dict[str, Any]] = []
    for text in value.texts:
        if delivered < len(inbox) and inbox[delivered] == text:
            delivered += 1
            continue
        try:
            body = json.loads(text)
        except ValueError:
            raise Finding(f"the text {text!r} was neither delivered nor answered") from None
        kind = body.get("type") if isinstance(body, dict) else None
        expect(
            kind == "ping" or (kind == "pong" and value.app_heartbeat),
            f"the text {text!r} was neither delivered nor a heartbeat",
        )
        if kind == "ping":
            pings.append(body)
    expect(delivered == len(inbox), f"delivered texts never sent: {inbox[delivered:]!r}")
    expect(len(replies) == len(pings), f"{len(pings)} pings, {len(replies)} pongs")
    for ping, pong in zip(pings, replies, strict=True):
        if "id" in ping and _is_strict_json(ping["id"]):
            expect(pong.get("id") == ping["id"], f"pong {pong!r} for ping {ping!r}")
        else:  # an id JSON cannot carry (NaN, Infinity) is left out
            expect("id" not in pong, f"pong {pong!r} for ping {ping!r}")
    broker = EmbeddedBroker(clock=lambda: 0.0)
    app = ChatApp(None, broker)
    for message in inbox:
        published = broker.statistics().published
        problem = app._on_message("fuzz", "fuzzer", message)
        expect(problem is None or isinstance(problem, str), f"chat answered {problem!r}")
        expect(
            broker.statistics().published == published + (problem is None),
            "a chat message published twice or not",
        )
        if problem is None:
            strict_json(broker.rooms["fuzz"].log.since(0)[-1].text)  # type: ignore[index]


def _is_strict_json(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def app_from_bytes(data: bytes) -> AppInput:
    r = Reader(data)
    flags = r.byte()
    texts = tuple(part.decode("utf-8", "replace") for part in r.rest().split(b"\xff"))
    return AppInput(texts=texts, app_heartbeat=bool(flags & 1))


_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def app_messages(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["ping", "pong", "chat", "resume", "PING", "", None, 1]))
    body: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        body["id"] = draw(_JSON)
    if kind == "chat" or draw(st.booleans()):
        body["text"] = draw(st.one_of(st.text(max_size=50), _JSON, st.just("x" * 2001)))
    for _ in range(draw(st.integers(0, 2))):
        body[draw(st.text(max_size=6))] = draw(_JSON)
    text = json.dumps(body, allow_nan=True)
    style = draw(st.integers(0, 6))
    if style == 0:
        text = text[: draw(st.integers(0, len(text)))]
    elif style == 1:
        text = " " + text
    elif style == 2:
        text = draw(st.sampled_from(["[", "{", '{"type":"ping"', '{"type": "ping", "id": '])) + text
    elif style == 3:
        text = json.dumps([body])
    return text


@st.composite
def app_inputs(draw: st.DrawFn) -> AppInput:
    texts = draw(st.lists(st.one_of(app_messages(), st.text(max_size=40)), min_size=1, max_size=12))
    return AppInput(texts=tuple(texts), app_heartbeat=draw(st.booleans()))


def app_seeds() -> list[bytes]:
    texts = [
        '{"type":"ping","id":1}',
        '{"type":"pong","id":1}',
        '{"type":"chat","text":"hi"}',
        '{"type":"ping","id":1e400}',
        '{"type":"ping","id":[1,{"a":null}]}',
        '{"type":"chat","text":""}',
        "not json",
    ]
    return [b"\x01" + b"\xff".join(t.encode() for t in texts)] + [
        b"\x01" + t.encode() for t in texts
    ]


# --------------------------------------------------------------------------
# 4. Resume requests: forged, truncated, replayed, foreign tokens
# --------------------------------------------------------------------------

RESUME_KEY = b"k" * 32
OLD_KEY = b"o" * 32
TTL = 300.0


@attrs.frozen
class ResumeWorld:
    """Two rooms, several sessions and the history the server must keep apart."""

    server: ResumeServer
    lobby: Room[str]
    other: Room[str]
    #: Every token this server issued: token -> (room, identity, session).
    issued: dict[str, tuple[str, str, Session]]


class _CountingSecrets:
    """Stands in for :mod:`secrets` while a world is built: ids 1, 2, 3, ...

    So every world, in every process, holds the same tokens, and a saved
    fuzz input reproduces exactly.
    """

    def __init__(self) -> None:
        self.count = 0

    def token_bytes(self, size: int) -> bytes:
        self.count += 1
        return self.count.to_bytes(size, "big")

    def token_hex(self, size: int) -> str:
        return self.token_bytes(size).hex()


def resume_world() -> ResumeWorld:
    """The same world each time (see :class:`_CountingSecrets`)."""
    with unittest.mock.patch.object(trioheart.resume, "secrets", _CountingSecrets()):
        return _build_world()


@functools.cache
def world_tokens() -> tuple[str, ...]:
    """The world's tokens in a fixed order (the foreign one marked)."""
    return tuple(sorted(resume_world().issued))


def _build_world() -> ResumeWorld:
    server = ResumeServer(key=RESUME_KEY, previous_keys=[OLD_KEY], token_ttl=TTL)
    lobby: Room[str] = Room("lobby", server, LogLimits(max_messages=6), epoch="e-lobby")
    other: Room[str] = Room("other", server, epoch="e-other")
    issued: dict[str, tuple[str, str, Session]] = {}

    def note(room: Room[str], identity: str, session: Session) -> None:
        issued[session.token] = (room.name, identity, session)

    now = 1000.0
    for i in range(3):
        lobby.publish({"type": "chat", "text": f"early {i}"}, now=now)
    note(lobby, "alice", lobby.join("alice", identity="alice", now=now).session)
    note(other, "alice", other.join("alice", identity="alice", now=now).session)
    other.publish({"type": "chat", "text": "other room"}, now=now)
    for i in range(4):
        lobby.publish({"type": "chat", "text": f"mid {i}"}, now=now + 1)
    bob = lobby.join("bob", identity="bob", now=now + 2).session
    note(lobby, "bob", bob)
    note(lobby, "bob", lobby.refresh(bob, now=now + 3))
    note(lobby, "", lobby.join("anon", identity="", now=now + 3).session)
    for i in range(3):
        lobby.publish({"type": "chat", "text": f"late {i}"}, now=now + 4)
    # A token signed by the old key (rotation) is still genuine.
    old = ResumeServer(key=OLD_KEY, token_ttl=TTL)
    note(
        lobby, "carol", old.new_session(lobby.log, room="lobby", identity="carol", now=now).session
    )
    # A token of another server (another key) is a forgery here.
    foreign = ResumeServer(key=b"f" * 32).new_session(
        lobby.log, room="lobby", identity="alice", now=now
    )
    issued["<foreign>" + foreign.session.token] = ("", "", foreign.session)
    for name in ("alice", "bob", "anon"):
        lobby.leave(name)
    other.leave("alice")
    return ResumeWorld(server=server, lobby=lobby, other=other, issued=issued)


@attrs.frozen
class ResumeInput:
    #: The request as sent: text (maybe not JSON) or a parsed object.
    request: Any
    room: str = "lobby"
    identity: str = "alice"
    now: float = 1010.0


def check_resume(value: ResumeInput) -> None:
    """A resume request never yields another session's messages.

    Accepted only for a token this server issued, byte for byte, for this
    room and this identity, unexpired; the session id is that token's; the
    replay is exactly the log after the presented seq and never reaches
    back before the session started. A reset hands a fresh session and no
    history; a refusal goes not live. Never an exception.
    """
    world = resume_world()
    room = world.lobby if value.room == "lobby" else world.other
    subscriber = "subscriber"
    outcome = room.resume(subscriber, value.request, identity=value.identity, now=value.now)
    live = subscriber in room
    messages = outcome.messages()
    for text in messages:
        strict_json(text)
    if isinstance(outcome, ResumeRefused):
        expect(not live, "refused, yet live in the room")
        expect(len(messages) == 1 and '"refused"' in messages[0], f"refusal sent {messages!r}")
        return
    expect(live, f"{type(outcome).__name__}, yet not live")
    if isinstance(outcome, ResumeReset):
        fresh = outcome.fresh.session
        expect(fresh.token not in world.issued, "a reset handed out an existing session")
        expect(all(s.id != fresh.id for _, _, s in world.issued.values()), "a reset reused an id")
        expect(
            (fresh.room, fresh.identity) == (room.name, value.identity), "fresh session for whom?"
        )
        expect(outcome.seq == room.log.last_seq, "a reset's session does not start at the head")
        expect(len(messages) == 2, f"a reset sent history: {messages!r}")
        return
    assert isinstance(outcome, ResumeAccepted)
    request = value.request
    if isinstance(request, str):
        request = json.loads(request)
    token = request["token"]
    expect(token in world.issued, f"accepted a token this server never issued: {token!r}")
    issued_room, identity, session = world.issued[token]
    expect(issued_room == room.name, f"accepted a {issued_room} token in {room.name}")
    expect(identity == value.identity, f"accepted {identity!r}'s token for {value.identity!r}")
    expect(value.now < session.expires_at, "accepted an expired token")
    expect(outcome.session.id == session.id, "accepted as another session")
    expect(session.since_seq <= outcome.from_seq <= room.log.last_seq, "accepted an impossible seq")
    expected = [e for e in room.log.since(outcome.from_seq) or ()]
    expect(list(outcome.replay) == expected, "the replay is not the log after seq")
    expect(
        all(e.seq > session.since_seq for e in outcome.replay),
        "replayed a message from before the session started",
    )


_TOKEN_MUTATIONS = ("none", "truncate", "flip", "append", "case", "pad", "swap_tail", "random")


def _mutate_token(token: str, how: str, r: Reader) -> str:
    if how == "truncate":
        return token[: r.byte() % max(1, len(token))]
    if how == "flip" and token:
        at = r.byte() % len(token)
        alphabet = string.ascii_letters + string.digits + "-_"
        return token[:at] + r.choice(alphabet) + token[at + 1 :]
    if how == "append":
        return token + r.take(r.byte() % 4).decode("latin-1")
    if how == "case":
        return token.swapcase()
    if how == "pad":
        return token + "=" * (1 + r.byte() % 2)
    if how == "swap_tail" and token:  # a non-canonical spelling of the same bytes
        last = token[-1]
        return token[:-1] + chr(ord(last) ^ 1)
    if how == "random":
        return base64.urlsafe_b64encode(r.take(65)).rstrip(b"=").decode()
    return token


def resume_from_bytes(data: bytes) -> ResumeInput:
    r = Reader(data)
    mode = r.byte()
    identity = r.choice(["alice", "bob", "", "carol", "mallory", "alice\x00"])
    room = r.choice(["lobby", "lobby", "other"])
    now = r.choice([1010.0, 1000.0, 999.0, 1000.0 + TTL, 1000.0 + TTL - 0.001, 5000.0, -1.0])
    if mode % 8 == 0:  # raw text
        return ResumeInput(r.rest().decode("utf-8", "replace"), room, identity, now)
    token: Any = r.choice(world_tokens()).removeprefix("<foreign>")
    token = _mutate_token(token, r.choice(_TOKEN_MUTATIONS), r)
    epoch: Any = r.choice(["e-lobby", "e-other", "", "e-lobby ", 7, None, "x" * 65])
    seq: Any = r.choice(
        [
            r.byte() % 16,
            0,
            3,
            7,
            9,
            13,
            -1,
            2**63 - 1,
            2**63,
            2**64 + 3,
            1.0,
            "3",
            True,
            None,
            -(2**70),
        ]
    )
    if r.byte() % 4 == 0:
        token = r.choice([None, 5, ["x"], "", "a" * 200, token * 2])
    kind = r.choice(["resume", "resume", "resume", "hello", None, "RESUME"])
    request: dict[str, Any] = {"type": kind, "token": token, "epoch": epoch, "seq": seq}
    for key in list(request):
        if r.byte() % 11 == 0:
            del request[key]
    as_text = r.byte() % 2 == 0
    return ResumeInput(json.dumps(request) if as_text else request, room, identity, now)


@st.composite
def resume_inputs(draw: st.DrawFn) -> ResumeInput:
    raw = draw(st.binary(min_size=24, max_size=120))
    return resume_from_bytes(bytes([draw(st.integers(1, 255))]) + raw)


def resume_seeds() -> list[bytes]:
    return [bytes([m, i, 0, 0]) + bytes(range(i, i + 20)) for m in (1, 3) for i in range(6)] + [
        b"\x00\x00\x00\x00" + b'{"type":"resume","token":"AAAA","epoch":"e-lobby","seq":1}'
    ]


# --------------------------------------------------------------------------
# 5. The resume client against what a (bad) server sends
# --------------------------------------------------------------------------


@attrs.frozen
class ClientInput:
    #: "open", "lost", or a server message (text).
    steps: tuple[str, ...]


def check_resume_client(value: ClientInput) -> None:
    """ResumeClient raises only ResumeProtocolError on bad server messages, and never
    delivers a message twice or out of order within a session."""
    client = ResumeClient()
    last: int | None = None
    for step in value.steps:
        if step == "\x00open":
            if client.state.name != "IDLE":
                client.connection_lost()
            client.start_connection()
            continue
        if step == "\x00lost":
            client.connection_lost()
            continue
        if client.state.name == "IDLE":
            continue
        try:
            events = client.receive(step)
        except ResumeProtocolError:
            client.connection_lost()
            continue
        for event in events:
            if isinstance(event, SessionStarted | SessionResumed):
                last = event.seq
            elif isinstance(event, MessageReceived) and event.seq is not None:
                expect(
                    last is not None and event.seq == last + 1,
                    f"delivered {event.seq} after {last}",
                )
                last = event.seq
            elif isinstance(event, ResyncRequired):
                last = None
            elif isinstance(event, GapDetected):
                expect(last is not None and event.expected == last + 1, "gap from where?")
        expect(client.last_seq == last or last is None, f"last_seq {client.last_seq} != {last}")


def client_from_bytes(data: bytes) -> ClientInput:
    steps: list[str] = []
    for part in data.split(b"\xff"):
        if part[:1] == b"\x00":
            steps.append("\x00open")
        elif part[:1] == b"\x01":
            steps.append("\x00lost")
        else:
            steps.append(part.decode("utf-8", "replace"))
    return ClientInput(tuple(steps))


@st.composite
def client_inputs(draw: st.DrawFn) -> ClientInput:
    seq = st.one_of(st.integers(-2, 12), st.sampled_from([2**63, 2**64, 1.5, "1", True, None]))
    message = st.builds(
        lambda kind, s, replay, tok, ep, ses: json.dumps(
            {"type": kind, "seq": s, "replay": replay, "token": tok, "epoch": ep, "session": ses}
        ),
        st.sampled_from(["hello", "resumed", "reset", "refused", "token", "chat", None]),
        seq,
        seq,
        st.sampled_from(["t1", "t2", 3, None]),
        st.sampled_from(["e1", "e2", None]),
        st.sampled_from(["s1", "s2", None]),
    )
    chat = st.builds(lambda s: json.dumps({"type": "chat", "seq": s}), seq)
    reason = st.builds(
        lambda k, r: json.dumps({"type": k, "reason": r}),
        st.sampled_from(["reset", "refused"]),
        st.sampled_from(["trimmed", "malformed", "epoch_changed", "nope", 3]),
    )
    step = st.one_of(
        st.just("\x00open"), st.just("\x00lost"), message, chat, chat, reason, st.text(max_size=10)
    )
    return ClientInput(tuple(draw(st.lists(step, max_size=20))))


def client_seeds() -> list[bytes]:
    hello = b'{"type":"hello","session":"s","token":"t","epoch":"e","seq":3}'
    chats = [b'{"type":"chat","seq":%d}' % i for i in (4, 5, 5, 7)]
    return [b"\xff".join([b"\x00", hello, *chats, b"\x01", b"\x00"])]


# --------------------------------------------------------------------------
# 6. Close frame texts and drain messages
# --------------------------------------------------------------------------


@attrs.frozen
class CloseInput:
    code: int
    text: str


def check_close_text(value: CloseInput) -> None:
    """Close frames and drain messages from a server: a reason or None, a sane window or None.

    ``CloseReason.from_close_frame`` names a member only when the text
    starts with its value and the code is its code;
    ``RetryWindow.from_close_text`` and ``from_message`` give a finite
    window within ``[0, MAX_RETRY_WINDOW]`` or ``None``, never an exception.
    """
    reason = CloseReason.from_close_frame(value.code, value.text)
    if reason is not None:
        expect(reason.code == value.code, f"{reason} has code {reason.code}, not {value.code}")
        expect(value.text.split(";", 1)[0] == reason.value, f"{reason} from {value.text!r}")
    for window in (RetryWindow.from_close_text(value.text), _window_from_json(value.text)):
        if window is None:
            continue
        expect(
            0 <= window.earliest <= window.latest <= MAX_RETRY_WINDOW
            and math.isfinite(window.latest),
            f"window {window!r} from {value.text!r}",
        )
        delay = window.choose(random.Random(value.code))
        expect(window.earliest <= delay <= window.latest, f"chose {delay} outside {window!r}")
        again = RetryWindow.from_close_text(window.close_text())
        expect(again == window, f"{window!r} did not survive its close text")


def _window_from_json(text: str) -> RetryWindow | None:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    return RetryWindow.from_message(message)


def close_from_bytes(data: bytes) -> CloseInput:
    r = Reader(data)
    return CloseInput(r.int(2), r.rest().decode("utf-8", "replace"))


@st.composite
def close_inputs(draw: st.DrawFn) -> CloseInput:
    number = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-5, 10**6).map(str),
        st.sampled_from(["nan", "inf", "-0", "1e400", "1_0", " 2 ", "", "0x10", "1e-400"]),
    )
    reason = st.sampled_from([r.value for r in CloseReason] + ["", "server_shutdown "])
    text = st.one_of(
        st.builds(lambda r, a, b: f"{r}; retry={a}..{b}", reason, number, number),
        st.builds(lambda r, t: f"{r};{t}", reason, st.text(max_size=30)),
        st.builds(
            lambda a, b: json.dumps({"type": "drain", "retry": [a, b]}),
            _JSON_SCALARS | st.integers(min_value=10**300, max_value=10**400),
            _JSON_SCALARS,
        ),
        st.text(max_size=60),
    )
    code = st.one_of(st.sampled_from([r.code for r in CloseReason]), st.integers(0, 65535))
    return CloseInput(draw(code), draw(text))


def close_seeds() -> list[bytes]:
    return [
        b"\x03\xe9server_shutdown; retry=2.0..10.0",
        b"\x0f\xa1pong_timeout",
        b'\x03\xe8{"type":"drain","retry":[1,2]}',
    ]


# --------------------------------------------------------------------------
# 7. Policy files (TOML) and etcd key-values
# --------------------------------------------------------------------------


@attrs.frozen
class PolicyInput:
    #: A TOML document, or (kv) etcd values by key.
    toml: bytes = b""
    kv: tuple[tuple[str, bytes], ...] | None = None
    #: Or a document as a mapping (from_mapping), for the structure-aware side.
    mapping: Any = None
    attributes: tuple[str | None, str | None, str | None] = (None, None, None)


def check_policy(value: PolicyInput) -> None:
    """A policy source raises only PolicyError/ConfigError; a set it accepts is usable.

    Every set that loads resolves any connection without raising, and each
    policy it resolves to converts to a valid ConnectionConfig and
    KeepaliveConfig (validation is whole, not partial).
    """
    try:
        if value.mapping is not None:
            policy_set = PolicySet.from_mapping(value.mapping)
        elif value.kv is not None:
            policy_set = policy_set_from_kv(dict(value.kv), prefix="/p/", revision=3)
        else:
            policy_set = load_policy_toml(value.toml)
    except (PolicyError, ConfigError):
        return
    group, region, version = value.attributes
    for attributes in (
        ConnectionAttributes(key="k"),
        ConnectionAttributes(key="k", group=group, region=region, client_version=version),
    ):
        resolution = policy_set.resolve(attributes)
        resolution.policy.connection_config()
        resolution.policy.keepalive_config()
    for rule in policy_set.rules:
        rule.policy.connection_config()


def policy_from_bytes(data: bytes) -> PolicyInput:
    r = Reader(data)
    flags = r.byte()
    attributes = (
        r.choice([None, "mobile", "desktop", ""]),
        r.choice([None, "ap-south", "eu"]),
        r.choice([None, "1.9.0", "2.0.0-rc.1", "x", "99999999999999999999.0.0"]),
    )
    if flags & 1:
        parts = r.rest().split(b"\xff")
        keys = ["/p/default", "/p/rules/a", "/p/rules/b", "/p/other", "/q/x"]
        kv = tuple((keys[i % len(keys)], part) for i, part in enumerate(parts))
        return PolicyInput(kv=kv, attributes=attributes)
    return PolicyInput(toml=r.rest(), attributes=attributes)


_FIELD_NAMES = [
    "ping_interval", "min_interval", "max_interval", "min_window", "max_window",
    "app_heartbeat", "app_heartbeat_interval", "keepalive", "keepalive_idle",
    "keepalive_interval", "keepalive_count", "tcp_user_timeout", "idle_timeout",
    "resume_max_messages", "resume_max_bytes", "resume_max_age", "pingInterval",
]  # fmt: skip
_POLICY_VALUES = st.one_of(
    st.floats(min_value=0.001, max_value=100),
    st.integers(-1, 200),
    st.sampled_from([0, 1, 2**31, 2**63, 10**400, float("nan"), float("inf"), True, "10", None]),
    _JSON,
)


@st.composite
def policy_mappings(draw: st.DrawFn) -> dict[str, Any]:
    fields = st.dictionaries(st.sampled_from(_FIELD_NAMES), _POLICY_VALUES, max_size=5)
    match = st.dictionaries(
        st.sampled_from(["group", "region", "version", "user"]),
        st.one_of(
            st.sampled_from(
                ["mobile", ["ap-south", "eu"], "<2", ">=1.0.0, <3 || ^4.1", "*", "1.x"]
            ),
            st.text(max_size=12),
            st.lists(st.text(max_size=4), max_size=3),
            _JSON_SCALARS,
        ),
        max_size=3,
    )
    rule = st.builds(
        lambda f, m, p, pr, extra: {**f, "match": m, **p, **pr, **extra},
        fields,
        match,
        st.one_of(st.just({}), st.builds(lambda v: {"rollout_percent": v}, _POLICY_VALUES)),
        st.one_of(st.just({}), st.builds(lambda v: {"priority": v}, _POLICY_VALUES)),
        st.one_of(st.just({}), st.just({"description": "d"}), st.just({"rollout_salt": ""})),
    )
    names = st.one_of(st.sampled_from(["a", "b.c", "default", "-x", "r" * 65]), st.text(max_size=8))
    doc: dict[str, Any] = {
        "revision": draw(st.one_of(st.integers(-1, 10**20), _JSON_SCALARS)),
        "default": draw(st.one_of(fields, _JSON_SCALARS)),
        "rules": draw(st.one_of(st.dictionaries(names, rule, max_size=3), _JSON_SCALARS)),
    }
    if draw(st.booleans()):
        doc[draw(st.text(max_size=8))] = draw(_JSON)
    return doc


def _toml_value(value: Any, depth: int = 0) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    return '"null"'


@st.composite
def policy_inputs(draw: st.DrawFn) -> PolicyInput:
    doc = draw(policy_mappings())
    attributes = (
        draw(st.sampled_from([None, "mobile", "desktop"])),
        draw(st.sampled_from([None, "eu", "ap-south"])),
        draw(st.sampled_from([None, "1.9.0", "2.0.0", "junk", "1" * 30 + ".0.0"])),
    )
    form = draw(st.integers(0, 3))
    if form == 0:
        return PolicyInput(mapping=doc, attributes=attributes)
    lines = []
    for key, value in doc.items():
        if not isinstance(value, dict):
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    if isinstance(doc.get("default"), dict):
        lines.append("[default]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc["default"].items()]
    if isinstance(doc.get("rules"), dict):
        for name, rule in doc["rules"].items():
            lines.append(f"[rules.{json.dumps(name)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in rule.items()]
    text = "\n".join(lines)
    if form == 2:  # deep nesting, which a recursive parser may not survive
        depth = draw(st.integers(1, 3000))
        text += "\nx = " + "[" * depth + "]" * depth
    if form == 3 and text:
        cut = draw(st.integers(0, len(text)))
        text = (
            text[:cut]
            + draw(st.sampled_from(["[", "]", '"', "=", "\n[[", "\x00", "{"]))
            + text[cut:]
        )
    return PolicyInput(toml=text.encode("utf-8", "surrogatepass"), attributes=attributes)


def policy_seeds() -> list[bytes]:
    from pathlib import Path

    example = Path(__file__).parents[2] / "docs" / "reference" / "policy-example.toml"
    text = example.read_bytes() if example.exists() else b"revision = 1\n"
    return [
        b"\x00\x00\x00\x00" + text,
        b"\x00\x01\x01\x01revision = 2\n[default]\nping_interval = 5\n",
        b"\x01\x00\x00\x00ping_interval = 5\xffmatch = { group = 'mobile' }\nping_interval = 3",
    ]


# --------------------------------------------------------------------------

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target(
            name="http_upgrade",
            dictionary=(
                b"GET ",
                b" HTTP/1.1\r\n",
                b"\r\n",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Version: 13",
                b"Sec-WebSocket-Key: ",
                b"Origin: https://chat.example",
                b"Content-Length: ",
                b"Transfer-Encoding: chunked",
                b"Host: x",
                b"/ws",
                b"/chat",
                b"?",
                b"==",
            ),
            doc="HTTP upgrade requests through Server._handshake (h11, HttpRequest, key checks)",
            from_bytes=http_from_bytes,
            strategy=http_inputs,
            check=check_http,
            seeds=http_seeds,
            needs_trio=True,
        ),
        Target(
            name="ws_frames",
            dictionary=(
                b"\x81\x80",
                b"\x89\x80",
                b"\x8a\x80",
                b"\x88\x82",
                b"\x82\xfe",
                b"\x82\xff",
                b"\x01\x80",
                b"\x80\x80",
                b"\x03\xe8",
                b"\x0f\xa1",
                b"\xc3\x28",
                b"\xf0\x9f",
            ),
            doc="WebSocket frames after the handshake through Connection's read loop",
            from_bytes=frames_from_bytes,
            strategy=frames_inputs,
            check=check_frames,
            seeds=frames_seeds,
            needs_trio=True,
            max_len=8192,
        ),
        Target(
            name="app_messages",
            dictionary=(
                b'{"type":"ping","id":',
                b'{"type":"pong","id":',
                b'{"type":"chat","text":',
                b"1e400",
                b"NaN",
                b"Infinity",
                b"-1",
                b"}",
                b"\xff",
                b"null",
                b"true",
                b"[",
                b"]",
            ),
            doc="app-level heartbeat and chat messages in valid text frames",
            from_bytes=app_from_bytes,
            strategy=app_inputs,
            check=check_app,
            seeds=app_seeds,
            needs_trio=True,
        ),
        Target(
            name="resume",
            doc="resume requests: forged, truncated, foreign, expired tokens; odd seqs and epochs",
            from_bytes=resume_from_bytes,
            strategy=resume_inputs,
            check=check_resume,
            seeds=resume_seeds,
            max_len=512,
        ),
        Target(
            name="resume_client",
            dictionary=(
                b'"type":',
                b'"hello"',
                b'"resumed"',
                b'"reset"',
                b'"refused"',
                b'"token"',
                b'"seq":',
                b'"replay":',
                b'"epoch":',
                b'"session":',
                b'"reason":',
                b'"trimmed"',
                b"\xff\x00",
                b"\xff\x01",
                b"{",
                b"}",
            ),
            doc="ResumeClient fed what a broken or hostile server sends",
            from_bytes=client_from_bytes,
            strategy=client_inputs,
            check=check_resume_client,
            seeds=client_seeds,
        ),
        Target(
            name="close_text",
            dictionary=(
                b"server_shutdown",
                b"; retry=",
                b"..",
                b"pong_timeout",
                b'{"type":"drain","retry":[',
                b"1e400",
                b"nan",
                b"inf",
                b"]}",
                b"1" * 40,
            ),
            doc="close frame texts and drain messages (CloseReason, RetryWindow)",
            from_bytes=close_from_bytes,
            strategy=close_inputs,
            check=check_close_text,
            seeds=close_seeds,
            max_len=256,
        ),
        Target(
            name="policy",
            dictionary=(
                b"revision = ",
                b"[default]",
                b"[rules.",
                b"ping_interval = ",
                b"min_interval",
                b"max_interval",
                b"min_window",
                b"max_window",
                b"tcp_user_timeout",
                b"keepalive_idle",
                b"keepalive_count",
                b"match = { group = ",
                b"version = ",
                b"rollout_percent",
                b"priority",
                b"nan",
                b"inf",
                b"[[",
                b"\xff",
            ),
            doc="policy files (TOML) and etcd values: only PolicyError, and loaded sets work",
            from_bytes=policy_from_bytes,
            strategy=policy_inputs,
            check=check_policy,
            seeds=policy_seeds,
        ),
    ]
}
