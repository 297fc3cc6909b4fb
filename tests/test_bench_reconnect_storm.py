"""Smoke test: ``python -m benchmarks.reconnect_storm --quick`` runs and writes its results."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_runs import run_quick


def test_the_quick_reconnect_storm_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    done, report = run_quick("reconnect_storm", tmp_path, timeout=240)
    assert (tmp_path / "reconnect_storm.png").stat().st_size > 1000
    assert "list-table" in (tmp_path / "reconnect_storm.rst").read_text()
    cases = {row["case"]: row for row in report["cases"]}
    assert list(cases) == ["none", "equal", "full", "decorrelated", "drain"]
    n = report["settings"]["clients"]
    for name, row in cases.items():
        assert row["clients"] == n
        # The invariant, whatever the timing: every client came back and has
        # every message of its room exactly once, in order. The room logs
        # outlive the cut, so nobody may be reset either.
        assert row["resumed_clients"] == n, name
        assert (row["lost"], row["duplicated"], row["out_of_order"]) == (0, 0, 0), name
        assert (row["unexpected"], row["incomplete_clients"]) == (0, 0), name
        assert row["down_at_end_clients"] == 0, name
        assert (row["resets"], row["reset_clients"]) == (0, 0), name
        assert row["messages_published"] > 0
        assert row["delivered"] >= row["messages_published"]  # each room has several clients
        # Every client's handshake after the cut is in the per-100 ms series.
        assert sum(row["accepts_per_100ms"]) >= n
        assert row["peak_accepts_per_100ms"] == max(row["accepts_per_100ms"]) > 0
        assert 0 < row["resume_p50_s"] <= row["resume_p99_s"] <= row["resume_max_s"]
    drain = cases["drain"]
    earliest, latest = drain["retry_window"]
    assert 0 <= earliest < latest
    assert drain["promised_per_100ms"] == pytest.approx(n / (latest - earliest) / 10)
    assert "re-create with: python -m benchmarks.reconnect_storm --quick" in done.stdout
