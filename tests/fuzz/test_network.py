"""The network fuzz's short seeded slice, and a smoke run of the atheris runner.

The slice runs the real programs (tests/fuzz/network.py and run.py) as a
user would, for a few seconds. It asserts the correctness invariants
(nothing crashed, no healthy connection closed, no hang, every close
named and accounted for, memory within its bound) and prints the healthy
RTT ratio without asserting it: timings on a shared machine are not a
test (the documented run reports the ratio against 1.5).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_network_fuzz_slice_keeps_every_invariant(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "tests.fuzz.network", "--quick", "--fast",
        "--duration", "2", "--quiet", "1", "--workers", "8", "--seed", "7",
        "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    print(done.stdout)
    summary = json.loads((tmp_path / "network_fuzz.json").read_text())
    assert summary["violations"] == [], done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary["fuzz_connections"] > 10
    closed = summary["closed_by_reason"]
    assert "internal_error" not in closed
    assert closed["peer_closed"] >= summary["healthy_clients"]
    assert summary["rtt_quiet_ms"]["samples"] > 0
    assert summary["rtt_fuzz_ms"]["samples"] > 0
    print(f"healthy RTT p99 ratio (fuzz / quiet), not asserted: {summary['rtt_p99_ratio']}")


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (it has wheels for Linux x86-64 only)",
)
def test_atheris_runner_smoke(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "tests.fuzz.run", "--target", "close_text", "--runs", "3000",
        "--corpus", str(tmp_path / "corpus"), "--artifacts", str(tmp_path / "artifacts"),
        "--json", str(tmp_path / "fuzz.json"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads((tmp_path / "fuzz.json").read_text())
    [result] = figures["results"]
    assert result["executed"] == 3000
    assert result["cov"] > 0
    assert result["findings"] == []
    assert "no findings" in done.stdout
