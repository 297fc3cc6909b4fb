"""A stall of our own event loop does not get a healthy peer killed.

Real clock on purpose: the stall is a real CPU-bound step that holds the
loop (what a GIL-holding call or a long full GC does), which MockClock
cannot model. The A/B pair shows the compensation is what saves the peer.
"""

from __future__ import annotations

import functools
import time

import pytest
import trio
from wsproto.events import Pong

import trioheart
from trioheart import CloseReason, ConnectionConfig, DetectorConfig

from .wsclient import connect

STALL = 1.0


def hold_the_loop(seconds: float) -> None:
    """Busy for *seconds* without a checkpoint: nothing else runs meanwhile."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def idle(conn: trioheart.Connection) -> None:
    await trio.sleep_forever()


@pytest.mark.parametrize("compensation", [True, False])
async def test_a_local_stall_is_not_blamed_on_the_peer(
    nursery: trio.Nursery, compensation: bool
) -> None:
    config = ConnectionConfig(
        heartbeat=DetectorConfig(
            ping_interval=0.3, ping_timeout=0.5, stall_compensation=compensation
        )
    )
    metrics = trioheart.Metrics()
    server: trioheart.Server = await nursery.start(
        functools.partial(trioheart.serve, idle, "127.0.0.1", 0, config=config, metrics=metrics)
    )
    async with connect(server.port, answer_pings=False) as client:
        await server.wait_until(lambda s: s.connections_open == 1)
        [conn] = server.connections
        with trio.fail_after(10):
            while client.pings < 5 and await client.pump():
                if client.pings == 2 and not client.stalled:
                    client.stalled = True
                    # The process stalls while this ping is outstanding, and
                    # the pong comes in just after the stall, past the
                    # window as the clock reads it.
                    hold_the_loop(STALL)
                    await trio.sleep(0.05)
                if client.pings > client.answered:
                    try:
                        await client.send_raw(client.ws.send(Pong(client.last_ping)))
                    except trio.BrokenResourceError:
                        break  # the server gave up on us (the arm without compensation)
                    client.answered = client.pings
    assert server.stalls is not None
    assert server.stalls.statistics().count >= 1
    if compensation:
        assert conn.close_reason in {None, CloseReason.CONNECTION_RESET}  # reset: our exit
        assert client.pings == 5
    else:
        assert conn.close_reason is CloseReason.PONG_TIMEOUT
    # The stall is a metric too (a bare "not 0.0" check would also pass if
    # the counter were missing from the exposition).
    [stalls] = [
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith("trioheart_loop_stalls_total ")
    ]
    assert float(stalls.split()[1]) >= 1
