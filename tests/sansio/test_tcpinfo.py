from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from trioheart.tcpinfo import TCP_INFO_SIZE, parse_tcp_info

u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)


@given(head=st.lists(u8, min_size=8, max_size=8), body=st.lists(u32, min_size=24, max_size=24))
def test_fields_come_from_their_offsets(head: list[int], body: list[int]) -> None:
    data = struct.pack("=8B24I", *head, *body) + b"\0" * 40  # newer kernels return more
    info = parse_tcp_info(data)
    assert info is not None
    assert info.retransmits == head[2]
    assert info.probes == head[3]
    assert info.rto == body[0] / 1e6
    assert info.unacked == body[4]
    assert info.since_last_data_sent == body[9] / 1e3
    assert info.since_last_data_recv == body[11] / 1e3
    assert info.rtt == body[15] / 1e6
    assert info.total_retrans == body[23]
    assert isinstance(info.state, str)


@given(st.binary(max_size=TCP_INFO_SIZE - 1))
def test_short_data_is_not_tcp_info(data: bytes) -> None:
    assert parse_tcp_info(data) is None


def test_established_state_is_named() -> None:
    info = parse_tcp_info(struct.pack("=8B24I", 1, *([0] * 7), *([0] * 24)))
    assert info is not None
    assert info.state == "ESTABLISHED"
