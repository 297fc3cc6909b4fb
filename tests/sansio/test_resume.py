"""The resume protocol's parts, one at a time: log, tokens, decisions, client, wire."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioheart import CloseReason, ConfigError, TrioheartError
from trioheart.resume import (
    RESUME_QUERY_PARAM,
    ClientState,
    GapDetected,
    LogLimits,
    MessageReceived,
    NewSession,
    RefuseReason,
    ResetReason,
    ResumeAccepted,
    ResumeClient,
    ResumeProtocolError,
    ResumeRefused,
    ResumeReset,
    ResumeServer,
    ResumeStateError,
    ResyncRequired,
    Room,
    RoomLog,
    SessionResumed,
    SessionStarted,
    encode_message,
)

KEY = b"k" * 32


def chat(text: str = "hi", who: str = "ann") -> dict[str, Any]:
    return {"type": "chat", "text": text, "from": who}


def request(token: str, epoch: str, seq: int) -> str:
    return json.dumps({"type": "resume", "token": token, "epoch": epoch, "seq": seq})


# -- LogLimits and RoomLog ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_messages", 0),
        ("max_messages", -1),
        ("max_messages", 1.5),
        ("max_messages", True),
        ("max_messages", "10"),
        ("max_bytes", 0),
        ("max_bytes", math.inf),
        ("max_age", 0),
        ("max_age", -1.0),
        ("max_age", math.nan),
        ("max_age", math.inf),
        ("max_age", True),
    ],
)
def test_log_limits_reject_bad_values_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{field} must be .*; got {value!r}$"):
        LogLimits(**{field: value})  # type: ignore[arg-type]


def test_config_error_is_a_value_error_under_the_root() -> None:
    with pytest.raises(ValueError, match="max_age"):
        LogLimits(max_age=-1)
    assert issubclass(ResumeProtocolError, TrioheartError)
    assert issubclass(ResumeStateError, TrioheartError)


def test_seq_starts_at_one_and_increases_by_one_in_the_wire_text() -> None:
    log = RoomLog(epoch="e1")
    entries = [log.append(chat(str(i)), now=0.0) for i in range(5)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert json.loads(entries[2].text) == {"type": "chat", "text": "2", "from": "ann", "seq": 3}
    assert log.last_seq == 5
    assert log.first_seq == 1


def test_each_log_has_its_own_random_epoch() -> None:
    epochs = {RoomLog().epoch for _ in range(50)}
    assert len(epochs) == 50


@pytest.mark.parametrize("epoch", ["", "x" * 65, "a\nb", 7])
def test_bad_epochs_are_refused(epoch: object) -> None:
    with pytest.raises(ConfigError, match=r"^epoch must be"):
        RoomLog(epoch=epoch)  # type: ignore[arg-type]


def test_append_refuses_a_seq_of_its_own_bad_json_and_bad_time() -> None:
    log = RoomLog()
    with pytest.raises(ConfigError, match="must not carry its own seq"):
        log.append({**chat(), "seq": 9}, now=0.0)
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        log.append({"type": "chat", "text": object()}, now=0.0)
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        log.append({"type": "chat", "x": math.nan}, now=0.0)
    with pytest.raises(ConfigError, match=r"^now must be a finite"):
        log.append(chat(), now=math.nan)
    assert log.last_seq == 0, "a refused append consumes no seq"
    assert len(log) == 0


def test_trim_by_count_keeps_the_newest() -> None:
    log = RoomLog(LogLimits(max_messages=3))
    for i in range(7):
        log.append(chat(str(i)), now=0.0)
    assert [e.seq for e in log.since(4) or ()] == [5, 6, 7]
    assert log.first_seq == 5
    assert log.since(3) is None
    assert log.statistics().trimmed_total == 4


def test_trim_by_bytes_counts_utf8_bytes() -> None:
    one = RoomLog().append(chat("é" * 10), now=0.0)
    assert one.size == len(one.text.encode()) == len(one.text) + 10
    log = RoomLog(LogLimits(max_bytes=2 * one.size))
    for _ in range(3):
        log.append(chat("é" * 10), now=0.0)
    stats = log.statistics()
    assert (stats.messages, stats.bytes, stats.first_seq) == (2, 2 * one.size, 2)


def test_a_message_bigger_than_the_log_is_sent_but_not_kept() -> None:
    log = RoomLog(LogLimits(max_bytes=60))
    small = log.append(chat("x"), now=0.0)
    big = log.append(chat("y" * 100), now=0.0)
    assert big.seq == small.seq + 1 == 2
    assert len(log) == 0
    assert log.first_seq == 3  # nothing kept: everything up to the head is gone
    assert log.since(1) is None
    assert log.since(2) == ()


def test_trim_by_age_keeps_exactly_max_age_and_drops_older() -> None:
    log = RoomLog(LogLimits(max_age=10.0))
    log.append(chat("old"), now=0.0)
    log.append(chat("new"), now=5.0)
    assert log.trim(now=10.0) == 0  # age 10 is still within max_age
    assert log.trim(now=10.5) == 1
    assert log.first_seq == 2
    assert log.trim(now=100.0) == 1
    assert len(log) == 0
    assert log.first_seq == 3


@pytest.mark.parametrize("seq", [-1, 3, True, 1.0])
def test_since_refuses_seqs_outside_the_log(seq: object) -> None:
    log = RoomLog()
    log.append(chat(), now=0)
    log.append(chat(), now=0)
    with pytest.raises(ConfigError, match=r"seq must be an integer in \[0, 2\]"):
        log.since(seq)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    limits=st.builds(
        LogLimits,
        max_messages=st.integers(1, 8),
        max_bytes=st.integers(1, 500),
        max_age=st.floats(0.5, 20.0),
    ),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 80), st.floats(0, 5)), max_size=60),
)
def test_the_log_is_always_a_contiguous_bounded_suffix(
    limits: LogLimits, ops: list[tuple[bool, int, float]]
) -> None:
    log, now = RoomLog(limits), 0.0
    for is_append, size, dt in ops:
        now += dt
        if is_append:
            log.append(chat("z" * size), now=now)
        else:
            log.trim(now=now)
        kept = log.since(log.first_seq - 1)
        assert kept is not None
        assert [e.seq for e in kept] == list(range(log.first_seq, log.last_seq + 1))
        stats = log.statistics()
        assert stats.messages == len(kept) <= limits.max_messages
        assert stats.bytes == sum(e.size for e in kept) <= limits.max_bytes
        assert stats.appended_total == log.last_seq
        assert stats.trimmed_total + stats.messages == stats.appended_total


# -- the server: tokens and decisions ----------------------------------------


def test_keys_must_be_long_and_their_value_never_shows() -> None:
    secret = b"s3cr3t!"
    with pytest.raises(ConfigError, match=r"^key must be at least 16 bytes; got 7 bytes$") as info:
        ResumeServer(key=secret)
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^previous_keys\[\] must be at least 16 bytes"):
        ResumeServer(key=KEY, previous_keys=[b"short"])
    with pytest.raises(ConfigError, match="key must be at least 16 bytes; got str"):
        ResumeServer(key="a string key of many chars")  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [0, -5, math.nan, math.inf, True, "60"])
def test_token_ttl_must_be_positive_and_finite(ttl: object) -> None:
    with pytest.raises(ConfigError, match=rf"^token_ttl must be .*; got {ttl!r}$"):
        ResumeServer(token_ttl=ttl)  # type: ignore[arg-type]


def test_a_session_is_128_random_bits_bound_to_its_start() -> None:
    server, log = ResumeServer(key=KEY, token_ttl=60), RoomLog(epoch="e")
    log.append(chat(), now=0)
    sessions = [server.new_session(log, room="r", now=5.0) for _ in range(100)]
    assert len({s.session.id for s in sessions}) == 100
    assert len({s.session.token for s in sessions}) == 100
    first = sessions[0]
    assert len(bytes.fromhex(first.session.id)) == 16
    assert (first.seq, first.session.since_seq, first.session.epoch) == (1, 1, "e")
    assert (first.session.issued_at, first.session.expires_at) == (5.0, 65.0)
    assert first.session.refresh_at == 35.0
    assert first.session.token not in repr(first), "a bearer token must stay out of logs"


def _setup(**limits: Any) -> tuple[ResumeServer, RoomLog, NewSession]:
    server = ResumeServer(key=KEY, token_ttl=60)
    log = RoomLog(LogLimits(**limits), epoch="e1")
    hello = server.new_session(log, room="lobby", identity="ann", now=0.0)
    return server, log, hello


def test_resume_replays_exactly_what_was_missed_and_renews_the_token() -> None:
    server, log, hello = _setup()
    texts = [log.append(chat(str(i)), now=1.0).text for i in range(4)]
    outcome = server.resume(
        request(hello.session.token, "e1", 1), log, room="lobby", identity="ann", now=2.0
    )
    assert isinstance(outcome, ResumeAccepted)
    assert [e.text for e in outcome.replay] == texts[1:]
    assert (outcome.from_seq, outcome.seq) == (1, 4)
    assert outcome.session.id == hello.session.id
    assert outcome.session.token != hello.session.token
    assert outcome.session.since_seq == 0
    assert outcome.session.expires_at == 62.0
    assert outcome.goes_live
    assert server.statistics().replayed == 3


def test_any_single_character_change_to_a_token_is_refused() -> None:
    server, log, hello = _setup()
    token = hello.session.token
    alphabet = "AQgw-_09"
    for i in range(len(token)):
        for char in alphabet:
            if char == token[i]:
                continue
            forged = token[:i] + char + token[i + 1 :]
            outcome = server.resume(
                request(forged, "e1", 0), log, room="lobby", identity="ann", now=1.0
            )
            assert isinstance(outcome, ResumeRefused), (i, char)
            assert outcome.reason is RefuseReason.INVALID_TOKEN


@pytest.mark.parametrize(
    ("room", "identity", "key"),
    [("other", "ann", KEY), ("lobby", "bob", KEY), ("lobby", "ann", b"K" * 32)],
    ids=["other room", "other identity", "other server key"],
)
def test_a_token_is_refused_outside_its_room_identity_and_key(
    room: str, identity: str, key: bytes
) -> None:
    _, log, hello = _setup()
    server = ResumeServer(key=key)
    outcome = server.resume(
        request(hello.session.token, "e1", 0), log, room=room, identity=identity, now=1.0
    )
    assert isinstance(outcome, ResumeRefused)
    assert outcome.reason is RefuseReason.INVALID_TOKEN
    assert outcome.detail == "the token is not valid for this room and identity"
    assert outcome.close_reason is CloseReason.RESUME_REFUSED
    assert server.statistics().refusals[RefuseReason.INVALID_TOKEN] == 1


def test_previous_keys_still_verify_after_rotation() -> None:
    _, log, hello = _setup()
    rotated = ResumeServer(key=b"n" * 32, previous_keys=[KEY], token_ttl=60)
    outcome = rotated.resume(
        request(hello.session.token, "e1", 0), log, room="lobby", identity="ann", now=1.0
    )
    assert isinstance(outcome, ResumeAccepted)
    only_new = ResumeServer(key=b"n" * 32)
    again = only_new.resume(
        request(outcome.session.token, "e1", 0), log, room="lobby", identity="ann", now=1.0
    )
    assert isinstance(again, ResumeAccepted), "the renewed token is signed with the new key"


def test_an_epoch_change_is_a_reset_with_a_fresh_session_from_the_head() -> None:
    server, _, hello = _setup()
    restarted = RoomLog(epoch="e2")
    restarted.append(chat(), now=1.0)
    outcome = server.resume(
        request(hello.session.token, "e1", 0), restarted, room="lobby", identity="ann", now=1.0
    )
    assert isinstance(outcome, ResumeReset)
    assert outcome.reason is ResetReason.EPOCH_CHANGED
    assert outcome.seq == 1
    assert outcome.session.epoch == "e2"
    assert outcome.session.id != hello.session.id
    reset, hello_text = outcome.messages()
    assert json.loads(reset) == {"type": "reset", "reason": "epoch_changed"}
    assert json.loads(hello_text)["type"] == "hello"


def test_a_token_expires_at_its_expiry_exactly() -> None:
    server, log, hello = _setup()
    just_before = server.resume(
        request(hello.session.token, "e1", 0), log, room="lobby", identity="ann", now=59.999
    )
    assert isinstance(just_before, ResumeAccepted)
    at_expiry = server.resume(
        request(hello.session.token, "e1", 0), log, room="lobby", identity="ann", now=60.0
    )
    assert isinstance(at_expiry, ResumeReset)
    assert at_expiry.reason is ResetReason.TOKEN_EXPIRED


def test_a_refreshed_token_outlives_the_first() -> None:
    server, log, hello = _setup()
    fresh = server.refresh(hello.session, now=50.0)
    assert (fresh.id, fresh.since_seq, fresh.expires_at) == (hello.session.id, 0, 110.0)
    assert json.loads(fresh.token_message()) == {"type": "token", "token": fresh.token}
    outcome = server.resume(
        request(fresh.token, "e1", 0), log, room="lobby", identity="ann", now=100
    )
    assert isinstance(outcome, ResumeAccepted)


def test_a_trimmed_gap_is_a_reset_but_an_intact_one_is_not() -> None:
    server, log, hello = _setup(max_messages=2)
    for i in range(3):
        log.append(chat(str(i)), now=1.0)
    token = hello.session.token
    gone = server.resume(request(token, "e1", 0), log, room="lobby", identity="ann", now=1.0)
    assert isinstance(gone, ResumeReset)
    assert gone.reason is ResetReason.TRIMMED
    kept = server.resume(request(token, "e1", 1), log, room="lobby", identity="ann", now=1.0)
    assert isinstance(kept, ResumeAccepted)
    assert [e.seq for e in kept.replay] == [2, 3]


@settings(max_examples=200, deadline=None)
@given(
    appended=st.lists(
        st.tuples(st.text(max_size=30), st.floats(min_value=0.0, max_value=2.0)),
        min_size=1,
        max_size=20,
    ),
    have=st.integers(min_value=0, max_value=20),
    max_messages=st.integers(min_value=1, max_value=25),
    max_bytes=st.integers(min_value=1, max_value=2000),
    max_age=st.floats(min_value=0.5, max_value=40.0),
)
def test_replay_limits_turn_exactly_the_resumes_beyond_them_into_resets(
    appended: list[tuple[str, float]],
    have: int,
    max_messages: int,
    max_bytes: int,
    max_age: float,
) -> None:
    """A connection's own replay bounds: a reset iff the replay exceeds one of them.

    Without limits (or with limits at least the log's), the outcome is what
    the log alone decides; with them, an accepted resume's replay always
    fits, and a resume the log would accept is reset only when it does not.
    """
    server, log, hello = _setup(max_messages=100, max_bytes=100_000, max_age=1000.0)
    at = 1.0
    for text, gap in appended:
        at += gap
        log.append(chat(text), now=at)
    have = min(have, log.last_seq)
    now = at + 0.5
    limits = LogLimits(max_messages=max_messages, max_bytes=max_bytes, max_age=max_age)
    token = hello.session.token
    free = server.resume(request(token, "e1", have), log, room="lobby", identity="ann", now=now)
    bounded = server.resume(
        request(token, "e1", have), log, room="lobby", identity="ann", now=now, replay_limits=limits
    )
    assert isinstance(free, ResumeAccepted)  # the log's own bounds are wide
    replay = free.replay
    fits = (
        len(replay) <= max_messages
        and sum(e.size for e in replay) <= max_bytes
        and (not replay or now - replay[0].at <= max_age)
    )
    if fits:
        assert isinstance(bounded, ResumeAccepted)
        assert [e.seq for e in bounded.replay] == [e.seq for e in replay]
    else:
        assert isinstance(bounded, ResumeReset)
        assert bounded.reason is ResetReason.TRIMMED
        assert bounded.seq == log.last_seq  # the fresh session starts at the head


def test_seqs_before_the_session_or_after_the_head_are_refused() -> None:
    server = ResumeServer(key=KEY)
    log = RoomLog(epoch="e1")
    for _ in range(3):
        log.append(chat(), now=0.0)
    hello = server.new_session(log, room="lobby", now=0.0)  # joined at seq 3
    for seq in (0, 2, 4):
        outcome = server.resume(request(hello.session.token, "e1", seq), log, room="lobby", now=1.0)
        assert isinstance(outcome, ResumeRefused), seq
        assert outcome.reason is RefuseReason.INVALID_SEQ
        assert not any('"chat"' in m for m in outcome.messages())


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[1, 2]",
        '{"type": "chat", "text": "hi"}',
        '{"type": "resume", "epoch": "e1", "seq": 0}',
        '{"type": "resume", "token": 5, "epoch": "e1", "seq": 0}',
        '{"type": "resume", "token": "' + "A" * 129 + '", "epoch": "e1", "seq": 0}',
        '{"type": "resume", "token": "AAAA", "epoch": "", "seq": 0}',
        '{"type": "resume", "token": "AAAA", "epoch": "e1", "seq": -1}',
        '{"type": "resume", "token": "AAAA", "epoch": "e1", "seq": true}',
        '{"type": "resume", "token": "AAAA", "epoch": "e1", "seq": 1.0}',
        '{"type": "resume", "token": "AAAA", "epoch": "e1", "seq": 1e999}',
        '{"type": "resume", "token": "AAAA", "epoch": "e1", "seq": 18446744073709551616}',
        '{"type": "resume", "token": "AAAA", "epoch": "e1", "seq": "3"}',
        "[" * 100_000 + "]" * 100_000,
        '{"type": "resume", "token": "AAAA", "epoch": "e1", "seq": ' + "9" * 5000 + "}",
    ],
)
def test_malformed_requests_are_refused_with_a_sentence(bad: str) -> None:
    server, log, _ = _setup()
    outcome = server.resume(bad, log, room="lobby", now=1.0)
    assert isinstance(outcome, ResumeRefused)
    assert outcome.reason is RefuseReason.MALFORMED
    assert outcome.detail
    assert json.loads(outcome.messages()[0]) == {
        "type": "refused",
        "reason": "malformed",
        "detail": outcome.detail,
    }


@settings(max_examples=200, deadline=None)
@given(
    message=st.dictionaries(
        st.sampled_from(["type", "token", "epoch", "seq", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=100)),
    )
)
def test_no_crafted_request_is_ever_accepted(message: dict[str, Any]) -> None:
    server, log, _ = _setup()
    log.append(chat(), now=0.0)
    message.setdefault("type", "resume")
    outcome = server.resume(message, log, room="lobby", identity="ann", now=1.0)
    assert not isinstance(outcome, ResumeAccepted)


# -- the wire ------------------------------------------------------------------


def test_wire_messages_have_exactly_the_documented_fields() -> None:
    server, log, hello = _setup()
    (hello_text,) = hello.messages()
    assert set(json.loads(hello_text)) == {"type", "session", "token", "epoch", "seq"}
    log.append(chat(), now=1.0)
    accepted = server.resume(
        request(hello.session.token, "e1", 0), log, room="lobby", identity="ann", now=1.0
    )
    resumed, replayed = accepted.messages()
    assert json.loads(resumed) == {
        "type": "resumed",
        "session": hello.session.id,
        "token": accepted.session.token,  # type: ignore[union-attr]
        "epoch": "e1",
        "seq": 1,
        "replay": 1,
    }
    assert json.loads(replayed) == {**chat(), "seq": 1}
    assert RESUME_QUERY_PARAM == "resume"
    assert encode_message({"b": "é", "a": 1}) == '{"b":"é","a":1}'


def test_resume_refused_has_its_own_close_code() -> None:
    reason = CloseReason.RESUME_REFUSED
    assert 4000 <= reason.code < 5000
    assert reason.sends_close_frame
    assert CloseReason.from_close_frame(reason.code, "resume_refused") is reason


# -- Room ------------------------------------------------------------------------


def test_room_subscribes_in_the_same_step_and_only_when_not_refused() -> None:
    room: Room[str] = Room("lobby", ResumeServer(key=KEY))
    hello = room.join("c1", identity="ann", now=0.0)
    assert room.subscribers == ("c1",)
    with pytest.raises(ResumeStateError, match="already live"):
        room.join("c1", now=0.0)
    refused = room.resume("c2", "garbage", now=0.0)
    assert isinstance(refused, ResumeRefused)
    assert "c2" not in room
    pub = room.publish(chat(), now=1.0)
    assert pub.recipients == ("c1",)
    room.leave("c1")
    room.leave("c1")  # idempotent
    outcome = room.resume(
        "c3", request(hello.session.token, room.log.epoch, 0), identity="ann", now=2.0
    )
    assert isinstance(outcome, ResumeAccepted)
    assert [e.seq for e in outcome.replay] == [1]
    assert room.subscribers == ("c3",)
    assert room.publish(chat(), now=3.0).recipients == ("c3",)


# -- the client -----------------------------------------------------------------


def _live_client() -> tuple[ResumeClient, ResumeServer, RoomLog, NewSession]:
    server, log, hello = _setup()
    client = ResumeClient()
    assert client.start_connection() is None
    assert client.state is ClientState.AWAITING_HELLO
    (event,) = client.receive(hello.messages()[0])
    assert event == SessionStarted(session=hello.session.id, epoch="e1", seq=0)
    assert client.state is ClientState.LIVE
    return client, server, log, hello


def test_client_dedups_at_or_below_the_last_seq() -> None:
    client, _, log, _ = _live_client()
    first, second = (log.append(chat(str(i)), now=1.0).text for i in range(2))
    assert [type(e) for e in client.receive(first)] == [MessageReceived]
    assert client.receive(first) == []
    (event,) = client.receive(second)
    assert isinstance(event, MessageReceived)
    assert event.seq == 2
    assert client.receive(first) == []
    assert client.statistics().duplicates == 2
    assert client.statistics().delivered == 2


def test_client_stops_at_a_gap_and_resumes_from_before_it() -> None:
    client, server, log, _ = _live_client()
    texts = [log.append(chat(str(i)), now=1.0).text for i in range(3)]
    client.receive(texts[0])
    assert client.receive(texts[2]) == [GapDetected(expected=2, received=3)]
    assert client.state is ClientState.BROKEN
    assert client.receive(texts[1]) == [], "nothing more from a broken connection"
    client.connection_lost()
    resume = client.start_connection()
    assert resume is not None
    assert json.loads(resume)["seq"] == 1
    outcome = server.resume(resume, log, room="lobby", identity="ann", now=2.0)
    events = [e for text in outcome.messages() for e in client.receive(text)]
    assert events[0] == SessionResumed(session=client.session or "", epoch="e1", seq=3, replayed=2)
    assert [e.seq for e in events[1:] if isinstance(e, MessageReceived)] == [2, 3]


def test_client_turns_reset_into_a_resync_then_a_fresh_start() -> None:
    client, server, _, hello = _live_client()
    client.connection_lost()
    assert client.can_resume
    resume = client.start_connection()
    assert resume is not None
    restarted = RoomLog(epoch="e2")
    restarted.append(chat(), now=0.0)
    outcome = server.resume(resume, restarted, room="lobby", identity="ann", now=1.0)
    events = [e for text in outcome.messages() for e in client.receive(text)]
    assert events[0] == ResyncRequired(reason=ResetReason.EPOCH_CHANGED)
    assert isinstance(events[1], SessionStarted)
    assert (events[1].epoch, events[1].seq) == ("e2", 1)
    assert client.session != hello.session.id


def test_client_after_a_refusal_connects_fresh() -> None:
    client, _, _, _ = _live_client()
    client.connection_lost()
    client.start_connection()
    (event,) = client.receive({"type": "refused", "reason": "invalid_token", "detail": "no"})
    assert event == ResyncRequired(reason=RefuseReason.INVALID_TOKEN)
    assert client.state is ClientState.REFUSED
    assert client.receive({"type": "chat", "seq": 99}) == []
    client.connection_lost()
    assert not client.can_resume
    assert client.start_connection() is None


def test_client_takes_refreshed_tokens() -> None:
    client, server, _, hello = _live_client()
    fresh = server.refresh(hello.session, now=30.0)
    assert client.receive(fresh.token_message()) == []
    client.connection_lost()
    resume = client.start_connection()
    assert resume is not None
    assert json.loads(resume)["token"] == fresh.token


def test_client_passes_unsequenced_messages_through() -> None:
    client = ResumeClient()
    client.start_connection()
    (event,) = client.receive('{"type": "pong"}')
    assert event == MessageReceived(seq=None, message={"type": "pong"})


@pytest.mark.parametrize(
    ("state", "message", "match"),
    [
        ("fresh", "{oops", "not valid JSON"),
        ("fresh", "[]", "must be a JSON object"),
        ("fresh", {"type": "chat", "text": "x", "seq": 1}, "before the session is live"),
        ("fresh", {"type": "resumed", "seq": 1}, "not expected in state awaiting_hello"),
        ("fresh", {"type": "hello", "session": "s", "epoch": "e", "seq": 0}, "'token'"),
        ("fresh", {"type": "hello", "session": "s", "token": "t", "epoch": "e", "seq": -1}, "seq"),
        ("live", {"type": "chat", "seq": "7"}, "non-negative integer 'seq'"),
        ("live", {"type": "hello", "session": "s", "token": "t", "epoch": "e", "seq": 0}, "hello"),
        ("resuming", {"type": "reset", "reason": "bored"}, "unknown reset reason"),
        (
            "resuming",
            {"type": "resumed", "session": "s", "token": "t", "epoch": "zz", "seq": 5, "replay": 5},
            "but we asked",
        ),
        ("resuming", {"type": "chat", "seq": 1}, "before the session is live"),
    ],
)
def test_client_rejects_what_a_server_must_never_send(
    state: str, message: str | dict[str, Any], match: str
) -> None:
    if state == "fresh":
        client = ResumeClient()
        client.start_connection()
    else:
        client, *_ = _live_client()
        if state == "resuming":
            client.connection_lost()
            client.start_connection()
    with pytest.raises(ResumeProtocolError, match=match):
        client.receive(message)


def test_client_api_misuse_is_a_state_error() -> None:
    client = ResumeClient()
    with pytest.raises(ResumeStateError, match="no connection"):
        client.receive("{}")
    client.start_connection()
    with pytest.raises(ResumeStateError, match="connection_lost"):
        client.start_connection()
