"""A real etcd on loopback for the tests: the session-scoped ``etcd_server`` fixture.

It starts Debian's ``etcd`` (package ``etcd-server``, installed by
``bash scripts/dev system``) on 127.0.0.1 with free ports and a temporary
data directory, waits until ``/health`` says so, and stops that process (by
its PID, through its :class:`subprocess.Popen`) after the session. Tests
that use it skip with the reason printed when the binary is missing.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Final

import attrs
import pytest

STARTUP_TIMEOUT: Final = 30.0


@attrs.frozen
class EtcdServer:
    """A running etcd: its client URL and its PID."""

    endpoint: str
    pid: int


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _healthy(endpoint: str) -> bool:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxies
        with opener.open(endpoint + "/health", timeout=1) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _start(
    binary: str, base: pathlib.Path, attempt: int
) -> tuple[subprocess.Popen[bytes], str] | str:
    """A healthy etcd and its client URL, or why it did not start."""
    client_port, peer_port = _free_ports(2)
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    log_path = base / f"etcd-{attempt}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--name=trioheart-test",
                f"--data-dir={base / f'data-{attempt}'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=trioheart-test={peer}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"etcd exited with {process.returncode}: {log_path.read_text()[-2000:]}"
        if _healthy(client):
            return process, client
        time.sleep(0.05)  # a foreign process: nothing to wait on but its port
    _stop(process)
    return f"etcd was not healthy within {STARTUP_TIMEOUT} s: {log_path.read_text()[-2000:]}"


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd on 127.0.0.1 for the whole session; skips if there is none."""
    binary = shutil.which("etcd") or next(
        (path for path in ("/usr/bin/etcd",) if pathlib.Path(path).exists()), None
    )
    if binary is None:
        pytest.skip(
            "etcd is not installed: `bash scripts/dev system` installs Debian's etcd-server"
        )
    base = tmp_path_factory.mktemp("etcd")
    failures = []
    for attempt in range(3):  # a port picked free may be taken before etcd binds it
        started = _start(binary, base, attempt)
        if isinstance(started, str):
            failures.append(started)
            continue
        process, endpoint = started
        try:
            yield EtcdServer(endpoint=endpoint, pid=process.pid)
        finally:
            _stop(process)
        return
    pytest.fail("could not start etcd:\n" + "\n".join(failures))
