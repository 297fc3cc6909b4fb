"""Fixtures shared by every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

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


# Figures the tests measured, shown at the end of every run (not only with -s).
_MEASURED: pytest.StashKey[list[tuple[str, str]]] = pytest.StashKey()

Measured = Callable[[str], None]


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> Measured:
    """``measured("frozen peer -> pong_timeout after 1.05 s")``: report a figure.

    Where an issue asks for a number *measured*, the test that measures it
    records it here; each run then ends with a "measured figures" section
    naming the test and its figure, whether or not output was captured.
    """
    figures = request.config.stash.setdefault(_MEASURED, [])

    def record(text: str) -> None:
        figures.append((request.node.nodeid, text))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = terminalreporter.config.stash.get(_MEASURED, [])
    if not figures:
        return
    terminalreporter.section("measured figures")
    for nodeid, text in figures:
        terminalreporter.write_line(f"{nodeid}: {text}")


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

# A real Redis on loopback (tests/redis_server.py).
from tests.redis_server import _redis_session, redis_control, redis_server  # noqa: E402, F401
