"""The demo chat page in headless Chromium: heartbeat, reconnect, resume (issue 4).

Each test runs the demo in a background thread (:mod:`.demo_thread`) and
drives a page with Playwright; every wait is bounded by Playwright's
timeout (``TIMEOUT_MS``) or by ``trio.fail_after`` inside the app's loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from trioheart.demo.app import SHUTDOWN_RETRY

from .conftest import NewPage
from .demo_thread import DemoThread

if TYPE_CHECKING:
    from playwright.sync_api import Page


class Talker:
    """trioheart's own Python client, saying *count* lines, one every *every* seconds."""

    def __init__(self, port: int, room: str, name: str) -> None:
        self.url = f"ws://127.0.0.1:{port}/ws?room={room}&name={name}"
        self.received: list[int] = []
        self.done = trio.Event()
        self._lot = trio.lowlevel.ParkingLot()

    async def wait_seen(self, seq: int) -> None:
        """Wait until the line *seq* came back to this client (bound it)."""
        while not (self.received and self.received[-1] >= seq):
            await self._lot.park()

    async def run(self, count: int, every: float) -> None:
        from trioheart.client import Message, open_resuming

        async with open_resuming(self.url) as client, trio.open_nursery() as nursery:

            async def read() -> None:
                async for event in client:
                    if isinstance(event, Message) and event.seq is not None:
                        self.received.append(event.seq)
                        self._lot.unpark_all()

            nursery.start_soon(read)
            await client.wait_connected()
            for i in range(count):
                await client.send({"type": "chat", "text": f"bot line {i}"})
                await trio.sleep(every)  # the pace of the conversation
            self.done.set()
            await trio.sleep_forever()  # keep listening until the demo stops


def open_chat(page: Page, port: int, room: str, name: str, **query: object) -> None:
    extra = "".join(f"&{key}={value}" for key, value in query.items())
    page.goto(f"http://127.0.0.1:{port}/?room={room}&name={name}{extra}")
    page.wait_for_function(
        "() => window.trioheart && window.trioheart.status.state === 'connected'"
    )


def seqs(page: Page) -> list[int]:
    return page.eval_on_selector_all("#log li.chat", "els => els.map((e) => Number(e.dataset.seq))")


def states(page: Page) -> list[str]:
    return page.evaluate("() => trioheart.history.filter((h) => h.state).map((h) => h.state)")


def stats(page: Page) -> dict[str, Any]:
    return page.evaluate(
        "() => ({...trioheart.stats, resume: trioheart.resume.stats, "
        "liveness: trioheart.liveness.stats, status: trioheart.status})"
    )


def test_page_resumes_after_a_server_side_cut_with_every_line_once(
    new_page: NewPage, artifacts: Path
) -> None:
    with DemoThread() as demo:
        page = new_page()
        # Pin the page's randomness (as a seeded rng would): its first
        # reconnect then waits 0.8 * 0.5 s = 0.4 s, while the bot talks on.
        page.add_init_script("Math.random = () => 0.8;")
        open_chat(page, demo.port, "cut", "page")
        page.fill("#text", "hello from the page")
        page.click("form button")
        page.wait_for_function("() => document.querySelectorAll('#log li.chat').length === 1")

        talker = Talker(demo.port, "cut", "bot")
        demo.start_soon(talker.run, 80, 0.02)
        page.wait_for_function("() => document.querySelectorAll('#log li.chat').length >= 10")
        assert demo.cut("page") == 1
        page.wait_for_function("() => trioheart.status.state === 'resumed'")
        demo.run(talker.done.wait)
        total = 1 + 80
        page.wait_for_function(f"() => document.querySelectorAll('#log li.chat').length >= {total}")
        page.screenshot(path=str(artifacts / "chat-resumed.png"), full_page=True)

        shown = seqs(page)
        assert shown == list(range(1, total + 1)), "a line was lost, duplicated or out of order"
        # The Python client, never cut, saw the same lines from where it joined.
        demo.run(talker.wait_seen, total)
        assert talker.received == list(range(talker.received[0], total + 1))
        history = states(page)
        assert history[:1] == ["connecting"]
        assert "connected" in history
        cut_at = history.index("reconnecting")
        assert "resumed" in history[cut_at:], history
        info = stats(page)
        resumed = [
            h for h in page.evaluate("() => trioheart.history") if h.get("state") == "resumed"
        ]
        assert resumed[0]["replayed"] > 0, "nothing was published while the page was away"
        assert info["resume"]["resumes"] == 1
        assert info["resume"]["resyncs"] == 0
        assert info["connects"] == 2
        assert page.inner_text("#state").startswith("resumed")
        assert page.js_errors == []  # type: ignore[attr-defined]


def pause_now(page: Any) -> None:
    """Pause the page's fake clock at about its present time.

    ``pause_at`` must be in the page's future, and the page's clock runs
    while the call travels; on a loaded machine 0.1 s ahead can already be
    past, so read the time again and retry (bounded).
    """
    for _ in range(5):
        try:
            page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 0.2)
        except Exception as exc:  # playwright's Error
            if "to the past" not in str(exc):
                raise
            continue
        return
    raise AssertionError("could not pause the page's clock in 5 tries")


def test_a_frozen_tab_probes_the_server_before_it_convicts_it(new_page: NewPage) -> None:
    """A laptop lid closed for a minute: the late timer probes, the server answers, no reconnect."""
    with DemoThread() as demo:
        page = new_page(clock=True)
        open_chat(page, demo.port, "frozen", "sleeper", ping_interval=2, ping_timeout=1)
        pause_now(page)
        # Playwright's fast_forward is the lid closed and opened: time jumps
        # 60 s and each due timer fires once, late. The heartbeat timer was
        # due at 2 s, so a naive client would convict the server now.
        page.clock.fast_forward(60_000)
        page.wait_for_function("() => trioheart.stats.pongs >= 1", polling=20)
        info = stats(page)
        assert info["liveness"]["lateTimers"] >= 1
        assert info["liveness"]["probes"] == 1
        assert info["liveness"]["dead"] == 0
        assert info["connects"] == 1
        assert info["status"]["state"] == "connected"
        assert "reconnecting" not in states(page)
        assert len(demo.connections("sleeper")) == 1
        notes = page.evaluate("() => trioheart.history.filter((h) => h.event === 'late_timer')")
        assert len(notes) == 1
        assert notes[0]["lateBy"] > 50


def test_a_silent_server_is_declared_dead_after_interval_plus_timeout(new_page: NewPage) -> None:
    """The path goes silent (a blackhole): on-time timers convict it at 2 + 1 s, not before."""
    from trioheart.proxy import Blackhole, Stream

    with DemoThread(proxy=True) as demo:
        assert demo.proxy is not None
        page = new_page(clock=True)
        page.add_init_script("Math.random = () => 0.8;")  # the reconnect waits 0.4 s
        open_chat(page, demo.page_port, "silent", "pager", ping_interval=2, ping_timeout=1)
        pause_now(page)
        demo.run_sync(lambda: demo.proxy.add_toxic(Blackhole(), stream=Stream.BOTH))  # type: ignore[union-attr]
        # Time from the last thing heard: past the ping (2 s), short of the deadline (3 s).
        since_heard = page.evaluate("() => Date.now() / 1000 - trioheart.liveness.lastHeard")
        page.clock.run_for(round((2.8 - since_heard) * 1000))
        info = stats(page)
        assert info["status"]["state"] == "connected"
        assert info["liveness"]["pings"] == 1
        assert info["pongs"] == 0
        page.clock.run_for(400)
        info = stats(page)
        assert info["status"]["state"] == "reconnecting"
        assert info["status"]["why"] == "heartbeat_timeout"
        assert info["liveness"]["dead"] == 1
        assert info["liveness"]["probes"] == 0
        # Heal the path; the reconnect (at most 0.5 s later) resumes the session.
        demo.run_sync(demo.proxy.reset)
        page.clock.run_for(600)
        page.wait_for_function("() => trioheart.status.state === 'resumed'", polling=20)
        assert stats(page)["resume"]["resumes"] == 1


def test_a_draining_server_is_rejoined_within_its_retry_window(
    new_page: NewPage, artifacts: Path
) -> None:
    """The demo's ``server_shutdown; retry=0.5..5.0``: the page comes back within it, not before."""
    window = SHUTDOWN_RETRY
    with DemoThread() as demo:
        page = new_page(clock=True)
        open_chat(page, demo.port, "drain", "drainee")
        pause_now(page)
        demo.shutdown()  # with the demo's own retry window
        page.wait_for_function("() => trioheart.status.state === 'reconnecting'", polling=20)
        status = stats(page)["status"]
        assert status["code"] == 1001
        assert status["reason"] == window.close_text()
        assert window.earliest <= status["delay"] <= window.latest
        assert status["window"] == {"earliest": window.earliest, "latest": window.latest}
        assert page.inner_text("#state") == f"reconnecting in {int(-(-status['delay'] // 1))} s"
        page.screenshot(path=str(artifacts / "chat-draining.png"))
        page.clock.run_for(int(window.earliest * 1000) - 50)
        assert stats(page)["connects"] == 1, "came back before the window opened"
        page.clock.run_for(int((window.latest - window.earliest) * 1000) + 100)
        assert stats(page)["connects"] == 2, "not back by the end of the window"
