"""The audit journal and its compactor (sorter.audit.journal, sorter.audit.compactor) on real
files: records, CRC32C, torn tails, recovery, compaction to Arrow (idempotent after a crash),
and the engine's turn (`BatchDecider`) journaled the way the engine does it."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter import wire
from sorter.audit import AUDIT_SCHEMA, AuditLocked, audit_files, read_audit
from sorter.audit import journal as jr
from sorter.audit.compactor import Compactor, compact_segment
from sorter.audit.files import last_decision_seq
from sorter.core.codes import REASONS
from sorter.core.events import EventBatch
from sorter.core.router import Router
from sorter.engine import _turn
from sorter.plan import load_plan

PLAN = load_plan()
NAMES = [d.name for d in PLAN.destinations]
ROOT = Path(__file__).resolve().parent.parent


class Line:
    """The engine's turn without sockets: route with BatchDecider, journal, 'send' (keep the
    DECISION message), exactly as sorter.engine.process does."""

    def __init__(self, directory, **options):
        self.router = Router(PLAN)
        self.turn = _turn.BatchDecider(capacity=2)
        self.turn.configure(PLAN.version.encode(), 0, 1 << 24, 65536)
        self.journal = jr.JournalWriter(directory, **options)
        self.journal.set_plan(time.time_ns(), PLAN.version, NAMES)
        self.decision_seq = 0
        self.sent: list[wire.DecisionBatch] = []
        self.sent_at: list[int] = []
        self.frames: list[bytes] = []

    def scan(self, reads, *, first_parcel=0, now_ns=None, ts_ns=None):
        n = len(reads)
        events = EventBatch.from_reads(
            reads, parcel_ids=np.arange(first_parcel, first_parcel + n, dtype=np.uint64),
            scanner_ids=np.full(n, 7, np.uint16),
            ts_ns=np.full(n, ts_ns if ts_ns is not None else time.time_ns() - 1000, np.int64))
        frame = wire.encode_scan(events, np.arange(n, dtype=np.uint64) + 100)
        scans = wire.decode_scans([frame])
        now = now_ns if now_ns is not None else time.time_ns()
        message = self.turn.run(self.router.core, scans.events, scans.seq, now,
                                self.decision_seq + 1, len(self.sent) + 1)
        self.journal.append(jr.decisions_record(now, [frame], message, self.turn.decisions()[2]))
        self.decision_seq += n
        self.sent.append(wire.decode_decisions(message))
        self.sent_at.append(now)
        self.frames.append(frame)

    def malformed(self, raw: bytes, error: str, now_ns=None):
        self.journal.append(jr.malformed_record(now_ns or time.time_ns(), raw, error))


def sent_columns(line: Line) -> dict:
    return {
        "decision_seq": np.concatenate([d.decision_seq for d in line.sent]).tolist(),
        "parcel_id": np.concatenate([d.parcel_id for d in line.sent]).tolist(),
        "chute": np.concatenate([d.chute for d in line.sent]).tolist(),
        "reason": [REASONS[r] for d in line.sent for r in d.reason.tolist()],
        "seq": np.concatenate([d.seq for d in line.sent]).tolist(),
    }


def decisions_of(table: pa.Table) -> pa.Table:
    table = table.filter(pa.compute.not_equal(table.column("decision_seq"), 0))
    return table.take(pa.compute.sort_indices(table, [("decision_seq", "ascending")]))


# -- records ------------------------------------------------------------------------------------

def test_record_header_crc_is_crc32c_of_header_tail_and_payload():
    rec = jr.malformed_record(123, b"\x00garbage", "bad_magic: x")
    length, crc, kind, _, _, rows = jr.RECORD.unpack_from(rec)
    assert (length, kind, rows) == (len(rec) - 16, jr.MALFORMED, 1)
    assert crc == crc32c.crc32c(rec[8:])            # header bytes 8..16 and the payload
    assert crc32c.crc32c(b"123456789") == 0xE3069283  # the CRC32C check value (RFC 3720)


def test_writer_appends_one_record_per_call_and_reader_gets_them_back(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    line.scan([[b"050010"], []], first_parcel=1)
    line.malformed(b"\x01\x02", "bad_magic: at byte 0")
    line.scan([[b"RR473124829GB"]], first_parcel=3)
    assert line.journal.records == 3                       # appends (the PLAN opens the segment)
    scan = jr.read_segment(line.journal.path)
    assert not scan.torn
    assert [r.kind for r in scan.records] == [jr.PLAN, jr.DECISIONS, jr.MALFORMED, jr.DECISIONS]
    plan, first, bad, last = scan.records
    assert plan.plan_version == PLAN.version and plan.names == NAMES
    assert first.frames == [line.frames[0]]
    assert wire.decode_decisions(first.message).decision_seq.tolist() == [1, 2]
    assert first.destination.tolist()[1] == -1             # no_read: no destination
    assert (bad.raw, bad.error) == (b"\x01\x02", "bad_magic: at byte 0")
    # the segment is preallocated to its fixed size
    assert os.path.getsize(line.journal.path) == line.journal.segment_bytes
    line.journal.close()


def test_second_writer_on_a_locked_directory_is_refused(tmp_path):
    w = jr.JournalWriter(tmp_path)
    try:
        with pytest.raises(AuditLocked):
            jr.JournalWriter(tmp_path)
    finally:
        w.close()
    jr.JournalWriter(tmp_path).close()                     # released by close()


def test_segments_are_sealed_when_full_and_by_time(tmp_path):
    clock = [1_000_000_000]
    sealed = []
    line = Line(tmp_path, segment_bytes=4096, seal_after_s=5.0, fsync_interval_s=None,
                clock=lambda: clock[0], on_seal=sealed.append)
    for i in range(60):
        line.scan([[b"050010"]], first_parcel=i)
    assert len(sealed) >= 2 and all(p.suffix == ".wal" for p in sealed)
    before = len(sealed)
    line.journal.tick()
    assert len(sealed) == before                            # not old enough
    clock[0] += 5_000_000_000
    line.journal.tick()
    assert len(sealed) == before + 1 and line.journal.path is None
    line.journal.close()
    ids = [jr.read_segment(p).segment_id for p in jr.segments(tmp_path)]
    assert ids == sorted(set(ids))                          # unique, increasing
    got = [r for p in jr.segments(tmp_path) for r in jr.read_segment(p).records
           if r.kind == jr.DECISIONS]
    assert len(got) == 60
    # every segment starts with the plan, so each is compacted on its own
    assert all(jr.read_segment(p).records[0].kind == jr.PLAN for p in jr.segments(tmp_path))


# -- torn tails and recovery ------------------------------------------------------------------------

def test_torn_tail_is_cut_counted_and_never_fatal(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    for i in range(5):
        line.scan([[b"050010"]], first_parcel=i)
    path, end = line.journal.path, line.journal._pos
    os.close(line.journal._fd)                              # the process "dies" here
    line.journal._fd = -1
    os.close(line.journal._lock_fd)
    line.journal._stop.set()
    # half a record written when it died: a length and a few bytes, then zeroes
    rec = jr.malformed_record(1, b"x" * 100, "e")
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(rec[:40])
    scan = jr.read_segment(path)
    assert scan.torn and len([r for r in scan.records if r.kind == jr.DECISIONS]) == 5
    rec = jr.recover(tmp_path)
    assert len(rec.torn) == 1 and rec.torn[0][1] == end
    assert rec.last_decision_seq == 5
    sealed = rec.sealed[0]
    assert sealed.suffix == ".wal" and not jr.read_segment(sealed).torn   # cut: zeroed
    assert jr.recover(tmp_path).torn == []                  # idempotent
    compact_segment(tmp_path, sealed)
    assert decisions_of(read_audit(tmp_path)).column("decision_seq").to_pylist() == [1, 2, 3, 4, 5]


def test_a_flipped_bit_stops_the_segment_at_that_record(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    for i in range(4):
        line.scan([[b"050010"]], first_parcel=i)
    path = line.journal.path
    line.journal.close()
    path = path.with_suffix(".wal")
    scan = jr.read_segment(path)
    third = [r for r in scan.records if r.kind == jr.DECISIONS][2]
    data = bytearray(path.read_bytes())
    data[third.offset + 20] ^= 0x01
    path.write_bytes(bytes(data))
    scan = jr.read_segment(path)
    assert scan.torn and "CRC32C" in scan.problem
    assert len([r for r in scan.records if r.kind == jr.DECISIONS]) == 2


# -- compaction ---------------------------------------------------------------------------------------

def test_compacted_file_has_the_schema_the_seq_range_in_its_name_and_footer(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    for i in range(10):
        line.scan([[b"050010"], [b"Z01P3K4"], []], first_parcel=3 * i)
    line.malformed(b"\xff\xfe", "bad_magic: at byte 0")
    line.journal.close()
    (segment,) = jr.segments(tmp_path)
    result = compact_segment(tmp_path, segment)
    assert not segment.exists() and result.rows == 31
    (f,) = audit_files(tmp_path)
    assert f.name == "decisions-000000000001-000000000030.arrow"
    assert f.parent.name.startswith("date=")
    reader = ipc.open_file(pa.memory_map(str(f)))
    assert reader.schema.equals(AUDIT_SCHEMA, check_metadata=True)
    meta = reader.metadata
    assert meta[b"sorter.audit.first_decision_seq"] == b"1"
    assert meta[b"sorter.audit.last_decision_seq"] == b"30"
    table = reader.read_all()
    got = decisions_of(table)
    want = sent_columns(line)
    for name in want:
        assert got.column(name).to_pylist() == want[name]
    assert got.column("ts").cast(pa.int64()).to_pylist() == np.repeat(line.sent_at, 3).tolist()
    assert got.column("destination").to_pylist()[:3] == ["ALMATY_CITY", "ASTANA", None]
    assert got.column("reads").to_pylist()[:3] == [["050010"], ["Z01P3K4"], []]
    assert set(got.column("scanner_id").to_pylist()) == {7}
    assert set(got.column("plan_version").to_pylist()) == {PLAN.version}
    bad = table.filter(pa.compute.equal(table.column("decision_seq"), 0)).drop_columns(
        ["ts"]).to_pylist()
    assert [(r["reason"], r["raw"], r["error"]) for r in bad] == [
        ("malformed", b"\xff\xfe", "bad_magic: at byte 0")]
    assert last_decision_seq(tmp_path) == 30


def test_reads_that_are_not_utf8_are_transcoded_as_latin1_by_the_compactor(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    line.scan([[b"050010", b"\xff\x80garbage"], [b"caf\xc3\xa9"]])
    line.journal.close()
    compact_segment(tmp_path, jr.segments(tmp_path)[0])
    reads = read_audit(tmp_path).column("reads").to_pylist()
    assert reads == [["050010", "\xff\x80garbage"], ["café"]]
    assert reads[0][1].encode("latin-1") == b"\xff\x80garbage"


def test_decisions_across_midnight_go_to_two_date_partitions(tmp_path):
    midnight = 1_796_256_000 * 1_000_000_000           # 2026-12-03T00:00:00Z
    line = Line(tmp_path, fsync_interval_s=None)
    line.scan([[b"050010"]], now_ns=midnight - 1, ts_ns=midnight - 100)
    line.scan([[b"050010"]], first_parcel=1, now_ns=midnight, ts_ns=midnight - 50)
    line.journal.close()
    compact_segment(tmp_path, jr.segments(tmp_path)[0])
    files = audit_files(tmp_path)
    assert [f.parent.name for f in files] == ["date=2026-12-02", "date=2026-12-03"]
    table = ds.dataset(tmp_path, format="arrow", partitioning="hive").to_table()
    assert sorted(zip(table.column("date").to_pylist(), table.column("decision_seq").to_pylist())) \
        == [("2026-12-02", 1), ("2026-12-03", 2)]


def test_compacting_again_after_a_crash_writes_nothing_twice(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    for i in range(20):
        line.scan([[b"050010"]], first_parcel=i)
    line.journal.close()
    (segment,) = jr.segments(tmp_path)
    kept = segment.read_bytes()
    compact_segment(tmp_path, segment)
    segment.write_bytes(kept)                  # died after the rename, before the delete
    again = compact_segment(tmp_path, segment)
    assert again.files == [] and not segment.exists()
    assert len(audit_files(tmp_path)) == 1
    assert decisions_of(read_audit(tmp_path)).column("decision_seq").to_pylist() == list(range(1, 21))


_COMPACT_AND_DIE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import pyarrow.ipc as ipc
    from sorter.audit import compactor
    from sorter.audit import journal as jr
    real_rename = os.rename
    def rename_then_die(a, b):
        real_rename(a, b)
        if str(b).endswith(".arrow"):
            os.kill(os.getpid(), 9)      # SIGKILL between the rename and the delete
    compactor.os.rename = rename_then_die
    for seg in jr.segments(sys.argv[1], include_open=False):
        compactor.compact_segment(sys.argv[1], seg)
""")


def test_kill_during_compaction_loses_no_row_and_doubles_none(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None, segment_bytes=8192)
    for i in range(200):
        line.scan([[b"050010"], []], first_parcel=2 * i)
    line.malformed(b"\x00", "truncated: at byte 1")
    line.journal.close()
    n_segments = len(jr.segments(tmp_path))
    assert n_segments > 2
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _COMPACT_AND_DIE, str(tmp_path)], env=env,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert len(audit_files(tmp_path)) == 1 and len(jr.segments(tmp_path)) == n_segments
    # what a reader sees meanwhile: each row once (the file covers its segment)
    table = read_audit(tmp_path)
    assert decisions_of(table).column("decision_seq").to_pylist() == list(range(1, 401))
    c = Compactor(tmp_path)
    assert c.run_once() == n_segments and jr.segments(tmp_path) == []
    table = read_audit(tmp_path)
    assert decisions_of(table).column("decision_seq").to_pylist() == list(range(1, 401))
    assert table.num_rows == 401
    # a leftover hidden file from a kill before the rename is ignored by every reader
    (audit_files(tmp_path)[0].parent / "_decisions-x.arrow.part").write_bytes(b"junk")
    assert ds.dataset(tmp_path, format="arrow", partitioning="hive").to_table().num_rows == 401


def test_compactor_thread_makes_files_appear_after_a_seal(tmp_path):
    c = Compactor(tmp_path, interval_s=10.0).start()
    try:
        line = Line(tmp_path, fsync_interval_s=1.0, seal_after_s=0.0, on_seal=c.wake)
        line.scan([[b"050010"]])
        line.journal.tick()
        deadline = time.monotonic() + 20
        while not audit_files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert audit_files(tmp_path)
        line.journal.close()
    finally:
        c.stop()
    assert decisions_of(read_audit(tmp_path)).column("decision_seq").to_pylist() == [1]


# -- the property --------------------------------------------------------------------------------------

reads_st = st.lists(st.lists(st.one_of(
    st.sampled_from([b"050010", b"Z01P3K4", b"RR473124829GB", b"]C1421643101000", b""]),
    st.binary(max_size=12)), max_size=3), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.one_of(reads_st, st.binary(min_size=1, max_size=20)), min_size=1,
                      max_size=25),
       segment_bytes=st.sampled_from([2048, 1 << 20]))
def test_journal_then_compactor_gives_back_exactly_the_decisions_sent(tmp_path_factory, turns,
                                                                     segment_bytes):
    root = tmp_path_factory.mktemp("prop")
    line = Line(root, fsync_interval_s=None, segment_bytes=segment_bytes)
    bad, expected_reads = [], []
    parcel = 0
    for t in turns:
        if isinstance(t, bytes):
            line.malformed(t, "bad_magic: at byte 0")
            bad.append(t)
        else:
            line.scan(t, first_parcel=parcel)
            parcel += len(t)
            # stored as UTF-8 when it is, else as its latin-1 decoding
            expected_reads += [[_utf8(r) if _utf8(r) is not None else r.decode("latin-1")
                                for r in rs] for rs in t]
    line.journal.close()
    before = read_audit(root)                               # from the journal
    Compactor(root).run_once()
    assert jr.segments(root) == []
    after = read_audit(root)                                # from the files
    for table in (before, after):
        if line.sent:
            got = decisions_of(table)
            for name, values in sent_columns(line).items():
                assert got.column(name).to_pylist() == values
            assert got.column("reads").to_pylist() == expected_reads
        raws = table.filter(pa.compute.equal(table.column("decision_seq"), 0)).column("raw")
        assert sorted(raws.to_pylist()) == sorted(bad)


def _utf8(b: bytes):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_fsync_each_syncs_every_record_before_append_returns(tmp_path):
    from sorter.cli import build_parser

    assert build_parser().parse_args(["run", "--fsync-interval", "each"]).fsync_interval == 0.0
    line = Line(tmp_path, fsync_interval_s=0)
    for i in range(5):
        line.scan([[b"050010"]], first_parcel=i)
    assert line.journal.fsyncs == 5 and line.journal._thread is None
    line.journal.close()


def test_compaction_with_zstd_writes_files_every_reader_opens(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    for i in range(30):
        line.scan([[b"050010"], [b"Z01P3K4"]], first_parcel=2 * i)
    line.journal.close()
    Compactor(tmp_path, compression="zstd").run_once()
    (f,) = audit_files(tmp_path)
    assert ipc.open_file(f).read_all().num_rows == 60
    assert ds.dataset(tmp_path, format="arrow", partitioning="hive").to_table().num_rows == 60


# -- the hot path's writes and the bulk reader -------------------------------------------------------

def _turn_parts(n_frames: int):
    """A turn of n one-event SCAN frames, routed: (frames, DECISION message, destination)."""
    frames = [wire.encode_scan(EventBatch.from_reads([[b"050010"]], parcel_ids=[i]), [i])
              for i in range(n_frames)]
    scans = wire.decode_scans(frames)
    turn = _turn.BatchDecider(capacity=n_frames)
    turn.configure(PLAN.version.encode(), 0, 1 << 24, 65536)
    message = turn.run(Router(PLAN).core, scans.events, scans.seq, 123, 1, 1)
    return frames, message, turn.decisions()[2].copy()


@pytest.mark.parametrize("n_frames", [1, 3, jr._IOV_MAX + 5])
def test_a_turn_written_as_buffers_is_the_record_its_bytes_are(tmp_path, n_frames):
    frames, message, dest = _turn_parts(n_frames)
    one = jr.JournalWriter(tmp_path / "bytes", fsync_interval_s=None, clock=lambda: 7)
    two = jr.JournalWriter(tmp_path / "parts", fsync_interval_s=None, clock=lambda: 7)
    one.append(jr.decisions_record(99, frames, message, dest))
    two.append(jr.decisions_parts(99, frames, message, dest))    # one pwritev(2)
    assert one.bytes_written == two.bytes_written
    a, b = one.path.read_bytes(), two.path.read_bytes()
    one.close(), two.close()
    assert a == b
    rec = [r for r in jr.read_segment(two.path or next(iter(jr.segments(tmp_path / "parts"))))
           .records if r.kind == jr.DECISIONS][0]
    assert [bytes(f) for f in rec.frames] == frames and bytes(rec.message) == message


def test_index_segment_locates_what_read_segment_decodes(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    line.scan([[b"050010"], []], first_parcel=1)
    line.malformed(b"\x01\x02", "bad_magic: at byte 0")
    frames, message, dest = _turn_parts(3)
    line.journal.append(jr.decisions_parts(5, frames, message, dest))
    line.journal.set_plan(6, "v2", ["a", "b"])
    line.scan([[b"RR473124829GB"]], first_parcel=3)
    path = line.journal.path
    index, scan = jr.index_segment(path), jr.read_segment(path)
    assert not index.torn and index.end == scan.end and len(index) == len(scan.records) == 6
    r, data = index.records, bytes(index.data)
    assert r["kind"].tolist() == [x.kind for x in scan.records]
    assert r["rows"].tolist() == [x.rows for x in scan.records]
    assert r["time_ns"].tolist() == [x.time_ns for x in scan.records]
    got_dest = []
    for i, x in enumerate(scan.records):
        if x.kind != jr.DECISIONS:
            assert r["n_frames"][i] == -1
            continue
        first, n = int(r["first_frame"][i]), int(r["n_frames"][i])
        assert [data[o:o + k] for o, k in zip(index.frames["offset"][first:first + n].tolist(),
                                              index.frames["length"][first:first + n].tolist())
                ] == [bytes(f) for f in x.frames]
        o, k = int(r["message_offset"][i]), int(r["message_length"][i])
        assert data[o:o + k] == bytes(x.message)
        got_dest += x.destination.tolist()
    assert index.destination.tolist() == got_dest


def test_the_next_segment_is_made_ready_by_the_fsync_thread(tmp_path):
    """A roll takes the spare segment the fsync thread created (preallocated, header and
    directory fsynced) instead of fsyncing on the hot path; ids keep increasing; a close
    leaves no spare behind."""
    w = jr.JournalWriter(tmp_path, segment_bytes=16384, fsync_interval_s=0.02, seal_after_s=None)
    w.set_plan(1, PLAN.version, ["a", "b"])
    frames, message, dest = _turn_parts(1)
    record = jr.decisions_record(2, frames, message, dest)
    w.append(record)
    first = w.path
    deadline = time.monotonic() + 10
    while w.spare is None:
        assert time.monotonic() < deadline, "no spare segment was made"
        time.sleep(0.01)
    spare = w.spare
    assert sorted((tmp_path / jr.JOURNAL_DIR).glob("*.open")) == [first, spare]
    assert spare != first and jr.read_segment(spare).records == []     # a header, no record
    while w.path == first:
        w.append(record)
    assert w.path == spare                                  # the roll took it
    w.close()
    assert list((tmp_path / jr.JOURNAL_DIR).glob("*.open")) == []
    segs = jr.segments(tmp_path)
    ids = [jr._segment_id(p) for p in segs]
    assert ids == sorted(ids) and len(ids) >= 2
    scans = [jr.read_segment(p) for p in segs]
    assert all(not s.torn and s.records[0].kind == jr.PLAN for s in scans)
    assert sum(r.kind == jr.DECISIONS for s in scans for r in s.records) == w.records


def test_a_plan_record_that_does_not_decode_ends_the_segment_for_every_reader(tmp_path):
    """A PLAN record with a good CRC whose names are not UTF-8 is a torn tail to the bulk
    reader and the compactor as to read_segment: the decisions before it are compacted."""
    line = Line(tmp_path, fsync_interval_s=None)
    line.scan([[b"050010"]], first_parcel=1)
    bad = jr.record_bytes(jr.PLAN, 0, [jr._TIME_LEN.pack(5, 2), b"\xff\xfe", jr._U32.pack(0)])
    at = line.journal._pos
    line.journal.append(bad)
    line.scan([[b"050010"]], first_parcel=2)
    line.journal.close()
    segment = jr.segments(tmp_path)[0]
    index, scan = jr.index_segment(segment), jr.read_segment(segment)
    assert index.torn and scan.torn and index.end == scan.end == at
    assert "offset" in index.problem and len(index) == len(scan.records) == 2   # PLAN, DECISIONS
    assert index.frames["offset"].size == 1 and index.destination.size == 1
    compact_segment(tmp_path, segment)
    assert decisions_of(read_audit(tmp_path)).column("decision_seq").to_pylist() == [1]
