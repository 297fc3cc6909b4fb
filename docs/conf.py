"""Sphinx configuration for trioheart's docs (built with -W in the test command)."""

from __future__ import annotations

project = "trioheart"
author = "The trioheart developers"
copyright = "2026, The trioheart developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "trioheart"
html_static_path = ["_static"]
