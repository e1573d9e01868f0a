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

from sorter import audit
from sorter.audit import (AUDIT_SCHEMA, AuditLocked, AuditWriter, audit_files, read_audit,
                          reads_array, recover, recover_files)
from sorter.codes import MALFORMED, NO_READ, REASONS, SORTED
from sorter.events import Decisions, EventBatch

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
    real = w._writer

    class HalfWriter:
        def write_batch(self, b):
            w._sink.write(b"\xff\xff\xff\xff\x10\x00\x00\x00partial")
            raise OSError(28, "No space left on device")

    w._writer = HalfWriter()
    with pytest.raises(OSError):
        write(w, batch(10, start=10), 10, now_ns=T0 + 1)
    del real
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
from sorter.events import EventBatch, Decisions
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
    clock = Clock()
    w = AuditWriter(tmp_path, fsync_interval_s=1.0, clock=clock)
    write_20(w, clock, 0.25)                           # 5 s of writes
    assert fsyncs.count("file") == 5
    clock.advance(0.5)
    assert not w.maybe_fsync()                         # nothing new since the last one
    write(w, batch(1, start=100), 100)
    assert not w.maybe_fsync()                         # unsynced, but not old enough
    clock.advance(0.6)
    assert w.maybe_fsync()                             # the timer catches a quiet line
    assert fsyncs.count("file") == 6
    w.close()
    assert fsyncs.count("file") == 7


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
