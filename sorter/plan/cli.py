"""`sorter plan check|show` and `sorter route`: commands over a plan file, no engine needed.

Every command is a `cmd_xxx(args) -> int` (the exit status: 0 success, 1 the command's own
failure, such as an invalid plan) and `add_parsers(subparsers)` declares them.
"""
from __future__ import annotations

import argparse
import json
import sys

from sorter.plan import DEFAULT_PLAN, Plan, PlanError, load_plan, summary


# ---------------------------------------------------------------------------------------------
# sorter plan ...


def _load_or_report(args: argparse.Namespace) -> Plan | None:
    """Load args.plan; on failure print every problem (stderr, or JSON on stdout)."""
    try:
        return load_plan(args.plan)
    except PlanError as e:
        if args.json:
            print_json({"ok": False, "problems": [p.to_dict() for p in e.problems]})
        else:
            for p in e.problems:
                print(p, file=sys.stderr)
        return None


def print_json(obj: object) -> None:
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
        print_json({"ok": True, "summary": s})
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
        print_json({"ok": True, "summary": s, **details})
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
    from sorter.core.route_lines import route_lines      # numpy/pyarrow only when routing

    plan = _load_or_report(argparse.Namespace(plan=args.plan, json=False))
    if plan is None:
        return 1
    states = {c: "full" for c in args.full} | {c: "disabled" for c in args.disabled}
    unknown = sorted(set(states) - set(plan.chutes))
    if unknown:
        print(f"sorter route: chute {', '.join(map(str, unknown))} is not a chute of plan "
              f"{plan.name} ({min(plan.chutes)}..{max(plan.chutes)})", file=sys.stderr)
        return 2
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




def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """`sorter plan ...` and `sorter route ...`."""
    _add_plan_parser(subparsers)
    _add_route_parser(subparsers)
