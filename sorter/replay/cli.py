"""`sorter replay`: what a new sort plan would have done with the recorded scans.

    sorter replay --plan NEW [--audit DIR] [--from DATE] [--to DATE] [--compare] [--json OUT]
                  [--report DIR] [--workers N | --scheduler ADDRESS]

`add_parsers(subparsers)` declares it (sorter.cli calls it); `cmd_replay(args) -> int` runs it:
0 success, 1 the replay's own failure (a bad plan, an unreadable audit, no Dask), 2 usage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sorter.core.codes import CHUTE_STATES, MAX_CHUTE


def _chute_pair(kind: str, parse):
    def convert(text: str):
        chute, sep, value = text.partition("=")
        try:
            c = int(chute)
            if not sep or not 0 < c <= MAX_CHUTE:
                raise ValueError
            return c, parse(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected CHUTE={kind} with CHUTE in 1..{MAX_CHUTE}, got {text!r}") from None
    return convert


def _state(value: str) -> str:
    if value not in CHUTE_STATES:
        raise ValueError
    return value


def _positive(text: str) -> int:
    try:
        n = int(text)
        if n < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    return n


def _count(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError
    return n


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="route the recorded scans of the audit with a new plan and count",
        description="Route every scan recorded in the audit (Arrow files under "
                    "DIR/date=YYYY-MM-DD/) with a new sort plan, each with its recorded "
                    "recirculation count, and count the decisions: by reason, by destination, "
                    "by chute and hour (with the peak hour), destination changes recorded -> "
                    "new with a sample, chute-hours over capacity. Chute states: every chute "
                    "available unless --chute-state says otherwise (the audit does not record "
                    "them). See docs/replay.md.")
    p.add_argument("--plan", required=True, metavar="NEW",
                   help="the sort plan to try (TOML file, as for `sorter plan check`)")
    p.add_argument("--audit", default="audit", metavar="DIR",
                   help="the audit directory (default: ./audit, the engine's default)")
    p.add_argument("--from", dest="date_from", metavar="DATE",
                   help="first day to replay, YYYY-MM-DD (UTC, inclusive)")
    p.add_argument("--to", dest="date_to", metavar="DATE",
                   help="last day to replay, YYYY-MM-DD (UTC, inclusive)")
    p.add_argument("--compare", action="store_true",
                   help="put the recorded decisions beside the new ones")
    p.add_argument("--json", metavar="OUT",
                   help="write the result as JSON to OUT ('-': standard output)")
    p.add_argument("--report", metavar="DIR",
                   help="write PNG plots and report.md to DIR (created)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive, metavar="N",
                       help="start a local Dask cluster of N worker processes (on 127.0.0.1) "
                            "and shut it down after")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="use an existing Dask cluster, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--capacity", type=_positive, metavar="N",
                   help="events per hour a chute can take; chute-hours above it are listed")
    p.add_argument("--chute-capacity", type=_chute_pair("N", _count), action="append",
                   default=[], metavar="CHUTE=N", help="capacity of one chute (repeatable; "
                   "overrides --capacity for that chute)")
    p.add_argument("--chute-state", type=_chute_pair("STATE", _state), action="append",
                   default=[], metavar="CHUTE=STATE",
                   help=f"hold a chute in a state for the whole replay, one of "
                        f"{', '.join(CHUTE_STATES)} (repeatable; default: all available)")
    p.add_argument("--sample", type=int, default=20, metavar="N",
                   help="changed parcels kept as a sample (default 20)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from sorter.plan import PlanError, load_plan
    from sorter.replay.run import DaskMissing, replay
    from sorter.replay.source import AuditSourceError, parse_date
    from sorter.replay.summary import summarize, text

    try:
        plan = load_plan(args.plan)
    except PlanError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"sorter replay: cannot read plan {args.plan}: {e}", file=sys.stderr)
        return 1
    states = dict(args.chute_state)
    try:
        date_from = parse_date(args.date_from, "--from")
        date_to = parse_date(args.date_to, "--to")
        run = replay(plan, args.audit, date_from=date_from, date_to=date_to,
                     chute_states=states, sample_size=max(args.sample, 0),
                     workers=args.workers, scheduler=args.scheduler)
    except (AuditSourceError, DaskMissing) as e:
        print(f"sorter replay: {e}", file=sys.stderr)
        return 1
    doc = summarize(run, plan, audit=args.audit, date_from=date_from, date_to=date_to,
                    compare=args.compare, capacity=args.capacity,
                    chute_capacity=dict(args.chute_capacity), chute_states=states)
    if args.json == "-":
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        if args.json:
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(text(doc))
    if args.report:
        from sorter.replay.report import write_report
        page = write_report(doc, run.totals, Path(args.report))
        if args.json != "-":
            print(f"report: {page}")
    return 0
