"""``python -m benchmarks.soak --quick``: churn through the fault proxy, then the invariants.

About 50 resuming clients join, chat, vanish (reset, blackhole, timeout,
dropped data frames, the proxy going down) and leave for a few seconds
against the demo server in its own process. The assertions are the soak's
invariants, read from its JSON, not its timings.
"""

from __future__ import annotations

from pathlib import Path

from tests.benchmark_runs import run_quick
from trioheart import CloseReason


def test_the_quick_soak_keeps_every_promise(tmp_path: Path) -> None:
    done, report = run_quick("soak", tmp_path, timeout=180, check=False)
    assert report["violations"] == [], done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert "re-create with: python -m benchmarks.soak --quick --seed 1" in done.stdout

    # It really churned: clients came and went, and every way of vanishing happened.
    assert report["peak"]["server_open"] >= 30
    members = report["members"]
    assert members["left_during_churn"] > 0
    assert members["stayed_to_the_end"] > 0
    assert members["resumes"] > 0
    chaos = report["chaos"]["by_kind"]
    for kind in ("reset_peer", "blackhole", "timeout", "ws_drop", "down"):
        assert chaos.get(kind, 0) >= 1, chaos

    # Live tasks back to the baseline once every client has left; memory bounded.
    assert report["tasks_back_to_baseline"]
    assert report["end"]["tasks"] == report["baseline"]["tasks"]
    assert report["peak"]["tasks"] > report["baseline"]["tasks"]
    assert report["rss_within_bound"]
    assert report["allocated_blocks_within_bound"]

    # Exactly once: nothing lost, nothing duplicated, in every room.
    messages = report["messages"]
    assert messages["published"] > 0
    assert messages["deliveries"] >= messages["published"]
    assert messages["lost"] == 0
    assert messages["duplicates_delivered"] == 0
    assert messages["gaps_delivered"] == 0
    assert messages["sent"] == (
        messages["published"]
        + messages["lost_with_their_connection"]
        - messages["published_though_send_raised"]
    )

    # Every close has a name, and the server's closes add up.
    closes = report["closes"]
    assert closes["server_total"] > 0
    assert closes["proxy_forwarded"] <= closes["server_total"] <= closes["proxy_accepted"]
    assert "internal_error" not in closes["server_by_reason"]
    assert set(closes["server_by_reason"]) <= {reason.value for reason in CloseReason}
    assert report["timeline"][-1]["server_open"] == 0
