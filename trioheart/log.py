"""structlog events: one stable vocabulary, and a setup for programs.

Library code only calls :func:`get_logger` and emits events; it never
configures structlog, which is the application's job. Programs (the demo,
the proxy CLI) call :func:`configure_logging`.

Event names are dotted and stable (``connection.opened``,
``connection.closed``, ``socket.tuned``, ``heartbeat.missed``, ...) and the
same field names are used everywhere (``conn_id``, ``reason``, ``code``,
``rtt_s``); see :doc:`/reference/events`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "get_logger"]


def get_logger(name: str) -> Any:
    """A lazy structlog logger; its events carry ``logger_name=name``."""
    return structlog.wrap_logger(None, logger_factory_args=(name,), logger_name=name)


def configure_logging(
    *, json: bool | None = None, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Configure structlog for a program: JSON lines, or console for a terminal.

    Args:
      json: ``True`` for one JSON object per line, ``False`` for coloured
        console output; ``None`` picks console when *stream* is a terminal.
      level: The lowest level written.
      stream: Where to write; standard output by default.
    """
    out = stream if stream is not None else sys.stdout
    if json is None:
        json = not out.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
