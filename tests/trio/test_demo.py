"""The demo chat server, end to end on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

import trioheart
from trioheart.cli import main as cli_main
from trioheart.demo.app import run_demo

from .conftest import refused_port
from .wsclient import connect

ROOT = Path(__file__).resolve().parents[2]


async def http_get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = b""
    while chunk := await stream.receive_some(65536):
        response += chunk
    await stream.aclose()
    return response


async def start_demo(nursery: trio.Nursery) -> trioheart.Server:
    server: trioheart.Server = await nursery.start(
        lambda task_status: run_demo(
            host="127.0.0.1",
            port=0,
            config=trioheart.ConnectionConfig(),
            announce=False,
            task_status=task_status,
        )
    )
    return server


async def test_everyone_in_the_room_gets_each_message_with_increasing_seq(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    server = await start_demo(nursery)
    path = "/ws?room=r1&name={}"
    async with (
        connect(server.port, path.format("ann")) as ann,
        connect(server.port, path.format("bob")) as bob,
        connect(server.port, "/ws?room=other&name=eve") as eve,
    ):
        for client in (ann, bob, eve):
            assert json.loads(await client.receive())["type"] == "hello"
        for i in range(5):
            sender = ann if i % 2 == 0 else bob
            await sender.send(json.dumps({"type": "chat", "text": f"m{i}"}))
            for client in (ann, bob):
                message = json.loads(await client.receive())
                assert message["type"] == "chat"
                assert message["text"] == f"m{i}"
                assert message["from"] == ("ann" if i % 2 == 0 else "bob")
                assert message["seq"] == i + 1
        await eve.send(json.dumps({"type": "chat", "text": "elsewhere"}))
        assert json.loads(await eve.receive())["seq"] == 1  # rooms count on their own
        assert not ann.messages
        assert not bob.messages


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ('{"type": "dance"}', "unknown message type 'dance'"),
        ("not json", "not JSON"),
        ("[1, 2]", "a message must be a JSON object"),
        ('{"type": "chat", "text": ""}', "text must be a non-empty string"),
        ('{"type": "chat", "text": 5}', "text must be a non-empty string"),
    ],
)
async def test_bad_messages_get_an_error_frame_and_the_connection_stays(
    clock: MockClock, nursery: trio.Nursery, message: str, error: str
) -> None:
    server = await start_demo(nursery)
    async with connect(server.port, "/ws?room=r&name=x") as client:
        await client.receive()  # hello
        await client.send(message)
        reply = json.loads(await client.receive())
        assert reply["type"] == "error"
        assert reply["error"].startswith(error)
        await client.send(json.dumps({"type": "chat", "text": "still here"}))
        assert json.loads(await client.receive())["text"] == "still here"


async def test_binary_messages_get_an_error_frame(clock: MockClock, nursery: trio.Nursery) -> None:
    server = await start_demo(nursery)
    async with connect(server.port, "/ws") as client:
        await client.receive()
        await client.send(b"\x00\x01")
        assert json.loads(await client.receive())["type"] == "error"


async def test_page_and_metrics_are_served(clock: MockClock, nursery: trio.Nursery) -> None:
    server = await start_demo(nursery)
    page = await http_get(server.port, "/")
    assert page.startswith(b"HTTP/1.1 200")
    assert b"<title>trioheart chat</title>" in page
    async with connect(server.port, "/ws?room=m") as client:
        await client.receive()
        metrics = (await http_get(server.port, "/metrics")).decode()
        assert "trioheart_connections_open 1.0" in metrics
        await client.close_cleanly()
        await client.run_until_closed()
    await server.wait_until(lambda s: s.connections_open == 0)
    metrics = (await http_get(server.port, "/metrics")).decode()
    assert "trioheart_connections_open 0.0" in metrics
    assert 'trioheart_connections_closed_total{reason="peer_closed"} 1.0' in metrics
    assert (await http_get(server.port, "/nope")).startswith(b"HTTP/1.1 404")


async def health(port: int, query: str = "") -> dict[str, Any]:
    response = await http_get(port, "/health.json" + query)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    snapshot: dict[str, Any] = json.loads(body)
    return snapshot


async def test_health_json_counts_live_tasks_and_lists_at_most_limit_rows(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    server = await start_demo(nursery)
    before = await health(server.port, "?limit=0")
    tasks = before["process"]["tasks_living"]
    assert tasks == trio.lowlevel.current_statistics().tasks_living  # the same Trio run
    assert before["process"]["rss_bytes"] > 1 << 20
    assert before["process"]["allocated_blocks"] > 1000
    async with (
        connect(server.port, "/ws?room=h&name=a") as a,
        connect(server.port, "/ws?room=h&name=b") as b,
    ):
        for client in (a, b):
            await client.receive()  # hello: in the room
        during = await health(server.port, "?limit=1")
        assert during["open"] == 2
        assert len(during["connections"]) == 1
        assert during["process"]["tasks_living"] > tasks
        assert len((await health(server.port))["connections"]) == 2  # 500 by default
        assert (await health(server.port, "?limit=0"))["connections"] == []
        assert len((await health(server.port, "?limit=nope"))["connections"]) == 2
        for client in (a, b):
            await client.close_cleanly()
            await client.run_until_closed()
    await server.wait_until(lambda s: s.connections_open == 0)
    after = await health(server.port, "?limit=0")
    assert after["closed"] == {"peer_closed": 2}
    assert after["process"]["tasks_living"] == tasks  # every connection's tasks are gone


def test_cli_rejects_bad_heartbeat_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["demo", "--ping-interval", "nan"])
    assert info.value.code == 2
    assert "ping_interval must be a positive, finite number of seconds; got nan" in (
        capsys.readouterr().err
    )


def test_cli_help_lists_the_demo_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["demo", "--help"])
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--ping-interval", "--ping-timeout"):
        assert option in out


async def test_demo_process_prints_urls_logs_json_and_stops_on_ctrl_c() -> None:
    import signal

    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trioheart.cli", "demo", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        assert process.stdout is not None
        banner = b""
        with trio.fail_after(20):
            while b"Ctrl-C" not in banner:
                chunk = await process.stderr.receive_some(4096)
                assert chunk, banner
                banner += chunk
        assert b"http://127.0.0.1:" in banner
        assert b"/ws?room=lobby" in banner
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            status = await process.wait()
            out = b""
            while chunk := await process.stdout.receive_some(65536):
                out += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert status == 0
    events = [json.loads(line)["event"] for line in out.decode().splitlines()]
    assert events[0] == "server.started"
    assert "demo.started" in events
    assert events[-1] == "server.stopped"


async def test_a_demo_node_whose_redis_does_not_answer_says_so(clock: MockClock) -> None:
    from trioheart.broker import BrokerUnavailable
    from trioheart.demo.app import open_broker

    port = await refused_port()
    with pytest.RaisesGroup(
        pytest.RaisesExc(BrokerUnavailable, match="did not answer within 3.0 s"),
        flatten_subgroups=True,
    ):
        async with open_broker(redis=f"redis://127.0.0.1:{port}/0", wait_up=3.0):
            pass  # pragma: no cover


async def test_health_page_its_data_and_static_files_are_served(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    server = await start_demo(nursery)
    page = await http_get(server.port, "/health")
    assert page.startswith(b"HTTP/1.1 200")
    assert b"text/html" in page.split(b"\r\n\r\n", 1)[0]
    async with connect(server.port, "/ws?room=h&name=ann") as client:
        await client.receive()  # hello
        raw = await http_get(server.port, "/health.json")
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        snapshot = json.loads(body)
        assert snapshot["open"] == 1
        assert snapshot["broker"]["kind"] == "embedded"
        (row,) = snapshot["connections"]
        assert row["path"] == "/ws"
        assert {"rtt_p50_s", "window_s", "interval_s", "health", "policy"} <= row.keys()
        await client.close_cleanly()
        await client.run_until_closed()
    await server.wait_until(lambda s: s.connections_open == 0)
    snapshot = json.loads((await http_get(server.port, "/health.json")).split(b"\r\n\r\n", 1)[1])
    assert snapshot["open"] == 0
    assert [close["reason"] for close in snapshot["recent_closes"]] == ["peer_closed"]
    assert (await http_get(server.port, "/static/health.html")).startswith(b"HTTP/1.1 200")
    for path in ("/static/../app.py", "/static/nope.js", "/static/app.py"):
        assert (await http_get(server.port, path)).startswith(b"HTTP/1.1 404"), path


async def test_the_demo_runs_each_cohort_under_its_policy_file(
    clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "revision = 1\n[default]\nping_interval = 20.0\n"
        '[rules.mobile]\nmatch = { group = "mobile" }\n'
        "ping_interval = 5.0\nmin_interval = 5.0\nmax_interval = 5.0\n"
    )
    server: trioheart.Server = await nursery.start(
        lambda task_status: run_demo(
            host="127.0.0.1",
            port=0,
            config=trioheart.ConnectionConfig(),
            policy_file=str(policy),
            announce=False,
            task_status=task_status,
        )
    )
    async with (
        connect(server.port, "/ws?room=p&name=m&group=mobile") as mobile,
        connect(server.port, "/ws?room=p&name=d&group=desktop") as desktop,
    ):
        await mobile.receive()
        await desktop.receive()
        by_name = {conn.query["name"]: conn for conn in server.connections}
        assert by_name["m"].policy is not None
        assert by_name["m"].policy.rule == "mobile"
        assert by_name["m"].liveness().interval == 5.0
        assert by_name["d"].policy is not None
        assert by_name["d"].policy.rule == "default"
        assert by_name["d"].liveness().interval == 20.0


async def test_the_demo_refuses_to_start_on_a_bad_policy_file(
    clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("revision = 1\n[default]\nping_interval = -1\n")
    with pytest.RaisesGroup(
        pytest.RaisesExc(trioheart.ConfigError, match="ping_interval"), flatten_subgroups=True
    ):
        await run_demo(
            host="127.0.0.1",
            port=0,
            config=trioheart.ConnectionConfig(),
            policy_file=str(policy),
            announce=False,
        )
