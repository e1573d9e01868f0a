"""The engine as integrators run it: a real subprocess, real ZeroMQ sockets, real Arrow files."""
import shutil
from collections import Counter
import signal
import threading
import time
import urllib.request

import numpy as np
import pyarrow.dataset as ds
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter import wire
from sorter.audit import audit_files, read_audit
from sorter.core.codes import REASONS
from sorter.core.events import EventBatch
from sorter.plan import DEFAULT_PLAN, load_plan
from sorter.core.reference import ReferenceRouter

from engine_harness import EngineProcess, flatten
from strategies import reads_for

PLAN = load_plan()
ALMATY_CITY = {5, 6}          # chutes of ALMATY_CITY in the bundled plan ("05" prefix)
ASTANA = {1, 2, 3, 4}


@pytest.fixture
def engine(tmp_path):
    e = EngineProcess(tmp_path)
    yield e
    e.kill()


def plan_copy(tmp_path, name: str, version: str, almaty_to: str = "ALMATY_CITY", broken=False):
    """A copy of the bundled plan (with its CSV files) under another version."""
    folder = tmp_path / name
    shutil.copytree(DEFAULT_PLAN.parent, folder)
    toml = folder / DEFAULT_PLAN.name
    text = toml.read_text().replace('version = "2026.11.1"', f'version = "{version}"')
    text = text.replace('"05" = "ALMATY_CITY"', f'"05" = "{almaty_to}"')
    if broken:
        text = text.replace('"05" = ', '"05" = "NO_SUCH_DESTINATION"\nbroken = ')
    toml.write_text(text)
    return toml


# -- decisions ----------------------------------------------------------------------------------

class _Stream:
    """One engine for the whole hypothesis run, and a reference router fed the same history."""

    def __init__(self, tmp_path_factory):
        self.engine = EngineProcess(tmp_path_factory.mktemp("e2e"))
        self.reference = ReferenceRouter(PLAN)
        self.next_parcel = 0
        self.last_decision_seq = 0


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    s = _Stream(tmp_path_factory)
    yield s
    assert s.engine.stop() == 0


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_end_to_end_decisions_equal_the_reference(stream, data):
    reads = reads_for(PLAN)
    messages = data.draw(st.lists(st.lists(st.lists(reads, max_size=3), min_size=1, max_size=20),
                                  min_size=1, max_size=5))
    recirc = data.draw(st.integers(0, 4))
    first = stream.next_parcel
    sent = []
    for events in messages:
        stream.engine.send_scans(events, first_parcel=stream.next_parcel,
                                 recirculations=[recirc] * len(events))
        stream.next_parcel += len(events)
        sent.extend(events)
    got = flatten(stream.engine.receive_decisions(len(sent)))
    want = [stream.reference.decide(reads, recirc) for reads in sent]
    assert got["parcel_id"].tolist() == list(range(first, first + len(sent)))
    assert got["seq"].tolist() == got["parcel_id"].tolist()
    assert [(int(c), REASONS[r]) for c, r in zip(got["chute"], got["reason"])] == \
        [(c, REASONS[r]) for c, r, _ in want]
    seqs = got["decision_seq"].tolist()
    assert seqs == list(range(stream.last_decision_seq + 1, stream.last_decision_seq + 1 + len(sent)))
    stream.last_decision_seq = seqs[-1]
    assert set(got["plan_version"]) == {PLAN.version}


def test_chute_disabled_via_feedback_is_never_chosen_afterwards(engine):
    engine.feedback.send(wire.encode_chute_status([5, 6], ["disabled", "full"]))
    engine.wait_until(lambda s: s["chutes_unavailable"] == {"5": "disabled", "6": "full"})
    engine.send_scans([[b"050010"]] * 20)
    got = flatten(engine.receive_decisions(20))
    assert not set(got["chute"].tolist()) & ALMATY_CITY
    assert {REASONS[r] for r in got["reason"]} == {"recirculate"}
    engine.feedback.send(wire.encode_chute_status([5], ["available"]))
    engine.wait_until(lambda s: "5" not in s["chutes_unavailable"])
    engine.send_scans([[b"050010"]] * 3, first_parcel=100)
    assert flatten(engine.receive_decisions(3))["chute"].tolist() == [5, 5, 5]
    confirm = wire.encode_sort_confirm([100, 101, 102], [5, 5, 0], ["sorted", "sorted", "failed_divert"])
    engine.feedback.send(confirm)
    status = engine.wait_until(lambda s: s["counters"]["confirmations"]["sorted"] == 2)
    assert status["counters"]["confirmations"]["failed_divert"] == 1


def test_late_scan_gets_a_late_decision(tmp_path):
    engine = EngineProcess(tmp_path, deadline_ms=200)
    try:
        now = time.time_ns()
        engine.send_scans([[b"050010"], [b"050010"]], ts_ns=np.array([now - 10**10, now], np.int64))
        got = flatten(engine.receive_decisions(2))
        assert [REASONS[r] for r in got["reason"]] == ["late", "sorted"]
        assert got["chute"].tolist()[0] == 0
    finally:
        assert engine.stop() == 0


# -- bad input ------------------------------------------------------------------------------------

def _frames():
    valid = wire.encode_scan(EventBatch.from_reads([[b"050010"], [b"A01P3K4", b"x"]]),
                             np.arange(2, dtype=np.uint64))
    mutated = st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=4)).map(
        lambda t: valid[:t[0]] + t[1] + valid[t[0] + len(t[1]):])
    truncated = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    return st.one_of(st.binary(max_size=64), mutated, truncated,
                     st.just(valid[:2] + b"\x09" + valid[3:]),          # unknown version
                     st.just(wire.encode_chute_status([5], ["full"])))  # wrong socket


@pytest.fixture(scope="module")
def bad_input_engine(tmp_path_factory):
    e = EngineProcess(tmp_path_factory.mktemp("malformed"))
    e.sentinel = 10**6
    yield e
    assert e.stop() == 0


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=st.lists(_frames(), min_size=1, max_size=30))
def test_malformed_messages_are_counted_audited_and_never_stop_the_engine(bad_input_engine, frames):
    engine = bad_input_engine
    before = engine.control("status")["counters"]["malformed"]
    expected = []
    for f in frames:
        try:
            header, _ = wire.decode_message(f)
            if header.kind not in (wire.SCAN, wire.HEARTBEAT):
                expected.append(f)
        except wire.WireError:
            expected.append(f)
        engine.scanner.send(f)
    engine.sentinel += 1
    engine.send_scans([[b"050010"]], first_parcel=engine.sentinel)     # the line keeps running
    got = []
    while engine.sentinel not in got:
        got.extend(flatten(engine.receive_decisions(1))["parcel_id"].tolist())
    status = engine.wait_until(lambda s: s["counters"]["malformed"] == before + len(expected))
    assert sum(status["counters"]["malformed_by_error"].values()) == before + len(expected)
    audit = read_audit(engine.audit_dir).select(["reason", "raw", "error"]).to_pydict()
    malformed = Counter(raw for raw, r in zip(audit["raw"], audit["reason"]) if r == "malformed")
    assert not Counter(expected) - malformed          # every malformed frame is in the audit
    assert all(e for e, r in zip(audit["error"], audit["reason"]) if r == "malformed")


def test_control_rejects_bad_requests_and_keeps_serving(engine):
    import zmq
    sock = engine.ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(engine.endpoints["control"])
    sock.send(b"{not json")
    assert sock.recv_json()["ok"] is False
    sock.close(0)
    assert engine.control("nonsense")["ok"] is False
    assert engine.control("set_chute", chute=7, state="broken")["ok"] is False
    assert engine.control("set_chute", chute=7, state="disabled")["ok"] is True
    assert engine.control("status")["chutes_unavailable"] == {"7": "disabled"}


# -- plans ------------------------------------------------------------------------------------------

def test_bad_plan_is_refused_and_the_running_plan_stays(engine, tmp_path):
    reply = engine.control("load_plan", path=str(plan_copy(tmp_path, "bad", "v-bad", broken=True)))
    assert reply["ok"] is False
    assert any("NO_SUCH_DESTINATION" in p["message"] or p["field"].endswith("broken")
               for p in reply["problems"])
    assert all({"file", "line", "field", "message"} <= set(p) for p in reply["problems"])
    reply = engine.control("load_plan", path=str(tmp_path / "missing.toml"))
    assert reply["ok"] is False
    status = engine.control("status")
    assert status["plan"]["version"] == PLAN.version
    assert status["counters"]["plan_load_failures"] == 2
    engine.send_scans([[b"050010"]])
    assert flatten(engine.receive_decisions(1))["plan_version"].tolist() == [PLAN.version]


def test_plan_hot_reload_under_load_routes_each_batch_by_one_plan(engine, tmp_path):
    v2 = plan_copy(tmp_path, "v2", "v2-astana", almaty_to="ASTANA")
    v1 = plan_copy(tmp_path, "v1", "v1-almaty")
    n_messages, per_message = 300, 10
    received: list = []

    def receive():
        received.extend(engine.receive_decisions(n_messages * per_message))

    receiver = threading.Thread(target=receive)
    receiver.start()

    def send():
        for i in range(n_messages):
            engine.send_scans([[b"050010"]] * per_message, first_parcel=i * per_message)
            time.sleep(0.002)

    sender = threading.Thread(target=send)
    sender.start()
    versions = []
    for path in (v2, v1, v2, v1):
        reply = engine.control("load_plan", path=str(path))
        assert reply["ok"], reply
        versions.append(reply["plan"]["version"])
    sender.join()
    receiver.join(60)
    got = flatten(received)
    # nothing lost, nothing doubled
    assert sorted(got["parcel_id"].tolist()) == list(range(n_messages * per_message))
    # the swaps happened while events flowed: several versions routed this stream
    assert len({b.plan_version for b in received}) >= 2
    chutes_by_version = {PLAN.version: ALMATY_CITY, "v1-almaty": ALMATY_CITY, "v2-astana": ASTANA}
    for batch in received:
        # a decision message is one routed batch: one plan version, chutes of that plan
        assert set(batch.chute.tolist()) <= chutes_by_version[batch.plan_version]
    assert engine.control("status")["counters"]["plan_loads"] == 4
    assert engine.control("status")["plan"]["version"] == "v1-almaty"


# -- audit and shutdown -------------------------------------------------------------------------------

def test_sigkill_mid_stream_every_sent_decision_is_in_the_audit(tmp_path):
    """SIGKILL mid-stream: every decision the PLC side received is in the audit, read from
    the journal at once, and in the compacted Arrow files after a restart (which recovers the
    journal, compacts it and continues decision_seq after the highest on disk)."""
    engine = EngineProcess(tmp_path)
    received = []
    stop = threading.Event()

    def send():
        i = 0
        while not stop.is_set() and i < 5000:
            engine.send_scans([[b"050010"], [b"Z01P3K4"], [], [b"RR473124829GB"]], first_parcel=i * 4)
            i += 1
            time.sleep(0.001)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        while len(received) < 2000:
            received.extend(flatten(engine.receive_decisions(1))["decision_seq"].tolist())
        engine.proc.send_signal(signal.SIGKILL)
        engine.proc.wait(10)
        # decisions already queued in our socket left the engine before the kill too
        engine.plc.setsockopt(__import__("zmq").RCVTIMEO, 500)
        try:
            while True:
                header, payload = wire.decode_message(engine.plc.recv())
                if header.kind == wire.DECISION:
                    received.extend(payload.decision_seq.tolist())
        except Exception:
            pass
    finally:
        stop.set()
        sender.join()
        engine.kill()
    # through the journal, before any recovery
    assert set(received) <= set(read_audit(engine.audit_dir).column("decision_seq").to_pylist())
    top = max(read_audit(engine.audit_dir).column("decision_seq").to_pylist())
    # a restart recovers and compacts; numbering continues after the highest on disk
    again = EngineProcess(tmp_path)
    try:
        assert again.control("status")["decision_seq"] == top
        again.send_scans([[b"050010"]], first_parcel=10**9)
        assert flatten(again.receive_decisions(1))["decision_seq"].tolist() == [top + 1]
        assert again.stop() == 0
    finally:
        again.kill()
    assert not list((engine.audit_dir / "_journal").glob("*.wal"))       # all compacted
    files = audit_files(engine.audit_dir)
    assert files
    for f in files:
        ipc.open_file(f).read_all()
    table = ds.dataset(engine.audit_dir, format="arrow", partitioning="hive").to_table()
    seqs = table.column("decision_seq").to_pylist()
    assert set(received) <= set(seqs)
    assert len(seqs) == len(set(seqs)) and sorted(seqs) == list(range(1, top + 2))


def test_second_engine_on_a_locked_audit_dir_exits_with_one_line(tmp_path):
    import subprocess
    import sys

    from engine_harness import ROOT
    from sorter.engine.launch import engine_command, env_with_path

    engine = EngineProcess(tmp_path)
    try:
        proc = subprocess.run(engine_command(engine.audit_dir, metrics=""), cwd=tmp_path,
                              env=env_with_path(ROOT), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another engine" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
        engine.send_scans([[b"050010"]])
        assert len(flatten(engine.receive_decisions(1))["decision_seq"]) == 1  # still serving
    finally:
        engine.kill()


def test_sigterm_drains_closes_files_and_exits_0(tmp_path):
    engine = EngineProcess(tmp_path)
    try:
        for i in range(50):
            engine.send_scans([[b"050010"]] * 20, first_parcel=i * 20)
        got = flatten(engine.receive_decisions(1000))
        assert engine.stop(signal.SIGTERM) == 0
        assert any(e.get("event") == "shutdown" for e in engine.log)
        # compacted at the stop: Arrow files only, nothing left in the journal or in progress
        files = sorted(engine.audit_dir.rglob("*.arrow*"))
        assert files and all(f.suffix == ".arrow" and not f.name.startswith("_") for f in files)
        assert [p.name for p in (engine.audit_dir / "_journal").iterdir()] == ["lock"]
        table = ds.dataset(engine.audit_dir, format="arrow", partitioning="hive").to_table()
        assert sorted(table.column("parcel_id").to_pylist()) == sorted(got["parcel_id"].tolist())
        assert set(table.column("reason").to_pylist()) == {"sorted"}
        assert table.column("plan_version").unique().to_pylist() == [PLAN.version]
        assert table.column("reads").to_pylist()[0] == ["050010"]
    finally:
        engine.kill()


def test_decisions_are_audited_when_the_plc_side_is_absent(tmp_path):
    engine = EngineProcess(tmp_path)
    try:
        engine.plc.close(0)
        time.sleep(0.2)
        engine.send_scans([[b"050010"]] * 7)
        status = engine.wait_until(lambda s: s["counters"]["events"] == 7)
        assert status["counters"]["decisions_undelivered"] == 7
        assert engine.stop() == 0
        assert len(read_audit(engine.audit_dir)) == 7
    finally:
        engine.kill()


def test_prometheus_endpoint(engine):
    engine.send_scans([[b"050010"], []])
    engine.receive_decisions(2)
    deadline = time.monotonic() + 10
    while True:      # counters are folded in by the engine's timer, every 100 ms
        text = urllib.request.urlopen(engine.endpoints["metrics"], timeout=10).read().decode()
        if 'sorter_events_total 2.0' in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'sorter_decisions_total{reason="sorted"} 1.0' in text
    assert 'sorter_decisions_total{reason="no_read"} 1.0' in text
    assert "sorter_scan_to_decision_seconds_bucket" in text


def test_compacted_files_appear_within_ten_seconds_while_the_engine_runs(tmp_path):
    """Default settings: the decisions reach an Arrow file within 10 s (segment sealed after
    compact_s = 5 s, then the compactor process), while the engine keeps running."""
    engine = EngineProcess(tmp_path)
    try:
        engine.send_scans([[b"050010"], []])
        engine.receive_decisions(2)
        sent = time.monotonic()
        while not audit_files(engine.audit_dir) and time.monotonic() - sent < 10:
            time.sleep(0.1)
        files = audit_files(engine.audit_dir)
        assert files, "no compacted file within 10 s"
        table = ds.dataset(engine.audit_dir, format="arrow", partitioning="hive").to_table()
        assert sorted(table.column("decision_seq").to_pylist()) == [1, 2]
        assert engine.control("status")["ok"]
    finally:
        engine.kill()


def test_log_file_gets_the_log_and_the_audit_dir_holds_audit_data_only(tmp_path):
    log_file = tmp_path / "logs" / "engine.jsonl"
    log_file.parent.mkdir()
    engine = EngineProcess(tmp_path, "--log-file", str(log_file))
    try:
        engine.send_scans([[b"050010"]])
        engine.receive_decisions(1)
        assert engine.stop() == 0
    finally:
        engine.kill()
    events = [__import__("json").loads(x)["event"] for x in log_file.read_text().splitlines()]
    assert "ready" in events and events[-1] == "shutdown"
    names = {p.name for p in engine.audit_dir.rglob("*") if p.is_file()}
    assert names == {"lock"} | {f.name for f in audit_files(engine.audit_dir)}
