"""The Grafana dashboard only queries metrics trioheart exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import trioheart
from trioheart.prometheus import _ServerCollector

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
SCRAPE_TIME = {
    "trioheart_connection_health",
    "trioheart_heartbeat_interval_seconds",
    "trioheart_connection_pong_window_seconds",
    "trioheart_tcp_user_timeout_seconds",
    "trioheart_policy_revision",
    "trioheart_policy_connections",
    "trioheart_policy_updates_total",
}


def exported_names() -> set[str]:
    names = set(SCRAPE_TIME)
    for family in trioheart.Metrics().registry.collect():
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":  # a labelled counter has no sample until used
            names.add(f"{family.name}_total")
    for base in SCRAPE_TIME:
        names |= {f"{base}_bucket", f"{base}_gcount", f"{base}_gsum"}
    return names


def test_every_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    used = {name for expr in exprs for name in re.findall(r"trioheart_[a-z_]+", expr)}
    missing = used - exported_names()
    assert not missing, missing
    # Everything issue 7 asks an operator to see is on the board.
    for wanted in (
        "trioheart_connections_open",
        "trioheart_connection_lifetime_seconds_bucket",
        "trioheart_connections_closed_total",
        "trioheart_rtt_seconds_bucket",
        "trioheart_pong_window_seconds_bucket",
        "trioheart_connection_health_bucket",
        "trioheart_loop_stalls_total",
        "trioheart_resumes_total",
        "trioheart_policy_connections",
    ):
        assert wanted in used, wanted


def test_scrape_time_names_match_the_collector() -> None:
    source = Path(_ServerCollector.__module__.replace(".", "/") + ".py")
    text = (Path(__file__).resolve().parents[1] / source).read_text()
    for name in SCRAPE_TIME - {"trioheart_policy_updates_total"}:
        assert f'"{name}"' in text, name
