"""The short, seeded slice of the fuzz campaign that runs with every test run.

Hypothesis draws structured inputs (frames, JSON, tokens, TOML) for each
target and checks the same invariants the long atheris campaign checks
(tests/fuzz/targets.py says which). ``derandomize=True`` makes the slice
the same on every run, so a failure here is reproducible at once; the
long, coverage-guided search is ``python -m tests.fuzz.run``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from .targets import TARGETS, Target

SLICE = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("target", TARGETS.values(), ids=list(TARGETS))
def test_structured_inputs_keep_the_invariants(target: Target) -> None:
    @SLICE
    @given(value=target.strategy())
    def check(value: Any) -> None:
        target.run(value)

    check()


@pytest.mark.parametrize("target", TARGETS.values(), ids=list(TARGETS))
def test_seeds_and_random_bytes_keep_the_invariants(target: Target) -> None:
    """The atheris side's byte decoder, on its seeds and on seeded random bytes."""
    rng = random.Random(f"fuzz-{target.name}")
    inputs = target.seeds() + [
        rng.randbytes(rng.randrange(0, target.max_len // 4)) for _ in range(100)
    ]

    def run_all(_: object) -> None:
        for data in inputs:
            target.run_bytes(data)

    if target.needs_trio:
        from .targets import in_trio

        in_trio(run_all, None)
    else:
        run_all(None)
