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
