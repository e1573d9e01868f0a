"""The engine process: scan events in over ZeroMQ, decisions out, every decision audited.

One thread owns every socket and the router, so a batch is routed, journaled and sent without
locks. The loop drains what is queued (up to `batch_max` events), never waits to fill a batch,
and applies PLC feedback and control requests between batches: chute states and plan swaps
take effect at batch boundaries. Write-before-send: a turn's record reaches the audit journal
(the OS) before its DECISION message reaches the PLC socket; a decision that could not be
journaled is withheld. The compactor process turns the journal into Arrow files behind the
engine. docs/engine.md describes sockets, settings and behaviour.
"""
from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict

import numpy as np
import zmq

from sorter.engine import _turn
from sorter import jsonlog, wire
from sorter.audit import AuditLocked, journal
from sorter.audit.compactor import Compactor
from sorter.audit.files import last_decision_seq
from sorter.core.codes import REASONS
from sorter.engine.config import EngineConfig
from sorter.engine.control import Control
from sorter.engine.keys import check_exposure, make_server, start_authenticator
from sorter.engine.memory import MemoryReturn
from sorter.engine.metrics import EngineMetrics
from sorter.plan import Plan, PlanError, load_plan
from sorter.core.router import Router

log = logging.getLogger("sorter.engine")

def setup_logging(level: str = "INFO", log_file: str | None = None) -> None:
    """JSON lines on stderr, and also appended to `log_file` if given (never into the audit
    directory: it holds audit data only)."""
    jsonlog.setup_logging(("sorter",), level, log_file=log_file)


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
        self.control_handler = Control(self)    # the JSON requests of the control socket
        self._ctx: zmq.Context | None = None
        self.journal: journal.JournalWriter | None = None
        self.compactor: Compactor | None = None
        self._lock_fd: int | None = None
        self.audit_unavailable = False          # the journal cannot be written: withholding
        self.decisions_withheld = 0             # decisions not made: could not be journaled
        self._last_retry = 0.0
        self._metrics_server = None
        self._last_heartbeat = 0.0
        self._last_fold = 0.0
        self._limits = wire.Limits(max_frame=config.max_frame)
        self._memory = MemoryReturn()          # the heap back to the OS after a burst
        self._auth = None                      # zmq.auth's authenticator when keys are set
        self._deadline_ns = int(config.deadline_ms * 1e6)
        # route + DECISION message + counting of one batch, in one C call
        self._turn = _turn.BatchDecider(capacity=min(config.batch_max, 1 << 16))
        self._use_plan_tables(self.plan)

    # -- setup and teardown -----------------------------------------------------------------
    def bind(self) -> dict[str, str]:
        """Open the audit and bind every socket; returns the actual endpoints. Raises
        AuditLocked when another engine holds the audit directory."""
        c = self.config
        check_exposure(c)                       # before anything binds (docs/engine.md)
        self.open_audit()
        self._ctx = zmq.Context()
        self._auth = start_authenticator(self._ctx, c.keys) if c.keys else None
        self.scans = self._socket(zmq.PULL, c.scans, "scans", rcvhwm=c.rcvhwm)
        self.decisions = self._socket(zmq.PUSH, c.decisions, "decisions", sndhwm=c.sndhwm)
        self.feedback = self._socket(zmq.PULL, c.feedback, "feedback", rcvhwm=c.rcvhwm)
        self.control = self._socket(zmq.ROUTER, c.control, "control")
        self.poller = zmq.Poller()
        for s in (self.scans, self.feedback, self.control):
            self.poller.register(s, zmq.POLLIN)
        if c.metrics:
            self.endpoints["metrics"] = self._start_metrics(c.metrics)
        # The plan, tables and modules live for the whole run: keep them out of every
        # collection, so a full collection does not stall the line.
        gc.collect()
        gc.freeze()
        return self.endpoints

    def open_audit(self) -> None:
        """Lock the audit directory, recover the journal (torn tails cut, open segments
        sealed), continue decision_seq from the highest on disk, start the compactor and the
        journal writer."""
        c = self.config
        self._lock_fd = journal.lock_directory(c.audit_dir)
        recovered = journal.recover(c.audit_dir)
        self.decision_seq = max(recovered.last_decision_seq, last_decision_seq(c.audit_dir))
        if recovered.sealed or recovered.torn:
            _log(logging.WARNING, "audit recovered", segments=[str(p) for p in recovered.sealed],
                 torn_tails=len(recovered.torn),
                 torn=[{"segment": str(p), "offset": o, "problem": w} for p, o, w in recovered.torn],
                 decision_seq=self.decision_seq)
        self.audit_torn_tails = len(recovered.torn)
        self.compactor = Compactor(c.audit_dir, interval_s=1.0, process=True).start()
        self.journal = journal.JournalWriter(
            c.audit_dir, segment_bytes=int(getattr(c, "segment_mb", 64.0) * (1 << 20)),
            seal_after_s=getattr(c, "compact_s", 5.0), fsync_interval_s=c.fsync_interval_s,
            on_seal=self.compactor.wake, lock_fd=self._lock_fd)
        self.journal.set_plan(time.time_ns(), self.plan.version, self._names)

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
        from sorter.engine.metrics import ChuteCollector, GaugeCollector

        registry = CollectorRegistry()
        registry.register(self.metrics)
        registry.register(ChuteCollector(self.metrics, lambda: self.plan))
        registry.register(GaugeCollector({
            "sorter_decision_seq": ("Last decision sequence number", lambda: self.decision_seq),
            "sorter_chutes_unavailable": (
                "Chutes disabled or full", lambda: int((self.router.core.chute_states() != 0).sum())),
            "sorter_audit_unavailable": (
                "1 while the audit journal cannot be written (decisions withheld)",
                lambda: int(self.audit_unavailable)),
            "sorter_decisions_withheld": (
                "Decisions withheld because they could not be journaled (total)",
                lambda: self.decisions_withheld),
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
        """Drain what is already queued, seal the journal, compact it, close sockets,
        terminate, release the audit directory."""
        if self._ctx is not None:
            while self._route_queued():
                pass
            self._fold_metrics()
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
        self.close_audit()
        _log(logging.INFO, "shutdown", decision_seq=self.decision_seq,
             decisions_withheld=self.decisions_withheld, **self.metrics.snapshot())

    def close_audit(self) -> None:
        """Seal the journal, compact what it holds (a clean stop leaves only Arrow files),
        then release the directory's lock."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.compactor is not None:
            self.compactor.stop(finish=True)
            self.compactor = None
        if self._lock_fd is not None:
            import os
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        _log(logging.INFO, "ready", endpoints=self.endpoints, plan=self.plan.name,
             io="pyzmq", loop="python", plan_version=self.plan.version,
             audit_dir=self.config.audit_dir, decision_seq=self.decision_seq,
             config=asdict(self.config))
        try:
            while not self._stop.is_set():
                self.step(self.config.poll_ms)
        finally:
            self.close()

    def step(self, timeout_ms: int) -> None:
        """One turn: feedback, then control, then scans; timers at most every 100 ms.

        A turn with one scan message is the common case at low rates and its cost is the
        engine's added latency, so nothing else runs on it unless it is due."""
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
        now = time.monotonic()
        if now - self._last_fold < 0.1:
            return
        self._last_fold = now
        self._fold_metrics()
        self._memory.tick(self.metrics.events)
        if self.audit_unavailable:
            if now - self._last_retry >= 1.0:
                self._retry_audit(now)
        else:
            self.journal.tick()        # seals a segment whose time is up: the compactor's
        if now - self._last_heartbeat >= 1.0:
            self._last_heartbeat = now
            seq = (self.batch_seq + 1) & 0xFFFFFFFF       # a message on the link: one more
            try:
                self.decisions.send(wire.encode_heartbeat(seq), zmq.NOBLOCK)
                self.batch_seq = seq
            except zmq.Again:
                pass

    # -- audit availability -----------------------------------------------------------------
    def _audit_failed(self, error: OSError) -> None:
        """A journal write failed: withhold decisions until a retry succeeds."""
        if not self.audit_unavailable:
            self.audit_unavailable = True
            self._last_retry = time.monotonic()
            _log(logging.ERROR, "audit unavailable: decisions withheld until the journal can "
                 "be written", error=str(error), errno=error.errno,
                 audit_dir=self.config.audit_dir, decision_seq=self.decision_seq)

    def _retry_audit(self, now: float) -> None:
        """Once a second while unavailable: open a new journal segment (its PLAN record
        first); on success decisions resume."""
        self._last_retry = now
        try:
            self.journal.probe()
        except OSError:
            return
        self.audit_unavailable = False
        _log(logging.WARNING, "audit available again: decisions resume",
             decisions_withheld=self.decisions_withheld, decision_seq=self.decision_seq)

    def _route_queued(self) -> int:
        """Drain up to batch_max queued events, route them, journal, send. Returns events."""
        frames, times = self._drain_pyzmq()
        return self._route_frames(frames, times)

    def _route_frames(self, frames: list, times) -> int:
        """Decode received frames in one compiled call (a malformed frame is rejected alone
        and audited), then route, journal and send their events. Returns events."""
        if not frames:
            return 0
        self.metrics.messages += len(frames)
        scans = wire.decode_scans(frames, limits=self._limits)
        if scans.errors:
            for index, error in scans.errors:
                self._malformed(frames[index], error, int(times[index]))
        n = len(scans.seq)
        if n == 0:
            return 0
        # the frames the events came from (journaled as they were received)
        routed = frames if len(frames) == 1 else [
            f for f, k in zip(frames, scans.counts.tolist()) if k]
        # receive time per event: one frame (the usual case) needs no per-event array
        recv_ns = int(times[0]) if len(frames) == 1 else (
            np.repeat(np.asarray(times, np.int64), scans.counts))
        self._decide(scans.events, scans.seq, routed, recv_ns)
        return n

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

    def _decide(self, batch, seq: np.ndarray, frames: list, recv_ns) -> None:
        """Route, journal, send one batch: routing and the DECISION message in one compiled
        call (`sorter.engine._turn`), then one journal record (one write(2)), then the send
        (write-before-send). A batch that could not be journaled is withheld: no decision
        number is used up and nothing is sent."""
        n = len(seq)
        if self.audit_unavailable:
            self.decisions_withheld += n
            return
        now = time.time_ns()
        first = self.decision_seq + 1
        batch_seq = (self.batch_seq + 1) & 0xFFFFFFFF
        turn = self._turn
        message = turn.run(self.router.core, batch, seq, now, first, batch_seq)
        try:
            self.journal.append(journal.decisions_parts(now, frames, message,
                                                         turn.decisions()[2]))
        except OSError as e:
            self._audit_failed(e)
            self.decisions_withheld += n
            return
        self.decision_seq += n
        self.batch_seq = batch_seq
        try:
            self.decisions.send(message, zmq.NOBLOCK)
        except zmq.Again:
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
        chutes = self._turn.take_chutes()
        reason, scan_ns, engine_ns, batches = self._turn.take_counts()
        states = self.router.core.chute_states()
        with self.metrics.lock:
            self.metrics.chutes.fold(chutes, states)     # per chute: one bincount per fold
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
        if not self.audit_unavailable:
            try:
                self.journal.append(journal.malformed_record(now_ns, frame,
                                                             f"{error.code}: {error}"))
            except OSError as e:
                self._audit_failed(e)
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
        """What the journal and the DECISION messages need of a plan, made once per plan:
        the destination names by id (a PLAN record in the journal) and the version."""
        self._names = [d.name for d in plan.destinations]
        self._turn.configure(plan.version.encode("utf-8"), self._deadline_ns,
                             self._limits.max_frame, self._limits.max_records,
                             self.config.decision_version)
        if self.journal is not None:
            try:
                self.journal.set_plan(time.time_ns(), plan.version, self._names)
            except OSError as e:
                self._audit_failed(e)


def run(config: EngineConfig) -> int:
    """`sorter run`: bind, serve until stopped, exit 0 after a clean drain."""
    setup_logging(config.log_level, getattr(config, "log_file", None))
    try:
        engine = Engine(config)
    except PlanError as e:
        for p in e.problems:
            _log(logging.ERROR, "plan problem", problem=str(p))
        return 1
    engine.install_signal_handlers()
    try:
        engine.bind()
    except AuditLocked as e:
        print(f"sorter run: {e}", file=sys.stderr)       # one line, no traceback
        return 1
    except zmq.ZMQError as e:
        _log(logging.ERROR, "cannot bind", error=str(e), endpoints=engine.endpoints)
        engine.close_audit()
        return 1
    _log(logging.INFO, "plan loaded", plan=engine.plan.name, plan_version=engine.plan.version,
         source=engine.plan.source)
    engine.serve()
    return 0

