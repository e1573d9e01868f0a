"""Looking decisions up in an audit directory: by parcel id or barcode (`find`), the latest
ones (`tail`), and checking it (`verify`). Reads the compacted Arrow files and the journal
not compacted yet, so a decision is found from the moment it was sent."""
from __future__ import annotations

import datetime
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from sorter.audit import journal as jr
from sorter.audit.compactor import journal_tables
from sorter.audit.files import AUDIT_SCHEMA, _NAME_RE, audit_files

__all__ = ["find", "rows", "latest", "verify"]


def _match(table: pa.Table, key: str) -> pa.Table:
    """Rows whose parcel_id is `key` (when it is a number) or one of whose reads is `key`."""
    mask = pc.is_in(pc.list_flatten(table.column("reads")), pa.array([key]))
    parents = pc.list_parent_indices(table.column("reads"))
    hits = set(pc.filter(parents, mask).to_pylist())
    keep = pa.array([i in hits for i in range(table.num_rows)]) if hits else None
    if key.isdigit() and int(key) < 1 << 64:
        by_id = pc.equal(table.column("parcel_id"), pa.scalar(int(key), pa.uint64()))
        by_id = pc.fill_null(by_id, False)
        keep = by_id if keep is None else pc.or_(keep, by_id)
    if keep is None:
        return table.slice(0, 0)
    return table.filter(keep)


def _iso(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return (datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            + f".{frac:09d}Z")


def rows(table: pa.Table) -> list[dict]:
    """Rows as JSON-ready dicts: ts as ISO 8601 UTC with nanoseconds, raw as hex."""
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    table = table.set_column(0, "ts", pa.array([_iso(t) for t in ts], pa.string()))
    out = []
    for row in table.to_pylist():
        if row.get("raw") is not None:
            row["raw"] = row["raw"].hex()
        out.append(row)
    return out


def _tables(directory):
    """(table, source) of every compacted file, then of every journal segment not covered by
    one, in write order (the journal is listed first: a segment compacted meanwhile is then
    found in its file)."""
    root = Path(directory)
    journal = journal_tables(root)
    covered = set()
    for path in audit_files(root):
        try:
            with pa.memory_map(str(path)) as f:
                reader = ipc.open_file(f)
                meta = reader.metadata or {}
                table = reader.read_all()
        except FileNotFoundError:
            continue
        if b"sorter.audit.segment" in meta:
            covered.add(int(meta[b"sorter.audit.segment"]))
        yield table, str(path)
    for sid, table in journal:
        if sid not in covered:
            yield table, f"journal segment {sid}"


def find(directory, key: str) -> list[dict]:
    """Every decision (and malformed row) for the parcel id or barcode `key`, oldest first,
    across the compacted files and the uncompacted journal: dicts with the audit columns
    (`ts` as ISO 8601 UTC, `raw` as hex)."""
    found = [_match(t, str(key)) for t, _ in _tables(directory)]
    found = [t for t in found if t.num_rows]
    if not found:
        return []
    table = pa.concat_tables(found)
    order = pc.sort_indices(table, sort_keys=[("ts", "ascending"), ("decision_seq", "ascending")])
    return rows(table.take(order))


def latest(directory, n: int) -> pa.Table:
    """The last `n` decisions by decision_seq (the newest sources only; malformed rows, which
    are not decisions, are left out)."""
    picked, total = [], 0
    sources = list(_tables(directory))
    for table, _ in reversed(sources):
        table = table.filter(pc.not_equal(table.column("decision_seq"), 0))
        picked.append(table)
        total += table.num_rows
        if total >= n:
            break
    if not picked:
        return AUDIT_SCHEMA.empty_table()
    table = pa.concat_tables(picked[::-1])
    table = table.take(pc.sort_indices(table, sort_keys=[("decision_seq", "ascending")]))
    return table.slice(max(0, table.num_rows - n))


def verify(directory) -> list[str]:
    """Problems in an audit directory: journal records with a bad CRC32C or length, files
    that do not open, decision_seq gaps and duplicates (over files and journal). [] = none."""
    root = Path(directory)
    problems: list[str] = []
    for path in jr.segments(root):
        try:
            scan = jr.read_segment(path)
        except OSError as e:
            problems.append(f"{path}: cannot read: {e}")
            continue
        if scan.torn:
            problems.append(f"{path}: {scan.problem}")
    seqs = []
    for path in audit_files(root):
        if not _NAME_RE.match(path.name):
            problems.append(f"{path}: not an audit file name")
        try:
            with pa.memory_map(str(path)) as f:
                table = ipc.open_file(f).read_all()
            table.validate(full=True)
        except (pa.ArrowInvalid, OSError) as e:
            problems.append(f"{path}: does not open as an Arrow IPC file: {e}")
            continue
        if not table.schema.equals(AUDIT_SCHEMA):
            problems.append(f"{path}: schema differs from AUDIT_SCHEMA")
        seqs.append(table.column("decision_seq"))
    try:
        for _, table in journal_tables(root):
            seqs.append(table.column("decision_seq"))
    except (ValueError, OSError) as e:
        problems.append(f"{root / jr.JOURNAL_DIR}: cannot decode: {e}")
    if seqs:
        import numpy as np
        values = np.concatenate([pa.chunked_array(s).to_numpy() for s in seqs]).astype(np.uint64)
        values = np.sort(values[values != 0])             # 0: malformed rows, not decisions
        if len(values):
            dup = values[1:][values[1:] == values[:-1]]
            if len(dup):
                problems.append(f"decision_seq duplicated: {len(dup)} values, first "
                                f"{int(dup[0])}")
            steps = np.flatnonzero(np.diff(values) > 1)
            for i in steps[:10].tolist():
                problems.append(f"decision_seq gap: {int(values[i]) + 1}..{int(values[i + 1]) - 1}"
                                " missing")
            if len(steps) > 10:
                problems.append(f"decision_seq: {len(steps) - 10} more gaps")
    return problems


def follow(directory, after_seq: int, poll_s: float = 0.5):
    """Yield new decision rows (dicts) with decision_seq > after_seq as they appear, forever."""
    last = after_seq
    while True:
        table = latest(directory, 1 << 16)
        if table.num_rows:
            new = table.filter(pc.greater(table.column("decision_seq"),
                                          pa.scalar(last, pa.uint64())))
            for row in rows(new):
                last = max(last, row["decision_seq"])
                yield row
        time.sleep(poll_s)
