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
from trioheart.policy import ConnectionAttributes, load_policy_toml, policy_set_from_kv

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


def test_gray_release_example_does_what_the_how_to_says(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (EXAMPLES / "gray-release.toml").read_text()
    policy_set = load_policy_toml(text)
    # Step 3's script: about 1 % of the desktop users get the gray rule.
    check = load("gray_release_check")
    cohort = check.check(str(EXAMPLES / "gray-release.toml"))
    assert set(cohort) == {"desktop", "desktop-fast-ping"}
    assert 60 <= cohort["desktop-fast-ping"] <= 140
    # The gray rule keeps every key of "desktop" but the interval ones (the
    # app-level heartbeat, off here, follows ping_interval unless set).
    desktop = policy_set.rule("desktop").policy.to_dict()
    gray = policy_set.rule("desktop-fast-ping").policy.to_dict()
    assert {k for k in desktop if desktop[k] != gray[k]} == {
        "ping_interval",
        "min_interval",
        "max_interval",
        "app_heartbeat_interval",
    }
    # Step 6: raising the rollout only adds clients to the cohort.
    wider = load_policy_toml(text.replace("rollout_percent = 1", "rollout_percent = 5"))
    users = [ConnectionAttributes(key=f"user-{i}", group="desktop") for i in range(10_000)]
    before = {u.key for u in users if policy_set.resolve(u).rule == "desktop-fast-ping"}
    after = {u.key for u in users if wider.resolve(u).rule == "desktop-fast-ping"}
    assert before < after
    # Step 4's etcd value is the same rule.
    prefix = "/trioheart/policy/"
    from_etcd = policy_set_from_kv(
        {
            prefix + "default": b"ping_interval = 20.0\nidle_timeout = 60.0\n",
            prefix + "rules/desktop-fast-ping": (
                EXAMPLES / "gray-release-etcd-rule.toml"
            ).read_bytes(),
        },
        prefix=prefix,
        revision=1,
    )
    assert from_etcd.rule("desktop-fast-ping").policy == policy_set.rule("desktop-fast-ping").policy
    # A file with a problem makes the script name it and exit with 1.
    bad = tmp_path / "policy.toml"
    bad.write_text(text.replace("max_interval = 10.0", "max_interval = 30.0"))
    with pytest.raises(SystemExit) as exited:
        check.check(str(bad))
    assert exited.value.code == 1
    assert "rule 'desktop-fast-ping': max_interval must be at most half of idle_timeout" in (
        capsys.readouterr().out
    )
