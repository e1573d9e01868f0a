"""Decision audit (sorter.audit): Arrow IPC files, rotation, fsync policy, crash recovery."""
from __future__ import annotations

import datetime as dt
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter.audit import files as audit
from sorter.audit import (AUDIT_SCHEMA, AuditLocked, AuditWriter, audit_files, read_audit,
                          reads_array, recover, recover_files)
from sorter.core.codes import MALFORMED, NO_READ, REASONS, SORTED
from sorter.core.events import Decisions, EventBatch

REPO = Path(__file__).resolve().parents[1]
NS = 1_000_000_000
# 2026-05-09 10:00:00 UTC
T0 = int(dt.datetime(2026, 5, 9, 10, 0, 0, tzinfo=dt.timezone.utc).timestamp()) * NS
NAMES = ["ALMATY", "ASTANA", "SHYMKENT"]


class Clock:
    def __init__(self, now: int = T0):
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * NS)


def batch(n: int, *, start: int = 0, reads=None, seed: int = 0):
    """n events with one or two reads each and decisions cycling over reasons/destinations."""
    rng = np.random.default_rng(seed)
    if reads is None:
        reads = [[b"RR%09dKZ" % (start + i)] + ([b"050012"] if i % 3 == 0 else [])
                 for i in range(n)]
    ev = EventBatch.from_reads(
        reads, parcel_ids=np.arange(start, start + n, dtype=np.uint64),
        scanner_ids=rng.integers(0, 8, n), ts_ns=np.full(n, T0 - 1000, np.int64),
        recirculations=np.arange(n) % 3)
    dec = Decisions(chute=(np.arange(n) % 60).astype(np.uint16),
                    reason=(np.arange(n) % 8).astype(np.uint8),
                    destination=(np.arange(n) % 4 - 1).astype(np.int32))
    return ev, dec


def write(w: AuditWriter, evdec, decision_seq, now_ns=None, seq=0) -> int:
    ev, dec = evdec
    return w.write_decisions(ev, seq, dec, decision_seq, NAMES, "v", now_ns=now_ns)


def files_in(root: Path, pattern: str = "*.arrow") -> list[Path]:
    return sorted(root.rglob(pattern))


# ---------------------------------------------------------------------------------- schema


def test_schema():
    assert AUDIT_SCHEMA.names == [
        "ts", "scanner_id", "parcel_id", "seq", "decision_seq", "reads", "chute", "reason",
        "destination", "plan_version", "latency_ns", "recirculations", "raw", "error"]
    assert AUDIT_SCHEMA.field("ts").type == pa.timestamp("ns", tz="UTC")
    assert AUDIT_SCHEMA.field("reads").type == pa.list_(pa.string())
    assert AUDIT_SCHEMA.field("chute").type == pa.uint16()
    assert AUDIT_SCHEMA.field("reason").type == pa.dictionary(pa.int8(), pa.string())
    assert AUDIT_SCHEMA.field("recirculations").type == pa.uint8()
    assert audit.REASON_DICTIONARY.to_pylist() == list(REASONS)


# ------------------------------------------------------------------------------ round trip


def test_round_trip(tmp_path):
    reads = [[b"RR123456785KZ", b"\xff\xfe\x00junk"], [], [b"caf\xc3\xa9"], [b"\x80"], [b""]]
    ev, dec = batch(5, reads=reads)
    with AuditWriter(tmp_path, clock=Clock()) as w:
        assert w.write_decisions(ev, 42, dec, 1000, NAMES, "2026.5.1", now_ns=T0) == 5
        assert w.path is not None and w.path.name.startswith("_")
    t = read_audit(tmp_path)
    assert t.schema.equals(AUDIT_SCHEMA)
    assert t.num_rows == 5
    col = {k: t.column(k).to_pylist() for k in t.column_names if k != "ts"}
    assert t.column("ts").cast(pa.int64()).to_pylist() == [T0] * 5
    assert col["scanner_id"] == ev.scanner_ids.tolist()
    assert col["parcel_id"] == [0, 1, 2, 3, 4]
    assert col["seq"] == [42] * 5
    assert col["decision_seq"] == [1000, 1001, 1002, 1003, 1004]
    assert col["chute"] == dec.chute.tolist()
    assert col["reason"] == [REASONS[r] for r in dec.reason]
    assert col["destination"] == [None, "ALMATY", "ASTANA", "SHYMKENT", None]
    assert col["plan_version"] == ["2026.5.1"] * 5
    assert col["latency_ns"] == [1000] * 5
    assert col["recirculations"] == [0, 1, 2, 0, 1]
    assert col["raw"] == [None] * 5 and col["error"] == [None] * 5
    # valid UTF-8 is kept, invalid reads are latin-1 transcoded (and can be turned back)
    assert col["reads"] == [["RR123456785KZ", "\xff\xfe\x00junk"], [], ["café"], ["\x80"], [""]]
    assert col["reads"][0][1].encode("latin-1") == reads[0][1]
    assert col["reads"][2][0].encode("utf-8") == reads[2][0]
    for f in files_in(tmp_path):                  # every file is valid UTF-8
        ipc.open_file(f).read_all().validate(full=True)


def test_per_event_columns(tmp_path):
    ev, dec = batch(4)
    with AuditWriter(tmp_path) as w:
        w.write_decisions(ev, [5, 6, 7, 8], dec, np.array([10, 12, 14, 16]), pa.array(NAMES),
                          "v", now_ns=np.array([T0, T0 + 1, T0 + 2, T0 + 3]),
                          latency_ns=np.array([1, 2, 3, 4]))
    t = read_audit(tmp_path)
    assert t.column("seq").to_pylist() == [5, 6, 7, 8]
    assert t.column("decision_seq").to_pylist() == [10, 12, 14, 16]
    assert t.column("ts").cast(pa.int64()).to_pylist() == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert t.column("latency_ns").to_pylist() == [1, 2, 3, 4]


def test_reads_utf8_against_python(tmp_path):
    rng = np.random.default_rng(7)
    pool = [b"RR123456785KZ", "Алматы".encode(), b"\xc3", b"\xe2\x82", b"ok\xffok", b"",
            bytes(rng.integers(0, 256, 12, dtype=np.uint8))]
    reads = [[pool[j] for j in rng.integers(0, len(pool), rng.integers(0, 4))]
             for _ in range(2000)]
    ev = EventBatch.from_reads(reads)

    def expect(b: bytes) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b.decode("latin-1")

    arr = reads_array(ev)
    arr.validate(full=True)
    assert arr.to_pylist() == [[expect(b) for b in rs] for rs in reads]


def test_reads_zero_copy_when_valid():
    ev, _ = batch(100)
    arr = reads_array(ev)
    assert arr.values.buffers()[2].address == ev.data.ctypes.data
    assert arr.values.buffers()[1].address == ev.read_offsets.ctypes.data


def test_malformed_rows(tmp_path):
    ev, dec = batch(2)
    with AuditWriter(tmp_path) as w:
        w.write_decisions(ev, 1, dec, 0, NAMES, "v1", now_ns=T0)
        w.write_malformed(b"\x00\xffnot a message", "truncated header", 2, now_ns=T0 + 5)
        w.write_malformed(b"", "empty", 3, now_ns=T0 + 6, plan_version="v1")
    t = read_audit(tmp_path)
    rows = t.drop_columns(["ts"]).to_pylist()[2:]
    assert [r["reason"] for r in rows] == ["malformed", "malformed"]
    assert [r["raw"] for r in rows] == [b"\x00\xffnot a message", b""]
    assert [r["error"] for r in rows] == ["truncated header", "empty"]
    assert [r["decision_seq"] for r in rows] == [2, 3]
    assert [r["plan_version"] for r in rows] == [None, "v1"]
    for k in ("scanner_id", "parcel_id", "seq", "reads", "chute", "destination",
              "latency_ns", "recirculations"):
        assert [r[k] for r in rows] == [None, None]
    assert t.column("reason").combine_chunks().indices.to_pylist() == [
        SORTED, NO_READ, MALFORMED, MALFORMED]


def test_bad_input_writes_nothing(tmp_path):
    ev, dec = batch(3)
    with AuditWriter(tmp_path) as w:
        with pytest.raises(ValueError):
            w.write_decisions(ev, 0, Decisions(dec.chute[:2], dec.reason[:2],
                                               dec.destination[:2]), 0, NAMES, "v")
        with pytest.raises(ValueError, match="REASONS"):
            w.write_decisions(ev, 0, Decisions(dec.chute, np.array([0, 9, 0], np.uint8),
                                               dec.destination), 0, NAMES, "v")
        with pytest.raises(IndexError):
            w.write_decisions(ev, 0, Decisions(dec.chute, dec.reason,
                                               np.array([0, 3, 0], np.int32)), 0, NAMES, "v")
        w.write_decisions(ev, 0, dec, 0, NAMES, "v", now_ns=T0)
    assert read_audit(tmp_path).num_rows == 3
    with pytest.raises(ValueError):
        w.write_decisions(ev, 0, dec, 3, NAMES, "v")
    w.close()                                      # idempotent


def test_empty_batch_writes_nothing(tmp_path):
    ev, dec = batch(0, reads=[])
    with AuditWriter(tmp_path) as w:
        assert w.write_decisions(ev, 0, dec, 0, NAMES, "v") == 0
    assert audit_files(tmp_path) == []
    assert read_audit(tmp_path).num_rows == 0


# ------------------------------------------------------------------------ fast-path columns


def reference_batch(events: EventBatch, seq, decisions: Decisions, decision_seq,
                    destination_names, plan_version, now_ns, latency_ns) -> pa.RecordBatch:
    """The record batch of a write_decisions call built the plain way (pa.array from Python
    and numpy values, pyarrow.compute take, reads decoded one by one in Python): what the
    writer's buffer-level construction must equal."""
    n = len(events)
    scalar = np.isscalar
    now = np.full(n, now_ns, np.int64) if scalar(now_ns) else np.asarray(now_ns, np.int64)
    dseq = (np.arange(decision_seq, decision_seq + n, dtype=np.uint64) if scalar(decision_seq)
            else np.asarray(decision_seq, np.uint64))
    latency = (now - events.ts_ns if latency_ns is None
               else np.full(n, latency_ns, np.int64) if scalar(latency_ns)
               else np.asarray(latency_ns, np.int64))

    def text(b: bytes) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b.decode("latin-1")

    names = destination_names
    table = pa.array(names.to_pylist() if isinstance(names, pa.Array) else list(names),
                     pa.string())
    dest = np.asarray(decisions.destination, np.int32)
    destination = pa.concat_arrays([table, pa.nulls(1, pa.string())]).take(
        pa.array(np.where(dest < 0, len(table), dest)))
    columns = [
        pa.array(now, pa.timestamp("ns", tz="UTC")),
        pa.array(events.scanner_ids, pa.uint16()),
        pa.array(events.parcel_ids, pa.uint64()),
        pa.array(np.full(n, seq, np.uint64) if scalar(seq) else np.asarray(seq, np.uint64)),
        pa.array(dseq),
        pa.array([[text(r) for r in events.reads(i)] for i in range(n)],
                 pa.list_(pa.string())),
        pa.array(decisions.chute, pa.uint16()),
        pa.DictionaryArray.from_arrays(pa.array(decisions.reason.astype(np.int8)),
                                       audit.REASON_DICTIONARY),
        destination,
        pa.array([plan_version] * n, pa.string()),
        pa.array(latency, pa.int64()),
        pa.array(events.recirculations, pa.uint8()),
        pa.nulls(n, pa.binary()),
        pa.nulls(n, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=AUDIT_SCHEMA)


GARBAGE_READS = [b"RR123456785KZ", "Алматы".encode(), b"\xff\xfe\x00junk", b"caf\xc3\xa9",
                 b"\xef\xbf\xbd", b"\xc3", b"\xe2\x82", b"\x80", b""]
SHARED_NAMES = pa.array(["ALMATY", "ASTANA", "ШЫМКЕНТ"])   # one object: cached by the writer


@st.composite
def decision_calls(draw):
    """Arguments of one write_decisions call: a lone event or many, garbage reads,
    destinations -1 (or other negatives), every scalar-or-vector form."""
    n = draw(st.one_of(st.just(1), st.integers(1, 8), st.integers(1, 300)))
    vec = lambda elements: st.lists(elements, min_size=n, max_size=n)   # noqa: E731
    read = st.one_of(st.sampled_from(GARBAGE_READS), st.binary(max_size=12))
    reads = draw(vec(st.lists(read, max_size=3)))
    names = draw(st.one_of(
        st.just(SHARED_NAMES),
        st.lists(st.text(max_size=10), max_size=5),
        st.lists(st.text(max_size=10), max_size=5).map(lambda x: pa.array(x, pa.string()))))
    k = len(names)
    u64 = st.integers(0, 2**64 - 1)
    ev = EventBatch.from_reads(
        reads, parcel_ids=np.array(draw(vec(u64)), np.uint64),
        scanner_ids=np.array(draw(vec(st.integers(0, 65535))), np.uint16),
        ts_ns=np.array(draw(vec(st.integers(T0 - 10 * NS, T0))), np.int64),
        recirculations=np.array(draw(vec(st.integers(0, 255))), np.uint8))
    dest = st.one_of(st.just(-1), st.integers(-5, -1), st.integers(0, k - 1)) if k else \
        st.integers(-3, -1)
    dec = Decisions(chute=np.array(draw(vec(st.integers(0, 65535))), np.uint16),
                    reason=np.array(draw(vec(st.integers(0, len(REASONS) - 1))), np.uint8),
                    destination=np.array(draw(vec(dest)), np.int32))

    def scalar_or_vector(elements, dtype):
        return draw(st.one_of(elements, vec(elements).map(lambda x: np.array(x, dtype))))

    return dict(
        events=ev, decisions=dec, destination_names=names,
        seq=scalar_or_vector(u64, np.uint64),
        decision_seq=draw(st.one_of(st.integers(0, 2**62),
                                    vec(u64).map(lambda x: np.array(x, np.uint64)))),
        plan_version=draw(st.one_of(st.none(), st.sampled_from(["2026.5.1", "v2"]),
                                    st.text(max_size=8))),
        now_ns=scalar_or_vector(st.integers(T0, T0 + 3600 * NS), np.int64),
        latency_ns=draw(st.one_of(st.none(), st.integers(-2**40, 2**40),
                                  vec(st.integers(-2**40, 2**40)).map(np.array))))


@pytest.fixture(scope="module")
def batch_writer(tmp_path_factory):
    with AuditWriter(tmp_path_factory.mktemp("fast"), fsync_interval_s=None) as w:
        yield w


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.data_too_large])
@given(call=decision_calls())
def test_fast_columns_equal_reference(batch_writer, call):
    """The columns built from the numpy buffers equal the plain construction, whatever the
    batch (one writer for every example: its caches see every sequence of sizes and names)."""
    expected = reference_batch(**call)
    got, first_seq, first_ns = batch_writer._decision_batch(**call)
    got.validate(full=True)
    assert got.schema.equals(AUDIT_SCHEMA, check_metadata=True)
    for name, a, b in zip(AUDIT_SCHEMA.names, got.columns, expected.columns):
        assert a.equals(b), (name, a, b)
    assert first_seq == expected.column("decision_seq")[0].as_py()
    assert first_ns == expected.column("ts").cast(pa.int64())[0].as_py()
    assert batch_writer.write_decisions(**call) == len(call["events"])


def test_fast_columns_many_rows(tmp_path):
    n = 70_000
    rng = np.random.default_rng(3)
    reads = [[GARBAGE_READS[j] for j in rng.integers(0, len(GARBAGE_READS), rng.integers(0, 3))]
             for _ in range(n)]
    ev = EventBatch.from_reads(reads, parcel_ids=rng.integers(0, 2**63, n, dtype=np.uint64),
                               scanner_ids=rng.integers(0, 65536, n),
                               ts_ns=np.full(n, T0 - 5, np.int64),
                               recirculations=rng.integers(0, 256, n))
    dec = Decisions(chute=rng.integers(0, 65536, n).astype(np.uint16),
                    reason=rng.integers(0, len(REASONS), n).astype(np.uint8),
                    destination=rng.integers(-1, 3, n).astype(np.int32))
    call = dict(events=ev, seq=7, decisions=dec, decision_seq=10, destination_names=NAMES,
                plan_version="v", now_ns=T0, latency_ns=None)
    with AuditWriter(tmp_path) as w:
        got, _, _ = w._decision_batch(**call)
        assert got.equals(reference_batch(**call))
        w.write_decisions(**call)
    assert read_audit(tmp_path).equals(pa.Table.from_batches([reference_batch(**call)]))


# -------------------------------------------------------------------------------- rotation


NAME_RE = re.compile(r"^decisions-(\d{6})-(\d+)\.arrow$")


def test_rotation_by_size(tmp_path):
    with AuditWriter(tmp_path, rotate_bytes=20_000, fsync_interval_s=None) as w:
        seq = 0
        for i in range(40):
            ev, dec = batch(50, start=seq)
            w.write_decisions(ev, i, dec, seq, NAMES, "v", now_ns=T0 + i)
            seq += 50
    files = files_in(tmp_path)
    assert len(files) > 3 and files == sorted(w.files)
    firsts = []
    for f in files:
        assert f.parent.name == "date=2026-05-09"
        m = NAME_RE.match(f.name)
        assert m and m.group(1) == "100000"
        r = ipc.open_file(f)
        t = r.read_all()
        firsts.append(int(m.group(2)))
        assert t.column("decision_seq")[0].as_py() == int(m.group(2))
        # a file is sealed once it reaches rotate_bytes: at most one batch past it
        assert f.stat().st_size < 20_000 + 12_000
    assert read_audit(tmp_path).column("decision_seq").to_pylist() == list(range(2000))
    assert len(firsts) == len(set(firsts))


def test_rotation_by_time_and_tick(tmp_path):
    clock = Clock()
    with AuditWriter(tmp_path, rotate_seconds=60, clock=clock) as w:
        for k, s in enumerate([0, 30, 59.9, 60.5, 100, 125]):
            ev, dec = batch(2, start=2 * k)
            w.write_decisions(ev, k, dec, 2 * k, NAMES, "v", now_ns=T0 + int(s * NS))
        assert [f.name for f in w.files] == ["decisions-100000-0.arrow",
                                             "decisions-100100-6.arrow"]
        # a quiet line: tick() seals the current file once its time is up
        w.tick(now_ns=T0 + 150 * NS)
        assert w.path is not None
        w.tick(now_ns=T0 + 186 * NS)
        assert w.path is None and w.files[-1].name == "decisions-100205-10.arrow"
    assert read_audit(tmp_path).num_rows == 12


def test_rotation_at_utc_date_change(tmp_path):
    midnight = int(dt.datetime(2026, 5, 10, tzinfo=dt.timezone.utc).timestamp()) * NS
    with AuditWriter(tmp_path, rotate_seconds=None) as w:
        for k, t in enumerate([midnight - 2 * NS, midnight - 1, midnight, midnight + 5 * NS]):
            ev, dec = batch(3, start=3 * k)
            w.write_decisions(ev, k, dec, 3 * k, NAMES, "v", now_ns=t)
    assert [f.relative_to(tmp_path).as_posix() for f in files_in(tmp_path)] == [
        "date=2026-05-09/decisions-235958-0.arrow",
        "date=2026-05-10/decisions-000000-6.arrow"]
    t = pads.dataset(tmp_path, format="arrow", partitioning="hive").to_table()
    assert t.num_rows == 12
    # every row's partition is the UTC date of its ts
    days = t.column("ts").cast(pa.int64()).to_numpy() // (86400 * NS)
    dates = [str(dt.date(1970, 1, 1) + dt.timedelta(days=int(d))) for d in days]
    assert dates == t.column("date").to_pylist()


def test_name_collision_gets_suffix(tmp_path):
    for _ in range(2):
        with AuditWriter(tmp_path) as w:
            write(w, batch(2), 0, now_ns=T0)
    assert [f.name for f in files_in(tmp_path)] == ["decisions-100000-0-1.arrow",
                                                    "decisions-100000-0.arrow"]
    assert read_audit(tmp_path).num_rows == 4


# ------------------------------------------------------------------- datasets and readers


def write_sample(root: Path, days: int = 2, per_day: int = 3) -> int:
    seq = 0
    with AuditWriter(root, rotate_bytes=8_000) as w:
        for d in range(days):
            for k in range(per_day):
                ev, dec = batch(40, start=seq)
                w.write_decisions(ev, k, dec, seq, NAMES, "v1",
                                  now_ns=T0 + d * 86400 * NS + k * NS)
                seq += 40
            w.write_malformed(b"\x01\x02", "bad magic", seq, now_ns=T0 + d * 86400 * NS + 9)
            seq += 1
    return seq


def test_hive_dataset(tmp_path):
    n = write_sample(tmp_path)
    d = pads.dataset(tmp_path, format="arrow", partitioning="hive")
    assert "date" in d.schema.names
    t = d.to_table()
    assert t.num_rows == n
    assert sorted(set(t.column("date").to_pylist())) == ["2026-05-09", "2026-05-10"]
    one_day = d.to_table(filter=pads.field("date") == "2026-05-10")
    assert one_day.num_rows == n // 2
    typed = pads.dataset(tmp_path, format="arrow", partitioning=pads.partitioning(
        pa.schema([("date", pa.date32())]), flavor="hive"))
    assert typed.schema.field("date").type == pa.date32()
    assert typed.count_rows(filter=pads.field("date") == dt.date(2026, 5, 9)) == n // 2


def test_open_file_hidden_from_datasets(tmp_path):
    """The file being written has no footer yet: datasets must not see it (they would fail
    with 'Not an Arrow file'); read_audit does read it."""
    write_sample(tmp_path / "a", days=1)
    root = tmp_path / "a"
    with AuditWriter(root, rotate_bytes=None) as w:
        write(w, batch(5, start=1000), 1000, now_ns=T0 + 3600 * NS)
        assert w.path.exists() and w.path.name.endswith(".arrow.part")
        with pytest.raises(pa.ArrowInvalid):
            ipc.open_file(w.path)
        sealed = pads.dataset(root, format="arrow", partitioning="hive").to_table().num_rows
        assert read_audit(root).num_rows == sealed + 5
    assert pads.dataset(root, format="arrow", partitioning="hive").count_rows() == sealed + 5


def test_polars(tmp_path):
    pl = pytest.importorskip("polars")
    n = write_sample(tmp_path)
    with AuditWriter(tmp_path) as w:     # an unsealed file must not break the glob
        write(w, batch(3), 10_000, now_ns=T0)
        df = pl.scan_ipc(str(tmp_path / "**" / "*.arrow"), hive_partitioning=True).collect()
    assert df.height == n
    assert str(df.schema["reason"]).startswith(("Categorical", "Enum"))
    counts = dict(df.group_by("reason").len().iter_rows())
    assert counts["malformed"] == 2


def test_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    n = write_sample(tmp_path)
    ds = pads.dataset(tmp_path, format="arrow", partitioning="hive")  # noqa: F841 (used by SQL)
    rows = duckdb.sql("select reason, count(*) from ds group by 1 order by 1").fetchall()
    assert sum(c for _, c in rows) == n
    assert dict(rows)["malformed"] == 2


def test_docs_examples_run(tmp_path, monkeypatch):
    """Every ```python block of docs/audit.md runs against a sample audit directory."""
    pytest.importorskip("polars")
    pytest.importorskip("duckdb")
    text = (REPO / "docs" / "audit.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    write_sample(tmp_path / "audit")
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "docs/audit.md", "exec"), {"__name__": "__docs__"})


# -------------------------------------------------------------------------------- recovery


def open_writer_with_batches(root: Path, batches: int, rows: int = 30) -> tuple[AuditWriter, int]:
    w = AuditWriter(root, rotate_bytes=None, fsync_interval_s=None)
    for k in range(batches):
        write(w, batch(rows, start=k * rows), k * rows, now_ns=T0 + k)
    return w, batches * rows


def test_unsealed_file_holds_stream_from_byte_8(tmp_path):
    w, n = open_writer_with_batches(tmp_path / "live", 3)
    data = w.path.read_bytes()
    assert data[:6] == b"ARROW1"
    t = ipc.open_stream(pa.py_buffer(data[8:])).read_all()     # no torn tail: all of it
    assert t.num_rows == n
    w.close()


def test_recover_torn_files_at_every_cut(tmp_path):
    """Cut an unsealed file at many byte positions: recovery keeps exactly the batches that
    lie entirely before the cut, and says when it dropped a torn tail."""
    w, _ = open_writer_with_batches(tmp_path / "live", 4, rows=20)
    part = w.path
    data = part.read_bytes()
    # where each batch ends, and each message: replay the stream and note positions
    src = pa.BufferReader(pa.py_buffer(data))
    src.seek(8)
    reader = ipc.open_stream(src)
    ends = []
    while True:
        try:
            reader.read_next_batch()
        except StopIteration:
            break
        ends.append(src.tell())
    assert len(ends) == 4 and ends[-1] == len(data)
    src.seek(8)
    messages = ipc.MessageReader.open_stream(src)
    boundaries = {0, 8}
    while True:
        try:
            messages.read_next_message()
        except StopIteration:
            break
        boundaries.add(src.tell())
    assert set(ends) <= boundaries
    cuts = sorted(set(list(range(0, 400, 7)) + [e + d for e in ends for d in (-1, 0, 1)]
                      + list(range(ends[0], len(data), 37))) | {len(data)})
    cuts = [c for c in cuts if c <= len(data)]
    for cut in cuts:
        root = tmp_path / f"cut{cut}"
        (root / "date=2026-05-09").mkdir(parents=True)
        target = root / "date=2026-05-09" / part.name
        target.write_bytes(data[:cut])
        expect_batches = sum(e <= cut for e in ends)
        assert read_audit(root).num_rows == 20 * expect_batches
        recs = recover_files(root)
        assert len(recs) == 1
        r = recs[0]
        assert r.batches == expect_batches and r.rows == 20 * expect_batches, cut
        assert r.torn_tail == (cut not in boundaries), cut
        if expect_batches == 0:
            assert r.path is None and not any(root.rglob("*.arrow*"))
            continue
        assert r.path.name == part.name[1:-len(".part")]
        t = ipc.open_file(r.path).read_all()
        assert t.column("decision_seq").to_pylist() == list(range(20 * expect_batches))
        assert pads.dataset(root, format="arrow", partitioning="hive").count_rows() == t.num_rows
        assert recover_files(root) == []              # idempotent
    w.close()


def test_recover_other_cases(tmp_path):
    # a sealed file truncated in its footer (power loss without fsync), rewritten in place
    root = tmp_path / "a"
    n = write_sample(root, days=1, per_day=2)
    f = files_in(root)[-1]
    rows = ipc.open_file(f).read_all().num_rows
    f.write_bytes(f.read_bytes()[:-5])
    (r,) = recover_files(root)
    assert r.source == r.path == f and r.rows == rows
    assert pads.dataset(root, format="arrow", partitioning="hive").count_rows() == n
    # crash between footer and rename: a sealed file under its hidden name is just renamed
    root = tmp_path / "b"
    write_sample(root, days=1, per_day=1)
    f = files_in(root)[0]
    hidden = f.with_name("_" + f.name + ".part")
    f.rename(hidden)
    assert recover(root) == [f]
    # an empty file (killed between open and the first write) is removed
    root = tmp_path / "c"
    (root / "date=2026-05-09").mkdir(parents=True)
    (root / "date=2026-05-09" / "_decisions-100000-0.arrow.part").write_bytes(b"")
    (r,) = recover_files(root)
    assert r.path is None and r.rows == 0 and not any(root.rglob("*.part"))
    # a leftover temp file of a crashed recovery is removed
    (root / "date=2026-05-09" / ".recover-x.arrow.tmp").write_bytes(b"junk")
    recover(root)
    assert not any(root.rglob(".recover-*"))


def test_recover_refuses_a_live_writer(tmp_path):
    with AuditWriter(tmp_path) as w:
        write(w, batch(2), 0, now_ns=T0)
        with pytest.raises(AuditLocked):
            recover(tmp_path)
        with pytest.raises(AuditLocked):
            AuditWriter(tmp_path)
    assert recover(tmp_path) == []


def test_failed_write_abandons_the_file(tmp_path):
    """A write that fails half way (disk full...) leaves a torn file: it is dropped, kept
    hidden for `recover`, and the next write starts a new file."""
    w = AuditWriter(tmp_path, rotate_bytes=None)
    write(w, batch(10), 0, now_ns=T0)
    first = w.path
    file = w._file

    def half_written(*_args):
        os.write(file.fileno(), b"\xff\xff\xff\xff\x10\x00\x00\x00partial")
        raise OSError(28, "No space left on device")

    file.write_encoded = file.write_batch = half_written
    with pytest.raises(OSError):
        write(w, batch(10, start=10), 10, now_ns=T0 + 1)
    assert w.path is None and first.exists()
    write(w, batch(10, start=20), 20, now_ns=T0 + 2 * NS)
    w.close()
    assert read_audit(tmp_path).column("decision_seq").to_pylist() == (
        list(range(10)) + list(range(20, 30)))
    (r,) = recover_files(tmp_path)
    assert r.rows == 10 and r.torn_tail
    assert pads.dataset(tmp_path, format="arrow", partitioning="hive").count_rows() == 20


CHILD = r"""
import sys, numpy as np
from sorter.audit import AuditWriter
from sorter.core.events import EventBatch, Decisions
root = sys.argv[1]
rng = np.random.default_rng()
names = ["A", "B", "C"]
batches = []                            # built up front: the loop's time goes to writing
for n in [1, 7, 64, 300, 1024, 5000, 20_000, 60_000]:
    reads = [[b"RR%09dKZ" % i, b"\xfe\xff" if i % 7 == 0 else b"0500"] for i in range(n)]
    batches.append((EventBatch.from_reads(reads), Decisions(
        np.ones(n, np.uint16), np.zeros(n, np.uint8), (np.arange(n) % 4 - 1).astype(np.int32))))
print("ready", flush=True)
seq = 0
with AuditWriter(root, rotate_bytes=2 << 20) as w:
    while True:
        ev, dec = batches[rng.integers(len(batches))]
        w.write_decisions(ev, seq, dec, seq, names, "v1")
        seq += len(ev)
        print(seq - 1, flush=True)     # "sent": only after write_decisions returned
"""


def test_sigkill_mid_stream(tmp_path):
    root = tmp_path / "audit"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE,
                            env=env, text=True)
    printed = []
    try:
        assert proc.stdout.readline() == "ready\n"
        while len(printed) < 150:
            line = proc.stdout.readline()
            assert line, "child exited early"
            printed.append(int(line))
            if len(printed) == 75:
                # a dataset over the directory works while the writer is live
                d = pads.dataset(root, format="arrow", partitioning="hive")
                assert d.count_rows() > 0
                assert d.to_table().num_rows == d.count_rows()
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()                  # lines already in the pipe count too
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    printed += [int(x) for x in rest.split("\n")[:-1]]   # the last piece may be incomplete
    assert len(files_in(root)) >= 2                # rotation happened while running

    before = read_audit(root)
    seqs = before.column("decision_seq").to_numpy()
    assert set(printed) <= set(seqs.tolist())
    assert (seqs == np.arange(len(seqs))).all()    # no gap, no duplicate: a prefix

    recover(root)        # (the kill may fall between two files: then nothing to recover)
    assert not any(root.rglob("*.part"))
    for f in files_in(root):
        ipc.open_file(f).read_all().validate(full=True)
    d = pads.dataset(root, format="arrow", partitioning="hive")
    assert d.count_rows() == len(seqs)
    assert read_audit(root).equals(before)


STUCK_CHILD = r"""
import os, sys, threading, time, numpy as np
from sorter.audit import AuditWriter
from sorter.core.events import EventBatch, Decisions
real = os.fsync

def stuck(fd):                          # the disk never answers the writer's thread
    if threading.current_thread().name == "audit-fsync":
        time.sleep(3600)
    real(fd)

os.fsync = stuck
w = AuditWriter(sys.argv[1], fsync_interval_s=1000, rotate_bytes=20_000)
seq = 0
for i in range(40):
    reads = [[b"RR%09dKZ" % (seq + j)] for j in range(50)]
    dec = Decisions(np.ones(50, np.uint16), np.zeros(50, np.uint8), np.zeros(50, np.int32))
    w.write_decisions(EventBatch.from_reads(reads), i, dec, seq, ["A"], "v",
                      now_ns=int(sys.argv[2]) + i)
    seq += 50
print(seq, len(w.files), flush=True)
time.sleep(3600)
"""


def test_sigkill_while_the_thread_seals(tmp_path):
    """Killed while rotated files wait for the thread (the first one with its footer written,
    stuck in its fsync; the others not started): every file is still hidden, and recover()
    seals them all, keeping every row written."""
    root = tmp_path / "audit"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", STUCK_CHILD, str(root), str(T0)],
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        rows, rotated = map(int, proc.stdout.readline().split())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert rows == 2000 and rotated > 3
    assert files_in(root) == []                        # nothing sealed: all hidden
    hidden = audit_files(root)                         # in write order
    assert all(p.name.endswith(".arrow.part") for p in hidden)
    assert len(hidden) in (rotated, rotated + 1)       # + the current file, if any
    assert [audit._has_footer(p) for p in hidden[:2]] == [True, False]
    assert read_audit(root).column("decision_seq").to_pylist() == list(range(rows))
    recs = recover_files(root)
    assert [r.source for r in recs] == hidden and not any(r.torn_tail for r in recs)
    assert not any(root.rglob("*.part"))
    assert pads.dataset(root, format="arrow", partitioning="hive").count_rows() == rows
    assert read_audit(root).column("decision_seq").to_pylist() == list(range(rows))


# --------------------------------------------------------------------------------- fsync


@pytest.fixture
def fsyncs(monkeypatch):
    calls = []
    real = os.fsync

    def fake(fd):
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fake)
    return calls


def write_20(w: AuditWriter, clock: Clock, step: float) -> None:
    for k in range(20):
        clock.advance(step)
        write(w, batch(5, start=5 * k), 5 * k)


def test_fsync_every_batch(tmp_path, fsyncs):
    clock = Clock()
    w = AuditWriter(tmp_path, fsync_interval_s=0, clock=clock)
    write_20(w, clock, 0.001)
    assert fsyncs.count("file") == 20
    w.close()
    assert fsyncs.count("file") == 21                  # + the footer on close
    assert fsyncs.count("dir") == 3                    # partition and root on open, rename


def test_fsync_interval(tmp_path, fsyncs):
    """interval > 0: writes and tick() never fsync (the writer's thread does, see below);
    maybe_fsync() syncs when the last fsync is older than the interval by the clock. The
    thread wakes every 1000 s here: it stays out of the way."""
    clock = Clock()
    w = AuditWriter(tmp_path, fsync_interval_s=1000, rotate_seconds=None, clock=clock)
    write_20(w, clock, 250)                            # 5000 s of writes
    w.tick()
    assert fsyncs == []                                # not even the new directories
    assert w.maybe_fsync()                             # unsynced, and old enough
    assert fsyncs == ["dir", "dir", "file"]            # partition and root, then the file
    clock.advance(500)
    assert not w.maybe_fsync()                         # nothing new since the last one
    write(w, batch(1, start=100), 100)
    assert not w.maybe_fsync()                         # unsynced, but not old enough
    clock.advance(600)
    assert w.maybe_fsync()
    assert fsyncs.count("file") == 2
    w.close()
    assert fsyncs.count("file") == 3                   # + the footer on close
    assert fsyncs.count("dir") == 3                    # + the rename


@pytest.fixture
def fsync_threads(monkeypatch):
    """os.fsync, recording (kind, name of the calling thread)."""
    calls = []
    real = os.fsync

    def fake(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, threading.current_thread().name))
        real(fd)

    monkeypatch.setattr(os, "fsync", fake)
    return calls


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_background_fsync(tmp_path, fsync_threads):
    """The writer's thread fsyncs what was written within the interval, without a write call;
    nothing while nothing was written; close() joins it."""
    main = threading.current_thread().name
    w = AuditWriter(tmp_path, fsync_interval_s=0.02)
    thread = w._thread
    assert thread.is_alive() and thread.daemon
    files = lambda: [c for c in fsync_threads if c[0] == "file"]     # noqa: E731
    time.sleep(0.1)
    assert fsync_threads == []                         # no file yet: nothing to sync
    write(w, batch(5), 0, now_ns=T0)
    wait_for(lambda: len(files()) == 1)
    assert files() == [("file", "audit-fsync")] and w.fsyncs == 1
    # the new file's directory entries were synced by the thread, before the file
    assert fsync_threads[:2] == [("dir", "audit-fsync")] * 2
    time.sleep(0.2)                                    # ten intervals, nothing written
    assert len(files()) == 1
    write(w, batch(5, start=5), 5, now_ns=T0 + 1)
    wait_for(lambda: len(files()) == 2)
    assert files()[-1] == ("file", "audit-fsync")
    assert not any(t == main for _, t in fsync_threads)   # writes never fsync
    w.close()
    assert not thread.is_alive()
    assert thread not in threading.enumerate()
    assert files()[-1] == ("file", main)               # the footer, by close()
    n = len(fsync_threads)
    time.sleep(0.1)
    assert len(fsync_threads) == n
    assert read_audit(tmp_path).num_rows == 10


def test_writes_do_not_wait_for_a_slow_disk(tmp_path, monkeypatch):
    """While the thread is stuck in an fsync (a slow disk), writes go on, rotations included:
    the rotated files wait for the thread, which seals them (footer, fsync, rename) in order
    once the disk answers; the files are complete and named as inline sealing names them."""
    real = os.fsync
    entered, release = threading.Event(), threading.Event()
    callers = []

    def slow(fd):
        callers.append(threading.current_thread().name)
        if threading.current_thread().name == "audit-fsync":
            entered.set()
            assert release.wait(30)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow)
    w = AuditWriter(tmp_path, fsync_interval_s=0.01, rotate_bytes=20_000)
    write(w, batch(50), 0, now_ns=T0)
    assert entered.wait(10)                            # the thread is in the disk now
    for i in range(1, 40):
        write(w, batch(50, start=50 * i), 50 * i, now_ns=T0 + i)
    assert threading.current_thread().name not in callers
    assert len(w.files) > 3                            # rotated, handed to the thread
    assert all(not f.exists() for f in w.files)        # ... not sealed yet
    hidden = set(tmp_path.rglob("_*.arrow.part"))
    assert hidden == {f.with_name(f"_{f.name}.part") for f in w.files} | (
        {w.path} if w.path else set())
    release.set()
    wait_for(lambda: all(f.exists() for f in w.files))
    w.close()
    assert not any(tmp_path.rglob("*.part"))
    assert files_in(tmp_path) == sorted(w.files)
    for f in w.files:
        t = ipc.open_file(f).read_all()
        assert f.name == f"decisions-100000-{t.column('decision_seq')[0].as_py()}.arrow"
    assert read_audit(tmp_path).column("decision_seq").to_pylist() == list(range(2000))


def test_background_failure_is_raised_by_the_next_write(tmp_path, monkeypatch):
    """A seal that fails in the thread (here its rename) leaves the file hidden, with its
    footer, for recover(); the error is raised by the next write, which writes nothing; the
    writer goes on after that."""
    real = os.replace
    failures = []

    def failing_once(src, dst):
        if threading.current_thread().name == "audit-fsync" and not failures:
            failures.append(src)
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing_once)
    w = AuditWriter(tmp_path, fsync_interval_s=0.01, rotate_bytes=4000)
    write(w, batch(30), 0, now_ns=T0)                  # rotates: a seal for the thread
    assert w.path is None
    wait_for(lambda: w._error is not None)
    assert w.files == []                               # not sealed after all
    with pytest.raises(OSError, match="Input/output"):
        write(w, batch(30, start=30), 30, now_ns=T0 + 1)
    write(w, batch(30, start=60), 60, now_ns=T0 + 2)   # raised once: the writer goes on
    w.close()
    assert [f.name for f in w.files] == ["decisions-100000-60.arrow"]
    hidden = list(tmp_path.rglob("_*.arrow.part"))
    assert hidden == failures
    assert ipc.open_file(hidden[0]).read_all().num_rows == 30     # complete, footer included
    (r,) = recover_files(tmp_path)
    assert r.source == hidden[0] and r.rows == 30 and not r.torn_tail
    assert r.path.name == "decisions-100000-0.arrow"
    assert read_audit(tmp_path).column("decision_seq").to_pylist() == (
        list(range(30)) + list(range(60, 90)))


def test_failed_background_fsync_is_raised_once(tmp_path, monkeypatch):
    real = os.fsync
    fail = threading.Event()
    fail.set()

    def flaky(fd):
        if threading.current_thread().name == "audit-fsync" and fail.is_set():
            fail.clear()
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    w = AuditWriter(tmp_path, fsync_interval_s=0.01)
    write(w, batch(3), 0, now_ns=T0)
    wait_for(lambda: not fail.is_set())
    wait_for(lambda: w._error is not None)
    with pytest.raises(OSError, match="Input/output"):
        write(w, batch(3, start=3), 3, now_ns=T0 + 1)
    write(w, batch(3, start=6), 6, now_ns=T0 + 2)
    w.close()
    assert read_audit(tmp_path).column("decision_seq").to_pylist() == [0, 1, 2, 6, 7, 8]


def test_fsync_never(tmp_path, fsyncs):
    clock = Clock()
    w = AuditWriter(tmp_path, fsync_interval_s=None, clock=clock, rotate_bytes=2000)
    write_20(w, clock, 1)
    w.fsync()
    w.close()
    assert fsyncs == []


def test_fsync_from_timer_thread(tmp_path, fsyncs):
    clock = Clock()
    w = AuditWriter(tmp_path, fsync_interval_s=10, clock=clock)
    stop = threading.Event()

    def timer():
        while not stop.is_set():
            w.fsync()
            time.sleep(0.001)

    th = threading.Thread(target=timer)
    th.start()
    try:
        for k in range(200):
            write(w, batch(5, start=5 * k), 5 * k, now_ns=T0)
    finally:
        stop.set()
        th.join()
    w.close()
    assert fsyncs.count("file") >= 2
    assert read_audit(tmp_path).num_rows == 1000


def test_writeback_is_started_between_fsyncs(tmp_path, monkeypatch):
    """With an fsync interval the writer's thread starts the kernel's writeback of new bytes
    every _WRITEBACK_S once _WRITEBACK_BYTES piled up: contiguous ranges from where the last
    one ended to a page boundary (the page still being appended to stays out), never past
    what was written, and no fsync before its time."""
    calls = []
    monkeypatch.setattr(audit, "_sync_file_range",
                        lambda fd, start, n, flags: calls.append((start, n, flags)) or 0)
    monkeypatch.setattr(audit, "_WRITEBACK_BYTES", 4096)
    w = AuditWriter(tmp_path, fsync_interval_s=30.0, rotate_bytes=None)
    try:
        fsyncs = w.fsyncs
        for k in range(5):
            write(w, batch(200, start=200 * k), 200 * k, now_ns=T0 + k)
            last_page = w._file.tell() & ~(audit._PAGE - 1)
            wait_for(lambda: calls and calls[-1][0] + calls[-1][1] == last_page)
        assert calls[0][0] == 0
        assert all(a + n == b for (a, n, _), (b, _, _) in zip(calls, calls[1:]))
        assert all((a + n) % audit._PAGE == 0 for a, n, _ in calls)
        assert calls[-1][0] + calls[-1][1] <= w._file.tell()
        assert {flags for _, _, flags in calls} == {audit._SYNC_FILE_RANGE_WRITE}
        assert w.fsyncs == fsyncs                      # writeback is not an fsync
    finally:
        w.close()
    assert read_audit(tmp_path).num_rows == 1000
