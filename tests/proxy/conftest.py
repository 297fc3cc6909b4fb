"""Fixtures for the proxy tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from trio.testing import MockClock

from ..conftest import LiveTasks


@pytest.fixture
def loopback_clock() -> MockClock:
    """A MockClock for tests on real loopback sockets.

    It jumps only after the run was idle for 10 ms of real time, so data in
    flight in the kernel arrives before virtual time moves on.
    """
    return MockClock(autojump_threshold=0.01)


@pytest.fixture
async def live_tasks() -> AsyncIterator[LiveTasks]:
    """The root ``live_tasks``, installed from inside the Trio run.

    The root fixture is synchronous, and pytest-trio runs synchronous
    fixtures outside the run, where ``add_instrument`` cannot be called;
    as an async fixture it runs inside.
    """
    tasks = LiveTasks()
    trio.lowlevel.add_instrument(tasks)
    try:
        yield tasks
    finally:
        trio.lowlevel.remove_instrument(tasks)
