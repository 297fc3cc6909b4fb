"""Smoke test: ``python -m benchmarks.nat_survival --quick`` runs and writes its results."""

from __future__ import annotations

from pathlib import Path

from tests.benchmark_runs import run_quick

KEYS = ["kernel_default", "seed_fix", "trioheart"]


def test_the_quick_nat_survival_benchmark_writes_its_results(tmp_path: Path) -> None:
    done, report = run_quick("nat_survival", tmp_path, timeout=180)
    assert "re-create with: python -m benchmarks.nat_survival --quick" in done.stdout
    assert (tmp_path / "nat_survival.png").stat().st_size > 1000
    assert "list-table" in (tmp_path / "nat_survival.rst").read_text()
    assert report["scenario"]["factor"] > 1
    rows = {row["configuration"]: row for row in report["configurations"]}
    assert list(rows) == KEYS
    for row in rows.values():
        assert 0 <= row["survival"] <= 1
        assert row["clients"] == report["scenario"]["clients"]
        assert row["deliveries_owed"] > 0
        assert 0 <= row["deliveries_lost"] <= row["deliveries_owed"]
        assert row["recovered"] <= row["mappings_forgotten"]
        assert len(row["recovery_s"]) == row["recovered"]
    # Nothing pings in (1), so nothing ever notices a lost mapping.
    assert rows["kernel_default"]["recovered"] == 0
    assert rows["kernel_default"]["server_closed"] == {}
    # Resume (and the client's outbox) owe every message, once: an invariant,
    # however the timing of this run went.
    ours = rows["trioheart"]
    assert ours["mappings_forgotten"] > 0, "the quick run must exercise a recovery"
    assert ours["messages_lost"] == 0, ours
    assert ours["duplicates"] == 0
    assert ours["client_messages_duplicated_in_room"] == 0
    assert ours["recovered_with_everything"] == ours["recovered"]
