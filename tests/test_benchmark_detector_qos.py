"""Smoke test: the detector QoS benchmark runs in --quick mode and writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import detector_qos


def test_quick_run_writes_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert detector_qos.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "detector_qos.json").read_text())
    png = (tmp_path / "detector_qos.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert payload["quick"] is True
    assert set(payload["results"]) == {"wan", "heavy_gc"}
    wan = payload["results"]["wan"]
    assert {"websockets 20s/20s", "phi 8", "trioheart k=3", "trioheart no-stall"} <= set(wan)
    for row in wan.values():
        assert row["connections"] == 4  # every crash was detected
        assert 0 <= row["td_p50"] <= row["td_p99"]
        assert set(row["false_kills_by_cause"]) == {"loss", "rtt", "remote", "local"}
    # websockets' keepalive cannot notice a crash before its 20 s timeout.
    assert wan["websockets 20s/20s"]["td_p50"] >= 20.0
    assert payload["cost"]["trioheart_bytes_per_connection"] > 0
    assert {t["target"] for t in payload["targets"]}  # every target is checked and reported
    out = capsys.readouterr().out
    assert "re-create with: python -m benchmarks.detector_qos --quick" in out


def test_replay_is_deterministic() -> None:
    scenario = detector_qos.SCENARIOS["wan"]
    spec = next(s for s in detector_qos.all_specs() if s.name == "trioheart k=3")
    runs = []
    for _ in range(2):
        trace = detector_qos.make_trace(scenario, 42, warmup=60.0, span=600.0)
        tally = detector_qos.simulate(scenario, trace, spec, scenario.rto)
        runs.append((tally.td, tally.kills, tally.outage, tally.pings))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 1  # the crash was detected


def test_phi_threshold_matches_akka_logistic_approximation() -> None:
    import math

    for threshold in (1.0, 8.0, 16.0):
        y = detector_qos._phi_y(threshold)
        e = math.exp(-y * (1.5976 + 0.070566 * y * y))
        assert -math.log10(e / (1.0 + e)) == pytest.approx(threshold)


def _row(td_p99: float, kills_per_hour: float, local: int = 0) -> dict[str, object]:
    return {
        "td_p50": td_p99 / 2,
        "td_p99": td_p99,
        "false_kills_per_hour": kills_per_hour,
        "false_kills_by_cause": {"loss": 0, "rtt": 0, "remote": 0, "local": local},
        "connection_hours": 100.0,
    }


def test_targets_compare_with_the_best_rfc_6298_at_trioheart_td() -> None:
    # The best RFC 6298 is the one with the fewest false kills among those
    # detecting at least as fast (T_D p99) as trioheart, not the fastest.
    wan = {
        "trioheart k=3": _row(4.0, 0.3),
        "rfc6298 K=4": _row(2.0, 2.0),
        "rfc6298 K=32": _row(3.9, 1.0),
        "rfc6298 K=64": _row(7.5, 0.5),  # slower than trioheart: not eligible
    }
    heavy = {"trioheart k=3": _row(10.0, 0.3), "trioheart no-stall": _row(10.0, 0.4, local=55)}
    cost = {
        "trioheart_bytes_per_connection": 2100.0,
        "trioheart_us_per_event": 0.6,
        "trioheart_on_pong_us_median": 2.3,
        "trioheart_on_pong_us_p99": 5.5,
    }
    targets = {
        t["target"]: t for t in detector_qos.check_targets({"wan": wan, "heavy_gc": heavy}, cost)
    }
    rfc = targets["WAN: >= 4x fewer false kills than the best RFC 6298 at that T_D"]
    assert rfc["measured"].startswith("rfc6298 K=32: 1.000/h")
    assert rfc["met"] is False  # 1.0 / 0.3 = 3.3x
    heavy_gc = targets["heavy GC: >= 50x fewer local-stall kills than without compensation"]
    assert heavy_gc["met"] is True
    assert ">= 18x at 95 % confidence" in heavy_gc["measured"]  # 55 / 3.0
    assert targets["state per connection <= 8 KB"]["met"] is True
    assert targets["each event <= 5 us in CPython"]["met"] is False  # a pong's p99 is 5.5 us


def test_poisson_upper_bound() -> None:
    # Known one-sided 95 % upper bounds: 2.996 for none seen, 4.744 for one.
    assert detector_qos._poisson_upper_95(0) == pytest.approx(2.9957, abs=1e-3)
    assert detector_qos._poisson_upper_95(1) == pytest.approx(4.7439, abs=1e-3)
