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
