"""L4 evidence at close time: a parser for Linux's ``struct tcp_info``.

The Trio layer reads ``getsockopt(IPPROTO_TCP, TCP_INFO, ...)`` just before a
connection's socket is closed and hands the bytes here. The result is
attached to the ``connection.closed`` event, so a ``tcp_timeout`` (the
kernel retransmitted and gave up) or a ``pong_timeout`` on a frozen peer (no
retransmissions, data received recently at L4) can be told apart from a
merely slow path.
"""

from __future__ import annotations

import struct
from typing import Final, final

import attrs

__all__ = ["TcpInfo", "parse_tcp_info"]

# struct tcp_info (include/uapi/linux/tcp.h), up to tcpi_total_retrans:
# eight u8 (state, ca_state, retransmits, probes, backoff, options,
# wscales, rate-limited bits), then 24 u32.
_LAYOUT: Final = struct.Struct("=8B24I")
#: How many bytes to ask the kernel for.
TCP_INFO_SIZE: Final = _LAYOUT.size

_STATES: Final = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}


@final
@attrs.frozen(kw_only=True)
class TcpInfo:
    """The kernel's view of one TCP connection. Times are float seconds."""

    #: The TCP state name, e.g. ``"ESTABLISHED"``.
    state: str
    #: Retransmissions of the segment at the head of the queue (current backoff).
    retransmits: int
    #: Keepalive or zero-window probes sent without an answer.
    probes: int
    #: The retransmission timeout.
    rto: float
    #: Segments sent and not yet acknowledged.
    unacked: int
    #: Segments retransmitted over the connection's life.
    total_retrans: int
    #: The kernel's smoothed RTT.
    rtt: float
    #: The kernel's RTT variance.
    rttvar: float
    #: Time since data was last received.
    since_last_data_recv: float
    #: Time since data was last sent.
    since_last_data_sent: float
    #: Time since an ACK was last received.
    since_last_ack_recv: float

    def as_dict(self) -> dict[str, object]:
        """The fields as a plain dict, for log events and JSON."""
        return attrs.asdict(self)


def parse_tcp_info(data: bytes) -> TcpInfo | None:
    """Parse the bytes of ``getsockopt(IPPROTO_TCP, TCP_INFO)``.

    Args:
      data: What the kernel returned; at least :data:`TCP_INFO_SIZE` bytes.

    Returns:
      The parsed fields, or ``None`` if *data* is too short to be a Linux
      ``tcp_info`` (another platform, or an old kernel).
    """
    if len(data) < _LAYOUT.size:
        return None
    f = _LAYOUT.unpack_from(data)
    u32 = f[8:]
    return TcpInfo(
        state=_STATES.get(f[0], f"UNKNOWN({f[0]})"),
        retransmits=f[2],
        probes=f[3],
        rto=u32[0] / 1e6,
        unacked=u32[4],
        total_retrans=u32[23],
        rtt=u32[15] / 1e6,
        rttvar=u32[16] / 1e6,
        since_last_data_sent=u32[9] / 1e3,
        since_last_data_recv=u32[11] / 1e3,
        since_last_ack_recv=u32[12] / 1e3,
    )
