"""Smoke test: ``python -m benchmarks.heartbeat_cost --quick`` runs and writes its results.

It checks the structure and that every figure is a sane positive number,
never how fast anything was: the machine is shared and the run is short.
"""

from __future__ import annotations

from pathlib import Path

from tests.benchmark_runs import run_quick

CONFIGS = {"trioheart", "trioheart+metrics", "trio-websocket", "trio-websocket+naive", "websockets"}


def test_the_quick_heartbeat_cost_benchmark_writes_json_and_a_plot(tmp_path: Path) -> None:
    done, report = run_quick("heartbeat_cost", tmp_path, timeout=240)
    assert (tmp_path / "heartbeat_cost.png").read_bytes().startswith(b"\x89PNG")
    assert "list-table" in (tmp_path / "heartbeat_cost.rst").read_text()
    assert report["quick"] is True
    assert report["settings"]["ping_interval_s"] == 1.0
    sizes = report["settings"]["sizes"]
    rows = {(row["config"], row["n"]): row for row in report["results"]}
    # The what-if (a raised GC threshold) runs at the largest N only.
    what_if = {("trioheart+gc", max(sizes))}
    assert set(rows) == {(config, n) for config in CONFIGS for n in sizes} | what_if
    for (config, n), row in rows.items():
        # Every server held every connection, in its own process.
        assert row["short_by"] == 0, (config, row)
        assert row["closed_by_server"] == 0, (config, row)
        # A connection costs memory and at least one task (reader or handler).
        assert 0 < row["bytes_per_conn"] < 1_000_000, (config, row)
        assert row["tasks_per_conn"] >= 1, (config, row)
        assert row["cpu_s_per_s"] >= 0, (config, row)
        if config == "trio-websocket":  # no heartbeat: no pings, no CPU per ping
            assert row["pings_per_conn_per_s"] == 0
            assert row["cpu_s_per_1000_pings"] is None
        else:
            assert row["pings_per_conn_per_s"] > 0, (config, row)
            assert row["cpu_s_per_1000_pings"] is not None
            assert row["cpu_s_per_1000_pings"] >= 0, (config, row)
        assert row["gc_share"] >= 0, (config, row)
        assert row["bytes_vs_trio_websocket"] > 0
        if (config, n) not in what_if:  # quick runs no websockets+gc to compare with
            assert row["bytes_vs_websockets"] > 0
    assert rows[("websockets", sizes[0])]["bytes_vs_websockets"] == 1.0
    # Each configuration ran in a fresh server process of its own, per N and repeat.
    repeats = report["settings"]["repeats"]
    assert len(report["runs"]) == (len(CONFIGS) * len(sizes) + len(what_if)) * repeats
    assert [item["n"] for item in report["metrics_overhead"]] == sizes
    assert {target["target"].split(" (")[0] for target in report["targets"]} == {
        "bytes/conn <= websockets",
        "CPU/ping <= websockets",
        "metrics on: CPU/ping < 1.10 x off",
    }
    where = report["where_the_bytes_go"]["trioheart"]
    assert where["traced_bytes_per_conn"] > 0
    assert any(item["file"].startswith("trioheart/") for item in where["by_file"])
    assert all(item["where"] and item["bytes_per_conn"] > 0 for item in where["by_line"])
    assert "re-create with: python -m benchmarks.heartbeat_cost --quick" in done.stdout
