"""The event-loop stall monitor, under MockClock (no real sleeps except the stall itself)."""

from __future__ import annotations

import time

import pytest
import structlog
import trio
import trio.testing

from tests.conftest import LiveTasks
from trioheart import ConfigError
from trioheart._trio import stalls as stalls_module
from trioheart._trio.stalls import StallMonitor, monitor_stalls
from trioheart.detector import DetectorConfig, LivenessDetector

STALL = 0.12  # seconds of real blocking: the one real wait in this file
THRESHOLD = 0.05


def _block() -> None:
    """Hold the event loop, as a GIL-holding call or a long GC would."""
    time.sleep(STALL)  # blocking on purpose: the stall under test


async def test_blocking_call_is_reported_to_subscribers_and_logged(
    autojump_clock: trio.testing.MockClock, live_tasks: LiveTasks
) -> None:
    got: list[tuple[float, float]] = []
    with structlog.testing.capture_logs() as logs, monitor_stalls(threshold=THRESHOLD) as monitor:
        with monitor.subscribe(lambda at, lag: got.append((at, lag))):
            await trio.sleep(3600)  # an hour of autojumps is no stall
            assert got == []
            await trio.sleep(1)
            _block()
            stalled_at = trio.current_time()
            await trio.lowlevel.checkpoint()
        stats = monitor.statistics()
    assert len(got) == 1
    at, lag = got[0]
    assert at == stalled_at
    assert STALL <= lag < STALL + 1.0
    assert (stats.count, stats.total, stats.max, stats.last_at) == (1, lag, lag, at)
    assert stats.subscribers == 0  # the with block unsubscribed
    stalled = [e for e in logs if e["event"] == "loop.stalled"]
    assert stalled == [{"event": "loop.stalled", "lag_s": lag, "at": at, "log_level": "warning"}]
    assert live_tasks.spawned == 0, "the monitor runs no task of its own"


async def test_clock_jumps_are_not_stalls(autojump_clock: trio.testing.MockClock) -> None:
    with monitor_stalls(threshold=THRESHOLD) as monitor:
        await trio.lowlevel.checkpoint()
        autojump_clock.jump(30)  # virtual time only: nothing held the loop
        await trio.sleep(10)
    assert monitor.statistics().count == 0


async def test_detector_deadline_is_extended_by_the_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    autojump_clock.rate = 1.0  # virtual time follows real time, as in production
    config = DetectorConfig(ping_interval=1.0, ping_timeout=5.0, adaptive=False)
    detector = LivenessDetector(config, now=trio.current_time())
    with monitor_stalls(threshold=THRESHOLD) as monitor, monitor.subscribe(detector.on_local_stall):
        detector.on_ping_sent(trio.current_time())
        before = detector.wake_at()
        await trio.lowlevel.checkpoint()
        _block()
        await trio.lowlevel.checkpoint()
    stats = detector.statistics()
    assert stats.local_stalls == 1
    # The ping was outstanding during the whole stall: all of it extends.
    assert detector.wake_at() == pytest.approx(before + stats.local_stall_total)
    assert stats.stall_extension_total == pytest.approx(stats.local_stall_total)


async def test_failing_subscriber_is_dropped_and_others_still_hear(
    autojump_clock: trio.testing.MockClock,
) -> None:
    heard: list[float] = []

    def broken(at: float, lag: float) -> None:
        raise RuntimeError("bug in a subscriber")

    with structlog.testing.capture_logs() as logs, monitor_stalls(threshold=THRESHOLD) as monitor:
        bad = monitor.subscribe(broken)
        good = monitor.subscribe(lambda at, lag: heard.append(lag))
        for _ in range(2):
            await trio.lowlevel.checkpoint()
            _block()
        await trio.lowlevel.checkpoint()
        assert not bad.active
        assert good.active
        good.close()
        good.close()  # idempotent
        assert monitor.statistics().subscribers == 0
    assert len(heard) == 2
    failures = [e for e in logs if e["event"] == "loop.stall_subscriber_failed"]
    assert len(failures) == 1
    assert "bug in a subscriber" in failures[0]["error"]


async def test_oversleeping_io_wait_is_a_stall(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drive the hooks directly with a fake real clock: a 1 s wait that took
    # 3 s means the process was stopped or descheduled for 2 s.
    fake = iter([100.0, 103.0, 103.01, 103.02])
    monkeypatch.setattr(stalls_module.time, "perf_counter", lambda: next(fake))
    monitor = StallMonitor(threshold=THRESHOLD)
    lags: list[float] = []
    monitor.subscribe(lambda at, lag: lags.append(lag))
    monitor.before_io_wait(1.0)  # at 100: no batch measured yet
    monitor.after_io_wait(1.0)  # at 103: overslept by 2 s
    monitor.before_io_wait(0.0)  # at 103.01: a 10 ms batch, no stall
    monitor.after_io_wait(0.0)  # at 103.02: on time
    assert lags == [pytest.approx(2.0)]


async def test_monitor_can_leave_after_trio_removed_it() -> None:
    with monitor_stalls() as monitor:
        trio.lowlevel.remove_instrument(monitor)
    assert monitor.threshold == 0.05


@pytest.mark.parametrize("threshold", [0, -1.0, float("nan"), float("inf"), True])
def test_threshold_must_be_positive_and_finite(threshold: float) -> None:
    with pytest.raises(ConfigError, match="threshold must be a positive, finite number"):
        StallMonitor(threshold=threshold)
