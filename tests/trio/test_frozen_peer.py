"""A frozen client process: its kernel still ACKs, only L7 can notice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

import trioheart
from trioheart import CloseReason, ConnectionConfig, DetectorConfig

from ..conftest import Measured
from .conftest import StartServer, idle

ROOT = Path(__file__).resolve().parents[2]
PING_INTERVAL = 0.5
PING_TIMEOUT = 0.5
SLACK = 0.5


async def test_sigstopped_client_is_closed_as_pong_timeout_within_the_bound(
    start_server: StartServer, measured: Measured
) -> None:
    config = ConnectionConfig(
        heartbeat=DetectorConfig(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT)
    )
    server = await start_server(idle, config=config)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.peers.ws_client", f"ws://127.0.0.1:{server.port}/ws"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(15):
            assert (await process.stdout.receive_some(100)).startswith(b"connected")
            # The client may print before the server has registered it.
            await server.wait_until(lambda s: s.connections_open == 1)
            [conn] = server.connections
            # Healthy first: the client's pongs come back.
            for _ in range(2):
                await conn.wait_pong()

        os.kill(process.pid, signal.SIGSTOP)
        frozen_at = trio.current_time()
        with trio.fail_after(10):
            reason = await conn.wait_closed()
        elapsed = trio.current_time() - frozen_at
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        await process.wait()
    stats = conn.liveness()
    measured(
        f"SIGSTOPped client closed as {reason.value} {elapsed:.3f} s after the freeze "
        f"(bound: interval {PING_INTERVAL} + ping timeout {PING_TIMEOUT} + slack {SLACK} = "
        f"{PING_INTERVAL + PING_TIMEOUT + SLACK} s; window {stats.window:.3f} s, late polls "
        f"taken as local stalls {stats.late_polls}, stall extension "
        f"{stats.stall_extension_total:.3f} s)"
    )
    assert reason is CloseReason.PONG_TIMEOUT
    # Not before the pong window of the first ping the frozen client missed...
    assert elapsed >= PING_TIMEOUT
    # ...and within interval + timeout of its last sign of life (before the freeze).
    assert elapsed <= PING_INTERVAL + PING_TIMEOUT + SLACK
    assert conn.tcp_info is not None
    # L4 evidence: the kernel saw nothing wrong (no retransmissions were needed).
    assert conn.tcp_info.retransmits == 0
    assert isinstance(conn, trioheart.Connection)
