"""The decision audit's Arrow side: the schema, record batches of it, the compacted files.

Layout (docs/audit.md)::

    <directory>/_journal/                                     write-ahead journal (journal.py)
    <directory>/date=YYYY-MM-DD/decisions-<first>-<last>.arrow   compacted (compactor.py)

The engine appends every turn to the journal before it sends (`sorter.audit.journal`); the
compactor turns sealed journal segments into Arrow IPC files written by pyarrow's own writer.
This module holds what both sides and every reader share: `AUDIT_SCHEMA`, the batch builders
(`decision_batch`, `malformed_batch`; reads that are not UTF-8 are transcoded here, as latin-1),
`audit_files` and `read_audit` (the compacted files and the uncompacted journal).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from sorter.core.codes import MALFORMED, REASONS
from sorter.core.events import EventBatch

__all__ = ["AUDIT_SCHEMA", "REASON_DICTIONARY", "AuditLocked", "audit_files", "read_audit",
           "reads_array", "decision_batch", "malformed_batch"]

log = logging.getLogger(__name__)

AUDIT_FORMAT_VERSION = "1"

TS_TYPE = pa.timestamp("ns", tz="UTC")
REASON_TYPE = pa.dictionary(pa.int8(), pa.string())
# One dictionary object for every batch of every file: the IPC file writer refuses a dictionary
# that differs from the one it wrote first, and reusing the object keeps the check trivial.
REASON_DICTIONARY = pa.array(REASONS, pa.string())

AUDIT_SCHEMA = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),            # decision time, UTC
        pa.field("scanner_id", pa.uint16()),
        pa.field("parcel_id", pa.uint64()),
        pa.field("seq", pa.uint64()),                        # wire sequence number
        pa.field("decision_seq", pa.uint64(), nullable=False),
        pa.field("reads", pa.list_(pa.string())),
        pa.field("chute", pa.uint16()),
        pa.field("reason", REASON_TYPE, nullable=False),     # fixed dictionary codes.REASONS
        pa.field("destination", pa.string()),                # destination name, null = none
        pa.field("plan_version", pa.string()),
        pa.field("latency_ns", pa.int64()),                  # scan -> decision
        pa.field("recirculations", pa.uint8()),
        pa.field("raw", pa.binary()),                        # malformed rows: the message bytes
        pa.field("error", pa.string()),                      # malformed rows: why
    ],
    metadata={"sorter.audit.version": AUDIT_FORMAT_VERSION,
              "sorter.audit.reasons": ",".join(REASONS)},
)

# compacted files: decisions-<first decision_seq>-<last decision_seq>.arrow (12 digits each), or
# malformed-<segment>-<part>.arrow for a file that holds no decision (only malformed rows)
_NAME_RE = re.compile(r"^(?:decisions-(\d+)-(\d+)|malformed-(\d+)-(\d+))(?:-(\d+))?\.arrow$")


# --------------------------------------------------------------------------------------------
# building batches
#
# The compactor builds one batch from many journal records: columns are made straight from the
# numpy buffers (`Array.from_buffers`, no copy, no conversion) and each check is one numpy
# reduction.

READS_TYPE = AUDIT_SCHEMA.field("reads").type
_U8, _U16, _I32, _I64, _U64 = pa.uint8(), pa.uint16(), pa.int32(), pa.int64(), pa.uint64()


def _fixed(type_: pa.DataType, values: np.ndarray) -> pa.Array:
    """A fixed-width array without nulls over `values`, which must be contiguous with the
    width of `type_` (see `_vector`). No copy: the array's buffer keeps `values` alive."""
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def _vector(values, n: int, dtype, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(values, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, the batch has {n} events")
    return arr


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _utf8_fix(read_offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Transcode every read that is not valid UTF-8 as latin-1 (byte b -> U+00bb).

    Python only visits the reads holding a byte >= 0x80 (found with numpy), to try to decode
    them; the other reads are copied in runs by one `bytes.join`.
    Returns (int32 offsets from 0, uint8 data).
    """
    ro = read_offsets.astype(np.int64)
    data = data[ro[0]: ro[-1]]
    ro = ro - ro[0]
    owner = np.searchsorted(ro, np.flatnonzero(data >= 0x80), side="right") - 1  # sorted
    candidates = owner[np.r_[True, owner[1:] != owner[:-1]]] if len(owner) else owner
    whole = data.tobytes()
    buf = memoryview(whole)
    pieces, bad, fixed_lengths, prev = [], [], [], 0
    for r, a, b in zip(candidates.tolist(), ro[candidates].tolist(),
                       ro[candidates + 1].tolist()):
        raw = whole[a:b]
        # "replace" rather than strict: no exception to pay for on every bad read; a U+FFFD
        # in the result means invalid bytes unless the read itself holds one (EF BF BD)
        if ("\ufffd" in raw.decode("utf-8", "replace")
                and (b"\xef\xbf\xbd" not in raw or not _is_utf8(raw))):
            fixed = raw.decode("latin-1").encode("utf-8")
            pieces.append(buf[prev:a])
            pieces.append(fixed)
            prev = b
            bad.append(r)
            fixed_lengths.append(len(fixed))
    if not bad:
        return ro.astype(np.int32), data
    pieces.append(buf[prev:])
    lengths = np.diff(ro)
    lengths[bad] = fixed_lengths
    offsets = np.zeros(len(ro), np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("reads of one batch exceed 2 GiB after transcoding")
    return offsets.astype(np.int32), np.frombuffer(b"".join(pieces), np.uint8)


def reads_array(events: EventBatch) -> pa.ListArray:
    """The reads of `events` as list<string>, sharing the batch's buffers.

    Reads are bytes from scanners; a batch whose bytes are all ASCII (checked with one numpy
    pass) or valid UTF-8 (checked by Arrow) is used as is. Otherwise the reads that are not
    valid UTF-8 are transcoded as latin-1 (`s.encode('latin-1')` gives the bytes back) so
    that every audit file holds valid UTF-8.
    """
    ro = np.ascontiguousarray(events.read_offsets, np.int32)
    data = np.ascontiguousarray(events.data, np.uint8)
    n_reads = len(ro) - 1
    values = pa.StringArray.from_buffers(n_reads, pa.py_buffer(ro), pa.py_buffer(data))
    if len(data) and int(data.max()) >= 0x80:
        try:
            values.validate(full=True)
        except pa.ArrowInvalid:
            ro, data = _utf8_fix(ro, data)
            values = pa.StringArray.from_buffers(n_reads, pa.py_buffer(ro), pa.py_buffer(data))
    eo = np.ascontiguousarray(events.event_offsets, np.int32)
    # from_buffers validates the offsets against the values, as ListArray.from_arrays does
    return pa.Array.from_buffers(READS_TYPE, len(eo) - 1, [None, pa.py_buffer(eo)],
                                 children=[values])




class AuditLocked(RuntimeError):
    """Another live process holds the audit directory's lock."""


def decision_batch(events: EventBatch, seq, decision_seq, chute, reason, destination: pa.Array,
                   plan_version: pa.Array, ts_ns) -> pa.RecordBatch:
    """One record batch of decision rows: the events' columns, their wire `seq`, the
    decisions (`chute`, `reason` codes, `destination` names as a string array, `plan_version`
    per row) and the decision time per row (int64 ns); `latency_ns` = decision time - scan
    time. Raises ValueError for lengths that disagree or a reason outside `REASONS`."""
    n = len(events)
    ts = _vector(ts_ns, n, np.int64, "ts_ns")
    reason = _vector(reason, n, np.uint8, "reason")
    if n and int(reason.max()) >= len(REASONS):
        raise ValueError(f"reason code {int(reason.max())} is not in codes.REASONS")
    if len(destination) != n or len(plan_version) != n:
        raise ValueError("destination and plan_version need one entry per event")
    latency = np.subtract(ts, _vector(events.ts_ns, n, np.int64, "ts_ns"), dtype=np.int64)
    columns = [
        _fixed(TS_TYPE, ts),
        _fixed(_U16, _vector(events.scanner_ids, n, np.uint16, "scanner_ids")),
        _fixed(_U64, _vector(events.parcel_ids, n, np.uint64, "parcel_ids")),
        _fixed(_U64, _vector(seq, n, np.uint64, "seq")),
        _fixed(_U64, _vector(decision_seq, n, np.uint64, "decision_seq")),
        reads_array(events),
        _fixed(_U16, _vector(chute, n, np.uint16, "chute")),
        # the codes were checked above: uint8 and int8 have the same bytes below 128
        pa.DictionaryArray.from_buffers(REASON_TYPE, n, [None, pa.py_buffer(reason)],
                                        REASON_DICTIONARY),
        destination.cast(pa.string()),
        plan_version.cast(pa.string()),
        _fixed(_I64, latency),
        _fixed(_U8, _vector(events.recirculations, n, np.uint8, "recirculations")),
        pa.nulls(n, pa.binary()),
        pa.nulls(n, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=AUDIT_SCHEMA)


def malformed_batch(ts_ns: list[int], raw: list[bytes], error: list[str],
                    plan_version: list[str | None]) -> pa.RecordBatch:
    """Rows of wire messages that could not be decoded: reason `malformed`, `decision_seq` 0
    (they are not decisions and are not sent), the raw bytes and the error; the event columns
    are null."""
    n = len(ts_ns)
    columns = [
        pa.array(ts_ns, pa.int64()).cast(TS_TYPE),
        pa.nulls(n, pa.uint16()),
        pa.nulls(n, pa.uint64()),
        pa.nulls(n, pa.uint64()),
        pa.array(np.zeros(n, np.uint64)),
        pa.nulls(n, READS_TYPE),
        pa.nulls(n, pa.uint16()),
        pa.DictionaryArray.from_arrays(pa.array(np.full(n, MALFORMED, np.int8)),
                                       REASON_DICTIONARY),
        pa.nulls(n, pa.string()),
        pa.array(plan_version, pa.string()),
        pa.nulls(n, pa.int64()),
        pa.nulls(n, pa.uint8()),
        pa.array([bytes(r) for r in raw], pa.binary()),
        pa.array([str(e) for e in error], pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=AUDIT_SCHEMA)


# --------------------------------------------------------------------------------------------
# reading


def _sort_key(path: Path):
    m = _NAME_RE.match(path.name)
    date = path.parent.name
    if m and m.group(1) is not None:
        return (date, int(m.group(2)), 0, int(m.group(5) or 0), path.name)
    if m:
        return (date, -1, int(m.group(3)), int(m.group(4)), path.name)
    return (date, -1, 0, 0, path.name)


def audit_files(directory) -> list[Path]:
    """Every compacted audit file under `directory` (`date=*/*.arrow`; hidden names, those
    starting with `_` or `.`, are files being written), in order: date, then decision_seq."""
    root = Path(directory)
    if root.is_file():
        return [root]
    found = [p for p in root.glob("date=*/*.arrow") if not p.name.startswith((".", "_"))]
    return sorted(found, key=_sort_key)


def last_decision_seq(directory, *, days: int = 2) -> int:
    """The highest decision_seq in the names of the compacted files of the newest `days`
    date directories (0 when there are none): where numbering continues after a restart
    whose journal was fully compacted."""
    root = Path(directory)
    dates = sorted((p for p in root.glob("date=*") if p.is_dir()), key=lambda p: p.name)
    top = 0
    for folder in dates[-days:]:
        for entry in os.scandir(folder):
            m = _NAME_RE.match(entry.name)
            if m and m.group(2) is not None:
                top = max(top, int(m.group(2)))
    return top


def file_metadata(path) -> dict[str, str]:
    """The footer's custom metadata of a compacted file (decision_seq range, journal
    segment), decoded; {} for a file written without it."""
    with pa.memory_map(str(path)) as f:
        meta = ipc.open_file(f).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


def read_audit(directory) -> pa.Table:
    """Every row under `directory` as one table with AUDIT_SCHEMA: the compacted files in
    order, then what the journal holds that is not compacted yet (a live engine's last
    seconds, or a crash's). Read-only: nothing is repaired or compacted. The journal is read
    first, so a segment compacted meanwhile is found in its file, and a segment whose file is
    already there is taken from the file alone."""
    from sorter.audit.compactor import journal_tables     # the journal side of the audit

    root = Path(directory)
    journal = journal_tables(root) if root.is_dir() else []
    tables, covered = [], set()
    for path in audit_files(root):
        try:
            with pa.memory_map(str(path)) as f:
                reader = ipc.open_file(f)
                meta = reader.metadata or {}
                tables.append(reader.read_all())
        except FileNotFoundError:
            continue
        segment = meta.get(b"sorter.audit.segment")
        if segment is not None:
            covered.add(int(segment))
    tables += [t for sid, t in journal if sid not in covered]
    if not tables:
        return AUDIT_SCHEMA.empty_table()
    return pa.concat_tables(tables)
