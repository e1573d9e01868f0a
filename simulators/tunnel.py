"""The scanner tunnel simulator: parcels at a steady rate, scanned, sent on like a real tunnel.

    registry, loopback = Registry(), LoopBack()
    tunnel = TunnelSimulator(plan, rate_per_s=20, seed=1, registry=registry, loopback=loopback,
                             output=TcpTelegramOutput(load_format("sick_clv")))   # listens
    # sorter scanner --preset sick_clv --connect 127.0.0.1:<tunnel.output.address[1]>
    tunnel.run(max_parcels=1000)

The schedule is open loop: parcel k is due at start + k / rate, whether or not the previous send
was quick, so a slow consumer shows up as latency, not as a lower rate. Parcels that the PLC
simulator sends round (`LoopBack`) are scanned again when due, with one more recirculation.

Outputs:
- `TcpTelegramOutput(fmt, host, port, listen=True)`: plays the scanner, speaking a preset's
  telegrams over TCP. By default it listens and the driver connects, like a SICK scanner.
  Telegrams carry no recirculation count (unless the preset has a `recirculations` field): the
  driver sends 0 and the engine sees a rescanned parcel as a new one; the registry still counts
  the laps. For presets without an index (Datalogic, Keyence) the driver numbers the parcels
  itself, 1, 2, 3...: the simulator numbers every scan the same way (a rescan gets a new parcel
  id, registered as a copy of the parcel), so ids agree while no telegram is lost.
- `ZmqOutput(endpoint)`: SCAN messages straight to the engine (parcel ids and recirculation
  counts included); no driver involved.
"""
from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import zmq

from scanners.framing import TelegramFormat, format_telegram
from scanners.log import log_event
from sorter import wire
from sorter.core.events import EventBatch
from sorter.plan import Plan

from .model import LoopBack, Parcel, Registry
from .population import Population

log = logging.getLogger("simulators.tunnel")

__all__ = ["Scan", "Output", "ZmqOutput", "TcpTelegramOutput", "TunnelSimulator", "main"]


@dataclass
class Scan:
    """One pass of one parcel under the tunnel."""
    parcel_id: int
    slots: list[bytes | None]        # [] = no read; None = a label missed (local no read)
    recirculations: int = 0
    ts_ns: int = 0

    @property
    def reads(self) -> list[bytes]:
        return [s for s in self.slots if s is not None]


class Output(Protocol):
    carries_identity: bool           # whether the receiver learns the simulator's parcel ids

    def send(self, scans: Sequence[Scan]) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Outputs


class ZmqOutput:
    """SCAN messages to the engine's scans socket: one message per burst of scans."""
    carries_identity = True

    def __init__(self, endpoint: str, scanner_id: int = 1, *, sndhwm: int = 10000,
                 linger_ms: int = 1000, send_timeout_ms: int = 2000,
                 context: zmq.Context | None = None):
        self.scanner_id = scanner_id
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
        self._sock.connect(endpoint)
        self._seq = 1
        self._batch_seq = 0
        self.sent = 0
        self.unsent = 0

    def send(self, scans: Sequence[Scan]) -> None:
        if not scans:
            return
        n = len(scans)
        batch = EventBatch.from_reads(
            [s.reads for s in scans],
            parcel_ids=np.array([s.parcel_id for s in scans], np.uint64),
            scanner_ids=np.full(n, self.scanner_id, np.uint16),
            ts_ns=np.array([s.ts_ns or time.time_ns() for s in scans], np.int64),
            recirculations=np.array([min(s.recirculations, 255) for s in scans], np.uint8))
        seq = np.arange(self._seq, self._seq + n, dtype=np.uint64)
        self._seq += n
        self._batch_seq += 1
        try:
            self._sock.send(wire.encode_scan(batch, seq, self._batch_seq))
            self.sent += n
        except zmq.Again:
            self.unsent += n
            log_event(log, logging.WARNING, "engine not taking scans", events=n)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if self._own_ctx:
                self._ctx.term()


class TcpTelegramOutput:
    """Plays a scanner speaking `fmt`'s telegrams over TCP.

    listen=True (default): listen on host:port (port 0: a free port, see `address`) and send
    to the driver that connected (a newer connection replaces an older one). listen=False:
    connect to a driver that listens. A send waits up to wait_for_peer_s for a peer; telegrams
    that find none, or whose connection broke, are counted in `unsent` (a real scanner loses
    them too)."""

    def __init__(self, fmt: TelegramFormat, host: str = "127.0.0.1", port: int = 0, *,
                 listen: bool = True, wait_for_peer_s: float = 5.0):
        self.fmt = fmt
        self.listen = listen
        self.wait_for_peer_s = wait_for_peer_s
        self.carries_identity = fmt.has_index and fmt.index_is_parcel_id
        self.sent = 0                 # telegrams
        self.unsent = 0
        self.unexpressible = 0
        self.connections = 0
        self._peer: socket.socket | None = None
        self._lock = threading.Condition()
        self._closed = False
        self._server: socket.socket | None = None
        self.address: tuple[str, int] = (host, port)
        if listen:
            self._server = socket.create_server((host, port))
            self._server.settimeout(0.2)
            self.address = self._server.getsockname()[:2]
            self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                              name="tunnel-accept")
            self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                old, self._peer = self._peer, conn
                self.connections += 1
                self._lock.notify_all()
            if old is not None:
                old.close()
            log_event(log, logging.INFO, "driver connected to the simulated scanner",
                      address=f"{self.address[0]}:{self.address[1]}")

    def wait_for_peer(self, timeout_s: float | None = None) -> bool:
        """Whether a peer is connected, waiting up to timeout_s (default wait_for_peer_s) for
        one to connect (listen) or for the connection to succeed (connect)."""
        deadline = time.monotonic() + (self.wait_for_peer_s if timeout_s is None else timeout_s)
        if self.listen:
            with self._lock:
                while self._peer is None and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._lock.wait(left)
                return self._peer is not None
        while self._peer is None and not self._closed:
            try:
                conn = socket.create_connection(self.address, timeout=1.0)
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._peer = conn
                self.connections += 1
        return self._peer is not None

    def telegrams(self, scans: Sequence[Scan]) -> bytes:
        """The telegrams of these scans. A scan the format cannot express (a code too long for
        a fixed-width slot, more codes than slots) goes out as a no read, counted in
        `unexpressible` and logged: the tunnel saw the parcel but could not report its codes."""
        fmt, out = self.fmt, []
        for s in scans:
            index = s.parcel_id if self.carries_identity else None
            recirc = s.recirculations if fmt.has_recirculations else None
            try:
                out.append(format_telegram(fmt, index, s.slots, recirculations=recirc))
            except ValueError as e:
                self.unexpressible += 1
                log_event(log, logging.WARNING, "scan sent as a no read: the format cannot "
                          "express it", parcel_id=s.parcel_id, error=str(e))
                out.append(format_telegram(fmt, index, [], recirculations=recirc))
        return b"".join(out)

    def send(self, scans: Sequence[Scan]) -> None:
        if scans:
            if self.send_raw(self.telegrams(scans)):
                self.sent += len(scans)
            else:
                self.unsent += len(scans)

    def send_raw(self, data: bytes) -> bool:
        """Send bytes as they are (tests: garbage, split frames). False when no peer took them."""
        if not self.wait_for_peer():
            return False
        with self._lock:
            peer = self._peer
        try:
            peer.sendall(data)
            return True
        except OSError as e:
            log_event(log, logging.WARNING, "simulated scanner lost its connection", error=str(e))
            self.disconnect()
            return False

    def disconnect(self) -> None:
        """Drop the current connection (as a scanner that restarts)."""
        with self._lock:
            peer, self._peer = self._peer, None
        if peer is not None:
            try:
                peer.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            peer.close()

    def close(self) -> None:
        self._closed = True
        self.disconnect()
        if self._server is not None:
            self._server.close()
            self._acceptor.join(2)
        with self._lock:
            self._lock.notify_all()


# ---------------------------------------------------------------------------------------------
# The tunnel


class TunnelSimulator:
    """Parcels at `rate_per_s` (open loop), plus rescans of parcels back from `loopback`."""

    def __init__(self, plan: Plan, rate_per_s: float = 10.0, read_rate: float = 0.985,
                 multi_label_rate: float = 0.05, damaged_rate: float = 0.01,
                 unknown_rate: float = 0.02, seed: int = 0, registry: Registry | None = None,
                 loopback: LoopBack | None = None, *, output: Output | None = None,
                 first_parcel_id: int = 1, label_miss_rate: float = 0.1,
                 mix: dict[str, float] | None = None, clock=time.monotonic):
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.plan = plan
        self.rate_per_s = rate_per_s
        self.population = Population(plan, seed=seed, read_rate=read_rate,
                                     multi_label_rate=multi_label_rate,
                                     damaged_rate=damaged_rate, unknown_rate=unknown_rate,
                                     label_miss_rate=label_miss_rate, mix=mix)
        self.registry = registry if registry is not None else Registry()
        self.loopback = loopback
        self.output = output
        self._clock = clock
        self._next_id = first_parcel_id
        self._origin: dict[int, int] = {}      # renumbered rescans: new id -> first id
        self.counters = {"parcels": 0, "rescans": 0, "scans": 0, "no_reads": 0,
                         "unknown_rescans": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def carries_identity(self) -> bool:
        return self.output is None or self.output.carries_identity

    # -- making scans -------------------------------------------------------------------------
    def new_scans(self, n: int) -> list[Scan]:
        """n new parcels, registered, scanned once."""
        out = []
        for _ in range(n):
            pid = self._next_id
            self._next_id += 1
            parcel = self.population.make(pid)
            self.registry.add(parcel)
            self.counters["parcels"] += 1
            out.append(self._scan(pid, self.population.scan_slots(pid, 0), 0))
        return out

    def rescans(self, parcel_ids: Sequence[int]) -> list[Scan]:
        """Parcels back at the scanner: scanned again with one more recirculation."""
        out = []
        for pid in parcel_ids:
            parcel = self.registry.get(pid)
            if parcel is None:
                self.counters["unknown_rescans"] += 1
                log_event(log, logging.WARNING, "rescan of an unknown parcel", parcel_id=pid)
                continue
            parcel.recirculations += 1
            slots = self.population.scan_slots(pid, parcel.recirculations)
            parcel.reads = [s for s in slots if s is not None]
            scan_id = pid
            if not self.carries_identity:       # the driver will number it as a new parcel
                scan_id = self._next_id
                self._next_id += 1
                self.population.alias(pid, scan_id)
                self.registry.add(Parcel(scan_id, list(parcel.reads), parcel.label,
                                         parcel.expected_destination, parcel.recirculations))
                self._origin[scan_id] = self._origin.get(pid, pid)
            self.counters["rescans"] += 1
            out.append(self._scan(scan_id, slots, parcel.recirculations))
        return out

    def first_id(self, parcel_id: int) -> int:
        """The id a parcel had on its first pass (differs for renumbered TCP rescans)."""
        return self._origin.get(parcel_id, parcel_id)

    def _scan(self, pid: int, slots: list[bytes | None], recirculations: int) -> Scan:
        self.counters["scans"] += 1
        if not any(s is not None for s in slots):
            self.counters["no_reads"] += 1
        return Scan(pid, slots, recirculations, time.time_ns())

    # -- running ------------------------------------------------------------------------------
    def run(self, *, max_parcels: int | None = None, duration_s: float | None = None,
            tick_s: float = 0.005) -> dict[str, int]:
        """Emit parcels on the open-loop schedule until max_parcels were made, duration_s
        passed, or stop(); rescans go on until then too. Returns the counters."""
        if self.output is None:
            raise ValueError("no output: give output=ZmqOutput(...) or TcpTelegramOutput(...)")
        start = self._clock()
        made = 0
        log_event(log, logging.INFO, "tunnel started", rate_per_s=self.rate_per_s,
                  max_parcels=max_parcels, duration_s=duration_s,
                  output=type(self.output).__name__)
        while not self._stop.is_set():
            now = self._clock()
            if duration_s is not None and now - start >= duration_s:
                break
            due = int((now - start) * self.rate_per_s) + 1
            if max_parcels is not None:
                due = min(due, max_parcels)
            scans = self.rescans(self.loopback.due()) if self.loopback is not None else []
            if due > made:
                scans += self.new_scans(due - made)
                made = due
            if scans:
                self.output.send(scans)
            if max_parcels is not None and made >= max_parcels:
                if self.loopback is None:
                    break
                wait = tick_s                       # only rescans left to do
            else:
                wait = start + made / self.rate_per_s - self._clock()
                if self.loopback is not None:
                    wait = min(wait, tick_s)
            self._stop.wait(max(0.0, wait))
        log_event(log, logging.INFO, "tunnel stopped", **self.counters)
        return dict(self.counters)

    def start(self, **kwargs) -> "TunnelSimulator":
        self._thread = threading.Thread(target=self.run, kwargs=kwargs, daemon=True,
                                        name="tunnel")
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)


# ---------------------------------------------------------------------------------------------
# Command line: python -m simulators.tunnel


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    from scanners.framing import PresetError, load_format
    from scanners.log import setup_logging
    from sorter.plan import PlanError, load_plan

    p = argparse.ArgumentParser(
        prog="python -m simulators.tunnel",
        description="Simulate a scanner tunnel: parcels for a plan, as a preset's TCP telegrams "
                    "(for `sorter scanner`) or as SCAN messages straight to the engine.")
    p.add_argument("--plan", default=None, help="plan TOML (default: the bundled plan)")
    p.add_argument("--rate", type=float, default=10.0, help="parcels per second (default 10)")
    p.add_argument("--parcels", type=int, default=None, help="stop after N parcels")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--read-rate", type=float, default=0.985)
    p.add_argument("--multi-label-rate", type=float, default=0.05)
    p.add_argument("--damaged-rate", type=float, default=0.01)
    p.add_argument("--unknown-rate", type=float, default=0.02)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--zmq", metavar="ENDPOINT", help="send SCAN messages to this endpoint")
    out.add_argument("--listen", metavar="HOST:PORT", help="play a TCP scanner, listening")
    out.add_argument("--connect", metavar="HOST:PORT", help="play a TCP scanner, connecting")
    p.add_argument("--preset", default="sick_clv", help="telegram preset for TCP (default sick_clv)")
    p.add_argument("--scanner-id", type=int, default=1, help="scanner id for --zmq")
    args = p.parse_args(argv)
    setup_logging("INFO")
    try:
        plan = load_plan(args.plan)
        if args.zmq:
            output: Output = ZmqOutput(args.zmq, args.scanner_id)
        else:
            from scanners.driver import parse_hostport
            host, port = parse_hostport(args.listen or args.connect)
            output = TcpTelegramOutput(load_format(args.preset), host, port,
                                       listen=bool(args.listen), wait_for_peer_s=30.0)
            if args.listen:
                log_event(log, logging.INFO, "listening", address=f"{output.address[0]}:{output.address[1]}")
    except (PlanError, PresetError, ValueError, OSError) as e:
        print(e)
        return 1
    tunnel = TunnelSimulator(plan, args.rate, args.read_rate, args.multi_label_rate,
                             args.damaged_rate, args.unknown_rate, args.seed, output=output)
    signal.signal(signal.SIGTERM, lambda *_: tunnel._stop.set())
    signal.signal(signal.SIGINT, lambda *_: tunnel._stop.set())
    try:
        tunnel.run(max_parcels=args.parcels, duration_s=args.duration)
    finally:
        output.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
