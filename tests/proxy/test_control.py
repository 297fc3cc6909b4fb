"""The control API over real HTTP (h11 on both ends), and the command line."""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import urllib.request
from functools import partial

import h11
import pytest
import trio
from trio.testing import MockClock

from trioheart.proxy import open_proxy
from trioheart.proxy._control import IDLE_TIMEOUT, MAX_BODY
from trioheart.proxy.cli import configure_parser, run


async def http(
    stream: trio.SocketStream, method: str, path: str, body: object = None
) -> tuple[int, object]:
    """One request over *stream* (kept open); returns the status and JSON body."""
    client = h11.Connection(h11.CLIENT)
    raw = b"" if body is None else json.dumps(body).encode()
    headers = [("Host", "control"), ("Content-Length", str(len(raw)))]
    await stream.send_all(
        client.send(h11.Request(method=method, target=path, headers=headers))  # type: ignore[arg-type]
        + client.send(h11.Data(data=raw))
        + client.send(h11.EndOfMessage())
    )
    status, data = 0, bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            data += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, json.loads(data) if data else None


async def echo(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def test_toxics_change_live_over_http(loopback_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        upstream = listeners[0].socket.getsockname()[:2]
        async with open_proxy(upstream=upstream, control="127.0.0.1:0") as proxy:
            assert proxy.control_address is not None
            control = await trio.open_tcp_stream(*proxy.control_address)
            client = await trio.open_tcp_stream(*proxy.listen_address)

            async def rtt() -> float:
                start = trio.current_time()
                await client.send_all(b"ping")
                assert await client.receive_some() == b"ping"
                return trio.current_time() - start

            assert await rtt() < 0.05
            toxic = {"type": "latency", "name": "lag", "attributes": {"latency": 1.5}}
            assert (await http(control, "POST", "/toxics", toxic))[0] == 201
            assert await rtt() == pytest.approx(1.5, abs=0.05)  # the open connection feels it
            status, body = await http(
                control, "POST", "/toxics/lag", {"attributes": {"latency": 3}}
            )
            assert status == 200
            assert await rtt() == pytest.approx(3, abs=0.05)
            status, body = await http(control, "GET", "/proxy")
            assert body["statistics"]["connections_open"] == 1  # type: ignore[index]
            assert (await http(control, "DELETE", "/toxics/lag"))[0] == 204
            assert await rtt() < 0.05
            status, body = await http(control, "POST", "/toxics", {"type": "nope"})
            assert status == 400
            assert "type must be one of" in body["error"]  # type: ignore[index]
            assert proxy.toxics == ()
            await client.aclose()
            await control.aclose()
        nursery.cancel_scope.cancel()


async def raw_exchange(address: tuple[str, int], request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*address)
    await stream.send_all(request)
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def test_bad_http_gets_a_400_and_a_close(loopback_clock: MockClock) -> None:
    async with open_proxy(upstream="127.0.0.1:9", control="127.0.0.1:0") as proxy:
        assert proxy.control_address is not None
        reply = await raw_exchange(proxy.control_address, b"NONSENSE\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert b"bad HTTP request" in reply


async def test_a_body_too_large_gets_413_and_changes_nothing(loopback_clock: MockClock) -> None:
    async with open_proxy(upstream="127.0.0.1:9", control="127.0.0.1:0") as proxy:
        assert proxy.control_address is not None
        body = b'{"type": "latency", "name": "' + b"x" * MAX_BODY + b'"}'
        head = (
            b"POST /toxics HTTP/1.1\r\nHost: c\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        )
        reply = await raw_exchange(proxy.control_address, head % len(body) + body)
        assert reply.startswith(b"HTTP/1.1 413 ")
        assert proxy.toxics == ()


async def test_an_idle_control_client_is_dropped(loopback_clock: MockClock) -> None:
    async with open_proxy(upstream="127.0.0.1:9", control="127.0.0.1:0") as proxy:
        assert proxy.control_address is not None
        stream = await trio.open_tcp_stream(*proxy.control_address)
        await stream.send_all(b"GET /version HTTP/1.1\r\n")  # and never the rest
        start = trio.current_time()
        assert await stream.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(IDLE_TIMEOUT, abs=0.1)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(argv)


def test_cli_parses_addresses_and_toxics() -> None:
    args = parse(
        "--upstream", "127.0.0.1:8765", "--control", "[::1]:0",
        "--toxic", '{"type": "nat_idle", "attributes": {"timeout": 60}}',
    )  # fmt: skip
    assert args.upstream == ("127.0.0.1", 8765)
    assert args.listen == ("127.0.0.1", 0)
    assert args.control == ("::1", 0)
    assert args.toxic[0].type == "nat_idle"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--upstream", "nowhere"], "upstream must be HOST:PORT"),
        (["--upstream", "127.0.0.1:99999"], "port must be in 0-65535"),
        (["--upstream", "127.0.0.1:1", "--toxic", "{"], "bad --toxic"),
        (["--upstream", "127.0.0.1:1", "--toxic", '{"type": "x"}'], "type must be one of"),
        ([], "--upstream"),
    ],
)
def test_cli_rejects_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(parse("--upstream", "127.0.0.1:9", "--listen", f"127.0.0.1:{port}")) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_python_dash_m_runs_until_interrupted() -> None:
    toxic = '{"type": "ws_drop", "attributes": {"frames": "pong"}}'
    argv = ["--upstream", "127.0.0.1:9", "--control", "127.0.0.1:0", "--toxic", toxic]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trioheart.proxy", *argv], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        out = b""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while b"control" not in out:
                assert selector.select(timeout=20), f"no output; got {out!r}"
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"exited early with {proc.wait()}"
                out += chunk
        lines = dict(line.split(" ", 1) for line in out.decode().splitlines())
        assert lines["upstream"] == "127.0.0.1:9"
        with urllib.request.urlopen(lines["control"] + "toxics", timeout=10) as response:
            toxics = json.load(response)
        assert [t["type"] for t in toxics] == ["ws_drop"]
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
