"""Fixtures for the proxy tests."""

from __future__ import annotations

import pytest
from trio.testing import MockClock


@pytest.fixture
def loopback_clock() -> MockClock:
    """A MockClock for tests on real loopback sockets.

    It jumps only after the run was idle for 10 ms of real time, so data in
    flight in the kernel arrives before virtual time moves on.
    """
    return MockClock(autojump_threshold=0.01)
