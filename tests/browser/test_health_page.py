"""The live health page in headless Chromium (issue 7): connections, closes, charts.

A few raw clients stay connected (the server pings them every 0.2-0.3 s,
so RTTs appear at once), three others end for three different reasons,
and the page, refreshing every 0.25 s, must show all of it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import trioheart
from tests.trio.wsclient import connect
from trioheart.policy import load_policy_toml

from .conftest import NewPage
from .demo_thread import DemoThread

if TYPE_CHECKING:
    from playwright.sync_api import Page

POLICY = """
revision = 3
[default]
ping_interval = 0.3
max_window = 0.6
min_window = 0.2
[rules.fast-web]
match = { group = "web" }
ping_interval = 0.2
"""


def path(name: str, group: str = "") -> str:
    return f"/ws?room=health&name={name}" + (f"&group={group}" if group else "")


async def hold(port: int, name: str, group: str = "", *, answer_pings: bool = True) -> None:
    """A client that stays until the server closes it (pongs only if *answer_pings*)."""
    async with connect(port, path(name, group), answer_pings=answer_pings) as client:
        await client.run_until_closed()


async def leave(port: int, name: str) -> None:
    """A client that joins, then says goodbye with a close frame."""
    async with connect(port, path(name)) as client:
        await client.receive()  # hello
        await client.close_cleanly()
        await client.run_until_closed()


def table(page: Page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map((r) => [...r.cells].map((c) => c.textContent))"
    )


def test_health_page_shows_connections_closes_and_live_charts(
    new_page: NewPage, artifacts: Path
) -> None:
    store = trioheart.PolicyStore(load_policy_toml(POLICY))
    with DemoThread(policies=store) as demo:
        assert demo.server is not None
        for name, group in [
            ("alive-1", "web"),
            ("alive-2", "web"),
            ("alive-3", ""),
            ("victim", ""),
        ]:
            demo.start_soon(hold, demo.port, name, group)
        page = new_page()
        page.goto(f"http://127.0.0.1:{demo.port}/health?every=0.25")
        # Every connection listed, each with a measured RTT.
        page.wait_for_function(
            """() => {
                 const rows = [...document.querySelectorAll('#conns tbody tr')];
                 return rows.length === 4 && rows.every((r) => r.cells[3].textContent !== '-');
               }"""
        )
        chart_before = page.evaluate("() => document.getElementById('chart').toDataURL()")

        demo.run(leave, demo.port, "leaver")
        assert demo.cut("victim") == 1
        demo.start_soon(lambda: hold(demo.port, "frozen", answer_pings=False))
        demo.run(demo.server.wait_until, lambda s: s.closed.get("pong_timeout", 0) == 1)
        reasons = {"peer_closed", "connection_reset", "pong_timeout"}
        page.wait_for_function(
            """(reasons) => {
                 const shown = [...document.querySelectorAll('#closes tbody tr')]
                   .map((r) => r.cells[1].textContent);
                 return reasons.every((r) => shown.includes(r))
                   && document.querySelectorAll('#conns tbody tr').length === 3;
               }""",
            arg=sorted(reasons),
        )
        # Let the chart take at least one more refresh after the closes.
        page.wait_for_function(
            "(before) => document.getElementById('legend').textContent.includes('pong_timeout')"
            " && document.getElementById('chart').toDataURL() !== before",
            arg=chart_before,
        )
        page.screenshot(path=str(artifacts / "health.png"), full_page=True)

        assert page.inner_text("#open") == "3"
        assert page.inner_text("#closed") == "3"
        assert re.fullmatch(r"\d+", page.inner_text("#stalls"))
        assert page.inner_text("#brokerkind") == "embedded"
        assert page.inner_text("#broker") == "up"
        assert re.fullmatch(r"\d+ rooms, 0 outages, 0 waiting", page.inner_text("#brokerinfo"))
        legend = page.inner_text("#legend")
        assert all(reason in legend for reason in reasons)
        assert "loop stalls" in legend

        rows = table(page, "#conns")
        assert [row[1] for row in rows] == ["/ws"] * 3
        for _conn, _path, _age, p50, p99, window, interval, health, policy in rows:
            assert 0 < float(p50) <= float(p99) < 600  # milliseconds
            assert 0.2 <= float(window) <= 0.6
            assert 0.0 <= float(health) <= 1.0
            assert (interval, policy) in {("0.2", "fast-web @3"), ("0.3", "default @3")}
        assert sorted(row[8] for row in rows) == ["default @3", "fast-web @3", "fast-web @3"]

        closes = {row[1]: row for row in table(page, "#closes")}
        assert closes["peer_closed"][2] == "1000"
        assert closes["connection_reset"][2] == "1006"
        assert closes["pong_timeout"][2] == "4001"
        bad = page.eval_on_selector_all(
            "#closes td.bad", "cells => cells.map((c) => c.textContent)"
        )
        assert sorted(bad) == ["connection_reset", "pong_timeout"]
        assert page.js_errors == []  # type: ignore[attr-defined]
