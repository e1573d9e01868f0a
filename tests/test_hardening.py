"""What an outside integrator found (issue 12), one test each: extreme scan times, the wire's edge
cases on a real engine, the malformed metric, config paths, and a fuzzing run of the decoder
and the control handler (hypothesis at a large example count; docs/engine.md, "Fuzzing")."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter import wire
from sorter.core import codes
from sorter.core.events import EventBatch
from sorter.core.reference import ReferenceRouter
from sorter.core.router import Router
from sorter.plan import load_plan

PLAN = load_plan()
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
LATE = codes.REASON_CODE["late"]


# -- `late` for any scan time -------------------------------------------------------------------

@pytest.mark.parametrize("ts", [I64_MIN, -8 * 10**18, I64_MIN + 1, -1, 0])
def test_a_scan_time_far_in_the_past_is_late(ts):
    batch = EventBatch.from_reads([[b"050010"]], ts_ns=np.array([ts], np.int64))
    now = time.time_ns()
    for router in (Router(PLAN), ReferenceRouter(PLAN)):
        assert router.route(batch, now_ns=now, deadline_ns=500_000_000).reason.tolist() == [LATE]


@settings(max_examples=2000, deadline=None)
@given(ts=st.lists(st.integers(I64_MIN, I64_MAX), min_size=1, max_size=8),
       now=st.integers(I64_MIN, I64_MAX), deadline=st.integers(0, I64_MAX))
def test_core_and_reference_agree_on_late_over_the_whole_int64_range(ts, now, deadline):
    batch = EventBatch.from_reads([[b"050010"]] * len(ts), ts_ns=np.array(ts, np.int64))
    core = Router(PLAN).route(batch, now_ns=now, deadline_ns=deadline)
    ref = ReferenceRouter(PLAN).route(batch, now_ns=now, deadline_ns=deadline)
    assert core.reason.tolist() == ref.reason.tolist()
    expected = [deadline > 0 and now - t > deadline for t in ts]      # Python ints: exact
    assert [r == LATE for r in core.reason.tolist()] == expected


# -- the wire on a real engine ------------------------------------------------------------------

def scan_frame(first: int, n: int = 1, batch_seq: int = 0) -> bytes:
    ids = np.arange(first, first + n, dtype=np.uint64)
    batch = EventBatch.from_reads([[b"050010"]] * n, parcel_ids=ids,
                                  ts_ns=np.full(n, time.time_ns(), np.int64))
    return wire.encode_scan(batch, ids, batch_seq=batch_seq)


@pytest.fixture
def engine(tmp_path):
    from engine_harness import EngineProcess
    config = tmp_path / "engine.toml"
    config.write_text("[engine]\nmax_frame = 4096\n")
    e = EngineProcess(tmp_path, "--config", str(config))
    yield e
    assert e.stop() == 0


def test_an_oversized_frame_is_refused_by_zeromq_and_the_line_keeps_running(engine):
    """docs/protocol.md 11.2: larger than max_frame never reaches the engine (not counted, not
    audited); the sender's connection is closed and comes back by itself."""
    from engine_harness import flatten
    from sorter.audit import read_audit
    big = scan_frame(1000, 300)
    assert len(big) > 4096
    engine.scanner.send(big)
    time.sleep(0.5)
    counters = engine.control("status")["counters"]
    assert counters["messages"] == 0 and counters["malformed"] == 0
    engine.scanner.send(scan_frame(1))              # the connection is back: decided
    assert flatten(engine.receive_decisions(1))["parcel_id"].tolist() == [1]
    assert engine.control("status")["counters"]["malformed"] == 0
    engine.stop()
    ids = read_audit(engine.audit_dir).column("parcel_id").to_pylist()
    assert ids == [1]


def test_each_frame_of_a_multipart_scan_message_is_a_message(engine):
    """docs/protocol.md section 2: parts are taken one by one; a message split over two parts
    is two malformed messages (counted, audited), whole messages in parts are decided."""
    from engine_harness import flatten
    engine.scanner.send_multipart([scan_frame(2), scan_frame(3)])
    assert sorted(flatten(engine.receive_decisions(2))["parcel_id"].tolist()) == [2, 3]
    frame = scan_frame(4)
    engine.scanner.send_multipart([frame[:10], frame[10:]])
    status = engine.wait_until(lambda s: s["counters"]["malformed"] == 2)
    assert status["counters"]["malformed_by_error"] == {"truncated": 1, "bad_magic": 1}
    assert status["counters"]["events"] == 2


def test_heartbeats_on_the_decisions_link_continue_batch_seq(engine):
    seqs, kinds = [], []
    deadline = time.monotonic() + 3.2
    parcel = 0
    engine.plc.setsockopt(zmq.RCVTIMEO, 200)
    while time.monotonic() < deadline:
        parcel += 1
        engine.scanner.send(scan_frame(parcel))
        for _ in range(5):
            try:
                header, _ = wire.decode_message(engine.plc.recv())
            except zmq.Again:
                break
            seqs.append(header.batch_seq)
            kinds.append(header.kind)
        time.sleep(0.1)
    assert kinds.count(wire.HEARTBEAT) >= 2 and kinds.count(wire.DECISION) >= 10
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))     # +1 per message sent


def test_malformed_messages_count_as_malformed_decisions(engine):
    import urllib.request
    for frame in (b"garbage", b"PS\x01\x01" + b"\x00" * 20, scan_frame(5)[:-1]):
        engine.scanner.send(frame)
    status = engine.wait_until(lambda s: s["counters"]["malformed"] == 3)
    assert status["counters"]["decisions"]["malformed"] == 3
    text = urllib.request.urlopen(engine.endpoints["metrics"], timeout=10).read().decode()
    assert 'sorter_decisions_total{reason="malformed"} 3.0' in text
    assert "sorter_malformed_messages_total 3.0" in text


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_flood_is_bounded_and_its_memory_given_back(tmp_path):
    """64-event messages as fast as one sender can push them for 2 s: nothing is lost, the
    queue the engine accepts is bounded by rcvhwm (the sender is pushed back), and once the
    backlog is drained the heap goes back to the OS (docs/engine.md, "Memory")."""
    import threading
    from engine_harness import EngineProcess
    e = EngineProcess(tmp_path)
    try:
        frame = scan_frame(0, 64)
        base = peak = _rss_mb(e.proc.pid)
        received, stop = [0], threading.Event()

        def plc():
            e.plc.setsockopt(zmq.RCVTIMEO, 200)
            while not stop.is_set():
                try:
                    e.plc.recv()
                    received[0] += 1
                except zmq.Again:
                    pass

        reader = threading.Thread(target=plc)
        reader.start()
        sent, started, last = 0, time.monotonic(), 0.0
        e.scanner.setsockopt(zmq.SNDTIMEO, 0)
        while time.monotonic() - started < 2.0:
            for _ in range(500):
                try:
                    e.scanner.send(frame)
                    sent += 1
                except zmq.Again:
                    break
            if time.monotonic() - last > 0.05:
                peak, last = max(peak, _rss_mb(e.proc.pid)), time.monotonic()
        status = e.wait_until(lambda s: s["counters"]["events"] >= sent * 64, timeout_s=120)
        peak = max(peak, _rss_mb(e.proc.pid))
        time.sleep(1.0)                                   # a quiet timer turn trims the heap
        after = _rss_mb(e.proc.pid)
        stop.set()
        reader.join()
        assert status["counters"]["events"] == sent * 64 and status["counters"]["malformed"] == 0
        assert sent > 2000                                # it was a flood
        assert peak - base < 120, (base, peak)            # was +370 MB with rcvhwm 100 000
        assert after - base < 40, (base, peak, after)     # was +190 MB kept after the drain
    finally:
        assert e.stop() == 0


def test_route_refuses_a_chute_the_plan_does_not_have():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "sorter.cli", "route", "--full", "999"],
                         input=b"42\t050010\n", capture_output=True, timeout=60)
    assert out.returncode == 2 and b"chute 999 is not a chute of plan" in out.stderr
    assert out.stdout == b""
    ok = subprocess.run([sys.executable, "-m", "sorter.cli", "route", "--full", "5"],
                        input=b"42\t050010\n", capture_output=True, timeout=60)
    assert ok.returncode == 0 and b'"parcel_id": "42"' in ok.stdout
