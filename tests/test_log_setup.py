"""configure_logging: JSON lines for machines, console rendering on a terminal."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from trioheart.log import configure_logging, get_logger


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_json_lines_when_the_stream_is_not_a_terminal() -> None:
    out = io.StringIO()
    configure_logging(stream=out)
    get_logger("trioheart.test").info("connection.closed", conn_id="c1", reason="pong_timeout")
    get_logger("trioheart.test").debug("socket.tuned", conn_id="c1")  # below INFO
    [line] = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "connection.closed"
    assert (event["conn_id"], event["reason"], event["level"]) == ("c1", "pong_timeout", "info")
    assert event["logger_name"] == "trioheart.test"
    assert event["timestamp"].endswith("Z")


def test_console_rendering_on_a_terminal() -> None:
    out = Terminal()
    configure_logging(stream=out)
    get_logger("trioheart.test").warning("loop.stalled", lag_s=0.2)
    text = out.getvalue()
    assert "loop.stalled" in text
    assert "lag_s" in text
    assert not text.lstrip().startswith("{")  # rendered for people, not JSON


def test_explicit_choice_and_level_win() -> None:
    out = Terminal()
    configure_logging(json=True, level=logging.WARNING, stream=out)
    get_logger("trioheart.test").info("connection.opened", conn_id="c2")
    get_logger("trioheart.test").warning("loop.stalled", lag_s=0.2)
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["event"] == "loop.stalled"
