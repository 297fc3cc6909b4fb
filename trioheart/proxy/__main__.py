"""``python -m trioheart.proxy --upstream HOST:PORT [--listen HOST:PORT] [--control HOST:PORT]``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
