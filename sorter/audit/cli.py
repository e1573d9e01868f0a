"""`sorter audit find|tail|verify|export`: the auditor's tool over an audit directory (the
compacted Arrow files and the journal not compacted yet). docs/audit.md "The audit command"."""
from __future__ import annotations

import argparse
import json
import sys


def _dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="audit", metavar="DIR",
                   help="audit directory (default: ./audit)")


def cmd_find(args: argparse.Namespace) -> int:
    from sorter.audit.query import find

    found = find(args.dir, args.key)
    for row in found:
        print(json.dumps(row, ensure_ascii=False, default=str))
    if not found:
        print(f"{args.key}: no decision in {args.dir}", file=sys.stderr)
        return 1
    return 0


_COLUMNS = ("ts", "decision_seq", "parcel_id", "scanner_id", "chute", "reason", "destination",
            "reads")


def _table_line(row: dict) -> str:
    reads = ",".join(row["reads"] or []) if row.get("reads") is not None else "-"
    return (f"{row['ts'][:26]:<26}  {row['decision_seq']:>10}  {row['parcel_id'] or '-':>20}  "
            f"{row['scanner_id'] if row['scanner_id'] is not None else '-':>5}  "
            f"{row['chute'] if row['chute'] is not None else '-':>5}  {row['reason']:<19}  "
            f"{row['destination'] or '-':<20}  {reads}")


def cmd_tail(args: argparse.Namespace) -> int:
    from sorter.audit.query import follow, latest, rows

    out = (lambda r: json.dumps(r, ensure_ascii=False, default=str)) if args.json else _table_line
    if not args.json:
        print(f"{'ts':<26}  {'dec_seq':>10}  {'parcel_id':>20}  {'scan':>5}  {'chute':>5}  "
              f"{'reason':<19}  {'destination':<20}  reads")
    last = 0
    for row in rows(latest(args.dir, args.n)):
        last = max(last, row["decision_seq"])
        print(out(row), flush=True)
    if args.follow:
        try:
            for row in follow(args.dir, last, args.interval):
                print(out(row), flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from sorter.audit.files import audit_files
    from sorter.audit.query import verify

    problems = verify(args.dir)
    for p in problems:
        print(p)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.dir}: ok ({len(audit_files(args.dir))} files)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from sorter.audit.files import read_audit

    table = read_audit(args.dir)
    pq.write_table(table, args.parquet, compression=args.compression)
    print(f"{args.parquet}: {table.num_rows} rows")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """`sorter audit find|tail|verify|export`."""
    audit = subparsers.add_parser(
        "audit", help="find, follow, verify and export the decision audit",
        description="Read an audit directory: the compacted Arrow files and the journal not "
                    "compacted yet (docs/audit.md).")
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = sub.add_parser("find", help="every decision for a parcel id or barcode, oldest first",
                       description="Print every decision (JSON lines, oldest first) whose "
                                   "parcel_id or one of whose reads is KEY, across the files "
                                   "and the uncompacted journal. Exit 1 when there is none.")
    p.add_argument("key", metavar="PARCEL_ID|BARCODE")
    _dir(p)
    p.set_defaults(func=cmd_find)
    p = sub.add_parser("tail", help="the latest decisions, and with -f new ones as they come",
                       description="Print the latest decisions by decision_seq as a table "
                                   "(or JSON lines with --json); -f keeps printing new ones.")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new decisions")
    p.add_argument("-n", type=int, default=10, metavar="N", help="how many to start with (10)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--interval", type=float, default=0.5, metavar="S",
                   help="with -f: how often to look (0.5 s)")
    _dir(p)
    p.set_defaults(func=cmd_tail)
    p = sub.add_parser("verify", help="check CRCs, decision_seq gaps and duplicates, files",
                       description="Check journal CRC32Cs, that every file opens as Arrow with "
                                   "the audit schema, and decision_seq for gaps and duplicates "
                                   "over files and journal. Prints each problem; exit 1 if any.")
    _dir(p)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("export", help="the whole audit as one Parquet file",
                       description="Write every row (files and journal) to one Parquet file "
                                   "with pyarrow.parquet, for long-term archives.")
    p.add_argument("--parquet", required=True, metavar="OUT", help="Parquet file to write")
    p.add_argument("--compression", default="zstd", help="Parquet codec (zstd)")
    _dir(p)
    p.set_defaults(func=cmd_export)
