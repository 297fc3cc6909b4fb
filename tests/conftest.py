"""Fixtures shared by every test."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
async def live_tasks() -> AsyncIterator[LiveTasks]:
    """An installed :class:`LiveTasks`; the test asserts on ``.live``."""
    tasks = LiveTasks()
    trio.lowlevel.add_instrument(tasks)
    try:
        yield tasks
    finally:
        trio.lowlevel.remove_instrument(tasks)


@pytest.fixture(autouse=True, scope="session")
def _quiet_structlog() -> None:
    """Keep test output readable: only warnings and errors are printed.

    Tests that check events use ``structlog.testing.capture_logs()``, which
    replaces this configuration while it is active.
    """
    import structlog

    def drop_below_warning(logger: object, method: str, event: dict[str, object]) -> object:
        if method in {"debug", "info"}:
            raise structlog.DropEvent
        return event

    structlog.configure(
        processors=[drop_below_warning, *structlog.get_config()["processors"]],
        wrapper_class=structlog.BoundLogger,
    )


# A real etcd on loopback, session-scoped (tests/etcd_server.py).
from tests.etcd_server import etcd_server  # noqa: E402, F401
