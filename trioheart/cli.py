"""The ``trioheart`` command.

``trioheart demo`` runs the demo chat server; ``trioheart proxy`` runs the
fault-injecting proxy.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import trio

from .config import ConnectionConfig
from .detector import DetectorConfig
from .errors import ConfigError
from .log import configure_logging

__all__ = ["main"]


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the demo chat server",
        description="Run the demo chat server: a chat page at /, the WebSocket at "
        "/ws?room=NAME&name=NAME and Prometheus metrics at /metrics.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    demo.add_argument("--port", type=int, default=8765, help="port to listen on (8765)")
    demo.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="seconds between WebSocket pings (20)",
    )
    demo.add_argument(
        "--ping-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="upper bound on the pong window, in seconds (20)",
    )
    demo.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="keep the rooms in Redis at URL (redis://host:port); several demo "
        "processes on one Redis share the rooms and clients resume on any of them",
    )
    demo.add_argument(
        "--resume-key",
        metavar="HEX",
        default=os.environ.get("TRIOHEART_RESUME_KEY"),
        help="the key (hex, at least 16 bytes) that signs resume tokens; nodes on one "
        "Redis must share it (default: $TRIOHEART_RESUME_KEY, else random)",
    )
    demo.add_argument(
        "--policy",
        metavar="FILE",
        default=None,
        help="heartbeat policies per group, region and client version from this TOML "
        "file, reloaded when it changes (see the policy file reference)",
    )
    demo.add_argument(
        "--etcd",
        metavar="URL",
        default=None,
        help="heartbeat policies from etcd at URL (http://host:2379), watched",
    )
    demo.add_argument(
        "--etcd-prefix",
        metavar="PREFIX",
        default="/trioheart/policy/",
        help="the etcd key prefix of the policies (/trioheart/policy/)",
    )
    demo.add_argument(
        "--log-format",
        choices=["json", "console", "auto"],
        default="auto",
        help="JSON lines, console, or (auto, the default) console when stdout is a "
        "terminal and JSON lines otherwise",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="trioheart", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    from .proxy import cli as proxy_cli

    proxy_cli.configure_parser(
        sub.add_parser(
            "proxy",
            help="run the fault-injecting proxy",
            description="A TCP proxy with live faults (toxics), driven from Python or its "
            "HTTP control API.",
        )
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _run_demo(parser, args)
    if args.command == "proxy":
        return proxy_cli.run(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover


def _run_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .broker import BrokerUnavailable
    from .demo.app import run_demo

    try:
        config = ConnectionConfig(
            heartbeat=DetectorConfig(
                ping_interval=args.ping_interval, ping_timeout=args.ping_timeout
            )
        )
    except ConfigError as exc:
        parser.error(str(exc))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535; got {args.port}")
    key: bytes | None = None
    if args.resume_key:
        try:
            key = bytes.fromhex(args.resume_key)
        except ValueError:
            parser.error("--resume-key must be hexadecimal")
        if len(key) < 16:
            parser.error(f"--resume-key must be at least 16 bytes (32 hex digits); got {len(key)}")
    if args.redis is not None:
        try:
            from ._trio.redis import parse_redis_url
        except ImportError:
            parser.error("--redis needs the Redis extra: pip install 'trioheart[redis]'")
        try:
            parse_redis_url(args.redis)
        except ConfigError as exc:
            parser.error(f"--redis: {exc}")
    if args.policy is not None and not os.path.isfile(args.policy):
        parser.error(f"--policy: no such file: {args.policy!r}")
    if args.etcd is not None:
        try:
            import httpx  # noqa: F401
        except ImportError:
            parser.error("--etcd needs the etcd extra: pip install 'trioheart[etcd]'")
    configure_logging(json={"json": True, "console": False, "auto": None}[args.log_format])
    try:
        trio.run(
            lambda: run_demo(
                host=args.host,
                port=args.port,
                config=config,
                redis=args.redis,
                resume_key=key,
                policy_file=args.policy,
                etcd=args.etcd,
                etcd_prefix=args.etcd_prefix,
            )
        )
    except Exception as exc:
        # Nurseries wrap what they raise in exception groups; a single
        # failure at start-up is what the user should read.
        leaf = _single_leaf(exc)
        if isinstance(leaf, OSError):
            print(f"trioheart: cannot serve on {args.host}:{args.port}: {leaf}", file=sys.stderr)
            return 1
        if isinstance(leaf, BrokerUnavailable | ConfigError):
            print(f"trioheart: {leaf}", file=sys.stderr)
            return 1
        raise
    return 0


def _single_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
