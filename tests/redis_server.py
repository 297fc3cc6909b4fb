"""A real Redis on loopback for the tests: the ``redis_server`` fixtures.

``redis_server`` (session-scoped) starts Debian's ``redis-server`` (package
``redis-server``, installed by ``bash scripts/dev system``) on 127.0.0.1
with a free port, no persistence and a temporary directory, waits until
``PING`` answers, and stops that process (by its PID, through its
:class:`subprocess.Popen`) after the session. Each test gets an empty
database from it (``FLUSHALL`` first).

``redis_control`` (function-scoped) starts a Redis of the test's own, which
the test may stop and start again mid-test: :meth:`RedisControl.stop`
(SIGKILL: everything in memory is lost, as when a Redis without
persistence dies), :meth:`RedisControl.save_and_stop` (``SHUTDOWN SAVE``:
it comes back with its data) and :meth:`RedisControl.start` (same port).

Tests that use them skip with the reason printed when the binary is missing.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Final

import attrs
import pytest

STARTUP_TIMEOUT: Final = 20.0


@attrs.frozen
class RedisServer:
    """A running Redis: its URL, port and PID."""

    url: str
    port: int
    pid: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command (RESP) to 127.0.0.1:*port* and return the raw first reply line(s)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


def _answers(port: int) -> bool:
    try:
        return command(port, "PING", timeout=0.5).startswith(b"+PONG")
    except OSError:
        return False


def _binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server",) if pathlib.Path(p).exists()), None
    )


def _skip_without_binary() -> str:
    binary = _binary()
    if binary is None:
        pytest.skip(
            "redis-server is not installed: `bash scripts/dev system` installs Debian's "
            "redis-server"
        )
    return binary


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _start(binary: str, base: pathlib.Path, port: int) -> subprocess.Popen[bytes] | str:
    """A Redis answering PING on *port*, or why it did not start."""
    log_path = base / f"redis-{port}.log"
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(base),
            "--dbfilename",
            "dump.rdb",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(log_path),
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text()[-2000:] if log_path.exists() else ""
            return f"redis-server exited with {process.returncode}: {log}"
        if _answers(port):
            return process
        time.sleep(0.02)  # a foreign process: nothing to wait on but its port
    _stop(process)
    return f"redis-server did not answer PING within {STARTUP_TIMEOUT} s"


def _start_on_free_port(binary: str, base: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    failures = []
    for _ in range(3):  # a port picked free may be taken before Redis binds it
        port = _free_port()
        started = _start(binary, base, port)
        if isinstance(started, str):
            failures.append(started)
            continue
        return started, port
    pytest.fail("could not start redis-server:\n" + "\n".join(failures))


@pytest.fixture(scope="session")
def _redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = _skip_without_binary()
    base = tmp_path_factory.mktemp("redis")
    process, port = _start_on_free_port(binary, base)
    try:
        yield RedisServer(url=f"redis://127.0.0.1:{port}/0", port=port, pid=process.pid)
    finally:
        _stop(process)


@pytest.fixture
def redis_server(_redis_session: RedisServer) -> RedisServer:
    """The session's Redis on 127.0.0.1, emptied for this test; skips if there is none."""
    assert command(_redis_session.port, "FLUSHALL").startswith(b"+OK")
    return _redis_session


@attrs.define
class RedisControl:
    """A Redis of one test's own, which the test may stop and start again."""

    binary: str
    base: pathlib.Path
    port: int
    process: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str:
        """Its URL (the port stays the same across restarts)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The PID of the running process, or ``None`` while stopped."""
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Kill it (SIGKILL, by PID): everything it held is lost."""
        if self.process is not None:
            _stop(self.process, signal.SIGKILL)
            self.process = None

    def save_and_stop(self) -> None:
        """``SHUTDOWN SAVE``: it writes its data to disk and exits; :meth:`start` reloads it."""
        if self.process is not None:
            with contextlib.suppress(OSError):  # it closes the connection as it exits
                command(self.port, "SHUTDOWN", "SAVE")
            self.process.wait(timeout=10)
            self.process = None

    def start(self) -> None:
        """Start it again on the same port (and the same directory)."""
        if self.running:
            return
        started = _start(self.binary, self.base, self.port)
        if isinstance(started, str):
            pytest.fail(f"could not restart redis-server: {started}")
        self.process = started


@pytest.fixture
def redis_control(tmp_path: pathlib.Path) -> Iterator[RedisControl]:
    """A Redis for this test alone, to stop and restart mid-test; skips if there is none."""
    binary = _skip_without_binary()
    base = tmp_path / "redis"
    base.mkdir()
    process, port = _start_on_free_port(binary, base)
    control = RedisControl(binary=binary, base=base, port=port, process=process)
    try:
        yield control
    finally:
        control.stop()
