"""`sorter scanner`: run one scanner driver (telegrams over TCP or a serial line in, SCAN
messages to the engine), or sniff a scanner's telegrams without an engine.

    sorter scanner --preset sick_clv --connect 10.0.0.7:2111 --scanner-id 3
    sorter scanner --preset ./my_scanner.toml --listen 0.0.0.0:2112 --engine tcp://127.0.0.1:5555
    sorter scanner --preset keyence --serial /dev/ttyUSB0 --baud 9600
    sorter scanner --sniff --connect 10.0.0.7:2111 [--preset sick_clv]
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
        "scanner", help="run a scanner driver: telegrams (TCP or serial) in, scan events to the "
                        "engine; or --sniff a scanner's telegrams",
        description="Read a barcode scanner's or camera tunnel's telegrams over TCP or a serial "
                    "line (framing and fields from a preset file, docs/scanners.md) and push them "
                    "to the engine's scans socket as SCAN messages. Runs until SIGTERM or SIGINT; "
                    "reconnects by itself. With --sniff: no engine; print every telegram as raw "
                    "bytes, as the preset parses it and as the SCAN it would make, and (without "
                    "--preset) propose the closest bundled preset.")
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
    where.add_argument("--serial", metavar="DEVICE",
                       help="read the scanner on a serial port (RS-232/RS-485), e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=int, default=9600, metavar="N",
                   help="serial: baud rate (default 9600)")
    p.add_argument("--bytesize", type=int, default=8, choices=[5, 6, 7, 8],
                   help="serial: data bits (default 8)")
    p.add_argument("--parity", default="N", choices=["N", "E", "O", "M", "S"],
                   help="serial: parity (default N)")
    p.add_argument("--stopbits", type=float, default=1, choices=[1, 1.5, 2],
                   help="serial: stop bits (default 1)")
    p.add_argument("--sniff", action="store_true",
                   help="no engine: print each telegram (raw bytes escaped, how the preset parses "
                        "it, the SCAN it would make); without --preset, propose the closest "
                        "bundled preset")
    p.add_argument("--telegrams", type=int, default=None, metavar="N",
                   help="--sniff: stop after N parcels' telegrams (default: until Ctrl-C)")
    p.add_argument("--engine", default="tcp://127.0.0.1:5555", metavar="ENDPOINT",
                   help="the engine's scans endpoint (default tcp://127.0.0.1:5555)")
    p.add_argument("--scanner-id", type=int, default=1, metavar="N",
                   help="scanner id carried by every event (0..65535, default 1)")
    p.add_argument("--silence-timeout", type=float, default=30.0, metavar="S",
                   help="no byte for S seconds: count, log, reconnect (0 disables; default 30)")
    p.add_argument("--first-parcel-id", type=int, default=None, metavar="N",
                   help="first parcel id the driver gives out itself (formats without an index: "
                        "default 1)")
    p.add_argument("--metrics", default="", metavar="HOST:PORT",
                   help="serve the driver's counters for Prometheus on http://HOST:PORT/metrics "
                        "(default: off)")
    p.add_argument("--backoff-max", type=float, default=10.0, metavar="S",
                   help="longest wait between reconnection attempts (default 10)")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default INFO (--sniff: WARNING)")
    p.add_argument("--list-presets", action="store_true", help="list the bundled presets and exit")


def cmd_scanner(args: argparse.Namespace) -> int:
    from .driver import ScannerDriver, parse_hostport

    if args.list_presets:
        for name in preset_names():
            fmt = load_format(name)
            print(f"{name:<26} {fmt.describe()}")
            print(f"{'':<26} {fmt.description}")
        return 0
    link = args.connect or args.listen or args.serial
    if not link or not (args.preset or args.sniff):
        print("sorter scanner: one of --connect HOST:PORT, --listen HOST:PORT or --serial DEVICE "
              "is required, and --preset (optional with --sniff)", file=sys.stderr)
        return 2
    if not 0 <= args.scanner_id <= 65535:
        print("sorter scanner: --scanner-id must be within 0..65535", file=sys.stderr)
        return 2
    if args.telegrams is not None and not args.sniff:
        print("sorter scanner: --telegrams goes with --sniff", file=sys.stderr)
        return 2
    if not args.serial:
        try:
            parse_hostport(link)
        except ValueError as e:
            print(f"sorter scanner: {e}", file=sys.stderr)
            return 2
    try:
        fmt = load_format(args.preset) if args.preset else None
    except PresetError as e:
        print(e, file=sys.stderr)
        return 1
    setup_logging(args.log_level or ("WARNING" if args.sniff else "INFO"))
    where = {"connect": args.connect, "listen": args.listen, "serial": args.serial}
    if args.serial:
        where.update(baud=args.baud, bytesize=args.bytesize, parity=args.parity,
                     stopbits=args.stopbits)
    common = dict(silence_timeout_s=args.silence_timeout, first_parcel_id=args.first_parcel_id,
                  backoff_max_s=args.backoff_max, **where)
    if args.sniff:
        return _sniff(fmt, args, common)
    driver = ScannerDriver(fmt, args.scanner_id, args.engine, **common)
    stop = _stop_on_signals()
    try:
        driver.start()
    except OSError as e:
        log_event(log, logging.ERROR, "cannot listen", address=args.listen, error=str(e))
        driver.stop()
        return 1
    server = None
    fields = {driver.mode: driver.describe_peer()}
    if args.metrics:
        from .metrics import serve_metrics
        try:
            server, fields["metrics"] = serve_metrics(driver, args.metrics)
        except (OSError, ValueError) as e:
            log_event(log, logging.ERROR, "cannot serve metrics", address=args.metrics,
                      error=str(e))
            driver.stop()
            return 1
    log_event(log, logging.INFO, "ready", scanner_id=args.scanner_id, **fields)
    while not stop.wait(0.5):
        if not driver.running:
            break
    driver.stop()
    if server is not None:
        server.shutdown()
        server.server_close()
    log_event(log, logging.INFO, "shutdown", scanner_id=args.scanner_id, **driver.snapshot())
    return 0 if stop.is_set() else 1


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return stop


def _sniff(fmt, args: argparse.Namespace, common: dict) -> int:
    """--sniff: the link without an engine; telegrams and the proposal on stdout."""
    from .sniff import Sniffer, SniffSession

    sniffer = Sniffer(fmt, args.scanner_id, args.first_parcel_id)
    session = SniffSession(sniffer, max_events=args.telegrams, **common)
    stop = _stop_on_signals()
    try:
        session.start()
    except OSError as e:
        print(f"sorter scanner: cannot listen on {args.listen}: {e}", file=sys.stderr)
        session.stop()
        return 1
    if fmt is not None:
        head = f"preset {fmt.name}: {fmt.describe()}"
    else:
        head = f"no preset: trying the {len(sniffer.trials)} bundled presets side by side"
    session.announce(f"== sniffing {session.mode} {session.describe_peer()} ({head}); "
                     "Ctrl-C to stop")
    while not stop.wait(0.1):
        if not session.running or session.done:
            break
    session.stop()
    print("\n".join(sniffer.summary()), flush=True)
    return 0 if stop.is_set() or session.done else 1



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
