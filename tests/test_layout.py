"""Pure logic stays pure: only the Trio shell may import trio."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "trioheart"
SHELL = {"_trio", "proxy", "demo", "testing"}
SHELL_MODULES = {"cli.py"}


def _pure_modules() -> list[pathlib.Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in SHELL and path.name not in SHELL_MODULES
    ]


@pytest.mark.parametrize("path", _pure_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_module_does_not_import_trio(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "trio_websocket", "socket", "selectors", "asyncio"}, imported
