"""Every fuzz finding, minimized, as a test that fails without its fix.

Each test feeds the minimized input through the same target check the
fuzzers use (tests/fuzz/targets.py), and where it helps, also states the
fixed behaviour directly.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import structlog.testing
import trio
from trio.testing import MockClock
from wsproto.events import Ping

import trioheart
from tests.trio.wsclient import handshake
from trioheart.backoff import RetryWindow
from trioheart.errors import ConfigError
from trioheart.policy import PolicyError, load_policy_toml, policy_set_from_kv
from trioheart.resume import ResumeClient, ResumeProtocolError

from . import targets, wire


def test_deeply_nested_policy_file_is_a_policy_error() -> None:
    """Finding: tomllib recurses once per nesting level; RecursionError escaped.

    Found by the hypothesis slice of the ``policy`` target (a document with
    a 3000-deep array). A policy source must raise only PolicyError.
    """
    deep = b"revision = 1\nx = " + b"[" * 3000 + b"]" * 3000
    with pytest.raises(PolicyError, match="nested too deeply"):
        load_policy_toml(deep)
    with pytest.raises(PolicyError, match="nested too deeply"):
        policy_set_from_kv({"/p/default": b"x = " + b"[" * 3000}, prefix="/p/", revision=1)
    targets.check_policy(targets.PolicyInput(toml=deep))


def test_drain_message_with_a_huge_integer_is_ignored() -> None:
    """Finding: RetryWindow.from_message raised OverflowError for a huge integer.

    JSON integers have no size limit; ``float(10**400)`` overflows. A client
    reading a server's ``drain`` message must get ``None`` (not a window),
    never an exception. Found by the hypothesis slice of ``close_text``.
    """
    huge = int("2" * 309)
    assert RetryWindow.from_message({"type": "drain", "retry": [huge, None]}) is None
    assert RetryWindow.from_message({"type": "drain", "retry": [1, huge]}) is None
    with pytest.raises(ConfigError, match="finite number of seconds"):
        RetryWindow(earliest=0, latest=huge)
    text = '{"type": "drain", "retry": [' + str(huge) + ", null]}"
    targets.check_close_text(targets.CloseInput(code=1000, text=text))


def test_ping_flood_behind_a_blocked_write_is_bounded_in_process() -> None:
    """Finding: pongs piled up without bound while a write was blocked.

    The reader answers each ping by appending a pong to the send buffer;
    only messages the application sent were checked against
    ``max_send_buffer``. With a write blocked (the peer sends but does not
    read), a ping flood grew the buffer until ``send_timeout``. Found by the
    ``ws_frames`` seed corpus (40 pings, writer blocked) and its hypothesis
    slice. Minimized: 33 pings of 125 bytes > 4096 bytes of pongs.
    """
    ping = wire.Frame(opcode=wire.PING, payload=b"p" * 125).encode()
    value = targets.FramesInput(data=ping * 33, writer_blocked=True)
    result: list[targets.FramesResult] = []
    targets.in_trio(lambda v: result.append(targets.run_frames(v)), value)
    assert result[0].reason is trioheart.CloseReason.SLOW_CONSUMER


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.002)


async def test_ping_flood_behind_a_blocked_write_closes_as_slow_consumer(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    """The same finding over loopback: the peer does not read, and floods pings."""
    config = trioheart.ConnectionConfig(max_send_buffer=64 * 1024, send_timeout=30)

    async def flood_the_peer(conn: trioheart.Connection) -> None:
        while True:
            await conn.send(b"x" * 16384)  # blocks once the peer's buffers are full

    server: trioheart.Server = await nursery.start(
        functools.partial(trioheart.serve, flood_the_peer, "127.0.0.1", 0, config=config)
    )
    stream, ws = await handshake(server.port)
    await trio.sleep(1)  # the handler's write is blocked by now: we never read
    ping = ws.send(Ping(payload=b"p" * 125))
    start = trio.current_time()
    with structlog.testing.capture_logs() as logs, trio.fail_after(60):
        with contextlib.suppress(trio.BrokenResourceError):
            for _ in range(1000):  # 127 KB of pongs, twice max_send_buffer
                await stream.send_all(ping)
        await server.wait_until(lambda s: bool(s.closed))
    await stream.aclose()
    assert server.statistics().closed == {"slow_consumer": 1}
    [closed] = [event for event in logs if event["event"] == "connection.closed"]
    assert closed["detail"].startswith("replies over max_send_buffer"), closed
    assert trio.current_time() - start < config.send_timeout


@pytest.mark.parametrize("ping_id", ["1e400", "-1e999", "NaN", "[1, Infinity]"])
def test_app_pong_is_strict_json_even_for_an_id_that_is_not(ping_id: str) -> None:
    """Finding: the server answered ``{"id": 1e400}`` with ``{"id":Infinity}``.

    Python's json reads 1e400 as inf and NaN/Infinity as floats, and wrote
    them back as ``Infinity``/``NaN``, which JSON.parse in a browser
    rejects: the client's heartbeat handler would fail on the server's
    pong. Now such an id is left out of the pong. Found by the hypothesis
    slice of ``app_messages``.
    """
    ping = '{"type":"ping","id":' + ping_id + "}"
    value = targets.AppInput(texts=(ping, '{"type":"ping","id":7}'))
    targets.in_trio(targets.check_app, value)
    result: list[targets.FramesResult] = []
    frames = targets.FramesInput(data=wire.text_frame(ping) + wire.text_frame(ping))
    targets.in_trio(lambda v: result.append(targets.run_frames(v)), frames)
    assert result[0].output.texts == ['{"type":"pong"}'] * 2


def test_a_hello_without_epoch_leaves_no_half_session() -> None:
    """Finding: ResumeClient kept the token of a hello that lacked its epoch.

    ``hello`` stored session and token before it found the epoch missing
    and raised ResumeProtocolError; the next start_connection() then hit
    ``assert self._epoch is not None`` (and under ``python -O`` would have
    sent a resume with epoch null). Found by atheris on ``resume_client``
    (a mutated seed, "epoch" misspelt); minimized below.
    """
    data = b'\x00\xff{"type":"hello","session":"s","token":"t","seq":3}\xff\x01\xff\x00'
    targets.TARGETS["resume_client"].run_bytes(data)
    client = ResumeClient()
    assert client.start_connection() is None
    with pytest.raises(ResumeProtocolError, match="epoch"):
        client.receive('{"type":"hello","session":"s","token":"t","seq":3}')
    client.connection_lost()
    assert not client.can_resume
    assert client.start_connection() is None  # a fresh connection, not a broken resume
