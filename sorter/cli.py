"""The `sorter` command line.

    sorter plan check [PLAN] [--json]    load and validate a plan (default: the bundled one)
    sorter plan show  [PLAN] [--json]    the same, then every destination, chute and rule
    sorter route [--plan PLAN] [FILE]    route scan lines (parcel id TAB read TAB read ...)
    sorter run [--plan PLAN] [--config FILE]   the engine: ZeroMQ in, decisions out, audit
    sorter ctl status|load-plan|chute|stop     talk to a running engine's control socket
    sorter scanner --preset NAME --connect HOST:PORT | --listen HOST:PORT   a scanner driver
    sorter demo [--seconds N] [--rate R]       the whole line on loopback, with a live view

Layout for people adding commands: every command is a `cmd_xxx(args) -> int` function (the
exit status) and a `_add_xxx_parser(subparsers)` function that declares its arguments and sets
`func=cmd_xxx`. `build_parser()` calls every function listed in `COMMANDS`; `main()` parses and
dispatches. Exit status: 0 success, 1 the command's own failure (an invalid plan), 2 usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

from .plan import DEFAULT_PLAN, Plan, PlanError, load_plan, summary


# ---------------------------------------------------------------------------------------------
# sorter plan ...


def _load_or_report(args: argparse.Namespace) -> Plan | None:
    """Load args.plan; on failure print every problem (stderr, or JSON on stdout)."""
    try:
        return load_plan(args.plan)
    except PlanError as e:
        if args.json:
            _print_json({"ok": False, "problems": [p.to_dict() for p in e.problems]})
        else:
            for p in e.problems:
                print(p, file=sys.stderr)
        return None


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _summary_lines(s: dict) -> list[str]:
    c = s["counts"]
    special = ", ".join(f"{r} {ch}" for r, ch in s["special"].items())
    return [
        f"plan OK: {s['name']} {s['version']} (home country {s['home_country']})",
        f"  source:              {s['source']}",
        f"  chutes:              {c['chutes']}",
        f"  destinations:        {c['destinations']}",
        f"  rules:               postcode {c['postcode_rules']}, country {c['country_rules']}, "
        f"service {c['service_rules']}",
        f"  manifest rows:       {c['manifest_rows']}",
        f"  recirculation limit: {s['recirculation_limit']}",
        f"  special chutes:      {special}",
    ]


def cmd_plan_check(args: argparse.Namespace) -> int:
    plan = _load_or_report(args)
    if plan is None:
        return 1
    s = summary(plan)
    if args.json:
        _print_json({"ok": True, "summary": s})
    else:
        print("\n".join(_summary_lines(s)))
    return 0


def _plan_details(plan: Plan) -> dict:
    rules: dict[str, list[str]] = {d.name: [] for d in plan.destinations}
    for kind, table in (("service", plan.service_rules), ("country", plan.country_rules),
                        ("postcode", plan.postcode_rules)):
        for key, dest in table.items():
            rules.setdefault(dest, []).append(f"{kind} {key}")
    return {
        "destinations": [{"id": i, "name": d.name, "chutes": list(d.chutes), "policy": d.policy,
                          "rules": rules[d.name]} for i, d in enumerate(plan.destinations)],
        "postcode_rules": plan.postcode_rules,
        "country_rules": plan.country_rules,
        "service_rules": plan.service_rules,
    }


def cmd_plan_show(args: argparse.Namespace) -> int:
    plan = _load_or_report(args)
    if plan is None:
        return 1
    s = summary(plan)
    details = _plan_details(plan)
    if args.json:
        _print_json({"ok": True, "summary": s, **details})
        return 0
    lines = _summary_lines(s)
    used = {c for d in plan.destinations for c in d.chutes} | set(plan.special.values())
    spare = [c for c in plan.chutes if c not in used]
    lines.append(f"  spare chutes:        {', '.join(map(str, spare)) or 'none'}")
    lines.append("")
    lines.append(f"{'id':>3}  {'destination':<20} {'policy':<11} {'chutes':<14} rules")
    for d in details["destinations"]:
        lines.append(f"{d['id']:>3}  {d['name']:<20} {d['policy']:<11} "
                     f"{','.join(map(str, d['chutes'])):<14} {', '.join(d['rules']) or '-'}")
    print("\n".join(lines))
    return 0


def _add_plan_parser(subparsers: argparse._SubParsersAction) -> None:
    plan = subparsers.add_parser("plan", help="check and inspect sort plans",
                                 description="Check and inspect sort plans (docs/plans.md).")
    plan_sub = plan.add_subparsers(dest="plan_command", metavar="ACTION", required=True)
    for name, func, help_ in (
            ("check", cmd_plan_check, "validate a plan and print a summary, or every problem"),
            ("show", cmd_plan_show, "validate a plan and print its destinations and rules")):
        p = plan_sub.add_parser(name, help=help_, description=help_.capitalize() + ".")
        p.add_argument("plan", nargs="?", default=None, metavar="PLAN",
                       help=f"plan TOML file (default: the bundled {DEFAULT_PLAN.name})")
        p.add_argument("--json", action="store_true",
                       help="print the result as JSON on stdout")
        p.set_defaults(func=func)


# ---------------------------------------------------------------------------------------------
# sorter route ...


def cmd_route(args: argparse.Namespace) -> int:
    from .route_lines import route_lines      # numpy/pyarrow only when routing

    plan = _load_or_report(argparse.Namespace(plan=args.plan, json=False))
    if plan is None:
        return 1
    states = {c: "full" for c in args.full} | {c: "disabled" for c in args.disabled}
    if args.file in (None, "-"):
        return route_lines(plan, sys.stdin.buffer, "<stdin>", sys.stdout, sys.stderr,
                           states, batch_size=1 if sys.stdin.isatty() else args.batch)
    try:
        with open(args.file, "rb") as f:
            return route_lines(plan, f, args.file, sys.stdout, sys.stderr, states,
                               batch_size=args.batch)
    except OSError as e:
        print(f"{args.file}: cannot read: {e.strerror}", file=sys.stderr)
        return 1


def _chute_list(text: str) -> list[int]:
    try:
        chutes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected chute numbers like 5,6,7, got {text!r}")
    if any(not 0 < c <= 65535 for c in chutes):
        raise argparse.ArgumentTypeError("chute numbers are 1..65535")
    return chutes


def _add_route_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "route", help="route scan lines and print one JSON decision per line",
        description="Route scan lines through the compiled core and print one JSON object "
                    "per line: parcel_id, chute, reason, destination, plan_version and the "
                    "decoded reads. Input lines: parcel id, then zero or more reads, "
                    "tab-separated (no reads = no read). In a read, <GS> or \\x1d stands for "
                    "the GS byte (FNC1). Bad lines are reported on stderr with their line "
                    "number; the rest still route; the exit status is then 1.")
    p.add_argument("file", nargs="?", default=None, metavar="FILE",
                   help="scan lines (default or '-': standard input)")
    p.add_argument("--plan", default=None, metavar="PLAN",
                   help=f"plan TOML file (default: the bundled {DEFAULT_PLAN.name})")
    p.add_argument("--full", type=_chute_list, default=[], metavar="CHUTES",
                   help="comma-separated chutes to treat as full")
    p.add_argument("--disabled", type=_chute_list, default=[], metavar="CHUTES",
                   help="comma-separated chutes to treat as disabled")
    p.add_argument("--batch", type=int, default=4096, metavar="N",
                   help="lines routed per core call (default 4096; 1 on a terminal)")
    p.set_defaults(func=cmd_route)


# ---------------------------------------------------------------------------------------------
# sorter run / sorter ctl


def cmd_run(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .engine import run

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    config = config.with_overrides(
        plan=args.plan, scans=args.scans, decisions=args.decisions, feedback=args.feedback,
        control=args.control, metrics=args.metrics, audit_dir=args.audit_dir,
        deadline_ms=args.deadline_ms, batch_max=args.batch_max,
        fsync_interval_s=args.fsync_interval, log_level=args.log_level,
        native_io=args.native_io)
    return run(config)


def _add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run the engine (ZeroMQ in, decisions out, Arrow audit)",
        description="Run the sorting engine until SIGTERM, SIGINT or a control `stop`. With no "
                    "arguments: the bundled plan, loopback endpoints, audit under ./audit. "
                    "Settings: defaults < --config FILE < flags (docs/engine.md).")
    p.add_argument("--plan", default=None, metavar="PLAN", help="plan TOML file")
    p.add_argument("--config", default=None, metavar="FILE", help="engine config TOML file")
    for name, help_ in (("scans", "PULL endpoint for scan events"),
                        ("decisions", "PUSH endpoint for decisions to the PLC side"),
                        ("feedback", "PULL endpoint for chute status and sort confirmations"),
                        ("control", "REP endpoint for status, plan load, chutes, stop")):
        p.add_argument(f"--{name}", default=None, metavar="ENDPOINT", help=help_)
    p.add_argument("--metrics", default=None, metavar="HOST:PORT",
                   help="Prometheus endpoint ('' disables)")
    p.add_argument("--audit-dir", default=None, metavar="DIR", help="audit directory")
    p.add_argument("--deadline-ms", type=float, default=None, metavar="MS",
                   help="scans older than this are decided `late` (0 disables)")
    p.add_argument("--batch-max", type=int, default=None, metavar="N",
                   help="events per core call, at most")
    p.add_argument("--fsync-interval", type=float, default=None, metavar="S",
                   help="fsync the audit at most every S seconds (0: every batch)")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--native-io", action=argparse.BooleanOptionalAction, default=None,
                   help="drain scans and send decisions through libzmq's C API when pyzmq's "
                        "libzmq is found (default), or through pyzmq")
    p.set_defaults(func=cmd_run)


def cmd_ctl(args: argparse.Namespace) -> int:
    from .control_client import ControlError, request

    req: dict = {"cmd": args.action.replace("-", "_")}
    if args.action == "load-plan":
        if not args.args:
            print("usage: sorter ctl load-plan PLAN", file=sys.stderr)
            return 2
        req["path"] = os.path.abspath(args.args[0])
    elif args.action == "chute":
        if len(args.args) != 2:
            print("usage: sorter ctl chute N available|disabled|full", file=sys.stderr)
            return 2
        req = {"cmd": "set_chute", "chute": args.args[0], "state": args.args[1]}
    try:
        reply = request(args.endpoint, req, timeout_s=args.timeout)
    except ControlError as e:
        print(f"{args.endpoint}: {e}", file=sys.stderr)
        return 1
    _print_json(reply)
    return 0 if reply.get("ok") else 1


def _add_ctl_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ctl", help="talk to a running engine",
                              description="Send one request to a running engine's control "
                                          "socket and print the JSON reply.")
    p.add_argument("action", choices=["status", "load-plan", "chute", "stop"])
    p.add_argument("args", nargs="*", help="load-plan PLAN | chute N STATE")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5558", help="control endpoint")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S")
    p.set_defaults(func=cmd_ctl)


# ---------------------------------------------------------------------------------------------
# Parser and entry point

def _add_scanner_parser(subparsers: argparse._SubParsersAction) -> None:
    from scanners.cli import add_parser      # the driver lives in the scanner layer

    add_parser(subparsers)


def cmd_demo(args: argparse.Namespace) -> int:
    from simulators.demo import main_demo    # the demo wires every layer together

    return main_demo(args)


def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole line on loopback with a live view",
        description="Start the engine, a simulated scanner tunnel speaking TCP telegrams to a "
                    "scanner driver, and a simulated PLC/sorter loop, all on 127.0.0.1; show "
                    "parcels/s, read rate, reasons, chute fill and latency live; then print a "
                    "summary and where the audit files are. Ctrl-C stops everything cleanly.")
    p.add_argument("--seconds", type=float, default=20.0, metavar="N", help="how long (20)")
    p.add_argument("--rate", type=float, default=50.0, metavar="R", help="parcels/s (50)")
    p.add_argument("--preset", default="sick_clv", help="scanner telegram preset (sick_clv)")
    p.add_argument("--plan", default=None, metavar="PLAN", help="plan (the bundled one)")
    p.add_argument("--audit-dir", default="audit", metavar="DIR", help="audit directory (./audit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-live", action="store_true", help="print a line a second instead")
    p.add_argument("--json", default=None, metavar="PATH", help="write the summary as JSON")
    p.set_defaults(func=cmd_demo)


# One function per top-level command, each adding its subparser; order = order in --help.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_plan_parser,
    _add_route_parser,
    _add_run_parser,
    _add_ctl_parser,
    _add_scanner_parser,
    _add_demo_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sorter", description="Parcel sorting engine: sort plans, routing, audit.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
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
