"""A throwaway network namespace for tests that need real L4 failures.

A proxy can drop bytes, but it cannot make the kernel's own keepalive or
``TCP_USER_TIMEOUT`` fire: its socket still acknowledges every segment. For
that a test needs a peer whose packets really stop arriving.
:class:`NetNamespace` makes one: a new network namespace joined to this one
by a veth pair on a link-local ``169.254.x.y/30`` (a range that is never
routed, so nothing leaves the machine), runs the peer inside it, and can cut
the link or drop packets with nftables inside the namespace. On exit it
stops what it started and removes everything it made, even when the test
failed::

    from trioheart.testing.netns import NetNamespace, unavailable_reason

    if reason := unavailable_reason(nft=True):
        pytest.skip(reason)
    with NetNamespace() as ns:
        server = ns.run([sys.executable, "-m", "my_server", "--host", ns.peer_addr])
        sock = socket.create_connection((ns.peer_addr, 8765))
        ns.link_down()          # the peer's packets stop; nothing is sent to anyone
        ...                     # watch the kernel give up (ETIMEDOUT)

It needs root (``CAP_NET_ADMIN`` and ``CAP_SYS_ADMIN``), ``ip`` from
iproute2, and ``nft`` for :meth:`NetNamespace.drop`; :func:`unavailable_reason`
says which is missing. ``bash scripts/dev system`` installs the packages.
Names carry the creating process's PID and random hex, so parallel runs do
not clash, and namespaces left behind by a killed run are removed by the
next one.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, final

__all__ = ["NetNamespace", "NetnsError", "unavailable_reason"]

_PREFIX: Final = "trioheart-"
_NETNS_DIR: Final = Path("/run/netns")
_TABLE: Final = "trioheart_drop"
_STOP_TIMEOUT: Final = 5.0


class NetnsError(RuntimeError):
    """A namespace command failed; the message has the command and its stderr."""


def unavailable_reason(*, nft: bool = False) -> str | None:
    """Why a :class:`NetNamespace` cannot be made here, or ``None`` if it can.

    Args:
      nft: Also require ``nft``, which :meth:`NetNamespace.drop` uses.
    """
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed; run `bash scripts/dev system`"
    if nft and shutil.which("nft") is None:
        return "`nft` (nftables) is not installed; run `bash scripts/dev system`"
    probe = f"{_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> str:
    return _check(["ip", *args])


def _check(argv: Sequence[str], stdin: str | None = None) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _remove_stale() -> None:
    """Remove namespaces of ours whose creating process is gone."""
    if not _NETNS_DIR.is_dir():
        return
    for entry in _NETNS_DIR.iterdir():
        match = re.fullmatch(re.escape(_PREFIX) + r"(?:probe-)?(\d+)-[0-9a-f]+", entry.name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", entry.name], capture_output=True)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 169.254.1.0-169.254.254.255 that no local interface uses."""
    used = _ip("-4", "-o", "addr", "show")
    taken = [
        ipaddress.ip_interface(cidr).network
        for cidr in re.findall(r"inet (\d+\.\d+\.\d+\.\d+/\d+)", used)
    ]
    rng = random.SystemRandom()
    for _ in range(100):
        subnet = ipaddress.IPv4Network(
            f"169.254.{rng.randrange(1, 255)}.{rng.randrange(64) * 4}/30"
        )
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise NetnsError("no free 169.254.x.y/30 found for the veth pair")


@final
class NetNamespace:
    """A network namespace with a veth link to this one; a context manager.

    Entering creates it (and raises :class:`NetnsError`, with nothing left
    behind, if that fails); leaving stops every process :meth:`run` started
    and removes the namespace, the veth pair and any nftables rules.

    Attributes:
      name: The namespace's name (``ip netns exec NAME ...``).
      addr: This side's address on the link.
      peer_addr: The namespace side's address; peers inside listen on it.
      host_ifname: The veth interface on this side.
      peer_ifname: The veth interface inside the namespace.
    """

    def __init__(self) -> None:
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.name = f"{_PREFIX}{tag}"
        short = secrets.token_hex(4)
        self.host_ifname = f"th{short}h"  # interface names: at most 15 characters
        self.peer_ifname = f"th{short}n"
        self.addr = ""
        self.peer_addr = ""
        self._procs: list[subprocess.Popen[Any]] = []
        self._created = False

    def __enter__(self) -> NetNamespace:
        _remove_stale()
        try:
            subnet = _free_subnet()
            host, peer = (str(address) for address in subnet.hosts())
            _ip("netns", "add", self.name)
            self._created = True
            _ip("link", "add", self.host_ifname, "type", "veth", "peer", "name", self.peer_ifname)
            _ip("link", "set", self.peer_ifname, "netns", self.name)
            _ip("addr", "add", f"{host}/30", "dev", self.host_ifname)
            _ip("link", "set", self.host_ifname, "up")
            self.exec(["ip", "addr", "add", f"{peer}/30", "dev", self.peer_ifname])
            self.exec(["ip", "link", "set", self.peer_ifname, "up"])
            self.exec(["ip", "link", "set", "lo", "up"])
            self.addr, self.peer_addr = host, peer
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start *argv* inside the namespace; it is stopped on exit if still running.

        Keyword arguments go to :class:`subprocess.Popen`. The returned
        process's PID is the command's own (``ip netns exec`` execs it).
        """
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def exec(self, argv: Sequence[str], *, stdin: str | None = None) -> str:
        """Run *argv* inside the namespace to completion; returns its stdout.

        Raises:
          NetnsError: if it fails.
        """
        return _check(["ip", "netns", "exec", self.name, *argv], stdin=stdin)

    def link_down(self) -> None:
        """Cut the link: the namespace's end goes down, silently.

        Packets sent from this side are dropped on the wire and nothing
        comes back; this side's interface and route stay, so its TCP stack
        simply hears nothing (retransmissions, then ``ETIMEDOUT``).
        """
        self.exec(["ip", "link", "set", self.peer_ifname, "down"])

    def link_up(self) -> None:
        """Mend the link cut by :meth:`link_down`."""
        self.exec(["ip", "link", "set", self.peer_ifname, "up"])

    def drop(self, *, port: int | None = None, protocol: str = "tcp") -> None:
        """Drop packets silently inside the namespace with an nftables rule.

        Args:
          port: Drop only packets to or from this port (of the peer inside);
            ``None`` drops everything that enters or leaves the namespace.
          protocol: ``"tcp"`` or ``"udp"``, when *port* is given.

        Calling it again adds another rule; :meth:`undrop` removes them all.
        """
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be 'tcp' or 'udp'; got {protocol!r}")
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be in 1-65535; got {port!r}")
        match_in = f"{protocol} dport {port} " if port is not None else ""
        match_out = f"{protocol} sport {port} " if port is not None else ""
        self.exec(
            ["nft", "-f", "-"],
            stdin=(
                f"table inet {_TABLE} {{\n"
                "  chain input { type filter hook input priority 0; }\n"
                "  chain output { type filter hook output priority 0; }\n"
                "}\n"
                f"add rule inet {_TABLE} input iifname {self.peer_ifname} {match_in}drop\n"
                f"add rule inet {_TABLE} output oifname {self.peer_ifname} {match_out}drop\n"
            ),
        )

    def undrop(self) -> None:
        """Remove every rule :meth:`drop` added."""
        listed = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "list", "table", "inet", _TABLE],
            capture_output=True,
        )
        if listed.returncode == 0:
            self.exec(["nft", "delete", "table", "inet", _TABLE])

    def close(self) -> None:
        """Stop the processes :meth:`run` started and remove everything. Idempotent."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        # Deleting one end of a veth pair deletes both; deleting the namespace
        # deletes the end (and the nftables table) inside it.
        subprocess.run(["ip", "link", "del", self.host_ifname], capture_output=True)
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self._created = False
