"""Fixtures shared by every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio


class LiveTasks(trio.abc.Instrument):
    """Counts the tasks spawned and not yet exited while it is installed."""

    def __init__(self) -> None:
        self.live: set[trio.lowlevel.Task] = set()
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.live.add(task)
        self.spawned += 1

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.live.discard(task)

    def names(self) -> list[str]:
        return sorted(task.name for task in self.live)


@pytest.fixture
def live_tasks() -> Iterator[LiveTasks]:
    """An installed :class:`LiveTasks`; the test asserts on ``.live``.

    Only usable from a trio test (it installs into the running loop).
    """
    tasks = LiveTasks()
    trio.lowlevel.add_instrument(tasks)
    try:
        yield tasks
    finally:
        trio.lowlevel.remove_instrument(tasks)


# A real etcd on loopback, session-scoped (tests/etcd_server.py).
from tests.etcd_server import etcd_server  # noqa: E402, F401
