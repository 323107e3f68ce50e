"""The `semiflow` command: one entry point, one subcommand per job.

Each subcommand lives in its own module (semiflow/cli_*.py) exposing
`register(subparsers)`; the parser calls `args.func(args)`. Errors the user can act on are
one line on stderr and exit status 2, never a traceback (SEMIFLOW_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from semiflow import __version__

COMMAND_MODULES = [
    "semiflow.cli_extract",
    "semiflow.cli_serve",
    "semiflow.cli_train",
    "semiflow.cli_score",
    "semiflow.cli_logs",
    "semiflow.cli_evaluate",
    "semiflow.cli_suricata",
    "semiflow.cli_report",
    "semiflow.cli_explain",
    "semiflow.cli_feedback",
    "semiflow.cli_models",
]


class UsageError(Exception):
    """An error whose message is the whole story for the user."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semiflow",
        description="Deep anomaly detection on the first packets of every connection.")
    parser.add_argument("--version", action="version", version=f"semiflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("semiflow: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, OSError, RuntimeError) as e:
        if os.environ.get("SEMIFLOW_DEBUG"):
            raise
        print(f"semiflow {args.command}: error: {e}", file=sys.stderr)
        return 2
