from __future__ import annotations

import pytest

from trioheart.cli import main


@pytest.mark.parametrize("command", ["demo", "proxy"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"trioheart {command}" in capsys.readouterr().out


def test_proxy_needs_an_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["proxy"])
    assert info.value.code == 2
    assert "--upstream" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--redis", "http://x"], "--redis: redis url must be redis://"),
        (["--resume-key", "abcd"], "--resume-key must be at least 16 bytes"),
        (["--resume-key", "zz" * 16], "--resume-key must be hexadecimal"),
        (["--ping-interval", "nan"], "ping_interval must be a positive, finite number"),
        (["--port", "70000"], "--port must be from 0 to 65535"),
    ],
)
def test_bad_demo_options_are_refused_by_name(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", *args])
    assert info.value.code == 2
    assert error in capsys.readouterr().err
