"""The Trio client: one connection, and the resuming client end to end on loopback."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing
from trio.testing import MockClock

import trioheart
from trioheart import CloseReason, ConnectionConfig, DetectorConfig
from trioheart.backoff import Backoff, RetryWindow
from trioheart.client import (
    Connected,
    Disconnected,
    HandshakeRejected,
    Message,
    NotConnected,
    ReconnectFailed,
    Reset,
    ResumingClient,
    connect,
    open_resuming,
)
from trioheart.demo.app import run_demo
from trioheart.proxy import ResetPeer, open_proxy
from trioheart.resume import LogLimits

from ..conftest import LiveTasks
from .conftest import StartServer, echo, idle, refused_port


async def start_demo(nursery: trio.Nursery, **kwargs: object) -> trioheart.Server:
    server: trioheart.Server = await nursery.start(
        lambda task_status: run_demo(
            host="127.0.0.1",
            port=0,
            config=ConnectionConfig(),
            announce=False,
            task_status=task_status,
            **kwargs,
        )
    )
    return server


# --------------------------------------------------------------------------
# One connection


async def test_connect_tunes_the_socket_talks_and_closes_cleanly(
    clock: MockClock, start_server: StartServer, live_tasks: LiveTasks
) -> None:
    server = await start_server(echo)
    before = set(live_tasks.live)
    config = ConnectionConfig(keepalive=trioheart.KeepaliveConfig(idle=30, interval=5, count=3))
    async with connect(f"ws://127.0.0.1:{server.port}/echo?x=1", config=config) as conn:
        assert conn.keepalive is not None
        assert conn.keepalive.idle == 30
        assert conn.keepalive.count == 3
        assert conn.path == "/echo"
        assert conn.query == {"x": "1"}
        await conn.send("hello")
        assert await conn.receive() == "hello"
        await conn.send(b"\x00\x01")
        assert await conn.receive() == b"\x00\x01"
    assert conn.close_reason is CloseReason.APP_CLOSED
    assert conn.peer_close_code == 1000  # the server answered our close frame
    await server.wait_until(lambda s: s.closed.get("peer_closed") == 1)
    await trio.testing.wait_all_tasks_blocked()
    assert set(live_tasks.live) <= before, live_tasks.names()


async def test_an_error_in_the_body_is_raised_as_itself_and_closes(
    clock: MockClock, start_server: StartServer
) -> None:
    server = await start_server(echo)
    with pytest.raises(KeyError, match="mine"):
        async with connect(f"ws://127.0.0.1:{server.port}/") as conn:
            raise KeyError("mine")
    assert conn.close_reason is CloseReason.APP_CLOSED
    await server.wait_until(lambda s: s.connections_open == 0)


async def test_the_client_convicts_a_silent_server_within_interval_plus_timeout(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    # A server that completes the handshake and then never reads again: the
    # client's pings go unanswered, and only the client's heartbeat can tell.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def frozen_server(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        from wsproto.utilities import generate_accept_token

        accept = generate_accept_token(key)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, frozen_server, listeners)
    config = ConnectionConfig(heartbeat=DetectorConfig(ping_interval=2.0, ping_timeout=3.0))
    async with connect(f"ws://127.0.0.1:{port}/", config=config) as conn:
        start = trio.current_time()
        reason = await conn.wait_closed()
        took = trio.current_time() - start
    assert reason is CloseReason.PONG_TIMEOUT
    assert took == pytest.approx(2.0 + 3.0, abs=0.1)


async def test_a_refused_handshake_says_the_status(
    clock: MockClock, start_server: StartServer
) -> None:
    server = await start_server(echo, websocket_paths=["/ws"])
    with pytest.raises(HandshakeRejected) as caught:
        async with connect(f"ws://127.0.0.1:{server.port}/elsewhere"):
            pass  # pragma: no cover
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:1/", "must start with ws://"),
        ("wss://127.0.0.1:1/", "wss:// is not supported"),
        ("ws:///nohost", "has no host"),
        ("ws://127.0.0.1:99999/", "not a valid URL"),
    ],
)
async def test_bad_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(trioheart.ConfigError, match=problem):
        async with connect(url):
            pass  # pragma: no cover


# --------------------------------------------------------------------------
# The resuming client


WAIT = 30.0


async def next_event(client: ResumingClient, kind: type) -> object:
    """The next event of *kind*, skipping others; bounded."""
    with trio.fail_after(WAIT):
        async for event in client:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"the client ended before a {kind.__name__}")  # pragma: no cover


async def chat_texts(client: ResumingClient, count: int) -> list[str]:
    texts = []
    with trio.fail_after(WAIT):
        while len(texts) < count:
            event = await next_event(client, Message)
            assert isinstance(event, Message)
            assert isinstance(event.data, dict)
            if event.data.get("type") == "chat":
                texts.append(event.data["text"])
    return texts


async def test_a_client_cut_off_abruptly_gets_exactly_what_it_missed_in_order(
    clock: MockClock, nursery: trio.Nursery, live_tasks: LiveTasks
) -> None:
    """Issue 4's end-to-end test: two clients, one cut off with no close frame."""
    server = await start_demo(nursery)
    before = set(live_tasks.live)
    base = f"ws://127.0.0.1:{server.port}/ws?room=cut"
    rng = random.Random(4)
    async with (
        open_proxy(upstream=("127.0.0.1", server.port)) as proxy,
        open_resuming(f"{base}&name=ann", rng=rng) as ann,
        open_resuming(
            f"ws://127.0.0.1:{proxy.listen_address[1]}/ws?room=cut&name=bob",
            rng=rng,
            backoff=Backoff(base=0.2, cap=1.0),
        ) as bob,
    ):
        await next_event(ann, Connected)
        first = await next_event(bob, Connected)
        assert isinstance(first, Connected)
        assert not first.resumed
        for i in range(3):
            await ann.send({"type": "chat", "text": f"before-{i}"})
        assert await chat_texts(bob, 3) == ["before-0", "before-1", "before-2"]

        # Cut bob off: a RST both ways, no close frame. Ann keeps talking.
        proxy.add_toxic(ResetPeer(timeout=0.0), name="cut")
        lost = await next_event(bob, Disconnected)
        assert isinstance(lost, Disconnected)
        assert lost.reason is CloseReason.CONNECTION_RESET
        proxy.remove_toxic("cut")
        for i in range(5):
            await ann.send({"type": "chat", "text": f"during-{i}"})
        again = await next_event(bob, Connected)
        assert isinstance(again, Connected)
        assert again.resumed
        assert again.replayed == 5  # everything sent while it was away
        await ann.send({"type": "chat", "text": "after"})
        texts = await chat_texts(bob, 6)
        assert texts == [*(f"during-{i}" for i in range(5)), "after"]
        stats = bob.statistics()
        assert stats.resumes == 1
        assert stats.resets == 0
        assert stats.gaps == 0
        assert stats.delivered == 3 + 6
        assert ann.statistics().delivered >= 9  # ann sees her own lines too
    await trio.testing.wait_all_tasks_blocked()
    assert set(live_tasks.live) <= before, live_tasks.names()


async def test_a_trimmed_log_gives_a_reset_never_silent_loss(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    server = await start_demo(nursery, limits=LogLimits(max_messages=2))
    base = f"ws://127.0.0.1:{server.port}/ws?room=small"
    async with (
        open_proxy(upstream=("127.0.0.1", server.port)) as proxy,
        open_resuming(f"{base}&name=ann") as ann,
        open_resuming(
            f"ws://127.0.0.1:{proxy.listen_address[1]}/ws?room=small&name=bob",
            backoff=Backoff(base=0.2, cap=1.0),
        ) as bob,
    ):
        await next_event(ann, Connected)
        await next_event(bob, Connected)
        proxy.set_enabled(False)
        await next_event(bob, Disconnected)
        for i in range(5):  # more than the log keeps
            await ann.send({"type": "chat", "text": f"m{i}"})
        await chat_texts(ann, 5)
        proxy.set_enabled(True)
        reset = await next_event(bob, Reset)
        assert isinstance(reset, Reset)
        assert reset.reason.value == "trimmed"
        fresh = await next_event(bob, Connected)
        assert isinstance(fresh, Connected)
        assert not fresh.resumed
        assert fresh.seq == 5  # the new history starts at the room's head
        await ann.send({"type": "chat", "text": "new"})
        assert await chat_texts(bob, 1) == ["new"]
        await server.aclose()


async def test_a_draining_server_sends_clients_back_within_its_window(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    server = await start_demo(nursery)
    url = f"ws://127.0.0.1:{server.port}/ws?room=drain&name=ann"
    window = RetryWindow(earliest=2.0, latest=4.0)
    async with open_resuming(url, rng=random.Random(1)) as ann:
        await next_event(ann, Connected)
        await server.aclose(retry_window=window)
        lost = await next_event(ann, Disconnected)
        assert isinstance(lost, Disconnected)
        assert lost.reason is CloseReason.PEER_CLOSED
        assert 2.0 <= lost.retry_in <= 4.0
        assert "retry=2.0..4.0" in lost.detail


async def test_a_server_that_never_starts_the_session_is_left_within_the_handshake_timeout(
    clock: MockClock, start_server: StartServer
) -> None:
    # The WebSocket opens and pings are answered, but no hello (or resumed)
    # ever comes: lost on the way, or the server is stuck. The heartbeat
    # cannot tell; the client must not wait for it forever.
    server = await start_server(idle, websocket_paths=["/ws"])
    config = ConnectionConfig(handshake_timeout=2.0)
    with structlog.testing.capture_logs() as logged:
        async with open_resuming(
            f"ws://127.0.0.1:{server.port}/ws", config=config, backoff=Backoff(base=0.1, cap=0.1)
        ) as client:
            opened = trio.current_time()
            lost = await next_event(client, Disconnected)
            assert isinstance(lost, Disconnected)
            assert lost.reason is CloseReason.PROTOCOL_ERROR
            assert trio.current_time() - opened == pytest.approx(2.0, abs=0.1)
            again = await next_event(client, Disconnected)  # it tries again, and leaves again
            assert isinstance(again, Disconnected)
            assert again.reason is CloseReason.PROTOCOL_ERROR
            assert client.statistics().connections == 2
    details = [e.get("detail") for e in logged if e["event"] == "connection.closed"]
    assert details.count("no hello within 2.0 s") >= 2
    await server.wait_until(lambda s: s.closed.get("peer_closed", 0) >= 2)


async def test_send_while_reconnecting_raises_not_connected(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    port = await refused_port()
    async with open_resuming(f"ws://127.0.0.1:{port}/ws") as client:
        with pytest.raises(NotConnected):
            await client.send({"type": "chat", "text": "nobody hears"})
        failed = await next_event(client, Disconnected)
        assert isinstance(failed, Disconnected)
        assert failed.reason is None  # it never opened
        assert 0 <= failed.retry_in <= Backoff().base


async def test_the_backoff_gives_up_after_max_attempts(clock: MockClock) -> None:
    port = await refused_port()
    async with open_resuming(
        f"ws://127.0.0.1:{port}/ws", backoff=Backoff(base=0.1, cap=1.0, max_attempts=3)
    ) as client:
        seen: list[object] = []

        async def collect() -> None:
            async for event in client:
                seen.append(event)

        with pytest.raises(ReconnectFailed, match="gave up after 3 retries"), trio.fail_after(30):
            await collect()
        with pytest.raises(ReconnectFailed):
            await client.wait_connected()
    assert [type(e) for e in seen] == [Disconnected] * 3
    assert client.statistics().failed_attempts == 4


async def test_a_permanent_refusal_is_not_retried(
    clock: MockClock, start_server: StartServer
) -> None:
    server = await start_server(idle, websocket_paths=["/ws"])
    async with open_resuming(f"ws://127.0.0.1:{server.port}/nowhere") as client:
        with pytest.raises(ReconnectFailed, match="HTTP 404"), trio.fail_after(10):
            await client.wait_connected()


async def test_events_not_taken_do_not_grow_memory_and_lose_nothing(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    """A client that stops reading is bounded; when it reads again it has everything."""
    server = await start_demo(nursery)
    base = f"ws://127.0.0.1:{server.port}/ws?room=slow"
    config = ConnectionConfig(max_queued_messages=4, max_queued_bytes=64 * 1024)
    async with (
        open_resuming(f"{base}&name=ann") as ann,
        open_resuming(f"{base}&name=bob", config=config, max_events=4) as bob,
    ):
        await next_event(ann, Connected)
        await bob.wait_connected()
        for i in range(40):
            await ann.send({"type": "chat", "text": f"m{i}"})
            await trio.sleep(0.01)
        texts: list[str] = []
        with trio.fail_after(60):
            async for event in bob:
                if (
                    isinstance(event, Message)
                    and isinstance(event.data, dict)
                    and event.data.get("type") == "chat"
                ):
                    texts.append(event.data["text"])
                if len(texts) == 40:
                    break
        assert texts == [f"m{i}" for i in range(40)]
        stats = bob.statistics()
        # It was closed as a slow consumer at least once, and resumed.
        assert stats.connections >= 2
        assert stats.resumes == stats.connections - 1
        assert stats.duplicates == 0


async def test_a_close_with_messages_still_queued_is_retried_without_waiting_out_close_timeout(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    """Regression: the retry waited a whole close_timeout when messages were queued at the close.

    The client waited for the close inside connect()'s block, whose handler
    keeps the connection open for ``close_timeout`` while messages are
    queued; so a client that lagged behind its server, as every client in
    a reconnect storm does, started its backoff that much later.
    """
    server = await start_demo(nursery)
    url = f"ws://127.0.0.1:{server.port}/ws?room=linger"
    config = ConnectionConfig(close_timeout=5.0)
    async with (
        open_resuming(f"{url}&name=ann") as ann,
        open_resuming(f"{url}&name=bob", config=config, max_events=1) as bob,
    ):
        await next_event(ann, Connected)
        await bob.wait_connected()
        for i in range(5):
            await ann.send({"type": "chat", "text": f"m{i}"})
        assert await chat_texts(ann, 5) == [f"m{i}" for i in range(5)]
        # Bob takes no event yet: his one-event channel is full, so the five
        # messages wait in his connection, and the server's close frame
        # arrives behind them on the same stream.
        (conn,) = [c for c in server.connections if c.query.get("name") == "bob"]
        closed_at = trio.current_time()
        conn.close(CloseReason.APP_CLOSED)
        texts: list[str] = []
        with trio.fail_after(WAIT):
            async for event in bob:
                if isinstance(event, Message) and isinstance(event.data, dict):
                    texts.append(event.data["text"])
                if isinstance(event, Disconnected):
                    break
        assert texts == [f"m{i}" for i in range(5)]  # nothing queued was dropped
        assert trio.current_time() - closed_at < 1.0  # not close_timeout (5 s)


async def test_a_cohort_s_policy_bounds_what_it_may_be_replayed(
    clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A policy's resume_* keys narrow one cohort's replay: beyond them, reset."""
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'revision = 1\n[rules.mobile]\nmatch = { group = "mobile" }\nresume_max_messages = 2\n'
    )
    server = await start_demo(nursery, policy_file=str(policy))
    backoff = Backoff(base=0.2, cap=1.0)
    async with open_proxy(upstream=("127.0.0.1", server.port)) as proxy:
        away = f"ws://127.0.0.1:{proxy.listen_address[1]}/ws?room=cohort"
        async with (
            open_resuming(f"ws://127.0.0.1:{server.port}/ws?room=cohort&name=ann") as ann,
            open_resuming(f"{away}&name=mo&group=mobile", backoff=backoff) as mobile,
            open_resuming(f"{away}&name=de&group=desktop", backoff=backoff) as desktop,
        ):
            for client in (ann, mobile, desktop):
                await next_event(client, Connected)
            proxy.set_enabled(False)
            await next_event(mobile, Disconnected)
            await next_event(desktop, Disconnected)
            for i in range(5):
                await ann.send({"type": "chat", "text": f"m{i}"})
            await chat_texts(ann, 5)
            proxy.set_enabled(True)
            reset = await next_event(mobile, Reset)
            assert isinstance(reset, Reset)
            assert reset.reason.value == "trimmed"
            resumed = await next_event(desktop, Connected)
            assert isinstance(resumed, Connected)
            assert resumed.resumed
            assert resumed.replayed == 5
            assert await chat_texts(desktop, 5) == [f"m{i}" for i in range(5)]


async def test_a_server_that_drops_syns_cannot_hold_a_connect_past_the_handshake_timeout(
    clock: MockClock,
) -> None:
    """A full accept queue makes the kernel drop SYNs: the connect is bounded too."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: the queue fills at once
    port = listener.getsockname()[1]
    fillers = []
    try:
        # Fill the accept queue with connections nobody accepts.
        for _ in range(4):
            filler = trio.socket.socket()
            fillers.append(filler)
            with trio.move_on_after(1.0):
                await filler.connect(("127.0.0.1", port))
        config = ConnectionConfig(handshake_timeout=3.0)
        start = trio.current_time()
        with pytest.raises(trioheart.HandshakeError, match=r"within 3\.0 s"):
            async with connect(f"ws://127.0.0.1:{port}/", config=config):
                pass  # pragma: no cover
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.1)
    finally:
        for sock in [*fillers, listener]:
            sock.close()
