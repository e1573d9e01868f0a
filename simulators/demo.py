"""`sorter demo`: the whole line on one machine, on loopback, with a live view.

    simulated tunnel --TCP telegrams--> scanner driver --ZeroMQ--> engine (subprocess)
         ^                                                           |  decisions
         |  parcels that stay on their carrier come round            v
         +--------------------------------------------------- PLC / sorter simulator
                                                       (chute status, confirmations back)

Everything is real but the hardware: the engine is the `sorter run` process, the driver parses
real telegrams from a real TCP socket, every decision lands in the Arrow audit.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from scanners.driver import ScannerDriver
from scanners.framing import load_format
from sorter.audit import read_audit
from sorter.core.codes import REASONS
from sorter.engine.control_client import ControlError, request
from sorter.engine.launch import Child, engine_command
from sorter.plan import Plan, load_plan

from .model import LoopBack, Registry
from .plc import PlcSimulator
from .tunnel import TcpTelegramOutput, TunnelSimulator

# A short loop so that recirculated parcels come back within a demo: ~13 s round.
DEMO_LOOP = dict(speed_mps=2.5, first_chute_m=2.0, chute_spacing_m=0.3, return_m=6.0,
                 capacity=25, empty_after_s=6.0, failed_divert_p=0.01)


@dataclass
class DemoResult:
    seconds: float
    rate: float
    preset: str
    audit_dir: str
    engine_exit: int | None
    parcels: int
    scans: int
    events: int
    decisions: dict[str, int]
    read_rate: float | None
    p50_ms: float | None
    p99_ms: float | None
    audited_rows: int
    parcels_missing_from_audit: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.engine_exit == 0 and not self.parcels_missing_from_audit


class EngineProcess:
    """`sorter run` as a child process on wildcard loopback ports (`sorter.engine.launch`)."""

    def __init__(self, audit_dir: Path, plan_path: str | None, log_path: Path):
        self.log_path = log_path
        # its own process group: Ctrl-C reaches the demo, which then stops the engine cleanly
        self.child = Child("the engine", engine_command(audit_dir, "--decision-version", "2",
                                                          plan=plan_path), log_path,
                           new_session=True)
        self.proc = self.child.proc
        try:
            self.endpoints = self.child.wait_ready()["endpoints"]
        except BaseException:
            self.child.kill()
            raise

    def status(self) -> dict | None:
        try:
            return request(self.endpoints["control"], {"cmd": "status"}, timeout_s=2)
        except ControlError:
            return None

    def stop(self, timeout_s: float = 30.0) -> int:
        code = self.child.stop(signal.SIGTERM, timeout_s)
        return self.proc.returncode if code is None else code


def check_demo_args(seconds: float, rate: float) -> None:
    """ValueError naming the argument: both must be finite and above zero."""
    for name, value in (("--seconds", seconds), ("--rate", rate)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number above 0, got {value!r}")


def _view(engine_status: dict | None, plc: dict, tunnel: dict, driver: dict, rate_now: float,
          elapsed: float, seconds: float, preset: str) -> Group:
    counters = (engine_status or {}).get("counters", {})
    decisions = counters.get("decisions", {})
    events = counters.get("events", 0)
    unreadable = decisions.get("no_read", 0) + decisions.get("invalid", 0)
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    p50, p99 = counters.get("scan_to_decision_p50_s"), counters.get("scan_to_decision_p99_s")
    head.add_row(f"[b]{elapsed:5.1f}[/b] / {seconds:.0f} s",
                 f"[b]{rate_now:6.0f}[/b] parcels/s",
                 f"read rate [b]{(1 - unreadable / events) * 100 if events else 0:5.1f}%[/b]",
                 "scan->decision p50 [b]%s[/b] p99 [b]%s[/b]" % (
                     f"{p50 * 1000:.2f} ms" if p50 else "-", f"{p99 * 1000:.2f} ms" if p99 else "-"))
    head.add_row(f"parcels {tunnel.get('parcels', 0)}", f"scans {tunnel.get('scans', 0)}",
                 f"rescans {tunnel.get('rescans', 0)}",
                 f"driver events {driver.get('events', driver.get('events_sent', 0))} "
                 f"({preset} over TCP)")
    reasons = Table(title="decisions by reason", expand=True)
    reasons.add_column("reason")
    reasons.add_column("count", justify="right")
    for r in REASONS:
        if decisions.get(r):
            reasons.add_row(r, str(decisions[r]))
    chutes = Table(title="busiest chutes", expand=True)
    chutes.add_column("chute", justify="right")
    chutes.add_column("fill")
    chutes.add_column("state")
    chutes.add_column("diverted", justify="right")
    busiest = sorted(plc.get("chutes", {}).items(), key=lambda kv: -kv[1]["diverted"])[:10]
    for number, ch in busiest:
        width = 20
        filled = int(width * ch["fill"] / max(1, ch["capacity"]))
        style = {"available": "green", "full": "red", "disabled": "yellow"}.get(ch["state"], "")
        chutes.add_row(str(number), f"[{style}]{'#' * filled}{'.' * (width - filled)}[/]",
                       f"[{style}]{ch['state']}[/]", str(ch["diverted"]))
    grid = Table.grid(expand=True)
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(reasons, chutes)
    return Group(Panel(head, title="sorter demo"), grid)


def run_demo(*, seconds: float = 20.0, rate: float = 50.0, preset: str = "sick_clv",
             plan_path: str | None = None, audit_dir: str = "audit", seed: int = 0,
             live: bool | None = None, console: Console | None = None,
             dashboard: str | None = None, plc_protocol: str | None = None) -> DemoResult:
    """Run the line for `seconds` at `rate` parcels/s; returns what happened and checks the
    audit accounts for every simulated parcel. `plc_protocol` ("tcp", "opcua", "modbus"): the
    simulated PLC speaks that protocol behind the PLC gateway (simulators/demo_plc.py)."""
    check_demo_args(seconds, rate)          # before anything starts
    console = console or Console()
    live = console.is_terminal if live is None else live
    plan: Plan = load_plan(plan_path)
    fmt = load_format(preset)
    audit = Path(audit_dir).resolve()
    audit.mkdir(parents=True, exist_ok=True)
    # the audit directory holds audit data only: the engine's log goes beside it
    engine = EngineProcess(audit, plan_path, audit.parent / f"{audit.name}-engine.log")
    output = None
    try:                                    # no engine left behind if a part fails to start
        registry, loopback = Registry(), LoopBack()
        output = TcpTelegramOutput(fmt, "127.0.0.1", 0, listen=True)
        driver = ScannerDriver(fmt, scanner_id=1, engine_endpoint=engine.endpoints["scans"],
                               connect=output.address, silence_timeout_s=0)
        if plc_protocol is None:
            plc = PlcSimulator(plan, engine.endpoints["decisions"], engine.endpoints["feedback"],
                               registry=registry, loopback=loopback, seed=seed, **DEMO_LOOP)
        else:
            from .demo_plc import ProtocolPlc
            plc = ProtocolPlc(plc_protocol, plan, engine.endpoints["decisions"],
                              engine.endpoints["feedback"], registry=registry,
                              loopback=loopback, seed=seed, **DEMO_LOOP)
        tunnel = TunnelSimulator(plan, rate_per_s=rate, seed=seed, registry=registry,
                                 loopback=loopback, output=output)
    except BaseException:
        engine.stop()
        if output is not None:
            output.close()
        raise
    engine_exit = None
    web = None
    try:
        driver.start()
        plc.start()
        if not output.wait_for_peer(10):
            raise RuntimeError("the scanner driver did not connect to the simulated scanner")
        console.print(f"engine up: scans {engine.endpoints['scans']}, control "
                      f"{engine.endpoints['control']}, metrics {engine.endpoints.get('metrics')}; "
                      f"audit under {audit}")
        if dashboard:
            web = _start_dashboard(dashboard, engine, audit, plc)
            console.print(f"chute wall: {web.url}", highlight=False)
        started = time.monotonic()
        tunnel.start(duration_s=seconds)
        _watch(engine, plc, tunnel, driver, started, seconds, preset, live, console)
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        try:
            tunnel.stop()
            _settle(engine, driver)
            driver.stop()
            plc.stop()
            status = engine.status()
        finally:
            engine_exit = engine.stop()     # whatever failed above, the engine stops
            output.close()
            if web is not None:
                web.stop()
    return _result(seconds, rate, preset, audit, engine_exit, status, tunnel, registry)


def _start_dashboard(listen: str, engine: EngineProcess, audit: Path, plc: PlcSimulator):
    """`sorter dashboard` in this process, on `listen` (a free port when that one is taken),
    with the simulated PLC's fill levels for the tiles' fill bars."""
    from dashboard.app import DashboardServer, Settings

    def fill() -> dict[int, float]:
        return {c: ch["fill"] / max(1, ch["capacity"])
                for c, ch in plc.snapshot()["chutes"].items()}

    settings = Settings(engine=engine.endpoints["control"], audit_dir=str(audit))
    try:
        server = DashboardServer(settings, listen, fill=fill)
    except OSError:
        server = DashboardServer(settings, listen.rpartition(":")[0] + ":0", fill=fill)
    return server.start()


def _watch(engine, plc, tunnel, driver, started, seconds, preset, live, console) -> None:
    last_events, last_t = 0, time.monotonic()
    rate_now = 0.0

    def frame():
        nonlocal last_events, last_t, rate_now
        status = engine.status()
        events = (status or {}).get("counters", {}).get("events", last_events)
        now = time.monotonic()
        if now - last_t >= 0.9:
            rate_now = (events - last_events) / (now - last_t)
            last_events, last_t = events, now
        return _view(status, plc.snapshot(), tunnel.counters, driver.snapshot(), rate_now,
                     now - started, seconds, preset)

    if live:
        with Live(frame(), console=console, refresh_per_second=4) as view:
            while time.monotonic() - started < seconds:
                time.sleep(0.25)
                view.update(frame())
    else:
        next_line = started
        while time.monotonic() - started < seconds:
            time.sleep(0.1)
            if time.monotonic() >= next_line:
                next_line += 1.0
                status = engine.status() or {}
                c = status.get("counters", {})
                reasons = "  ".join(f"{r} {n}" for r, n in c.get("decisions", {}).items() if n)
                console.print(f"{time.monotonic() - started:5.1f} s  parcels "
                              f"{tunnel.counters['parcels']}  decisions {c.get('events', 0)}: "
                              f"{reasons}", highlight=False)


def _settle(engine: EngineProcess, driver: ScannerDriver, timeout_s: float = 10.0) -> None:
    """Wait until the engine has decided every event the driver sent."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = engine.status()
        sent = driver.snapshot().get("events", 0)
        if status and status["counters"]["events"] >= sent:
            return
        time.sleep(0.1)


def _result(seconds, rate, preset, audit, engine_exit, status, tunnel, registry) -> DemoResult:
    counters = (status or {}).get("counters", {})
    decisions = counters.get("decisions", {})
    events = counters.get("events", 0)
    unreadable = decisions.get("no_read", 0) + decisions.get("invalid", 0)
    table = read_audit(audit)
    audited = set(table.column("parcel_id").drop_null().to_pylist()) if table.num_rows else set()
    missing = sorted(pid for pid in registry.ids() if pid not in audited)
    p50, p99 = counters.get("scan_to_decision_p50_s"), counters.get("scan_to_decision_p99_s")
    return DemoResult(
        seconds=seconds, rate=rate, preset=preset, audit_dir=str(audit), engine_exit=engine_exit,
        parcels=tunnel.counters["parcels"], scans=tunnel.counters["scans"], events=events,
        decisions={r: n for r, n in decisions.items() if n},
        read_rate=(1 - unreadable / events) if events else None,
        p50_ms=p50 * 1000 if p50 else None, p99_ms=p99 * 1000 if p99 else None,
        audited_rows=table.num_rows, parcels_missing_from_audit=missing)


def print_summary(result: DemoResult, console: Console) -> None:
    t = Table(title="sorter demo: summary", show_header=False)
    t.add_column(justify="right")
    t.add_column()
    t.add_row("parcels simulated", str(result.parcels))
    t.add_row("scans (incl. rescans)", str(result.scans))
    t.add_row("decisions", str(result.events))
    for reason, n in result.decisions.items():
        t.add_row(f"  {reason}", str(n))
    t.add_row("read rate", f"{result.read_rate * 100:.1f}%" if result.read_rate is not None else "-")
    t.add_row("scan->decision p50 / p99",
              f"{result.p50_ms or 0:.2f} ms / {result.p99_ms or 0:.2f} ms")
    t.add_row("audit rows", str(result.audited_rows))
    t.add_row("parcels missing from audit", str(len(result.parcels_missing_from_audit)))
    t.add_row("engine exit status", str(result.engine_exit))
    t.add_row("audit files", f"{result.audit_dir}/date=*/decisions-*.arrow")
    console.print(t)
    console.print("query them: python -c \"import pyarrow.dataset as ds; print(ds.dataset("
                  f"'{result.audit_dir}', format='arrow', partitioning='hive').to_table()"
                  ".group_by('reason').aggregate([('parcel_id', 'count')]))\"")


def main_demo(args) -> int:
    console = Console()
    try:
        check_demo_args(args.seconds, args.rate)
    except ValueError as e:
        print(f"sorter demo: {e}", file=sys.stderr)
        return 2
    result = run_demo(seconds=args.seconds, rate=args.rate, preset=args.preset,
                      plan_path=args.plan, audit_dir=args.audit_dir, seed=args.seed,
                      live=False if args.no_live else None, console=console,
                      dashboard=None if args.no_dashboard else args.dashboard,
                      plc_protocol=getattr(args, "plc", None))
    print_summary(result, console)
    if args.json:
        Path(args.json).write_text(json.dumps({**result.__dict__, "ok": result.ok}, indent=2))
    return 0 if result.ok else 1
