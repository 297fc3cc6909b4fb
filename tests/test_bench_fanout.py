"""Smoke test: ``python -m benchmarks.fanout --quick`` runs and writes its results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_fanout_benchmark_writes_json_and_a_plot(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `bash scripts/dev system` installs it")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fanout", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "fanout.json").read_text())
    assert (tmp_path / "fanout.png").stat().st_size > 1000
    assert {(r["broker"], r["nodes"]) for r in report["fanout"]} >= {("embedded", 1), ("redis", 1)}
    for row in report["fanout"]:
        assert row["rate_median"] > 0
        assert (row["lost"], row["duplicated"]) == (0, 0)
    resume = report["resume_after_node_kill"]
    assert resume["moved"] > 0
    assert (resume["lost"], resume["duplicated"]) == (0, 0)
    assert 0 < resume["p50"] <= resume["p99"]
    assert "re-create with: python -m benchmarks.fanout --quick" in done.stdout
