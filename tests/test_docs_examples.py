"""The examples the docs include are programs; run them."""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path
from types import ModuleType

import pytest
import trio
from trio.testing import MockClock

import trioheart

from .trio.wsclient import connect

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.002)


async def test_tutorial_chat_broadcasts_to_the_room(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    tutorial = load("tutorial_chat")
    server: trioheart.Server = await nursery.start(
        lambda task_status: trioheart.serve(
            tutorial.chat, "127.0.0.1", 0, config=tutorial.config, task_status=task_status
        )
    )
    async with connect(server.port, "/?room=a") as one, connect(server.port, "/?room=a") as two:
        await one.send("hello")
        for client in (one, two):
            assert json.loads(await client.receive())["text"] == "hello"
        await two.close_cleanly()
        await two.run_until_closed()
        await server.wait_until(lambda s: s.connections_open == 1)
        assert len(tutorial.rooms["a"]) == 1  # the finally block removed the member
    assert tutorial.config.heartbeat.ping_interval == 15


def test_l4_tuning_example_runs_and_explains_the_refusal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = runpy.run_path(str(EXAMPLES / "l4_tuning.py"))
    assert namespace["behind_alb"].user_timeout == 45
    assert "user_timeout must cover the keepalive probing" in capsys.readouterr().out
