"""NetNamespace: real L4 failures, and nothing left behind.

These tests need root, ``ip`` and ``nft`` (``bash scripts/dev system``); without
them they skip, and pytest's ``-ra`` summary prints why.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from trioheart.testing.netns import NetNamespace, unavailable_reason

from ..conftest import Measured

pytestmark = pytest.mark.netns

ECHO_SERVER = """
import socket, sys, threading
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture(scope="module", autouse=True)
def _needs_netns() -> None:
    reason = unavailable_reason(nft=True)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    with NetNamespace() as namespace:
        yield namespace


def start_echo(ns: NetNamespace) -> int:
    proc = ns.run([sys.executable, "-c", ECHO_SERVER, ns.peer_addr], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def connect(ns: NetNamespace, port: int, *, user_timeout_ms: int) -> socket.socket:
    sock = socket.create_connection((ns.peer_addr, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    sock.sendall(b"hello")
    assert sock.recv(100) == b"hello"
    return sock


def time_until_the_kernel_gives_up(sock: socket.socket) -> tuple[float, int | None]:
    """Send with the peer gone; return how long until recv fails, and the errno."""
    start = time.monotonic()
    sock.sendall(b"x" * 1000)  # data in flight, never acknowledged
    try:
        sock.recv(100)
    except OSError as exc:
        return time.monotonic() - start, exc.errno
    return time.monotonic() - start, None


def names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_addresses_are_link_local_and_the_peer_is_reachable(ns: NetNamespace) -> None:
    assert ns.addr.startswith("169.254.")
    assert ns.peer_addr.startswith("169.254.")
    assert ns.name in names()
    sock = connect(ns, start_echo(ns), user_timeout_ms=1000)
    sock.close()


def test_tcp_user_timeout_ends_a_socket_after_link_down(
    ns: NetNamespace, measured: Measured
) -> None:
    configured = 1.0
    sock = connect(ns, start_echo(ns), user_timeout_ms=int(configured * 1000))
    ns.link_down()
    elapsed, error = time_until_the_kernel_gives_up(sock)
    sock.close()
    measured(f"raw socket, link down: TCP_USER_TIMEOUT {configured:.3f} s -> {elapsed:.3f} s")
    assert error == errno.ETIMEDOUT
    assert configured * 0.9 <= elapsed < configured + 2.0


def test_an_nft_drop_rule_blackholes_one_port_until_undone(
    ns: NetNamespace, measured: Measured
) -> None:
    port = start_echo(ns)
    sock = connect(ns, port, user_timeout_ms=500)
    ns.drop(port=port)
    elapsed, error = time_until_the_kernel_gives_up(sock)
    sock.close()
    measured(f"raw socket, nft drop: TCP_USER_TIMEOUT 0.500 s -> {elapsed:.3f} s")
    assert error == errno.ETIMEDOUT
    assert elapsed >= 0.45
    ns.undrop()
    connect(ns, port, user_timeout_ms=500).close()  # the path works again


def test_the_link_comes_back(ns: NetNamespace) -> None:
    port = start_echo(ns)
    ns.link_down()
    ns.link_up()
    connect(ns, port, user_timeout_ms=1000).close()


def test_everything_is_removed_even_when_the_test_fails() -> None:
    started: list[tuple[subprocess.Popen[bytes], str, str]] = []

    def failing_test() -> None:
        with NetNamespace() as ns:
            started.append((ns.run(["sleep", "60"]), ns.name, ns.host_ifname))
            ns.drop()
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        failing_test()
    [(sleeper, name, veth)] = started
    assert sleeper.poll() is not None  # stopped, by its PID
    assert name not in names()
    shown = subprocess.run(["ip", "link", "show", "dev", veth], capture_output=True)
    assert shown.returncode != 0


def test_two_at_once_do_not_clash() -> None:
    with NetNamespace() as first, NetNamespace() as second:
        assert first.name != second.name
        assert first.host_ifname != second.host_ifname
        assert {first.addr, first.peer_addr}.isdisjoint({second.addr, second.peer_addr})
        for ns in (first, second):
            connect(ns, start_echo(ns), user_timeout_ms=1000).close()
