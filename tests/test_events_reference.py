"""The log events reference lists exactly the events trioheart emits."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference" / "events.rst"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}
EVENT = re.compile(r"^[a-z_]+\.[a-z_]+$")


def emitted() -> dict[str, str]:
    """Each event name a logging call in trioheart passes, with where it is."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "trioheart").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and EVENT.match(node.args[0].value)
            ):
                found.setdefault(node.args[0].value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def table_rows(text: str) -> set[str]:
    return set(re.findall(r"^   \* - ``([a-z_.]+)``$", text, re.MULTILINE))


def test_every_emitted_event_is_documented_and_every_row_is_emitted() -> None:
    events = emitted()
    text = REFERENCE.read_text()
    rows = table_rows(text)
    # The vocabulary issue 7 names, at least.
    assert {
        "connection.opened",
        "socket.tuned",
        "heartbeat.missed",
        "loop.stalled",
        "policy.applied",
        "connection.closed",
    } <= events.keys()
    documented = rows | set(re.findall(r"``(demo\.[a-z_]+)``", text))
    missing = {name: where for name, where in events.items() if name not in documented}
    assert not missing, f"emitted but not in {REFERENCE.name}: {missing}"
    assert rows <= events.keys(), f"documented but never emitted: {rows - events.keys()}"
