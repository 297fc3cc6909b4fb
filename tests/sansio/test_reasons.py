from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioheart import CloseReason

REQUIRED = {
    "peer_closed",
    "pong_timeout",
    "heartbeat_timeout",
    "tcp_timeout",
    "connection_reset",
    "protocol_error",
    "message_too_big",
    "handshake_timeout",
    "slow_consumer",
    "server_shutdown",
    "internal_error",
}


def test_every_required_reason_exists_under_its_exact_name() -> None:
    assert REQUIRED <= {reason.value for reason in CloseReason}


@pytest.mark.parametrize("reason", list(CloseReason))
def test_codes_are_valid_websocket_close_codes(reason: CloseReason) -> None:
    # 1006 is reported, never sent; everything we send is a code a peer may send.
    # 1013 is "try again later" (IANA registry of RFC 6455 codes).
    sent = {1000, 1001, 1002, 1006, 1007, 1009, 1011, 1013}
    assert reason.code in sent or 4000 <= reason.code < 5000
    expected = reason.code != 1006 and reason is not CloseReason.PEER_CLOSED
    assert reason.sends_close_frame == expected


@pytest.mark.parametrize("reason", [r for r in CloseReason if r.sends_close_frame])
def test_close_frame_round_trips(reason: CloseReason) -> None:
    assert CloseReason.from_close_frame(reason.code, reason.value) is reason
    assert CloseReason.from_close_frame(reason.code, f"{reason.value}; retry in 3 s") is reason


@given(code=st.integers(0, 5000), text=st.text(max_size=40))
def test_from_close_frame_never_invents_a_reason(code: int, text: str) -> None:
    reason = CloseReason.from_close_frame(code, text)
    if reason is not None:
        assert reason.code == code
        assert text.split(";", 1)[0] == reason.value
