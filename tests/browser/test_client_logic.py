"""trioheart-client.js's pure parts, run in Chromium and held against the Python library.

The browser client must behave as :mod:`trioheart.backoff` and
:class:`trioheart.resume.ResumeClient` do, so these tests feed the same
inputs to both (hypothesis draws them) and compare. The heartbeat's
late-timer rule, which has no Python twin, is checked by its invariant.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioheart.demo
from trioheart.backoff import Backoff, RetryWindow
from trioheart.resume import (
    GapDetected,
    MessageReceived,
    ResumeClient,
    ResumeProtocolError,
    ResumeStateError,
    ResyncRequired,
    SessionResumed,
    SessionStarted,
)

from .conftest import TIMEOUT_MS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

STATIC: Final = Path(trioheart.demo.__file__).parent / "static"
ORIGIN: Final = "http://trioheart.test"
# Each example is one round trip to the browser: a few ms.
BROWSER_SETTINGS: Final = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def js(browser: Browser) -> Iterator[Page]:
    """A blank page that has imported the module as ``window.th`` (no server: routed)."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)

    def serve(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN)
        if path == "/static/trioheart-client.js":
            route.fulfill(
                body=(STATIC / "trioheart-client.js").read_text(),
                content_type="text/javascript",
            )
        else:
            route.fulfill(body="<!doctype html><title>logic</title>", content_type="text/html")

    context.route(f"{ORIGIN}/**", serve)
    page = context.new_page()
    page.goto(f"{ORIGIN}/")
    page.evaluate("async () => { window.th = await import('/static/trioheart-client.js'); }")
    yield page
    context.close()


class FixedRandom(random.Random):
    """random() always answers *value*: the same draw for Python and for JS."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


# --------------------------------------------------------------------------
# Backoff and the retry window


@pytest.mark.parametrize(
    "params",
    [{}, {"base": 1.0, "cap": 10.0, "factor": 3.0}, {"base": 0.1, "cap": 0.1, "factor": 1}],
)
def test_backoff_delays_are_pythons_for_the_same_draw(js: Page, params: dict[str, float]) -> None:
    draws = [0.0, 0.25, 0.5, 0.999999]
    attempts = list(range(70))
    got = js.evaluate(
        """([params, attempts, draws]) => {
             const b = new th.Backoff(params);
             return attempts.map((n) => [b.ceiling(n), ...draws.map((r) => b.delay(n, () => r))]);
           }""",
        [params, attempts, draws],
    )
    policy = Backoff(**params)
    want = [
        [policy.ceiling(n), *(policy.delay(n, FixedRandom(r)) for r in draws)] for n in attempts
    ]
    assert got == want


@pytest.mark.parametrize(
    ("params", "field"),
    [({"base": 0}, "base"), ({"cap": float("nan")}, "cap"), ({"factor": 0.5}, "factor")],
)
def test_backoff_rejects_bad_values_naming_the_field(
    js: Page, params: dict[str, float], field: str
) -> None:
    message = js.evaluate(
        "(params) => { try { new th.Backoff(params); return null }"
        " catch (e) { return e.message } }",
        params,
    )
    assert message is not None
    assert message.startswith(field)


numberish = st.one_of(
    st.floats(min_value=-10, max_value=5000, allow_nan=False).map(repr),
    st.integers(min_value=-5, max_value=4000).map(str),
    st.text(alphabet="0123456789.eE+- ", max_size=8),
)
close_texts = st.one_of(
    st.builds(
        lambda head, low, high, tail: f"{head}; retry={low}..{high}{tail}",
        st.sampled_from(["server_shutdown", "going_away", ""]),
        numberish,
        numberish,
        st.sampled_from(["", "; x=1", ";retry=1..2"]),
    ),
    st.text(alphabet="retry=.;0123456789 _abc", max_size=30),
)


@BROWSER_SETTINGS
@given(texts=st.lists(close_texts, min_size=1, max_size=20))
def test_retry_window_in_close_text_is_read_as_python_reads_it(js: Page, texts: list[str]) -> None:
    got = js.evaluate("(texts) => texts.map((t) => th.retryWindowFromCloseText(t))", texts)
    for text, window in zip(texts, got, strict=True):
        want = RetryWindow.from_close_text(text)
        assert window == (
            None if want is None else {"earliest": want.earliest, "latest": want.latest}
        ), text


def test_retry_window_from_the_drain_message_and_the_draw_within_it(js: Page) -> None:
    window = RetryWindow(earliest=2.0, latest=7.5)
    got = js.evaluate(
        """(message) => {
             const w = th.retryWindowFromMessage(message);
             return [w, [0, 0.5, 0.999999].map((r) => th.chooseInWindow(w, () => r)),
                     th.retryWindowFromMessage({type: "drain", retry: [3, 1]}),
                     th.retryWindowFromMessage({type: "drain", retry: [0, 3601]}),
                     th.retryWindowFromMessage({type: "chat", retry: [0, 1]})];
           }""",
        window.message(),
    )
    assert got[0] == {"earliest": 2.0, "latest": 7.5}
    assert got[1] == [window.choose(FixedRandom(r)) for r in (0, 0.5, 0.999999)]
    assert got[2:] == [None, None, None]


# --------------------------------------------------------------------------
# The resume protocol: the same steps through ResumeClient and ResumeState

SESSION: Final = "s1"
EPOCH: Final = "e1"
seqs = st.integers(min_value=0, max_value=12)
server_messages = st.one_of(
    st.builds(
        lambda seq, session: {
            "type": "hello",
            "session": session,
            "token": f"t-{seq}",
            "epoch": EPOCH,
            "seq": seq,
        },
        seqs,
        st.sampled_from([SESSION, "s2"]),
    ),
    st.builds(
        lambda seq, replay, epoch: {
            "type": "resumed",
            "session": SESSION,
            "token": "t-r",
            "epoch": epoch,
            "seq": seq,
            "replay": replay,
        },
        seqs,
        seqs,
        st.sampled_from([EPOCH, "e2"]),
    ),
    st.builds(
        lambda reason: {"type": "reset", "reason": reason},
        st.sampled_from(["trimmed", "epoch_changed", "token_expired", "bogus"]),
    ),
    st.builds(
        lambda reason: {"type": "refused", "reason": reason, "detail": "no"},
        st.sampled_from(["malformed", "invalid_token", "invalid_seq", "bogus"]),
    ),
    st.just({"type": "token", "token": "t-new"}),
    st.builds(lambda seq: {"type": "chat", "text": f"m{seq}", "from": "x", "seq": seq}, seqs),
    st.builds(lambda seq: {"type": "chat", "seq": seq}, st.sampled_from([-1, "3", 1.5, None])),
    st.just({"type": "notice", "text": "no seq"}),
    st.just({"type": "hello", "session": SESSION, "epoch": EPOCH, "seq": 1}),  # no token
)
chats = st.builds(lambda seq: {"type": "chat", "text": f"m{seq}", "from": "x", "seq": seq}, seqs)
# Mostly protocol-shaped connections (start, a first answer, chat lines,
# lost), so that LIVE states with duplicates and gaps are reached often;
# any message may also come at any point.
connection = st.builds(
    lambda first, rest, lost: ["start", first, *rest, *(["lost"] if lost else [])],
    server_messages,
    st.lists(st.one_of(chats, chats, chats, server_messages), max_size=10),
    st.booleans(),
)
steps = st.lists(
    st.one_of(connection, connection, st.lists(st.one_of(st.just("start"), server_messages))),
    min_size=1,
    max_size=5,
).map(lambda parts: [step for part in parts for step in part])


def python_run(steps: list[Any]) -> list[Any]:
    client = ResumeClient()
    out: list[Any] = []
    for step in steps:
        try:
            if step == "start":
                request = client.start_connection()
                out.append(["start", None if request is None else json.loads(request)])
            elif step == "lost":
                client.connection_lost()
                out.append(["lost"])
            else:
                out.append(["events", [_event(e) for e in client.receive(json.dumps(step))]])
        except ResumeProtocolError:
            out.append(["protocol_error"])
        except ResumeStateError:
            out.append(["state_error"])
        out[-1].append([client.state.value, client.last_seq, client.can_resume])
    return out


def _event(event: Any) -> dict[str, Any]:
    if isinstance(event, SessionStarted):
        return {"kind": "started", "session": event.session, "epoch": event.epoch, "seq": event.seq}
    if isinstance(event, SessionResumed):
        return {
            "kind": "resumed",
            "session": event.session,
            "epoch": event.epoch,
            "seq": event.seq,
            "replayed": event.replayed,
        }
    if isinstance(event, ResyncRequired):
        return {"kind": "resync", "reason": event.reason.value}
    if isinstance(event, MessageReceived):
        return {"kind": "message", "seq": event.seq}
    assert isinstance(event, GapDetected)
    return {"kind": "gap", "expected": event.expected, "received": event.received}


JS_RUN: Final = """(steps) => {
  const client = new th.ResumeState();
  const out = [];
  for (const step of steps) {
    let row;
    try {
      if (step === "start") {
        const request = client.startConnection();
        row = ["start", request === null ? null : JSON.parse(request)];
      } else if (step === "lost") {
        client.connectionLost();
        row = ["lost"];
      } else {
        row = ["events", client.receive(JSON.stringify(step)).map((e) =>
          e.kind === "message" ? {kind: e.kind, seq: e.seq}
          : e.kind === "resync" ? {kind: e.kind, reason: e.reason} : e)];
      }
    } catch (err) {
      if (err instanceof th.ResumeProtocolError) row = ["protocol_error"];
      else if (err instanceof th.ResumeStateError) row = ["state_error"];
      else throw err;
    }
    row.push([client.state, client.lastSeq, client.canResume]);
    out.push(row);
  }
  return out;
}"""


@settings(BROWSER_SETTINGS, max_examples=200)
@given(steps=steps)
def test_resume_state_answers_every_step_as_the_python_client_does(
    js: Page, steps: list[Any]
) -> None:
    assert js.evaluate(JS_RUN, steps) == python_run(steps)


def test_resume_state_dedups_and_stops_at_a_gap(js: Page) -> None:
    hello = {"type": "hello", "session": SESSION, "token": "t", "epoch": EPOCH, "seq": 4}
    run = [
        "start", hello,
        *({"type": "chat", "seq": s} for s in (5, 5, 4, 6, 8, 9)),
        "lost", "start",
    ]  # fmt: skip
    got = js.evaluate(JS_RUN, run)
    assert got == python_run(run)
    delivered = [
        e["seq"] for row in got if row[0] == "events" for e in row[1] if e["kind"] == "message"
    ]
    assert delivered == [5, 6]
    assert got[6][1] == [{"kind": "gap", "expected": 7, "received": 8}]
    assert got[-1][1] == {"type": "resume", "token": "t", "epoch": EPOCH, "seq": 6}


# --------------------------------------------------------------------------
# The heartbeat and late timers

LIVENESS_SCRIPT: Final = """([interval, timeout, slack, ops]) => {
  const l = new th.Liveness({interval, timeout, lateSlack: slack});
  l.start(0);
  return ops.map(([op, now, late]) => {
    if (op === "heard") { l.heard(now); return {kind: "heard", now}; }
    const due = l.wakeAt();
    if (due === null) return {kind: "stopped", now};
    const at = Math.max(now, due + late);
    const action = l.poll(at, due);
    return {...action, now: at, due, lastHeard: l.lastHeard};
  });
}"""


def test_on_time_silence_pings_at_the_interval_and_convicts_at_interval_plus_timeout(
    js: Page,
) -> None:
    got = js.evaluate(LIVENESS_SCRIPT, [2, 1, 2, [["poll", 0, 0], ["poll", 0, 0], ["poll", 0, 0]]])
    assert [(a["kind"], a["now"]) for a in got] == [("ping", 2), ("dead", 3), ("stopped", 0)]
    assert got[1]["silentFor"] == 3


def test_a_late_timer_probes_and_anything_heard_clears_the_probe(js: Page) -> None:
    ops = [["poll", 0, 58], ["heard", 60.01, 0], ["poll", 0, 0], ["poll", 0, 0]]
    got = js.evaluate(LIVENESS_SCRIPT, [2, 1, 2, ops])
    assert got[0]["kind"] == "probe"
    assert got[0]["lateBy"] == 58
    assert [(a["kind"], a.get("now")) for a in got[2:]] == [("ping", 62.01), ("dead", 63.01)]


def test_a_probe_whose_deadline_is_also_late_rechecks_once_before_convicting(js: Page) -> None:
    ops = [["poll", 0, 58], ["poll", 0, 100], ["poll", 0, 0]]
    got = js.evaluate(
        """([interval, timeout, slack, ops]) => {
             const l = new th.Liveness({interval, timeout, lateSlack: slack});
             l.start(0);
             const out = [l.poll(60, 2)];
             out.push(l.poll(161, 61));           // the probe's deadline, 100 s late
             out.push(l.poll(161.001, 161));      // the recheck, on time: nothing was heard
             return out.map((a) => a.kind);
           }""",
        [2, 1, 2, ops],
    )
    assert got == ["probe", "recheck", "dead"]


operations = st.lists(
    st.tuples(
        st.sampled_from(["poll", "poll", "heard"]),
        st.floats(min_value=0, max_value=5),  # time advanced before the op
        st.one_of(st.just(0.0), st.floats(min_value=0, max_value=120)),  # lateness of a poll
    ),
    max_size=40,
)


@BROWSER_SETTINGS
@given(ops=operations)
def test_the_server_is_convicted_only_by_an_on_time_timer_after_a_full_silent_window(
    js: Page, ops: list[tuple[str, float, float]]
) -> None:
    interval, timeout, slack = 2.0, 1.0, 2.0
    now, script = 0.0, []
    for op, advance, late in ops:
        now += advance
        script.append([op, now, late])
    got = js.evaluate(LIVENESS_SCRIPT, [interval, timeout, slack, script])
    for action in got:
        if action["kind"] == "dead":
            assert action["now"] - action["due"] <= slack, "convicted on a late timer"
            assert action["now"] - action["lastHeard"] >= interval + timeout - 1e-9
            break  # the heartbeat stops once it convicts
        assert action["kind"] in {"heard", "wait", "ping", "probe", "recheck"}


# --------------------------------------------------------------------------
# The client shell with a fake socket and fake timers: a gap means reconnect and resume

SHELL_SCRIPT: Final = """() => {
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close(code, reason) { this.readyState = 3; this.closedWith = [code, reason]; }
    open() { this.readyState = 1; this.onopen(); }
    deliver(message) { this.onmessage({data: JSON.stringify(message)}); }
  }
  let now = 1000;
  const timers = [];
  const client = new th.TrioheartClient({
    url: "ws://x/ws?room=r&name=n", WebSocket: FakeSocket, now: () => now, random: () => 0.5,
    timers: {
      set: (fn, s) => timers.push({fn, at: now + s}) - 1,
      clear: (i) => { if (timers[i]) timers[i].fn = null; },
    },
    onMessage: (m, seq) => shown.push(seq), pingInterval: 20, pingTimeout: 10,
  });
  const shown = [];
  const fire = () => {  // the earliest pending timer
    let best = -1;
    timers.forEach((t, i) => { if (t.fn && (best < 0 || t.at < timers[best].at)) best = i; });
    const t = timers[best]; now = Math.max(now, t.at); const fn = t.fn; t.fn = null; fn();
  };
  client.start();
  sockets[0].open();
  sockets[0].deliver({type: "hello", session: "s", token: "t", epoch: "e", seq: 0});
  for (const seq of [1, 2, 2, 4]) sockets[0].deliver({type: "chat", seq});
  const afterGap = {
    state: client.status.state, why: client.status.why, closed: sockets[0].closedWith,
  };
  fire();  // the backoff timer: 0.5 * 0.5 s
  sockets[1].open();
  const request = sockets[1].sent[0];
  sockets[1].deliver({type: "resumed", session: "s", token: "t2", epoch: "e", seq: 4, replay: 2});
  for (const seq of [3, 4, 5]) sockets[1].deliver({type: "chat", seq});
  return {afterGap, urls: sockets.map((s) => s.url), request, shown,
          status: client.status, delay: client.stats.lastDelay};
}"""


def test_a_gap_drops_the_socket_and_the_next_one_resumes_from_the_last_seq(js: Page) -> None:
    got = js.evaluate(SHELL_SCRIPT)
    assert got["afterGap"] == {"state": "reconnecting", "why": "gap", "closed": [4000, "gap"]}
    assert got["delay"] == 0.25
    assert got["urls"] == ["ws://x/ws?room=r&name=n", "ws://x/ws?room=r&name=n&resume=1"]
    assert got["request"] == {"type": "resume", "token": "t", "epoch": "e", "seq": 2}
    assert got["shown"] == [1, 2, 3, 4, 5]
    assert got["status"]["state"] == "resumed"
    assert got["status"]["replayed"] == 2
