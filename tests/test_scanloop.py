"""The engine's scan turns in C (`sorter.engine._scanloop.ScanLoop`) on real loopback sockets and real audit
files: it decides as the Router does, writes every decision to the lent audit file before it
sends it, and returns to Python, keeping what it drained, whenever Python has to act."""
from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter.engine import _scanloop, _turn
from sorter import wire
from sorter.audit import AuditWriter, read_audit
from sorter.core.codes import REASONS
from sorter.core.events import EventBatch, arrow_offsets_data
from sorter.plan import load_plan
from sorter.core.router import Router
from sorter.engine.zmq_native import libzmq_symbols

from strategies import event_streams, plans

SYMBOLS = libzmq_symbols()
pytestmark = pytest.mark.skipif(SYMBOLS is None, reason="pyzmq's libzmq not found here")
PLAN = load_plan(None)
NS = 1_000_000_000


class Rig:
    """The engine's four sockets, bound on loopback, with the peers of each, and a ScanLoop."""

    def __init__(self, tmp_path, plan=PLAN, *, batch_max=1024, count_capacity=1 << 16,
                 max_frame=1 << 20, plc=True, transport="inproc", **audit_options):
        self.ctx = zmq.Context()
        self.transport, self.endpoints = transport, 0
        self.scans, self.scanner = self._pair(zmq.PULL, zmq.PUSH)
        self.decisions, self.plc = self._pair(zmq.PUSH, zmq.PULL, connect=plc)
        self.feedback, self.feeder = self._pair(zmq.PULL, zmq.PUSH)
        self.control = self._socket(zmq.REP)
        self.control.bind(self._endpoint())
        self.turn = _turn.EngineTurn(capacity=4, count_capacity=count_capacity)
        self.loop = _scanloop.ScanLoop(self.scans, self.decisions, self.feedback, self.control, SYMBOLS,
                               self.turn, batch_max=batch_max, max_frame=max_frame,
                               max_records=1 << 20, max_reads=255, max_read_len=65535)
        self.use_plan(plan)
        self.audit = AuditWriter(tmp_path / "audit", **audit_options)

    def _socket(self, kind):
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        return s

    def _endpoint(self) -> str:
        """inproc (a sent message is queued when send returns: what a test sends is all
        there for the next drain) or TCP on loopback, as the engine binds."""
        self.endpoints += 1
        return (f"inproc://line-{id(self)}-{self.endpoints}" if self.transport == "inproc"
                else "tcp://127.0.0.1:*")

    def _pair(self, kind, peer_kind, connect=True):
        """A bound socket and its connected peer, the connection made (one blocking round
        trip: until then a PUSH has no peer and a non-blocking send fails)."""
        bound, peer = self._socket(kind), self._socket(peer_kind)
        bound.bind(self._endpoint())
        if not connect:
            return bound, None
        peer.connect(bound.getsockopt_string(zmq.LAST_ENDPOINT))
        sender, receiver = (peer, bound) if kind == zmq.PULL else (bound, peer)
        receiver.setsockopt(zmq.RCVTIMEO, 5000)
        sender.send(b"hello")
        assert receiver.recv() == b"hello"
        return bound, peer

    def use_plan(self, plan):
        self.plan = plan
        self.router = Router(plan)
        names = pa.array([d.name for d in plan.destinations], pa.string())
        self.name_offsets, self.name_data = arrow_offsets_data(names)

    def lend(self, now_ns=None, open_file=True):
        now_ns = time.time_ns() if now_ns is None else now_ns
        self.loop.lend(*self.audit.lend(now_ns, self.loop.decision_seq + 1,
                                        open_file=open_file))

    def settle(self):
        self.audit.settle(*self.loop.take_audit())

    def run(self, seconds=0.05, deadline_ns=0, timeout_ms=10):
        return self.loop.run(self.router.core, self.plan.version.encode(), self.name_offsets,
                             self.name_data, deadline_ns,
                             time.monotonic_ns() + int(seconds * NS), timeout_ms)

    def send(self, batch: EventBatch, seq=None) -> bytes:
        seq = np.arange(len(batch), dtype=np.uint64) if seq is None else seq
        frame = wire.encode_scan(batch, seq)
        self.scanner.send(frame)
        return frame

    def wait_queued(self, sock=None):
        sock = self.scans if sock is None else sock
        deadline = time.monotonic() + 5
        while not sock.get(zmq.EVENTS) & zmq.POLLIN:
            assert time.monotonic() < deadline, "nothing arrived"
            time.sleep(0.002)

    def decisions_received(self, timeout_ms=2000) -> list[wire.DecisionBatch]:
        out = []
        while self.plc.poll(timeout_ms if not out else 0):
            header, payload = wire.decode_message(self.plc.recv())
            if header.kind == wire.DECISION:
                out.append(payload)
        return out

    def close(self):
        self.audit.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def batch_of(reads, first=0, ts_ns=None, recirculations=None) -> EventBatch:
    n = len(reads)
    return EventBatch.from_reads(
        reads, parcel_ids=np.arange(first, first + n, dtype=np.uint64),
        ts_ns=np.full(n, time.time_ns(), np.int64) if ts_ns is None else ts_ns,
        recirculations=recirculations)


def utf8(batch: EventBatch) -> bool:
    try:
        bytes(batch.data).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ------------------------------------------------------------------------- decisions and audit


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_line_decides_as_the_router_and_audits_before_it_sends(tmp_path_factory, data):
    """On generated plans and streams (each batch split over 1-3 messages): every event gets
    exactly one decision, equal to the Router's; decision numbers count up without gaps; the
    audit holds exactly what was sent. A batch with a read that is not UTF-8 comes back as
    FALLBACK with nothing routed (the engine's Python path then routes it, as here)."""
    plan = data.draw(plans())
    stream = data.draw(event_streams(plan, max_batches=4, max_events=10))
    rig = Rig(tmp_path_factory.mktemp("line"), plan, fsync_interval_s=None)
    reference = Router(plan)
    sent, first = [], 0
    try:
        for events, recirc, ts, states in stream:
            for chute, state in states.items():
                rig.router.set_chute_state(chute, state)
                reference.set_chute_state(chute, state)
            if not events:
                continue
            batch = batch_of(events, first, np.array(ts, np.int64), recirc)
            cuts = sorted(data.draw(st.sets(st.integers(1, len(events) - 1), max_size=2))
                          if len(events) > 1 else [])
            frames = []
            for a, b in zip([0] + cuts, cuts + [len(events)]):
                frames.append(rig.send(
                    batch_of(events[a:b], first + a, np.array(ts[a:b], np.int64), recirc[a:b]),
                    np.arange(first + a, first + b, dtype=np.uint64)))
            want = reference.route(batch)
            rig.lend()
            code = rig.run()
            rig.settle()
            if not utf8(batch):
                assert code == _scanloop.FALLBACK
                got_frames, times = rig.loop.take_frames()
                assert got_frames == frames and len(times) == len(frames)
                # what the engine's Python path does: route (the same cursor moves once)
                assert rig.router.route(batch).chute.tolist() == want.chute.tolist()
            else:
                assert code == _scanloop.TIMER
                sent.append((batch, want))
            first += len(events)
        got = rig.decisions_received() if sent else []
        n_sent = sum(len(b) for b, _ in sent)
        parcel = np.concatenate([d.parcel_id for d in got]) if got else np.zeros(0)
        assert parcel.tolist() == np.concatenate(
            [b.parcel_ids for b, _ in sent]).tolist() if sent else parcel.size == 0
        if sent:
            chute = np.concatenate([d.chute for d in got])
            reason = np.concatenate([d.reason for d in got])
            assert chute.tolist() == np.concatenate([w.chute for _, w in sent]).tolist()
            assert reason.tolist() == np.concatenate([w.reason for _, w in sent]).tolist()
            dseq = np.concatenate([d.decision_seq for d in got]).tolist()
            assert dseq == list(range(1, n_sent + 1))
            assert {d.plan_version for d in got} == {plan.version}
        assert rig.loop.decision_seq == n_sent
        rig.audit.close()
        table = read_audit(rig.audit.directory) if n_sent else None
        if n_sent:
            assert table.column("decision_seq").to_pylist() == list(range(1, n_sent + 1))
            assert table.column("parcel_id").to_pylist() == parcel.tolist()
            assert table.column("chute").to_pylist() == chute.tolist()
            assert table.column("reason").to_pylist() == [REASONS[r] for r in reason]
        assert rig.audit.rows_written == n_sent
    finally:
        rig.close()


def test_late_scans_and_receive_counts(tmp_path):
    """Over TCP, as the engine binds: the deadline is applied at decision time; counts hold
    scan -> sent and received -> sent per event."""
    rig = Rig(tmp_path, transport="tcp")
    try:
        _late_scans_and_receive_counts(rig)
    finally:
        rig.close()


def _late_scans_and_receive_counts(rig):
    now = time.time_ns()
    rig.send(batch_of([[b"050012"], [b"050013"]], ts_ns=np.array([now - 10 * NS, now],
                                                                     np.int64)))
    rig.wait_queued()
    rig.lend()
    assert rig.run(deadline_ns=NS) == _scanloop.TIMER
    rig.settle()
    (got,) = rig.decisions_received()
    assert [REASONS[r] for r in got.reason] == ["late", "sorted"]
    reason, scan_ns, engine_ns, batches = rig.turn.take_counts()
    assert batches == 1 and [REASONS[r] for r in reason] == ["late", "sorted"]
    assert scan_ns[0] >= 10 * NS and 0 <= scan_ns[1] < NS
    assert (engine_ns >= 0).all() and (engine_ns < NS).all()
    assert rig.loop.take_counters() == (1, 0)


# ------------------------------------------------------------------------- returns to Python


def test_malformed_frame_falls_back_with_every_frame_untouched(rig):
    good = rig.send(batch_of([[b"050012"]]))
    rig.scanner.send(b"PS\x09garbage")
    rig.wait_queued()
    time.sleep(0.01)
    rig.lend()
    assert rig.run() == _scanloop.FALLBACK
    rig.settle()
    assert rig.loop.pending == 2
    frames, times = rig.loop.take_frames()
    assert frames == [good, b"PS\x09garbage"]
    assert times.dtype == np.int64 and times[0] <= times[1] <= time.time_ns()
    assert rig.loop.pending == 0 and rig.loop.decision_seq == 0
    assert rig.audit.rows_written == 0
    assert not rig.plc.poll(100)                          # nothing sent
    assert rig.loop.take_counters() == (0, 0)


def test_non_utf8_read_falls_back_before_routing(tmp_path):
    """Routing moves round-robin cursors: a batch handed back must not have been routed."""
    plan = load_plan(None)
    rig = Rig(tmp_path, plan)
    try:
        astana = next(d for d in plan.destinations if d.name == "ASTANA")
        assert astana.policy == "round_robin" and len(astana.chutes) == 4
        reference = Router(plan)
        probe = [[b"010000"]] * 4                          # postcode 01: ASTANA
        rig.send(batch_of([[b"\xff\xfe"], [b"010000"]]))
        rig.wait_queued()
        rig.lend()
        assert rig.run() == _scanloop.FALLBACK
        rig.loop.take_frames()
        rig.send(batch_of(probe, first=10))
        rig.wait_queued()
        assert rig.run() == _scanloop.TIMER
        rig.settle()
        (got,) = rig.decisions_received()
        assert got.chute.tolist() == reference.route(batch_of(probe)).chute.tolist()
    finally:
        rig.close()


def test_no_file_lent_then_a_file_lent(rig):
    frame = rig.send(batch_of([[b"050012"]]))
    rig.wait_queued()
    rig.lend(open_file=False)                             # no file yet: none is opened
    assert rig.audit.path is None
    assert rig.run() == _scanloop.AUDIT
    rig.settle()
    assert rig.loop.pending == 1 and not rig.plc.poll(50)
    rig.lend(open_file=True)
    assert rig.audit.path is not None
    assert rig.run() == _scanloop.TIMER
    rig.settle()
    assert rig.loop.pending == 0 and len(rig.decisions_received()) == 1
    assert rig.audit.rows_written == 1
    del frame


def test_a_full_file_is_sealed_and_the_next_lent(tmp_path):
    rig = Rig(tmp_path, rotate_bytes=4096, fsync_interval_s=None, batch_max=1)
    try:
        for k in range(12):                               # ~1.1 KB per one-event message
            rig.send(batch_of([[b"050012"]], first=k))
        rig.wait_queued()
        time.sleep(0.02)
        codes = []
        while rig.loop.decision_seq < 12:
            rig.lend()
            codes.append(rig.run(seconds=0.02))
            rig.settle()
        assert _scanloop.AUDIT in codes
        assert sum(len(d) for d in rig.decisions_received()) == 12
        rig.audit.close()
        assert len(rig.audit.files) >= 3
        table = read_audit(rig.audit.directory)
        assert sorted(table.column("decision_seq").to_pylist()) == list(range(1, 13))
    finally:
        rig.close()


def test_a_file_whose_time_is_up_is_not_written(rig):
    rig.send(batch_of([[b"050012"]]))
    rig.wait_queued()
    fd, pos, limit, until, each = rig.audit.lend(time.time_ns(), 1, open_file=True)
    rig.loop.lend(fd, pos, limit, time.time_ns() - 1, each)   # its time is up
    assert rig.run() == _scanloop.AUDIT
    assert rig.loop.take_audit()[1].shape == (0, 2)
    assert rig.loop.pending == 1


def test_waiting_feedback_or_control_returns_other_and_leaves_the_scans(rig):
    rig.send(batch_of([[b"050012"]]))
    rig.feeder.send(wire.encode_chute_status([5], ["disabled"]))
    rig.wait_queued()
    rig.wait_queued(rig.feedback)
    rig.lend()
    assert rig.run() == _scanloop.OTHER
    assert rig.feedback.recv(zmq.NOBLOCK)                 # still there for Python
    assert rig.loop.pending == 0 and rig.loop.decision_seq == 0
    assert rig.run() == _scanloop.TIMER                        # now the scan
    rig.settle()
    assert rig.loop.decision_seq == 1
    req = rig._socket(zmq.REQ)
    req.connect(rig.control.getsockopt_string(zmq.LAST_ENDPOINT))
    req.send(b"{}")
    rig.wait_queued(rig.control)
    rig.lend()
    assert rig.run() == _scanloop.OTHER


def test_timer_returns_when_due_and_waits_no_longer(rig):
    rig.lend(open_file=False)
    t0 = time.monotonic()
    assert rig.run(seconds=0.03, timeout_ms=1000) == _scanloop.TIMER
    assert 0.025 <= time.monotonic() - t0 < 1.0


def test_full_count_buffers_return_counts_first(tmp_path):
    rig = Rig(tmp_path, count_capacity=2)
    try:
        rig.send(batch_of([[b"050012"], [b"050013"]]))
        rig.wait_queued()
        rig.lend()
        assert rig.run() == _scanloop.TIMER
        rig.send(batch_of([[b"050014"]], first=2))
        rig.wait_queued()
        assert rig.run() == _scanloop.COUNTS                   # 2 + 1 > 2: fold first
        assert rig.loop.pending == 1
        assert rig.turn.take_counts()[3] == 1
        assert rig.run() == _scanloop.TIMER
        rig.settle()
        assert rig.loop.decision_seq == 3
    finally:
        rig.close()


def test_fsync_each_message_and_heartbeats(tmp_path):
    rig = Rig(tmp_path, fsync_interval_s=0)
    try:
        rig.scanner.send(wire.encode_heartbeat())
        rig.send(batch_of([[b"050012"]]))
        rig.send(batch_of([[b"050013"]], first=1))
        rig.wait_queued()
        time.sleep(0.01)
        rig.lend()
        assert rig.run() == _scanloop.TIMER
        pos, blocks, rows, fsyncs = rig.loop.take_audit()
        assert rows == 2 and fsyncs == len(blocks) >= 1
        rig.audit.settle(pos, blocks, rows, fsyncs)
        assert rig.audit.fsyncs >= fsyncs
        assert rig.loop.take_counters() == (3, 0)           # the heartbeat counts as a message
    finally:
        rig.close()


def test_undelivered_decisions_are_counted_not_lost_from_the_audit(tmp_path):
    rig = Rig(tmp_path, plc=False)                         # nobody on the PLC side
    try:
        rig.send(batch_of([[b"050012"], [b"050013"]]))
        rig.wait_queued()
        rig.lend()
        assert rig.run() == _scanloop.TIMER
        rig.settle()
        assert rig.loop.take_counters() == (1, 2)
        assert rig.audit.rows_written == 2
    finally:
        rig.close()


def test_a_closed_socket_raises(rig):
    rig.lend()
    rig.scans.close(0)
    with pytest.raises(zmq.ZMQError):
        rig.run()


def test_a_failed_audit_write_sends_nothing(rig):
    rig.send(batch_of([[b"050012"]]))
    rig.wait_queued()
    fd, pos, limit, until, each = rig.audit.lend(time.time_ns(), 1, open_file=True)
    read_only = os.open(os.devnull, os.O_RDONLY)         # a descriptor write(2) refuses
    try:
        rig.loop.lend(read_only, pos, limit, until, each)
        with pytest.raises(OSError):
            rig.run()
    finally:
        os.close(read_only)
    rig.audit.settle(*rig.loop.take_audit(), failed=True)
    assert rig.audit.path is None                          # abandoned, for recover()
    assert not rig.plc.poll(50) and rig.loop.decision_seq == 0
    assert rig.loop.pending == 1


def test_settle_refuses_messages_without_the_file(rig):
    with pytest.raises(RuntimeError):
        rig.audit.settle(100, np.zeros((1, 2), np.int64), 1, 0)


def test_line_needs_every_symbol(rig):
    with pytest.raises(ValueError, match="zmq_poll"):
        _scanloop.ScanLoop(rig.scans, rig.decisions, rig.feedback, rig.control,
                   {k: v for k, v in SYMBOLS.items() if k != "zmq_poll"}, rig.turn,
                   batch_max=1, max_frame=1 << 20, max_records=1, max_reads=1, max_read_len=1)


# ------------------------------------------------------------------------- in the engine


def test_engine_on_the_compiled_loop_rotates_and_leaves_no_empty_files(tmp_path):
    """An in-process Engine on loopback: its scans go through the compiled loop, its audit
    files rotate by time through lend/settle, and a quiet line gets no new (empty) file."""
    from sorter.engine.config import EngineConfig
    from sorter.engine import Engine

    lo = "tcp://127.0.0.1:*"
    engine = Engine(EngineConfig(scans=lo, decisions=lo, feedback=lo, control=lo, metrics="",
                                 deadline_ms=0, audit_dir=str(tmp_path / "audit"),
                                 rotate_s=0.3, fsync_interval_s=None))
    engine.bind()
    ctx = zmq.Context()
    scanner, plc = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        assert engine._loop is not None
        for s in (scanner, plc):
            s.setsockopt(zmq.LINGER, 0)
        scanner.connect(engine.endpoints["scans"])
        plc.connect(engine.endpoints["decisions"])
        decisions = 0

        def serve(seconds):
            nonlocal decisions
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                engine.step(10)
            while plc.poll(0):
                header, payload = wire.decode_message(plc.recv())
                decisions += len(payload) if header.kind == wire.DECISION else 0

        serve(0.2)                                         # the connections are made
        assert engine.audit.path is None and not engine.audit.files
        for k in range(3):                                 # three files: one per 0.3 s
            scanner.send(wire.encode_scan(batch_of([[b"050012"], [b"010000"]], first=2 * k),
                                          np.arange(2, dtype=np.uint64)))
            serve(0.35)
        serve(1.0)                                         # quiet: the last file is sealed
        assert decisions == 6 and engine.decision_seq == 6
        assert engine.audit.path is None                   # no file open on a quiet line
        files = list(engine.audit.files)
    finally:
        engine.close()
        ctx.destroy(linger=0)
    assert len(files) == 3 and all(f.exists() for f in files)
    table = read_audit(tmp_path / "audit")
    assert table.column("decision_seq").to_pylist() == [1, 2, 3, 4, 5, 6]
