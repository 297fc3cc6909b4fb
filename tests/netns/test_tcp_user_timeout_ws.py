"""The kernel ends a WebSocket whose peer vanished with data in flight: tcp_timeout.

The client runs in a network namespace this test creates. Cutting the veth
link, or an nftables rule inside the namespace that drops every packet,
means nothing the server sends is ever acknowledged. The heartbeat's pings
are the data in flight, and the pong window is long on purpose, so it is
the kernel's TCP_USER_TIMEOUT, not L7, that ends the connection.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
import trio

import trioheart
from trioheart import CloseReason, ConnectionConfig, DetectorConfig, KeepaliveConfig
from trioheart.testing.netns import NetNamespace, unavailable_reason

from ..conftest import Measured

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
USER_TIMEOUT = 2.0
PING_INTERVAL = 0.25


@pytest.fixture(params=["link_down", "nft_drop"])
def cut(request: pytest.FixtureRequest) -> str:
    cut: str = request.param
    return cut


@pytest.fixture
def netns(cut: str) -> Iterator[NetNamespace]:
    if reason := unavailable_reason(nft=cut == "nft_drop"):
        pytest.skip(f"cannot create a network namespace here: {reason}")
    with NetNamespace() as ns:
        yield ns


async def idle(conn: trioheart.Connection) -> None:
    await trio.sleep_forever()


async def test_vanished_peer_with_data_in_flight_is_tcp_timeout(
    netns: NetNamespace, cut: str, nursery: trio.Nursery, measured: Measured
) -> None:
    config = ConnectionConfig(
        heartbeat=DetectorConfig(ping_interval=PING_INTERVAL, ping_timeout=30),
        keepalive=KeepaliveConfig(idle=1, interval=1, count=1, user_timeout=USER_TIMEOUT),
    )
    server: trioheart.Server = await nursery.start(
        lambda task_status: trioheart.serve(
            idle, netns.addr, 0, config=config, task_status=task_status
        )
    )
    client = netns.run(
        [sys.executable, "-m", "tests.peers.ws_client", f"ws://{netns.addr}:{server.port}/ws"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert client.stdout is not None
    with trio.fail_after(15):
        # The namespace stops the client on exit, which ends a readline left behind.
        line = await trio.to_thread.run_sync(client.stdout.readline, abandon_on_cancel=True)
    assert line.startswith(b"connected"), line
    with trio.fail_after(10):
        await server.wait_until(lambda s: s.connections_open == 1)
        [conn] = server.connections
        await conn.wait_pong()  # healthy across the link first
    assert conn.keepalive is not None
    assert conn.keepalive.user_timeout == USER_TIMEOUT  # what the kernel applied

    with structlog.testing.capture_logs() as logs:
        if cut == "link_down":
            netns.link_down()
        else:
            netns.drop()
        cut_at = trio.current_time()
        with trio.fail_after(USER_TIMEOUT + 10):
            reason = await conn.wait_closed()
        elapsed = trio.current_time() - cut_at
    measured(
        f"{cut} -> {reason.value} after {elapsed:.3f} s "
        f"(TCP_USER_TIMEOUT {USER_TIMEOUT} s, pings every {PING_INTERVAL} s, "
        f"pong window 30 s)"
    )
    assert reason is CloseReason.TCP_TIMEOUT
    # The first unacknowledged ping leaves within one interval of the cut;
    # the kernel gives up USER_TIMEOUT after it.
    assert USER_TIMEOUT <= elapsed <= USER_TIMEOUT + PING_INTERVAL + 1.0
    assert conn.tcp_info is not None
    assert conn.tcp_info.unacked > 0 or conn.tcp_info.retransmits > 0
    # One connection.closed, naming the reason, with the kernel's evidence.
    [event] = [e for e in logs if e["event"] == "connection.closed"]
    assert (event["conn_id"], event["reason"], event["code"]) == (conn.conn_id, "tcp_timeout", 1006)
    assert event["tcp"]["unacked"] == conn.tcp_info.unacked
