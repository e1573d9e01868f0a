"""`sorter demo`: the whole line on loopback (engine, simulated tunnel, scanner driver, PLC loop).

`add_parser(subparsers)` is registered as a `sorter.commands` entry point (pyproject.toml), so
the `sorter` command finds it without importing from the layer above it.
"""
from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from simulators.demo import main_demo    # rich and the simulators only when the demo runs

    return main_demo(args)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="run the whole line on loopback with a live view",
        description="Start the engine, a simulated scanner tunnel speaking TCP telegrams to a "
                    "scanner driver, and a simulated PLC/sorter loop, all on 127.0.0.1; show "
                    "parcels/s, read rate, reasons, chute fill and latency live; then print a "
                    "summary and where the audit files are. Ctrl-C stops everything cleanly.")
    p.add_argument("--seconds", type=float, default=20.0, metavar="N", help="seconds, above 0 (20)")
    p.add_argument("--rate", type=float, default=50.0, metavar="R", help="parcels/s, above 0 (50)")
    p.add_argument("--preset", default="sick_clv", help="scanner telegram preset (sick_clv)")
    p.add_argument("--plan", default=None, metavar="PLAN", help="plan (the bundled one)")
    p.add_argument("--audit-dir", default="audit", metavar="DIR", help="audit directory (./audit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-live", action="store_true", help="print a line a second instead")
    p.add_argument("--json", default=None, metavar="PATH", help="write the summary as JSON")
    p.add_argument("--dashboard", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="serve the chute wall (sorter dashboard) here and print its URL "
                        "(127.0.0.1:8080; a free port when that one is taken)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the chute wall")
    p.add_argument("--plc", choices=["tcp", "opcua", "modbus"], default=None,
                   help="run the PLC side through the PLC gateway (sorter plc) and a simulated "
                        "PLC speaking this protocol (default: the ZeroMQ PLC simulator)")
    p.set_defaults(func=cmd_demo)
    return p
