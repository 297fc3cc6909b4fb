"""LivenessDetector: the documented formulas, and its invariants under jitter and stalls."""

from __future__ import annotations

import gc
import math
import sys
import tracemalloc

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioheart import ConfigError
from trioheart.detector import (
    MIN_RTT_SAMPLES,
    Action,
    DetectorConfig,
    DetectorStatistics,
    LivenessDetector,
)
from trioheart.estimator import SlidingQuantiles

ADAPTIVE = DetectorConfig(
    ping_interval=1.0, min_interval=0.5, max_interval=2.0, ping_timeout=10.0, min_window=0.5
)


def _exchange(det: LivenessDetector, rtt: float) -> float:
    """Ping when asked, answer after *rtt*; returns the RTT the detector measured."""
    at = det.wake_at()
    assert det.poll(at) is Action.SEND_PING
    ping_id = det.on_ping_sent(at)
    measured = det.on_pong(at + rtt, ping_id)
    assert measured == pytest.approx(rtt, abs=1e-9)
    return measured


def _expected_window(config: DetectorConfig, rtts: list[float]) -> float:
    """The window formula of the module docstring, computed from scratch."""
    kept = sorted(rtts[-config.rtt_samples :])
    n = len(kept)

    def q(level: float) -> float:
        return kept[min(n - 1, max(0, math.ceil(level * n) - 1))]

    q_hi, q_50 = q(config.rtt_quantile), q(0.5)
    count = max(1, math.ceil(config.rtt_quantile * n))
    srtt = sum(kept[:count]) / count
    rto = srtt + max(config.rto_min, 2.36 * (q(0.75) - q(0.25)))
    raw = q_hi + config.jitter_factor * (q_hi - q_50) + rto * (2**config.loss_allowance - 1)
    return min(config.ping_timeout, max(config.min_window, raw))


# -- configuration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ping_interval", math.nan, "ping_interval must be a positive, finite number"),
        ("rtt_quantile", 0.4, "rtt_quantile must be a number in [0.5, 1]; got 0.4"),
        ("rtt_samples", 4, "rtt_samples must be an integer in [8, 1024]; got 4"),
        ("loss_allowance", 11, "loss_allowance must be a number of consecutive losses"),
        ("jitter_factor", -1.0, "jitter_factor must be a non-negative, finite number"),
        ("stall_grace", math.inf, "stall_grace must be a non-negative, finite number"),
        ("stall_threshold", 0.0, "stall_threshold must be a positive, finite number"),
        ("adaptive", 1, "adaptive must be True or False; got 1"),
        ("rto_min", True, "rto_min must be a positive, finite number"),
    ],
)
def test_bad_config_names_field_and_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DetectorConfig(**{field: value})  # type: ignore[arg-type]


def test_defaults_stay_valid_and_fixed_interval_without_bounds() -> None:
    config = DetectorConfig()
    assert (config.ping_interval, config.ping_timeout, config.min_window) == (20.0, 20.0, 1.0)
    assert config.adaptive
    assert config.stall_compensation
    det = LivenessDetector(config, now=0.0)
    for _ in range(100):
        _exchange(det, 0.05)
        assert det.interval == 20.0
    assert config.min_window <= det.window <= config.ping_timeout


# -- the window formula ----------------------------------------------------


def test_window_is_ping_timeout_until_enough_samples() -> None:
    det = LivenessDetector(ADAPTIVE, now=0.0)
    for _ in range(MIN_RTT_SAMPLES - 1):
        _exchange(det, 0.05)
        assert det.window == ADAPTIVE.ping_timeout
    _exchange(det, 0.05)
    assert det.window < ADAPTIVE.ping_timeout


def test_window_follows_the_documented_formula() -> None:
    rtts = [0.040, 0.050, 0.055, 0.060, 0.062, 0.070, 0.080, 0.120, 0.300, 0.045] * 9
    det = LivenessDetector(ADAPTIVE, now=0.0)
    measured = []
    for i, rtt in enumerate(rtts, 1):
        measured.append(_exchange(det, rtt))
        if i >= MIN_RTT_SAMPLES:
            assert det.window == pytest.approx(_expected_window(ADAPTIVE, measured))
    stats = det.statistics()
    kept = sorted(measured[-64:])
    assert stats.rtt_p50 == kept[31]
    assert stats.rtt_quantile == kept[60]  # ceil(0.95 * 64) - 1
    assert stats.jitter == pytest.approx(kept[60] - kept[31])
    assert stats.rto is not None
    assert stats.rto >= ADAPTIVE.rto_min
    assert stats.window == det.window


def test_allowance_survives_k_retransmissions_on_a_clean_path() -> None:
    # A constant 50 ms path: RTO = 50 ms + 200 ms, so 3 losses in a row (the
    # default) add 0.25 * (2**3 - 1) = 1.75 s, and the window is 50 ms above.
    det = LivenessDetector(ADAPTIVE, now=0.0)
    for _ in range(64):
        _exchange(det, 0.05)
    assert ADAPTIVE.loss_allowance == 3
    assert det.window == pytest.approx(0.05 + 0.25 * 7)
    kinder = LivenessDetector(attrs.evolve(ADAPTIVE, loss_allowance=4), now=0.0)
    for _ in range(64):
        _exchange(kinder, 0.05)
    assert kinder.window == pytest.approx(0.05 + 0.25 * 15)


def test_window_is_clamped_to_the_policy() -> None:
    config = attrs.evolve(ADAPTIVE, ping_timeout=2.0, min_window=1.5)
    det = LivenessDetector(config, now=0.0)
    for _ in range(20):
        _exchange(det, 0.5)
    assert det.window == 2.0
    tight = attrs.evolve(ADAPTIVE, loss_allowance=0, jitter_factor=0.0, min_window=1.5)
    det = LivenessDetector(tight, now=0.0)
    for _ in range(20):
        _exchange(det, 0.01)
    assert det.window == 1.5


def test_not_adaptive_keeps_the_fixed_window_and_interval() -> None:
    det = LivenessDetector(attrs.evolve(ADAPTIVE, adaptive=False), now=0.0)
    for rtt in (0.01, 3.0, 0.01, 5.0) * 10:
        _exchange(det, rtt)
        assert (det.window, det.interval) == (10.0, 1.0)
    assert det.statistics().rtt_p50 is not None  # still measured


# -- the deadline ----------------------------------------------------------


def test_deadline_runs_from_ping_or_last_inbound_whichever_is_later() -> None:
    det = LivenessDetector(attrs.evolve(ADAPTIVE, adaptive=False), now=0.0)
    assert det.wake_at() == 1.0
    assert det.poll(0.5) is None
    ping_id = det.on_ping_sent(1.0)
    assert det.ping_outstanding
    assert det.ping_id == ping_id
    assert det.wake_at() == 11.0
    det.on_activity(4.0)
    assert det.wake_at() == 14.0
    assert det.poll(13.9) is None
    assert det.on_pong(13.0, ping_id + 1) is None  # a stale pong is only activity
    assert det.wake_at() == 23.0
    assert det.poll(23.0) is Action.CONVICT


def test_pong_schedules_the_next_ping_one_interval_after_the_last() -> None:
    det = LivenessDetector(attrs.evolve(ADAPTIVE, adaptive=False), now=0.0)
    ping_id = det.on_ping_sent(1.0)
    assert det.on_pong(1.2, ping_id) == pytest.approx(0.2)
    assert not det.ping_outstanding
    assert det.wake_at() == 2.0
    assert det.on_pong(1.3, ping_id) is None  # already answered


def test_reconfigure_applies_new_bounds_at_once() -> None:
    det = LivenessDetector(ADAPTIVE, now=0.0)
    for _ in range(30):
        _exchange(det, 0.05)
    det.reconfigure(
        attrs.evolve(ADAPTIVE, ping_timeout=1.0, min_window=1.0, rtt_samples=16), now=40
    )
    assert det.window == 1.0
    assert det.wake_at() <= 40 + det.interval
    assert det.statistics().pongs_received == 30


# -- stall compensation: exact ---------------------------------------------

FIXED = attrs.evolve(ADAPTIVE, adaptive=False)  # window 10 s, interval 1 s


def test_stall_during_the_deadline_extends_it_by_the_overlap() -> None:
    det = LivenessDetector(FIXED, now=0.0)
    det.on_ping_sent(1.0)
    det.on_local_stall(5.0, 3.0)  # [2, 5] overlaps fully
    assert det.wake_at() == 14.0
    det.on_local_stall(8.0, 10.0)  # [-2, 8]: only [5, 8] is new
    assert det.wake_at() == 17.0
    stats = det.statistics()
    assert (stats.local_stalls, stats.local_stall_total, stats.local_stall_max) == (2, 13.0, 10.0)
    assert stats.stall_extension_total == 6.0


def test_stall_before_the_ping_or_before_activity_does_not_count() -> None:
    det = LivenessDetector(FIXED, now=0.0)
    det.on_local_stall(0.9, 0.5)
    det.on_ping_sent(1.0)
    assert det.wake_at() == 11.0
    det.on_local_stall(3.0, 1.0)
    assert det.wake_at() == 12.0
    det.on_activity(4.0)  # the peer spoke after the stall: a fresh deadline
    assert det.wake_at() == 14.0


def test_rtt_sample_excludes_the_local_stall() -> None:
    det = LivenessDetector(FIXED, now=0.0)
    ping_id = det.on_ping_sent(1.0)
    det.on_local_stall(3.0, 1.9)
    assert det.on_pong(3.0, ping_id) == pytest.approx(0.1)


def test_no_conviction_right_after_a_stall() -> None:
    det = LivenessDetector(FIXED, now=0.0)
    det.on_ping_sent(1.0)
    # Stalled from 10.9 to 11.5: the deadline (11) passed inside the stall,
    # but it only covered 0.1 s of the 10 s window: 0.1 s remain, after
    # the stall, and never less than stall_grace.
    det.on_local_stall(11.5, 0.6)
    assert det.wake_at() == pytest.approx(11.6)
    assert det.poll(11.55) is None
    assert det.poll(11.6) is Action.CONVICT


def test_late_poll_is_taken_as_a_stall_before_the_monitor_reports() -> None:
    det = LivenessDetector(FIXED, now=0.0)
    ping_id = det.on_ping_sent(1.0)
    assert det.poll(13.0) is None  # 2 s late: we, not the peer, were asleep
    assert det.wake_at() == pytest.approx(13.0 + FIXED.stall_grace)
    assert det.on_pong(13.0, ping_id) == pytest.approx(10.0)  # it was waiting
    assert det.statistics().late_polls == 1


def test_always_slightly_late_caller_still_convicts() -> None:
    det = LivenessDetector(FIXED, now=0.0)
    det.on_ping_sent(1.0)
    first = det.wake_at()
    assert det.poll(first + 0.002) is None  # the first late poll gets the grace
    second = det.wake_at()
    assert det.poll(second + 0.002) is Action.CONVICT


def test_without_compensation_stalls_change_nothing() -> None:
    det = LivenessDetector(attrs.evolve(FIXED, stall_compensation=False), now=0.0)
    det.on_ping_sent(1.0)
    det.on_local_stall(5.0, 3.0)
    assert det.wake_at() == 11.0
    assert det.poll(13.0) is Action.CONVICT
    assert det.statistics().local_stalls == 1  # still counted


@pytest.mark.parametrize("lag", [0.0, -1.0, math.nan, math.inf])
def test_meaningless_stall_reports_are_ignored(lag: float) -> None:
    det = LivenessDetector(FIXED, now=0.0)
    det.on_ping_sent(1.0)
    det.on_local_stall(5.0, lag)
    assert det.wake_at() == 11.0
    assert det.statistics().local_stalls == 0


# -- cost ------------------------------------------------------------------


def test_state_per_connection_is_small() -> None:
    det = LivenessDetector(ADAPTIVE, now=0.0)
    for i in range(500):
        _exchange(det, 0.01 + (i % 13) / 100)
    size = sys.getsizeof(det) + sum(
        sys.getsizeof(getattr(det, slot)) for slot in type(det).__slots__ if slot != "_config"
    )
    rtts: SlidingQuantiles = det._rtts  # the only container
    size += sys.getsizeof(rtts._ring) + sys.getsizeof(rtts._sorted)
    assert size <= 8 * 1024, size


def test_state_per_connection_is_small_counting_every_allocation() -> None:
    # getsizeof above counts only the slots it is told about (and not the
    # config); tracemalloc counts every byte each detector keeps alive,
    # whatever a later change adds, its own config included, after more
    # pongs than the estimator keeps.
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        detectors = []
        for _ in range(10):
            det = LivenessDetector(attrs.evolve(ADAPTIVE, rtt_samples=64), now=0.0)
            for i in range(100):  # plain calls: no test helper allocates meanwhile
                at = det.wake_at()
                det.poll(at)
                det.on_pong(at + 0.01 + (i % 17) / 97, det.on_ping_sent(at))
            detectors.append(det)
        per_detector = (tracemalloc.get_traced_memory()[0] - before) / len(detectors)
    finally:
        tracemalloc.stop()
    assert len(detectors[0]._rtts) == 64  # the estimator is full: its bound holds
    assert per_detector <= 8 * 1024, per_detector


# -- properties ------------------------------------------------------------

rtt_lists = st.lists(
    st.floats(min_value=0.0005, max_value=2.0), min_size=MIN_RTT_SAMPLES, max_size=150
)


@given(rtts=rtt_lists, q=st.floats(min_value=0.5, max_value=1.0))
def test_window_is_never_below_the_rtt_quantile_it_claims(rtts: list[float], q: float) -> None:
    config = attrs.evolve(ADAPTIVE, rtt_quantile=q, ping_timeout=60.0)
    det = LivenessDetector(config, now=0.0)
    measured = [_exchange(det, rtt) for rtt in rtts]
    kept = sorted(measured[-config.rtt_samples :])
    claimed = kept[min(len(kept) - 1, max(0, math.ceil(q * len(kept)) - 1))]
    assert det.statistics().rtt_quantile == claimed
    assert det.window >= claimed
    assert sum(r <= det.window for r in kept) >= q * len(kept)


@given(
    base=st.floats(min_value=0.001, max_value=0.5),
    shape=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=8, max_size=80),
    jitters=st.tuples(
        st.floats(min_value=0.0, max_value=0.5), st.floats(min_value=0.0, max_value=0.5)
    ),
)
def test_window_grows_with_jitter(
    base: float, shape: list[float], jitters: tuple[float, float]
) -> None:
    # RTT_i = base + jitter * z_i with z_i >= 0: the same path, more jitter.
    low, high = sorted(jitters)
    windows = []
    for jitter in (low, high):
        det = LivenessDetector(attrs.evolve(ADAPTIVE, ping_timeout=60.0), now=0.0)
        for z in shape:
            _exchange(det, base + jitter * z)
        windows.append(det.window)
    assert windows[0] <= windows[1] + 1e-9


stalls = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=30.0), st.floats(min_value=0.01, max_value=10.0)),
    max_size=12,
)


def _overlap(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Seconds of *intervals* (disjoint) inside [lo, hi]."""
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)


def _replay(
    config: DetectorConfig,
    rtts: list[float],
    stall_list: list[tuple[float, float]],
    *,
    silent_after: float = math.inf,
    until: float = math.inf,
    poll_first: bool = False,
) -> tuple[float | None, float, list[tuple[float, float]]]:
    """Run a detector against a peer answering with *rtts* (cycled).

    After a warm-up of 20 exchanges on the same RTTs, the replay starts;
    *stall_list*, *silent_after* and *until* are offsets from that start.
    Local stalls (start offset, duration) freeze our side: a pong that
    arrives meanwhile is read at the stall's end. By default the stall
    monitor reports the stall before anything else runs (what
    :class:`~trioheart._trio.stalls.StallMonitor` guarantees); with
    *poll_first*, in the worst order instead: the deadline check first, then
    the pong that waited, then the report (what the benchmark replays). The
    peer stops answering pings sent at or after *silent_after*.

    Returns (conviction time or None, last inbound time, the merged stalls).
    """
    det = LivenessDetector(config, now=0.0)
    last_inbound = 0.0
    for rtt in rtts[:20]:  # warm up on the same distribution, in time order
        at = max(det.wake_at(), last_inbound)
        assert det.poll(at) is Action.SEND_PING
        det.on_pong(at + rtt, det.on_ping_sent(at))
        last_inbound = at + rtt
    start = clock = max(det.wake_at(), last_inbound)
    silent_at = start + silent_after
    frozen = sorted((start + a, start + a + d) for a, d in stall_list)
    merged: list[tuple[float, float]] = []
    for a, b in frozen:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    pending = list(merged)
    pong_at, pong_id, i = math.inf, 0, 0

    def poll(now: float) -> bool:
        """Poll at *now* and act; True if the peer was convicted."""
        nonlocal pong_at, pong_id, i
        action = det.poll(now)
        if action is Action.CONVICT:
            return True
        if action is Action.SEND_PING:
            pong_id = det.on_ping_sent(now)
            if now < silent_at:
                pong_at = now + rtts[i % len(rtts)]
                i += 1
        return False

    while True:
        due = max(clock, min(det.wake_at(), pong_at))
        if due > start + until:
            return None, last_inbound, merged
        if pending and pending[0][0] <= due:
            a, b = pending.pop(0)
            clock = max(clock, b)
            if not poll_first:
                det.on_local_stall(b, b - a)  # reported first, then the rest runs
            elif det.wake_at() <= b and poll(b):
                return b, last_inbound, merged
            if pong_at <= b:
                det.on_pong(b, pong_id)
                last_inbound, pong_at = b, math.inf
            if poll_first:
                det.on_local_stall(b, b - a)
            continue
        clock = due
        if pong_at <= clock:
            det.on_pong(clock, pong_id)
            last_inbound, pong_at = clock, math.inf
            continue
        if poll(clock):
            return clock, last_inbound, merged


@settings(max_examples=60, deadline=None)
@given(
    # "Within its distribution": no RTT above what the window covers, which
    # is at least RTO * (2**3 - 1) >= 1.4 s.
    rtts=st.lists(st.floats(min_value=0.0005, max_value=1.39), min_size=5, max_size=40),
    stall_list=stalls,
    adaptive=st.booleans(),
)
def test_a_peer_answering_within_its_rtt_distribution_is_never_convicted(
    rtts: list[float], stall_list: list[tuple[float, float]], adaptive: bool
) -> None:
    config = attrs.evolve(ADAPTIVE, adaptive=adaptive)
    convicted, _, _ = _replay(config, rtts, stall_list, until=200.0)
    assert convicted is None


@settings(max_examples=100, deadline=None)
@given(
    rtts=st.lists(st.floats(min_value=0.0005, max_value=5.0), min_size=5, max_size=40),
    stall_list=stalls,
    # Silence begins while the stalls (offsets 0-30 s, up to 10 s each)
    # still happen, so the stall term of the bound is exercised.
    silent_after=st.floats(min_value=0.0, max_value=40.0),
    compensate=st.booleans(),
    poll_first=st.booleans(),
)
def test_a_silent_peer_is_convicted_within_interval_window_and_stalls(
    rtts: list[float],
    stall_list: list[tuple[float, float]],
    silent_after: float,
    compensate: bool,
    poll_first: bool,
) -> None:
    config = attrs.evolve(ADAPTIVE, stall_compensation=compensate)
    convicted, last_inbound, merged = _replay(
        config, rtts, stall_list, silent_after=silent_after, until=10_000.0, poll_first=poll_first
    )
    assert convicted is not None
    # The stalls that happened since the peer's last sign of life.
    stalled = _overlap(merged, last_inbound, convicted)
    bound = config.max_interval + config.ping_timeout + stalled + config.stall_grace
    assert convicted - last_inbound <= bound + 1e-9


def test_the_silent_peer_replay_does_stall_while_the_peer_is_silent() -> None:
    # Guard for the property above: a stall inside the silence extends the
    # conviction by its length, so the stall term is really exercised.
    config = attrs.evolve(ADAPTIVE, adaptive=False)  # window 10 s, interval 1 s
    quiet, last_quiet, _ = _replay(config, [0.05] * 5, [], silent_after=0.0)
    stalled, last_stalled, merged = _replay(config, [0.05] * 5, [(2.0, 6.0)], silent_after=0.0)
    assert quiet is not None
    assert stalled is not None
    assert last_quiet == last_stalled
    assert _overlap(merged, last_stalled, stalled) == pytest.approx(6.0)
    assert stalled - quiet == pytest.approx(6.0)


@given(
    events=st.lists(
        st.one_of(
            st.floats(min_value=0.0, max_value=30.0),  # an RTT
            st.none(),  # a stall
        ),
        max_size=120,
    ),
    bounds=st.tuples(
        st.floats(min_value=0.1, max_value=5.0),
        st.floats(min_value=1.0, max_value=4.0),
        st.floats(min_value=1.0, max_value=4.0),
    ),
    idle=st.one_of(st.none(), st.floats(min_value=0.2, max_value=100.0)),
)
def test_interval_and_score_stay_within_bounds(
    events: list[float | None], bounds: tuple[float, float, float], idle: float | None
) -> None:
    low, up, up2 = bounds
    base, high = low * up, low * up * up2
    if idle is not None:
        idle = max(idle, 2 * low)
        high = min(high, idle / 2)
        base = min(base, high)
    config = DetectorConfig(
        ping_interval=base,
        min_interval=low,
        max_interval=high,
        ping_timeout=30.0,
        idle_timeout=idle,
    )
    det = LivenessDetector(config, now=0.0)
    for event in events:
        if event is None:
            det.on_local_stall(det.wake_at(), 1.0)
        else:
            _exchange(det, event)
        assert low <= det.interval <= high
        if idle is not None:
            assert det.interval <= idle / 2
        assert 0.0 <= det.health <= 1.0
        assert config.min_window <= det.window <= config.ping_timeout


@given(rtts=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=10, max_size=60))
def test_late_pongs_never_raise_the_score(rtts: list[float]) -> None:
    det = LivenessDetector(ADAPTIVE, now=0.0)
    for rtt in rtts:
        _exchange(det, rtt)
    before = det.health
    stats = det.statistics()
    assert stats.rtt_quantile is not None
    assert stats.rto is not None
    _exchange(det, stats.rtt_quantile + stats.rto + 5.0)  # late: a retransmission or worse
    assert det.statistics().late_pongs == stats.late_pongs + 1
    # The late penalty rose; the RTT terms moved by one sample out of 64.
    assert det.health <= before + 0.15 * 2 / 64 + 1e-9


def test_statistics_is_an_immutable_snapshot() -> None:
    det = LivenessDetector(ADAPTIVE, now=0.0)
    stats = det.statistics()
    assert isinstance(stats, DetectorStatistics)
    assert (stats.last_rtt, stats.rtt_p50, stats.rtt_p99) == (None, None, None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.window = 1.0  # type: ignore[misc]
