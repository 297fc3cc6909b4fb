"""The proxy's decision-making modules stay sans-IO, like the top of the package."""

from __future__ import annotations

import ast
import pathlib

import pytest

PROXY = pathlib.Path(__file__).resolve().parents[2] / "trioheart" / "proxy"
PURE = ["toxics.py", "frames.py", "nat.py", "_engine.py", "_registry.py", "_api.py", "_addr.py"]


@pytest.mark.parametrize("name", PURE)
def test_module_does_no_io(name: str) -> None:
    tree = ast.parse((PROXY / name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            assert f"{node.module}.py" in PURE, f"{name} imports the shell module {node.module}"
    assert not imported & {"trio", "trio_websocket", "socket", "selectors", "asyncio"}, imported
