"""`sorter scanner`: run one scanner driver (TCP telegrams in, SCAN messages to the engine).

    sorter scanner --preset sick_clv --connect 10.0.0.7:2111 --scanner-id 3
    sorter scanner --preset ./my_scanner.toml --listen 0.0.0.0:2112 --engine tcp://127.0.0.1:5555
    sorter scanner --list-presets

`add_parser(subparsers)` adds the command to the `sorter` parser; `cmd_scanner(args)` runs it
(exit status 0 after a clean stop on SIGTERM/SIGINT, 1 when the preset or the listening address
cannot be used, 2 for usage errors). `python -m scanners.cli ...` runs the same command alone.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Sequence

from .framing import PresetError, load_format, preset_names
from .log import log_event, setup_logging

log = logging.getLogger("scanners.cli")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "scanner", help="run a scanner driver: TCP telegrams in, scan events to the engine",
        description="Read a barcode scanner's or camera tunnel's TCP telegrams (framing and "
                    "fields from a preset file, docs/scanners.md) and push them to the engine's "
                    "scans socket as SCAN messages. Runs until SIGTERM or SIGINT; reconnects by "
                    "itself.")
    add_arguments(p)
    p.set_defaults(func=cmd_scanner)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", metavar="NAME|PATH",
                   help=f"bundled preset ({', '.join(preset_names())}) or a preset .toml file")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--connect", metavar="HOST:PORT",
                       help="connect to the scanner (it is the TCP server)")
    where.add_argument("--listen", metavar="HOST:PORT",
                       help="listen for the scanner (it is the TCP client)")
    p.add_argument("--engine", default="tcp://127.0.0.1:5555", metavar="ENDPOINT",
                   help="the engine's scans endpoint (default tcp://127.0.0.1:5555)")
    p.add_argument("--scanner-id", type=int, default=1, metavar="N",
                   help="scanner id carried by every event (0..65535, default 1)")
    p.add_argument("--silence-timeout", type=float, default=30.0, metavar="S",
                   help="no byte for S seconds: count, log, reconnect (0 disables; default 30)")
    p.add_argument("--first-parcel-id", type=int, default=None, metavar="N",
                   help="first parcel id the driver gives out itself (formats without an index: "
                        "default 1)")
    p.add_argument("--backoff-max", type=float, default=10.0, metavar="S",
                   help="longest wait between reconnection attempts (default 10)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--list-presets", action="store_true", help="list the bundled presets and exit")


def cmd_scanner(args: argparse.Namespace) -> int:
    from .driver import ScannerDriver, parse_hostport

    if args.list_presets:
        for name in preset_names():
            fmt = load_format(name)
            print(f"{name:<22} {fmt.describe()}")
            print(f"{'':<22} {fmt.description}")
        return 0
    if not args.preset or not (args.connect or args.listen):
        print("sorter scanner: --preset and one of --connect HOST:PORT or --listen HOST:PORT "
              "are required", file=sys.stderr)
        return 2
    if not 0 <= args.scanner_id <= 65535:
        print("sorter scanner: --scanner-id must be within 0..65535", file=sys.stderr)
        return 2
    try:
        parse_hostport(args.connect or args.listen)
    except ValueError as e:
        print(f"sorter scanner: {e}", file=sys.stderr)
        return 2
    try:
        fmt = load_format(args.preset)
    except PresetError as e:
        print(e, file=sys.stderr)
        return 1
    setup_logging(args.log_level)
    driver = ScannerDriver(fmt, args.scanner_id, args.engine, connect=args.connect,
                           listen=args.listen, silence_timeout_s=args.silence_timeout,
                           first_parcel_id=args.first_parcel_id, backoff_max_s=args.backoff_max)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        driver.start()
    except OSError as e:
        log_event(log, logging.ERROR, "cannot listen", address=args.listen, error=str(e))
        driver.stop()
        return 1
    if driver.address:
        log_event(log, logging.INFO, "ready", listen=f"{driver.address[0]}:{driver.address[1]}",
                  scanner_id=args.scanner_id)
    else:
        log_event(log, logging.INFO, "ready", connect=args.connect, scanner_id=args.scanner_id)
    while not stop.wait(0.5):
        if not driver.running:
            break
    driver.stop()
    log_event(log, logging.INFO, "shutdown", scanner_id=args.scanner_id, **driver.snapshot())
    return 0 if stop.is_set() else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m scanners.cli ...`: the `sorter scanner` command on its own."""
    parser = argparse.ArgumentParser(prog="sorter scanner",
                                     description="Run a scanner driver (see docs/scanners.md).")
    add_arguments(parser)
    parser.set_defaults(func=cmd_scanner)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return cmd_scanner(args)


if __name__ == "__main__":
    raise SystemExit(main())
