"""One atheris (libFuzzer) process for one target: ``python -m tests.fuzz._atheris_main NAME ARGS``.

ARGS are libFuzzer's (``-runs=N``, ``-seed=S``, a corpus directory, ...).
libFuzzer ends the process itself, so :mod:`tests.fuzz.run` starts one of
these per target and reads the figures from its output.
"""

from __future__ import annotations

import sys

import atheris

# Coverage feedback comes from these packages' bytecode (the standard
# library's tomllib included, since policy files go through it).
with atheris.instrument_imports(include=["trioheart", "wsproto", "h11", "tomllib"]):
    import tomllib  # noqa: F401

    import trioheart  # noqa: F401
    from tests.fuzz.targets import TARGETS, quiet_logs

import trio
import trio.testing


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    target = TARGETS[name]
    quiet_logs()
    atheris.Setup([sys.argv[0], *args], target.run_bytes)

    async def fuzz() -> None:
        # Inside a Trio run (on a clock that never moves): the targets call
        # trioheart code that reads trio.current_time() and opens cancel
        # scopes, synchronously; nothing is ever scheduled.
        atheris.Fuzz()

    if target.needs_trio:
        trio.run(fuzz, clock=trio.testing.MockClock())
    else:
        atheris.Fuzz()


if __name__ == "__main__":
    main()
