"""Smoke test: ``python -m benchmarks.fanout --quick`` runs and writes its results."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.benchmark_runs import run_quick


def test_the_quick_fanout_benchmark_writes_json_and_a_plot(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `bash scripts/dev system` installs it")
    done, report = run_quick("fanout", tmp_path, timeout=180)
    assert (tmp_path / "fanout.png").stat().st_size > 1000
    assert {(r["broker"], r["nodes"]) for r in report["fanout"]} >= {("embedded", 1), ("redis", 1)}
    for row in report["fanout"]:
        assert row["rate_median"] > 0
        assert (row["lost"], row["duplicated"]) == (0, 0)
        # The server side's cost is measured, not only the load generator's rate.
        assert row["nodes_cpu_us_per_delivery"] is not None
        assert row["nodes_cpu_us_per_delivery"] >= 0
        assert row["clients_cpu_us_per_delivery"] > 0
        assert (row["redis_cpu_us_per_message"] is None) == (row["broker"] == "embedded")
    resume = report["resume_after_node_kill"]
    assert resume["moved"] > 0
    assert (resume["lost"], resume["duplicated"]) == (0, 0)
    assert 0 < resume["p50"] <= resume["p99"]
    assert "re-create with: python -m benchmarks.fanout --quick" in done.stdout


def test_cpu_seconds_reads_this_process_and_grows_with_work() -> None:
    import os

    from benchmarks.fanout import cpu_seconds

    before = cpu_seconds(os.getpid())
    if before is None:
        pytest.skip("no /proc/PID/stat on this platform: the CPU columns stay empty")
    total = 0
    for i in range(3_000_000):  # about 0.1-0.3 s of CPU, bounded
        total += i
    after = cpu_seconds(os.getpid())
    assert after is not None
    assert after > before
    assert cpu_seconds(2**22 + 12345) is None  # no such process
