"""The coverage-guided fuzz campaign: atheris (libFuzzer) on every target.

Usage::

    python -m tests.fuzz.run --target all --runs 150000            # the long run
    python -m tests.fuzz.run --target ws_frames --runs 20000 --corpus fuzz-corpus
    python -m tests.fuzz.run --target ws_frames --reproduce crash-1234abcd

Each target runs in its own process (libFuzzer exits when it is done) with
``-runs`` inputs, seeded from the target's seed inputs or from the corpus
directory, which keeps what libFuzzer found interesting for the next run.
The table at the end gives, per target, the inputs executed, the coverage
(libFuzzer's ``cov``: instrumented edges of trioheart, wsproto, h11 and
tomllib reached; ``ft``: features), the corpus size, the speed and peak RSS,
and the findings: inputs that broke an invariant or raised, each saved as a
file to reproduce with ``--reproduce``. Every finding becomes a test in
tests/fuzz/test_regressions.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .targets import TARGETS, in_trio

_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_PULSE = re.compile(
    r"^#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+) corp: (\d+)", re.M
)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def _seed_corpus(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    for i, seed in enumerate(TARGETS[name].seeds()):
        (directory / f"seed-{i:03d}").write_bytes(seed)


def _dict_entry(token: bytes) -> str:
    """One line of a libFuzzer dictionary: the token, every byte escaped."""
    return '"' + "".join(f"\\x{byte:02x}" for byte in token) + '"\n'


def fuzz_one(
    name: str, *, runs: int, corpus: Path, artifacts: Path, seed: int, max_time: int | None
) -> dict[str, Any]:
    """Run atheris on one target; return its figures (and its findings, if any)."""
    target = TARGETS[name]
    target_corpus = corpus / name
    _seed_corpus(target_corpus, name)
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "tests.fuzz._atheris_main",
        name,
        f"-runs={runs}",
        f"-seed={seed}",
        f"-max_len={target.max_len}",
        "-print_final_stats=1",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={artifacts}/{name}-",
        str(target_corpus),
    ]
    if target.dictionary:
        dictionary = artifacts / f"{name}.dict"
        dictionary.write_text("".join(_dict_entry(token) for token in target.dictionary))
        args.insert(5, f"-dict={dictionary}")
    if max_time is not None:
        args.insert(5, f"-max_total_time={max_time}")
    started = time.monotonic()
    log_path = artifacts / f"{name}.log"
    with log_path.open("w") as log:
        proc = subprocess.run(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2], check=False
        )
    elapsed = time.monotonic() - started
    output = log_path.read_text(errors="replace")
    stats = {key: int(value) for key, value in _STAT.findall(output)}
    pulses = _PULSE.findall(output)
    cov = ft = corp = 0
    if pulses:
        _, cov_s, ft_s, corp_s = pulses[-1]
        cov, ft, corp = int(cov_s), int(ft_s), int(corp_s)
    findings = _ARTIFACT.findall(output)
    executed = stats.get("number_of_executed_units", 0)
    if not executed and pulses:
        executed = int(pulses[-1][0])
    return {
        "target": name,
        "runs_asked": runs,
        "executed": executed,
        "cov": cov,
        "ft": ft,
        "corpus": corp,
        "exec_per_s": round(executed / elapsed) if elapsed else 0,
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "seconds": round(elapsed, 1),
        "exit_code": proc.returncode,
        "findings": findings,
        "log": str(log_path),
    }


def reproduce(name: str, path: Path) -> int:
    """Run one saved input through its target and show what breaks."""
    target = TARGETS[name]
    data = path.read_bytes()
    print(f"{name}: {len(data)} bytes from {path}: {data[:200]!r}")
    try:
        if target.needs_trio:
            in_trio(target.run_bytes, data)
        else:
            target.run_bytes(data)
    except BaseException:
        traceback.print_exc()
        return 1
    print("no finding: every invariant holds for this input")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}, or all")
    parser.add_argument("--runs", type=int, default=10_000, help="inputs per target")
    parser.add_argument("--corpus", type=Path, help="corpus directory (kept between runs)")
    parser.add_argument("--artifacts", type=Path, help="where findings and logs go")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's -seed")
    parser.add_argument("--max-time", type=int, help="seconds per target at most")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--reproduce", type=Path, help="run one saved input and exit")
    args = parser.parse_args(argv)

    names = list(TARGETS) if args.target == "all" else [args.target]
    for name in names:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; choose from {', '.join(TARGETS)} or all")
    if args.reproduce is not None:
        return reproduce(names[0], args.reproduce)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print(
            "atheris is not installed (pip install -e '.[test]' on Linux x86-64)", file=sys.stderr
        )
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="trioheart-fuzz-"))
    corpus = args.corpus if args.corpus is not None else scratch / "corpus"
    artifacts = args.artifacts if args.artifacts is not None else scratch / "artifacts"
    results = []
    for name in names:
        print(f"fuzzing {name}: {args.runs} inputs ...", flush=True)
        result = fuzz_one(
            name,
            runs=args.runs,
            corpus=corpus,
            artifacts=artifacts,
            seed=args.seed,
            max_time=args.max_time,
        )
        results.append(result)
        print(
            f"  {result['executed']} inputs in {result['seconds']} s, cov {result['cov']}, "
            f"findings {len(result['findings'])}",
            flush=True,
        )

    print()
    header = (
        f"{'target':<14}{'inputs':>10}{'cov':>7}{'ft':>7}{'corpus':>8}{'exec/s':>8}"
        f"{'rss MB':>8}{'s':>7}  findings"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['target']:<14}{r['executed']:>10}{r['cov']:>7}{r['ft']:>7}{r['corpus']:>8}"
            f"{r['exec_per_s']:>8}{r['peak_rss_mb'] or '?':>8}{r['seconds']:>7}"
            f"  {len(r['findings'])}"
        )
    total = sum(r["executed"] for r in results)
    found = [(r["target"], f) for r in results for f in r["findings"]]
    print(f"{'total':<14}{total:>10}")
    print()
    for name, path in found:
        print(f"FINDING {name}: {path}")
        print(f"  reproduce: python -m tests.fuzz.run --target {name} --reproduce {path}")
    failed = [r for r in results if r["exit_code"] != 0 and not r["findings"]]
    for r in failed:
        print(f"ERROR {r['target']}: libFuzzer exited {r['exit_code']}; see {r['log']}")
    if not found and not failed:
        print("no findings")
    print(f"corpus: {corpus}\nlogs: {artifacts}")
    command = ["python", "-m", "tests.fuzz.run", "--target", args.target, "--runs", str(args.runs)]
    if args.seed != 1:
        command += ["--seed", str(args.seed)]
    print("re-create: " + " ".join(command))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "total_inputs": total}, indent=2))
    return 1 if found or failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
