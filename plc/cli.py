"""`sorter plc`: the PLC gateway (engine decisions to the PLC in its protocol, its reports back).

    sorter plc --protocol tcp --preset s7_binary --connect 10.0.0.5:2000
    sorter plc --protocol tcp --preset ascii_fixed --listen 0.0.0.0:4000
    sorter plc --protocol opcua --url opc.tcp://10.0.0.5:4840 [--nodes nodes.toml]
    sorter plc --protocol modbus --connect 10.0.0.5:502 [--map registers.toml]
    sorter plc --list-presets

`add_parser(subparsers)` is registered as a `sorter.commands` entry point (pyproject.toml).
Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when a preset, node model or register
map cannot be used or the listening address is taken, 2 for usage errors and a missing
protocol library.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import Sequence

from .log import log_event, setup_logging

log = logging.getLogger("plc.cli")

DEFAULT_MAX_AGE_MS = 500.0       # the engine's default deadline_ms (docs/engine.md)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plc", help="run the PLC gateway: decisions to the PLC (TCP telegrams, OPC UA, Modbus TCP)",
        description="Read DECISION messages from the engine's decisions socket, deliver them "
                    "to the sorter PLC in its protocol (TCP telegrams from a preset, OPC UA, "
                    "Modbus TCP), and send what the PLC reports (chute states, sort reports) "
                    "to the engine's feedback socket as CHUTE_STATUS and SORT_CONFIRM. A "
                    "decision older than --max-age-ms is dropped, never delivered. Runs until "
                    "SIGTERM or SIGINT; reconnects by itself. See docs/plc.md.")
    add_arguments(p)
    p.set_defaults(func=cmd_plc)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .telegrams import preset_names
    p.add_argument("--protocol", choices=["tcp", "opcua", "modbus"], default="tcp",
                   help="the PLC's protocol (default tcp)")
    p.add_argument("--preset", metavar="NAME|PATH",
                   help=f"tcp: telegram preset ({', '.join(preset_names())}) or a preset .toml")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--connect", metavar="HOST:PORT",
                       help="tcp: connect to the PLC (it is the server); modbus: the PLC's "
                            "Modbus server")
    where.add_argument("--listen", metavar="HOST:PORT",
                       help="tcp: listen for the PLC (it connects to the gateway)")
    p.add_argument("--url", metavar="URL", help="opcua: the PLC's server, opc.tcp://HOST:PORT")
    p.add_argument("--nodes", metavar="FILE",
                   help="opcua: node model .toml (default: the bundled model, docs/plc.md)")
    p.add_argument("--map", metavar="FILE",
                   help="modbus: register map .toml (default: the bundled map, docs/plc.md)")
    p.add_argument("--list-presets", action="store_true",
                   help="list the bundled telegram presets and exit")
    p.add_argument("--engine-decisions", default="tcp://127.0.0.1:5556", metavar="ENDPOINT",
                   help="the engine's decisions endpoint (default tcp://127.0.0.1:5556)")
    p.add_argument("--engine-feedback", default="tcp://127.0.0.1:5557", metavar="ENDPOINT",
                   help="the engine's feedback endpoint (default tcp://127.0.0.1:5557)")
    p.add_argument("--max-age-ms", type=float, default=DEFAULT_MAX_AGE_MS, metavar="N",
                   help="drop a decision older than N ms instead of delivering it (default "
                        f"{DEFAULT_MAX_AGE_MS:g}, the engine's default deadline; 0 disables)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--metrics", default="", metavar="HOST:PORT",
                   help="serve the gateway's counters for Prometheus at http://HOST:PORT/metrics "
                        "(sorter_plc_*; default: off)")


def _usage(msg: str) -> int:
    print(f"sorter plc: {msg}", file=sys.stderr)
    return 2


def make_gateway(args: argparse.Namespace):
    """The gateway the arguments describe (not started). Raises ValueError for bad arguments,
    PresetError / ModelError for files that cannot be used, SystemExit for a missing library."""
    max_age = args.max_age_ms / 1000 if args.max_age_ms and args.max_age_ms > 0 else None
    dec, fb = args.engine_decisions, args.engine_feedback
    if args.protocol == "tcp":
        from .tcp import TcpGateway, parse_hostport
        from .telegrams import load_preset
        if not args.preset or not (args.connect or args.listen):
            raise ValueError("--protocol tcp needs --preset and one of --connect HOST:PORT or "
                             "--listen HOST:PORT")
        parse_hostport(args.connect or args.listen)
        return TcpGateway(load_preset(args.preset), dec, fb, connect=args.connect,
                          listen=args.listen, max_age_s=max_age)
    if args.protocol == "opcua":
        from .opcua import OpcUaGateway, require_asyncua
        require_asyncua()
        from .models import load_nodes
        if not args.url or not args.url.startswith("opc.tcp://"):
            raise ValueError("--protocol opcua needs --url opc.tcp://HOST:PORT")
        return OpcUaGateway(args.url, dec, fb, load_nodes(args.nodes), max_age_s=max_age)
    from .modbus import ModbusGateway, require_pymodbus
    require_pymodbus()
    from .models import load_registers
    from .tcp import parse_hostport
    if not args.connect:
        raise ValueError("--protocol modbus needs --connect HOST:PORT")
    host, port = parse_hostport(args.connect)
    return ModbusGateway(host, port, dec, fb, load_registers(args.map), max_age_s=max_age)


def cmd_plc(args: argparse.Namespace) -> int:
    from .models import ModelError
    from .telegrams import PresetError, load_preset, preset_names
    if args.list_presets:
        for name in preset_names():
            pr = load_preset(name)
            print(f"{name:<14} {pr.description}")
            print(f"{'':<14} {pr.describe()}")
        return 0
    try:
        gw = make_gateway(args)
    except SystemExit as e:            # a protocol library is missing: its one-line message
        print(e.code, file=sys.stderr)
        return 2
    except (PresetError, ModelError) as e:
        print(e, file=sys.stderr)
        return 1
    except ValueError as e:
        return _usage(str(e))
    setup_logging(args.log_level)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        gw.start()
    except OSError as e:
        log_event(log, logging.ERROR, "cannot listen", address=args.listen, error=str(e))
        return 1
    metrics = None
    if args.metrics:
        from .metrics import serve_metrics
        try:
            metrics = serve_metrics(gw, args.metrics)
        except (OSError, ValueError) as e:
            log_event(log, logging.ERROR, "cannot serve metrics", address=args.metrics,
                      error=str(e))
            gw.stop()
            return 1
    log_event(log, logging.INFO, "ready", protocol=args.protocol,
              listen=f"{gw.address[0]}:{gw.address[1]}" if getattr(gw, "address", None) else None,
              peer=args.connect or args.url, max_age_ms=args.max_age_ms,
              metrics=(f"http://{args.metrics.rpartition(':')[0] or '127.0.0.1'}:"
                       f"{metrics.server_port}/metrics") if metrics else None)
    next_status = time.monotonic() + 10
    while not stop.wait(0.5):
        if not gw.running:
            break
        if time.monotonic() >= next_status:
            next_status += 10
            log_event(log, logging.INFO, "status", **gw.snapshot())
    gw.stop()
    if metrics is not None:
        metrics.shutdown()
    log_event(log, logging.INFO, "shutdown", **gw.snapshot())
    return 0 if stop.is_set() else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m plc.cli ...`: the `sorter plc` command on its own."""
    parser = argparse.ArgumentParser(prog="sorter plc", description="Run the PLC gateway "
                                     "(see docs/plc.md).")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return cmd_plc(args)


if __name__ == "__main__":
    raise SystemExit(main())
