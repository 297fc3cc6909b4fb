"""Run a benchmark's ``--quick`` mode as a user would, for the smoke tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_quick(
    name: str, out: Path, *, timeout: float = 180, check: bool = True
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``python -m benchmarks.NAME --quick --out OUT``: the finished process and its JSON.

    With *check*, a non-zero exit fails the test with the end of its
    standard error; the JSON is read either way (a benchmark that found a
    violation still writes it, and the caller may want to show it first).
    """
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return done, report
