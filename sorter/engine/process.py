"""The engine process: scan events in over ZeroMQ, decisions out, every decision audited.

One thread owns every socket and the router, so a batch is routed, audited and sent without
locks. The loop drains what is queued (up to `batch_max` events), never waits to fill a batch,
and applies PLC feedback and control requests between batches: chute states and plan swaps
take effect at batch boundaries. Write-before-send: a decision reaches the audit file (the OS)
before it reaches the PLC socket. docs/engine.md describes sockets, settings and behaviour.
"""
from __future__ import annotations

import gc
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import zmq

from sorter.engine import _scanloop, _turn
from sorter import wire
from sorter.audit import AuditWriter, recover
from sorter.core.codes import REASONS
from sorter.engine.config import EngineConfig
from sorter.engine.control import Control
from sorter.engine.keys import check_exposure, make_server, start_authenticator
from sorter.core.events import Decisions, arrow_offsets_data
from sorter.engine.memory import MemoryReturn
from sorter.engine.metrics import EngineMetrics
from sorter.plan import Plan, PlanError, load_plan
from sorter.core.router import Router

log = logging.getLogger("sorter.engine")

class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                 "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("sorter")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _log(level: int, event: str, **fields) -> None:
    log.log(level, event, extra={"fields": fields})


class Engine:
    """Bind, then `serve()` until a stop request (control `stop`, SIGTERM, SIGINT)."""

    def __init__(self, config: EngineConfig, plan: Plan | None = None):
        self.config = config
        self.plan = plan if plan is not None else load_plan(config.plan)
        self.router = Router(self.plan)
        self.metrics = EngineMetrics()
        self.decision_seq = 0                 # last decision sequence number given out
        self.batch_seq = 0                    # decision messages sent
        self.started = time.time()
        self.endpoints: dict[str, str] = {}
        self._stop = threading.Event()
        self._use_plan_tables(self.plan)
        self.control_handler = Control(self)    # the JSON requests of the control socket
        self._ctx: zmq.Context | None = None
        self._loop_file = False                # the compiled loop asked for an audit file
        self.audit: AuditWriter | None = None
        self._metrics_server = None
        self._last_heartbeat = 0.0
        self._last_fold = 0.0
        # route + audit message + DECISION message + counting of one batch, in one C call
        self._turn = _turn.EngineTurn(capacity=min(config.batch_max, 1 << 16))
        self._limits = wire.Limits(max_frame=config.max_frame)
        self._deadline_ns = int(config.deadline_ms * 1e6)
        self._memory = MemoryReturn()          # the heap back to the OS after a burst

    # -- setup and teardown -----------------------------------------------------------------
    def bind(self) -> dict[str, str]:
        """Open the audit and bind every socket; returns the actual endpoints."""
        c = self.config
        check_exposure(c)                       # before anything binds (docs/engine.md)
        recovered = recover(c.audit_dir)
        if recovered:
            _log(logging.WARNING, "audit recovered", files=[str(p) for p in recovered])
        self.audit = AuditWriter(c.audit_dir, rotate_bytes=int(c.rotate_mb * 1024 * 1024),
                                 rotate_seconds=c.rotate_s, fsync_interval_s=c.fsync_interval_s)
        self._ctx = zmq.Context()
        self._auth = start_authenticator(self._ctx, c.keys) if c.keys else None
        self.scans = self._socket(zmq.PULL, c.scans, "scans", rcvhwm=c.rcvhwm)
        self.decisions = self._socket(zmq.PUSH, c.decisions, "decisions", sndhwm=c.sndhwm)
        self.feedback = self._socket(zmq.PULL, c.feedback, "feedback", rcvhwm=c.rcvhwm)
        self.control = self._socket(zmq.ROUTER, c.control, "control")
        self.poller = zmq.Poller()
        for s in (self.scans, self.feedback, self.control):
            self.poller.register(s, zmq.POLLIN)
        # drain and send through libzmq's C API when pyzmq's libzmq can be found (else None)
        self._native_scans = self._native_decisions = self._loop = None
        if c.native_io:
            from sorter.engine.zmq_native import libzmq_symbols, native_socket
            self._native_scans = native_socket(self.scans)
            if self._native_scans is not None:
                self._native_decisions = native_socket(self.decisions)
                # the scan turns themselves in C (sorter.engine._scanloop), over the same libzmq
                self._loop = _scanloop.ScanLoop(
                    self.scans, self.decisions, self.feedback, self.control, libzmq_symbols(),
                    self._turn, batch_max=c.batch_max, max_frame=self._limits.max_frame,
                    max_records=self._limits.max_records, max_reads=self._limits.max_reads,
                    max_read_len=self._limits.max_read_len)
        if c.metrics:
            self.endpoints["metrics"] = self._start_metrics(c.metrics)
        # The plan, tables and modules live for the whole run: keep them out of every
        # collection, so a full collection does not stall the line.
        gc.collect()
        gc.freeze()
        return self.endpoints

    def _socket(self, kind: int, endpoint: str, name: str, *, rcvhwm: int = 0,
                sndhwm: int = 0) -> zmq.Socket:
        s = self._ctx.socket(kind)
        if rcvhwm:
            s.setsockopt(zmq.RCVHWM, rcvhwm)
        if sndhwm:
            s.setsockopt(zmq.SNDHWM, sndhwm)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.config.max_frame)
        if self.config.keys and (name == "control" or (name == "feedback"
                                                       and self.config.auth_feedback)):
            make_server(s, self.config.keys)
        s.bind(endpoint)
        self.endpoints[name] = s.getsockopt_string(zmq.LAST_ENDPOINT)
        return s

    def _start_metrics(self, address: str) -> str:
        from prometheus_client import CollectorRegistry, start_http_server
        from sorter.engine.metrics import GaugeCollector

        registry = CollectorRegistry()
        registry.register(self.metrics)
        registry.register(GaugeCollector({
            "sorter_decision_seq": ("Last decision sequence number", lambda: self.decision_seq),
            "sorter_chutes_unavailable": (
                "Chutes disabled or full", lambda: int((self.router.core.chute_states() != 0).sum())),
        }))
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
        self._metrics_server = server
        return f"http://{host or '127.0.0.1'}:{server.server_port}/metrics"

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def close(self) -> None:
        """Drain what is already queued, close the audit, close sockets, terminate."""
        if self._ctx is None:
            return
        if self._loop is not None and self._loop.pending:
            self._route_frames(*self._loop.take_frames())
        while self._route_queued():
            pass
        self._fold_metrics()
        self.audit.close()
        self.decisions.setsockopt(zmq.LINGER, self.config.linger_ms)
        for s in (self.scans, self.feedback, self.control, self.decisions):
            s.close()
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        self._ctx = None
        self.control_handler.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        _log(logging.INFO, "shutdown", decision_seq=self.decision_seq, **self.metrics.snapshot())

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        _log(logging.INFO, "ready", endpoints=self.endpoints, plan=self.plan.name,
             io="native" if self._native_scans is not None else "pyzmq",
             loop="compiled" if self._loop is not None else "python",
             plan_version=self.plan.version, audit_dir=self.config.audit_dir,
             config=asdict(self.config))
        try:
            while not self._stop.is_set():
                self.step(self.config.poll_ms)
        finally:
            self.close()

    def step(self, timeout_ms: int) -> None:
        """One turn: feedback, then control, then scans; timers at most every 100 ms.

        A turn with one scan message is the common case at low rates and its cost is the
        engine's added latency, so nothing else runs on it unless it is due. With native
        I/O the scan turns run in C (`sorter.engine._scanloop`) until something needs Python."""
        if self._loop is not None:
            self._step_loop(timeout_ms)
        else:
            self._step_python(timeout_ms)
        now = time.monotonic()
        if now - self._last_fold < 0.1:
            return
        self._last_fold = now
        self._fold_metrics()
        self._memory.tick(self.metrics.events)
        self.audit.tick()           # seals a file whose time is up on a quiet line
        if now - self._last_heartbeat >= 1.0:
            self._last_heartbeat = now
            seq = (self.batch_seq + 1) & 0xFFFFFFFF       # a message on the link: one more
            try:
                self.decisions.send(wire.encode_heartbeat(seq), zmq.NOBLOCK)
                self.batch_seq = seq
            except zmq.Again:
                pass

    def _step_loop(self, timeout_ms: int) -> None:
        """Let the compiled loop turn until the timers are due (or 2 ms while a plan loads),
        then do what it returned for: feedback and control, frames for the Python path
        (malformed, not UTF-8), a new audit file, a metrics fold."""
        loop = self._loop
        now_ns, mono_ns = time.time_ns(), time.monotonic_ns()
        until_mono_ns = max(mono_ns, int((self._last_fold + 0.1) * 1e9))   # _last_fold: s
        if self.control_handler.loading:
            until_mono_ns = min(until_mono_ns, mono_ns + 2_000_000)
        loop.decision_seq, loop.batch_seq = self.decision_seq, self.batch_seq
        # a file is opened only when the loop asked for one (no empty files on a quiet line)
        loop.lend(*self.audit.lend(now_ns, self.decision_seq + 1, open_file=self._loop_file))
        self._loop_file = False
        try:
            code = loop.run(self.router.core, self._version_bytes, self._name_offsets,
                            self._name_data, self._deadline_ns, until_mono_ns, timeout_ms)
        except BaseException as e:
            self._settle_loop(failed=isinstance(e, OSError))
            raise
        self._settle_loop(failed=False)
        if code == _scanloop.OTHER:
            for sock, _ in self.poller.poll(0):
                if sock is self.feedback:
                    self._drain_feedback()
                elif sock is self.control:
                    self.control_handler.handle()
        elif code == _scanloop.FALLBACK:
            self._route_frames(*loop.take_frames())
        elif code == _scanloop.AUDIT:
            self._loop_file = True               # the next lend opens a file
        elif code == _scanloop.COUNTS:
            self._fold_metrics()
        self.control_handler.finish_plan_load()

    def _settle_loop(self, *, failed: bool) -> None:
        """Take over what the compiled loop did: audit positions, sequences, counters."""
        loop = self._loop
        pos, blocks, rows, fsyncs = loop.take_audit()
        self.audit.settle(pos, blocks, rows, fsyncs, failed=failed)
        self.decision_seq, self.batch_seq = loop.decision_seq, loop.batch_seq
        messages, undelivered = loop.take_counters()
        self.metrics.messages += messages
        if undelivered:
            self._undelivered(undelivered)

    def _step_python(self, timeout_ms: int) -> None:
        scans_ready = False
        for sock, _ in self.poller.poll(timeout_ms):
            if sock is self.scans:
                scans_ready = True            # routed last: feedback and plans apply first
            elif sock is self.feedback:
                self._drain_feedback()
            elif sock is self.control:
                self.control_handler.handle()
        self.control_handler.finish_plan_load()
        if scans_ready:
            self._route_queued()

    def _route_queued(self) -> int:
        """Drain up to batch_max queued events, route them, audit, send. Returns events.

        Frames are received in one C loop through libzmq's C API (`native_io`), else by
        pyzmq."""
        frames, times = (self._native_scans.drain(self.config.batch_max)
                         if self._native_scans is not None else self._drain_pyzmq())
        return self._route_frames(frames, times)

    def _route_frames(self, frames: list, times) -> int:
        """Decode received frames in one compiled call (a malformed frame is rejected alone
        and audited), then route, audit and send their events. Returns events."""
        if not frames:
            return 0
        self.metrics.messages += len(frames)
        scans = wire.decode_scans(frames, limits=self._limits)
        if scans.errors:
            for index, error in scans.errors:
                self._malformed(frames[index], error, int(times[index]))
        if len(scans.seq) == 0:
            return 0
        # receive time per event: one frame (the usual case) needs no per-event array
        recv_ns = int(times[0]) if len(frames) == 1 else (
            np.asarray(times, np.int64)[scans.frame_of_event()])
        self._decide(scans.events, scans.seq, recv_ns)
        return len(scans.seq)

    def _drain_pyzmq(self) -> tuple[list[bytes], list[int]]:
        """The queued frames (up to batch_max events) and their receive times, by pyzmq. A
        lone message, the usual case at low rates, is seen to be alone with one ZMQ_EVENTS
        check (~2 us); raising zmq.Again costs ~6 us, so the queue is read until Again only
        when there was more than one."""
        scans, clock = self.scans, time.time_ns
        try:
            frame = scans.recv(zmq.NOBLOCK)
        except zmq.Again:
            return [], []
        frames, times = [frame], [clock()]
        n = int.from_bytes(frame[4:8], "little") if len(frame) >= 8 else 0
        limit = self.config.batch_max
        if n < limit and scans.get(zmq.EVENTS) & zmq.POLLIN:
            while n < limit:
                try:
                    frame = scans.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                frames.append(frame)
                times.append(clock())
                n += int.from_bytes(frame[4:8], "little") if len(frame) >= 8 else 0
        return frames, times

    def _decide(self, batch, seq: np.ndarray, recv_ns) -> None:
        """Route, audit, send one batch: the routing and both encodings in one compiled call
        (`sorter.engine._turn`), then the audit write, then the send (write-before-send)."""
        n = len(seq)
        now = time.time_ns()
        first = self.decision_seq + 1
        self.batch_seq = (self.batch_seq + 1) & 0xFFFFFFFF
        turn = self._turn
        message = turn.run(self.router.core, batch.parcel_ids, batch.scanner_ids, batch.ts_ns,
                           batch.recirculations, batch.event_offsets, batch.read_offsets,
                           batch.data, seq, now, self._deadline_ns, first, self._version_bytes,
                           self._name_offsets, self._name_data, self.batch_seq,
                           self._limits.max_frame, self._limits.max_records)
        self.decision_seq += n
        if turn.audit_length >= 0:
            self.audit.write_message(turn.encoder, n, first, now)
        else:                                     # reads that are not UTF-8: pyarrow transcodes
            self.audit.write_decisions(batch, seq, Decisions(*turn.decisions()), first,
                                       self._names, self.router.plan.version, now)
        if self._native_decisions is not None:
            delivered = self._native_decisions.send(message)
        else:
            try:
                self.decisions.send(message, zmq.NOBLOCK)
                delivered = True
            except zmq.Again:
                delivered = False
        if not delivered:
            self._undelivered(n)
        # kept by the turn, folded into the histograms by the next timer turn
        sent = time.time_ns()
        if not turn.count(sent, recv_ns):
            self._fold_metrics()
            turn.count(sent, recv_ns)

    def _undelivered(self, n: int) -> None:
        self.metrics.decisions_undelivered += n
        if self.metrics.decisions_undelivered == n:
            _log(logging.WARNING, "decisions undelivered: PLC side absent or slow",
                 events=n, decision_seq=self.decision_seq)

    def _fold_metrics(self) -> None:
        """Fold the batches routed since the last fold into counters and histograms."""
        reason, scan_ns, engine_ns, batches = self._turn.take_counts()
        if batches:
            with self.metrics.lock:
                m = self.metrics
                m.events += len(reason)
                m.batches += batches
                m.decisions_by_reason += np.bincount(reason, minlength=len(REASONS))
                m.scan_to_decision.observe_ns(scan_ns)
                m.engine_latency.observe_ns(engine_ns)

    def _malformed(self, frame: bytes, error: wire.WireError, now_ns: int) -> None:
        with self.metrics.lock:
            self.metrics.malformed += 1
            by = self.metrics.malformed_by_error
            by[error.code] = by.get(error.code, 0) + 1
        self.audit.write_malformed(frame, f"{error.code}: {error}", 0, now_ns)
        if self.metrics.malformed <= 10 or self.metrics.malformed % 1000 == 0:
            _log(logging.WARNING, "malformed message", error=error.code, detail=str(error),
                 bytes=len(frame), count=self.metrics.malformed)

    # -- PLC feedback -----------------------------------------------------------------------
    def _drain_feedback(self) -> None:
        while True:
            try:
                frame = self.feedback.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.metrics.feedback_messages += 1
            try:
                header, payload = wire.decode_message(frame, limits=self._limits)
                if header.kind == wire.CHUTE_STATUS:
                    for chute, state in zip(payload.chute.tolist(), payload.state.tolist()):
                        self.router.set_chute_state(chute, state)
                    self.metrics.chute_status_updates += len(payload)
                elif header.kind == wire.SORT_CONFIRM:
                    counts = np.bincount(payload.outcome, minlength=len(wire.OUTCOMES))
                    for name, count in zip(wire.OUTCOMES, counts.tolist()):
                        self.metrics.confirmations[name] += count
                elif header.kind != wire.HEARTBEAT:
                    raise wire.WireError("unexpected_kind", 3,
                                         f"{header.kind_name} on the feedback socket")
            except wire.WireError as e:
                self._malformed(frame, e, time.time_ns())

    def status(self) -> dict:
        """The `status` reply (also for tests and tools in the same process)."""
        return self.control_handler.status()

    def use_plan(self, plan: Plan, compiled) -> None:
        """Swap to a loaded plan between batches (atomic for routing)."""
        self.router.swap_plan(plan, compiled)
        self.plan = plan
        gc.freeze()
        self._use_plan_tables(plan)

    def _use_plan_tables(self, plan: Plan) -> None:
        """What the audit and the DECISION messages need of a plan, made once per plan:
        destination names by id (an Arrow array, which the audit caches, and its offsets and
        bytes for the compiled turn) and the version as UTF-8."""
        self._names = pa.array([d.name for d in plan.destinations], pa.string())
        self._name_offsets, self._name_data = arrow_offsets_data(self._names)
        self._version_bytes = plan.version.encode("utf-8")


def run(config: EngineConfig) -> int:
    """`sorter run`: bind, serve until stopped, exit 0 after a clean drain."""
    setup_logging(config.log_level)
    try:
        engine = Engine(config)
    except PlanError as e:
        for p in e.problems:
            _log(logging.ERROR, "plan problem", problem=str(p))
        return 1
    engine.install_signal_handlers()
    try:
        engine.bind()
    except zmq.ZMQError as e:
        _log(logging.ERROR, "cannot bind", error=str(e), endpoints=engine.endpoints)
        engine.audit and engine.audit.close()
        return 1
    _log(logging.INFO, "plan loaded", plan=engine.plan.name, plan_version=engine.plan.version,
         source=engine.plan.source)
    engine.serve()
    return 0

