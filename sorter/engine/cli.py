"""`sorter run` (the engine) and `sorter ctl` (one request to a running engine's control socket).

Every command is a `cmd_xxx(args) -> int` (the exit status) and `add_parsers(subparsers)`
declares them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


# ---------------------------------------------------------------------------------------------
# sorter run / sorter ctl


def cmd_run(args: argparse.Namespace) -> int:
    from sorter.engine.config import ConfigError, load_config
    from sorter.engine import run
    from sorter.engine.keys import KeysError, check_exposure

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
        native_io=args.native_io, log_file=getattr(args, "log_file", None),
        decision_version=args.decision_version,
        plan_dir=args.plan_dir, keys=args.keys, auth_feedback=args.auth_feedback,
        insecure=args.insecure)
    try:
        check_exposure(config)              # before anything starts or binds
    except KeysError as e:
        print(f"sorter run: {e}", file=sys.stderr)
        return 1
    return run(config)


def _fsync_interval(text: str) -> float:
    """Seconds, or `each` (= 0: fsync every journal record before its decision is sent)."""
    return 0.0 if text.strip().lower() == "each" else float(text)


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
                        ("control", "ROUTER endpoint (REQ clients): status, plans, chutes, stop")):
        p.add_argument(f"--{name}", default=None, metavar="ENDPOINT", help=help_)
    p.add_argument("--metrics", default=None, metavar="HOST:PORT",
                   help="Prometheus endpoint ('' disables)")
    p.add_argument("--audit-dir", default=None, metavar="DIR", help="audit directory")
    p.add_argument("--deadline-ms", type=float, default=None, metavar="MS",
                   help="scans older than this are decided `late` (0 disables)")
    p.add_argument("--batch-max", type=int, default=None, metavar="N",
                   help="events per core call, at most")
    p.add_argument("--fsync-interval", type=_fsync_interval, default=None, metavar="S",
                   help="fsync the audit journal every S seconds (default 1; 0 or 'each': "
                        "every record, before its decision is sent)")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--decision-version", type=int, choices=[1, 2], default=None,
                   help="DECISION messages sent to the PLC side: 1 (default), or 2, which "
                        "carries the decision time so the PLC gateway drops stale decisions "
                        "(docs/protocol.md 6.1)")
    p.add_argument("--log-file", default=None, metavar="PATH",
                   help="also append the JSON log lines here (they always go to stderr; keep "
                        "it out of the audit directory, which holds audit data only)")
    p.add_argument("--native-io", action=argparse.BooleanOptionalAction, default=None,
                   help="accepted for compatibility, no effect: the engine has one I/O path "
                        "(pyzmq)")
    p.add_argument("--plan-dir", default=None, metavar="DIR",
                   help="control `load_plan` reads plans only below DIR (default: the "
                        "engine's working directory)")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="CURVE keys from `sorter keys init DIR`: control (and with "
                        "--auth-feedback the feedback socket) accept only their clients")
    p.add_argument("--auth-feedback", action="store_true", default=None,
                   help="authenticate the feedback socket with the keys too")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow the control socket on a non-loopback address without keys")
    p.set_defaults(func=cmd_run)


def cmd_ctl(args: argparse.Namespace) -> int:
    from sorter.engine.control_client import ControlError, request

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
        chute = args.args[0]
        if not (chute.isascii() and chute.isdigit()) or not 0 < int(chute) < 65536:
            print(f"sorter ctl chute: chute must be a whole number 1..65535, got {chute!r}",
                  file=sys.stderr)
            return 2
        req = {"cmd": "set_chute", "chute": int(chute), "state": args.args[1]}
    try:
        reply = request(args.endpoint, req, timeout_s=args.timeout, keys=args.keys,
                        connect_timeout_s=args.connect_timeout)
    except ControlError as e:
        print(f"{args.endpoint}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 0 if reply.get("ok") else 1


def _add_ctl_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ctl", help="talk to a running engine",
                              description="Send one request to a running engine's control "
                                          "socket and print the JSON reply.")
    p.add_argument("action", choices=["status", "load-plan", "chute", "stop"])
    p.add_argument("args", nargs="*", help="load-plan PLAN | chute N STATE")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5558", help="control endpoint")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="how long to wait for the reply (30)")
    p.add_argument("--connect-timeout", type=float, default=3.0, metavar="S",
                   help="how long to wait for an engine to take the request (3)")
    p.add_argument("--keys", default=os.environ.get("SORTER_KEYS"), metavar="DIR",
                   help="CURVE keys from `sorter keys init DIR` (default: $SORTER_KEYS), for "
                        "an engine started with --keys")
    p.set_defaults(func=cmd_ctl)


def cmd_keys(args: argparse.Namespace) -> int:
    from sorter.engine.keys import init_keys

    try:
        paths = init_keys(args.dir, force=args.force)
    except FileExistsError as e:
        print(f"sorter keys init: {e}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name:14} {path}")
    return 0


def _add_keys_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "keys", help="CURVE keys for the control (and feedback) socket",
        description="`sorter keys init DIR` writes the engine's key pair and a client key pair "
                    "(ZeroMQ CURVE): start the engine with --keys DIR, give clients "
                    "(`sorter ctl --keys DIR`) the engine's public key and the client pair; "
                    "the engine accepts the public keys in DIR/clients (docs/engine.md).")
    p.add_argument("action", choices=["init"])
    p.add_argument("dir", nargs="?", default="keys", metavar="DIR", help="where (./keys)")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(func=cmd_keys)




def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """`sorter run ...`, `sorter ctl ...` and `sorter keys init`."""
    _add_run_parser(subparsers)
    _add_ctl_parser(subparsers)
    _add_keys_parser(subparsers)
