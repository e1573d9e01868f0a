"""`sorter audit find|tail|verify|export` and `sorter.audit.query.find`, over compacted files
and the journal; and the audit directory a demo wrote, read as the README says (pyarrow,
pyarrow.dataset, Polars, DuckDB)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from sorter.audit import audit_files, read_audit
from sorter.audit import journal as jr
from sorter.audit.compactor import Compactor
from sorter.audit.query import find, verify

from test_journal import Line

ROOT = Path(__file__).resolve().parent.parent


def sorter(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "sorter.cli", *args], capture_output=True,
                           text=True, cwd=cwd, env=env, timeout=120)


@pytest.fixture
def half_compacted(tmp_path):
    """Parcel 7 decided three times: twice in a compacted file, once still in the journal."""
    line = Line(tmp_path, fsync_interval_s=None)
    line.scan([[b"050010"]], first_parcel=7, now_ns=1_000_000_000_000)
    line.scan([[b"RR473124829GB"], [b"Z01P3K4"]], first_parcel=8, now_ns=1_000_000_000_100)
    line.scan([[b"050010"]], first_parcel=7, now_ns=1_000_000_000_200)
    line.journal.close()
    Compactor(tmp_path).run_once()
    line2 = Line(tmp_path, fsync_interval_s=None)
    line2.decision_seq = 4
    line2.scan([[b"050010"]], first_parcel=7, now_ns=1_000_000_000_300)
    line2.malformed(b"\x00\x01", "bad_magic: at byte 0", now_ns=1_000_000_000_400)
    os.close(line2.journal._fd)                         # left open, as a live engine's
    line2.journal._fd = -1
    os.close(line2.journal._lock_fd)
    line2.journal._stop.set()
    assert audit_files(tmp_path) and jr.segments(tmp_path)
    return tmp_path


def test_find_by_parcel_id_and_by_barcode_across_files_and_journal(half_compacted):
    rows = find(half_compacted, "7")
    assert [r["decision_seq"] for r in rows] == [1, 4, 5]          # oldest first
    assert {r["parcel_id"] for r in rows} == {7}
    assert rows[0]["ts"] == "1970-01-01T00:16:40.000000000Z"
    assert rows[0]["reads"] == ["050010"] and rows[0]["reason"] == "sorted"
    by_code = find(half_compacted, "RR473124829GB")
    assert [(r["parcel_id"], r["decision_seq"]) for r in by_code] == [(8, 2)]
    assert find(half_compacted, "050010") == rows
    assert find(half_compacted, "no-such-thing") == []
    assert json.dumps(rows)                                          # JSON-ready


def test_cli_find_prints_json_lines_and_exits_1_when_nothing(half_compacted):
    out = sorter("audit", "find", "7", "--dir", str(half_compacted))
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["decision_seq"] for x in out.stdout.splitlines()] == [1, 4, 5]
    none = sorter("audit", "find", "424242", "--dir", str(half_compacted))
    assert none.returncode == 1 and none.stdout == ""


def test_cli_tail_prints_the_latest_decisions(half_compacted):
    out = sorter("audit", "tail", "-n", "2", "--json", "--dir", str(half_compacted))
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["decision_seq"] for x in out.stdout.splitlines()] == [4, 5]
    table = sorter("audit", "tail", "-n", "3", "--dir", str(half_compacted))
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ts", "dec_seq", "parcel_id"] and len(lines) == 4


def test_cli_tail_follow_prints_new_decisions_as_they_come(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None, seal_after_s=0.0)
    line.scan([[b"050010"]], first_parcel=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "sorter.cli", "audit", "tail", "-f", "--json",
                             "--interval", "0.1", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["decision_seq"] == 1
        line.scan([[b"Z01P3K4"]], first_parcel=2)
        second = json.loads(proc.stdout.readline())
        assert (second["decision_seq"], second["reads"]) == (2, ["Z01P3K4"])
    finally:
        proc.kill()
        proc.wait()
        line.journal.close()


def test_verify_ok_then_reports_a_bad_crc_a_gap_a_duplicate_and_a_broken_file(half_compacted):
    ok = sorter("audit", "verify", "--dir", str(half_compacted))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert verify(half_compacted) == []
    (segment,) = jr.segments(half_compacted)
    data = bytearray(segment.read_bytes())
    rec = [r for r in jr.read_segment(segment).records if r.kind == jr.MALFORMED][0]
    data[rec.offset + 17] ^= 0xFF
    segment.write_bytes(bytes(data))
    problems = verify(half_compacted)
    assert any("CRC32C" in p for p in problems)
    (f,) = audit_files(half_compacted)
    table = ipc.open_file(f).read_all()
    # a duplicate of decision 2 and a gap (3 removed) in a second file
    twisted = table.filter(pa.compute.not_equal(table.column("decision_seq"), 3))
    with ipc.new_file(f.parent / "decisions-000000000002-000000000002.arrow", table.schema) as w:
        w.write_table(twisted.filter(pa.compute.equal(twisted.column("decision_seq"), 2)))
    (f.parent / "decisions-000000000099-000000000099.arrow").write_bytes(b"ARROW1 not really")
    problems = verify(half_compacted)
    assert any("duplicated" in p for p in problems)
    assert any("does not open" in p for p in problems)
    bad = sorter("audit", "verify", "--dir", str(half_compacted))
    assert bad.returncode == 1 and "duplicated" in bad.stdout


def test_verify_reports_a_gap(tmp_path):
    line = Line(tmp_path, fsync_interval_s=None)
    line.scan([[b"050010"]])
    line.decision_seq = 5                                 # decisions 2..5 never journaled
    line.scan([[b"050010"]], first_parcel=1)
    line.journal.close()
    assert verify(tmp_path) == ["decision_seq gap: 2..5 missing"]


def test_export_writes_every_row_to_parquet(half_compacted, tmp_path):
    out = tmp_path / "archive.parquet"
    run = sorter("audit", "export", "--parquet", str(out), "--dir", str(half_compacted))
    assert run.returncode == 0, run.stderr
    table = pq.read_table(out)
    assert table.num_rows == read_audit(half_compacted).num_rows == 6
    assert sorted(table.column("decision_seq").to_pylist()) == [0, 1, 2, 3, 4, 5]


def test_a_demo_audit_dir_opens_in_pyarrow_dataset_polars_and_duckdb(tmp_path):
    """The README's queries on what `sorter demo` wrote, and the demo's own printed query."""
    from simulators.demo import print_summary, run_demo

    audit = tmp_path / "audit"
    console = Console(file=open(tmp_path / "out.txt", "w"), width=200)
    result = run_demo(seconds=2, rate=100, audit_dir=str(audit), live=False, console=console)
    print_summary(result, console)
    console.file.flush()
    assert result.engine_exit == 0
    assert not list(audit.rglob("*.log"))                  # audit data only
    n = result.audited_rows
    table = ds.dataset(audit, format="arrow", partitioning="hive").to_table()
    assert table.num_rows == n and "date" in table.column_names
    for f in audit_files(audit):
        ipc.open_file(f).read_all()
    assert pl.scan_ipc(f"{audit}/**/*.arrow").collect().height == n
    con = duckdb.connect()
    dataset = ds.dataset(audit, format="arrow", partitioning="hive")  # noqa: F841 (DuckDB finds it by name)
    assert con.execute("select count(*) from dataset").fetchone()[0] == n
    polars_frame = pl.read_ipc(audit_files(audit)[0])
    assert con.execute("select count(*) from polars_frame").fetchone()[0] == polars_frame.height
    # the query the demo prints at the end
    printed = (tmp_path / "out.txt").read_text()
    query = printed[printed.index('python -c "') + len('python -c "'):].rstrip().rstrip('"')
    run = subprocess.run([sys.executable, "-c", query.replace("\n", "")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "reason" in run.stdout
