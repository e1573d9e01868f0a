"""The `sorter` command line: it only dispatches.

    sorter plan check [PLAN] [--json]    load and validate a plan (default: the bundled one)
    sorter plan show  [PLAN] [--json]    the same, then every destination, chute and rule
    sorter route [--plan PLAN] [FILE]    route scan lines (parcel id TAB read TAB read ...)
    sorter run [--plan PLAN] [--config FILE]   the engine: ZeroMQ in, decisions out, audit
    sorter ctl status|load-plan|chute|stop     talk to a running engine's control socket
    sorter keys init [DIR]                     CURVE keys for the control socket
    sorter scanner --preset NAME --connect HOST:PORT | --listen HOST:PORT   a scanner driver
    sorter demo [--seconds N] [--rate R]       the whole line on loopback, with a live view
    sorter replay --plan NEW [--audit DIR] ...  the audit's scans routed with a new plan, counted

Each layer declares its own commands: `sorter.plan.cli` (plan, route) and `sorter.engine.cli`
(run, ctl) below this module; the layers above the engine (`scanners`, `simulators`, `plc`)
through the `sorter.commands` entry points in pyproject.toml, each an
`add_parser(subparsers)` that sets `func` to a `cmd_xxx(args) -> int`. So nothing here imports
from a layer above it. Exit status: 0 success, 1 the command's own failure, 2 usage.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points
from typing import Sequence

from sorter.audit import cli as audit_cli
from sorter.engine import cli as engine_cli
from sorter.plan import cli as plan_cli
from sorter.replay import cli as replay_cli

ENTRY_POINT_GROUP = "sorter.commands"
# Where the entry-point commands go in --help; any other registered command follows by name.
_ORDER = ("scanner", "plc", "demo")


def _registered_commands():
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    ranked = sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return [found[name] for name in ranked]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sorter", description="Parcel sorting engine: sort plans, routing, audit.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    plan_cli.add_parsers(subparsers)
    engine_cli.add_parsers(subparsers)
    audit_cli.add_parsers(subparsers)
    replay_cli.add_parsers(subparsers)
    for ep in _registered_commands():
        ep.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:           # --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`sorter plan show | head`): stop quietly, as a filter should
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
