"""``trioheart proxy`` and ``python -m trioheart.proxy``: run the proxy from a shell.

The lead's ``trioheart/cli.py`` wires :func:`configure_parser` and
:func:`run` in as the ``proxy`` subcommand; ``python -m trioheart.proxy``
uses them directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TextIO

import trio

from ..errors import TrioheartError
from ._addr import format_address, parse_address
from ._proxy import open_proxy
from .toxics import Toxic, toxic_from_json

__all__ = ["configure_parser", "main", "run"]


def _address(field: str) -> Callable[[str], tuple[str, int]]:
    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_address(text, field=field)
        except TrioheartError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "HOST:PORT"
    return parse


def _toxic(text: str) -> Toxic:
    try:
        return toxic_from_json(json.loads(text))
    except (ValueError, TrioheartError) as exc:
        raise argparse.ArgumentTypeError(f"bad --toxic {text!r}: {exc}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the proxy's options to *parser*."""
    parser.description = (
        "A TCP proxy that injects faults (toxics), including WebSocket-aware ones. "
        "Toxics are added and removed live through the control API."
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_address("--listen"),
        default=("127.0.0.1", 0),
        help="where clients connect (default 127.0.0.1:0, a free port, printed at start)",
    )
    parser.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        type=_address("--upstream"),
        required=True,
        help="the server to forward to",
    )
    parser.add_argument(
        "--control",
        metavar="HOST:PORT",
        type=_address("--control"),
        default=None,
        help="serve the HTTP control API here (loopback only; port 0 picks one)",
    )
    parser.add_argument(
        "--toxic",
        metavar="JSON",
        type=_toxic,
        action="append",
        default=[],
        help='a toxic to start with, as the control API takes it, e.g. \'{"type": "latency", '
        '"attributes": {"latency": 0.1}}\' (repeatable)',
    )
    parser.add_argument(
        "--buffer-limit",
        metavar="BYTES",
        type=int,
        default=1 << 20,
        help="most bytes held per direction of a connection (default 1048576)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for random draws")


async def _serve(args: argparse.Namespace, out: TextIO) -> None:
    async with open_proxy(
        upstream=args.upstream,
        listen=args.listen,
        control=args.control,
        buffer_limit=args.buffer_limit,
        seed=args.seed,
    ) as proxy:
        for toxic in args.toxic:
            proxy.add_toxic(toxic)
        print(f"listen {format_address(proxy.listen_address)}", file=out)
        print(f"upstream {format_address(proxy.upstream_address)}", file=out)
        if proxy.control_address is not None:
            print(f"control http://{format_address(proxy.control_address)}/", file=out)
        out.flush()
        await trio.sleep_forever()


def run(args: argparse.Namespace) -> int:
    """Run the proxy until interrupted. Returns the exit status.

    Prints ``listen HOST:PORT``, ``upstream HOST:PORT`` and (with
    ``--control``) ``control URL`` lines once it listens, so a script can
    start it on port 0 and read the ports back.
    """
    try:
        trio.run(_serve, args, sys.stdout)
    except KeyboardInterrupt:
        return 0
    except TrioheartError as exc:
        print(f"trioheart proxy: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m trioheart.proxy``."""
    parser = argparse.ArgumentParser(prog="python -m trioheart.proxy")
    configure_parser(parser)
    return run(parser.parse_args(argv))
