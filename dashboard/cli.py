"""`sorter dashboard`: the chute wall and the line's figures in a browser (docs/dashboard.md).

`add_parser(subparsers)` is registered as a `sorter.commands` entry point (pyproject.toml).
"""
from __future__ import annotations

import argparse
import sys


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.app import DashboardServer, Settings    # starlette, uvicorn: only when run

    settings = Settings(engine=args.engine, audit_dir=args.audit_dir,
                        allow_control=args.allow_control, interval_s=args.interval)
    try:
        server = DashboardServer(settings, args.listen)
    except (OSError, ValueError) as e:
        print(f"sorter dashboard: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return 1
    mode = "chute control allowed" if args.allow_control else "read-only"
    print(f"dashboard: {server.url} (engine {args.engine}, audit {args.audit_dir}, {mode})",
          flush=True)
    server.run()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "dashboard", help="the chute wall and line figures, live in a browser",
        description="Serve a web page that shows every chute of the running plan (destination, "
                    "state, parcels since emptied, fill where reported), the line's scans/s, "
                    "decisions/s, read rate, reason mix, latency, plan version and alarms, "
                    "updated live twice a second, and a search over the audit by parcel id "
                    "or barcode. Read-only unless --allow-control. Prints its URL.")
    p.add_argument("--engine", default="tcp://127.0.0.1:5558", metavar="CONTROL_ENDPOINT",
                   help="the engine's control endpoint (tcp://127.0.0.1:5558)")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to serve on (127.0.0.1:8080; port 0: a free port)")
    p.add_argument("--audit-dir", default="audit", metavar="DIR",
                   help="the engine's audit directory, for the parcel search (./audit)")
    p.add_argument("--allow-control", action="store_true",
                   help="let the page enable and disable chutes (off: read-only)")
    p.add_argument("--interval", type=float, default=0.5, metavar="S",
                   help="seconds between engine polls and page updates (0.5)")
    p.set_defaults(func=cmd_dashboard)
    return p
