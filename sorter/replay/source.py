"""Which audit files a replay reads, and their columns as the core takes them.

The audit is a hive-partitioned Arrow dataset (`audit/date=YYYY-MM-DD/*.arrow`, docs/audit.md).
`pyarrow.dataset` lists the files and prunes whole `date=` directories by the asked dates
without opening a file outside them; a partition of the replay is one file. A file is read by
column name (other columns, present or added later, are never touched) through a memory map,
so the `reads` column reaches the compiled core as the file's own offsets and bytes.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

# The columns a replay reads, by name. Their types are the audit's (sorter.audit.AUDIT_SCHEMA).
COLUMNS = ("ts", "reads", "recirculations", "reason", "destination", "chute", "parcel_id")
# Rows routed and counted per step: big enough that per-step Python work is noise, small
# enough that the step's arrays stay in the CPU caches' neighbourhood.
SLAB_ROWS = 1 << 16

_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


class AuditSourceError(ValueError):
    """An audit directory or file that cannot be replayed (the message says which and why)."""


@dataclass(frozen=True)
class Part:
    """One partition of a replay: an audit file and its `date=` partition."""
    index: int          # position in file order: partitions merge their samples by it
    path: str
    date: str | None
    size: int           # bytes on disk


def parse_date(text: str | None, flag: str) -> str | None:
    """An ISO date YYYY-MM-DD (as the partition names spell it), or None."""
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise AuditSourceError(f"{flag} {text!r} is not a date YYYY-MM-DD") from None


def list_parts(audit: str | Path, date_from: str | None = None,
               date_to: str | None = None) -> list[Part]:
    """The sealed audit files under `audit` whose `date=` partition lies in [date_from,
    date_to] (both inclusive, either may be None), in file order. Files being written (hidden
    `_*.part` names) are skipped, as every dataset reader skips them."""
    root = Path(audit)
    if not root.exists():
        raise AuditSourceError(f"audit directory {str(root)!r} does not exist")
    if date_from and date_to and date_from > date_to:
        raise AuditSourceError(f"--from {date_from} is after --to {date_to}")
    # An explicit schema: discovery opens no file (pyarrow would otherwise read the first
    # file's schema), so a damaged file in a pruned partition is never touched.
    dataset = ds.dataset(str(root), format="arrow", partitioning=_PARTITIONING,
                         schema=pa.schema([("date", pa.string())]))
    cond = None
    if date_from:
        cond = ds.field("date") >= date_from
    if date_to:
        upper = ds.field("date") <= date_to
        cond = upper if cond is None else cond & upper
    fragments = dataset.get_fragments(filter=cond) if cond is not None else dataset.get_fragments()
    found = []
    for frag in fragments:
        keys = ds.get_partition_keys(frag.partition_expression)
        found.append((frag.path, keys.get("date")))
    if (date_from or date_to) and any(d is None for _, d in found):
        raise AuditSourceError(f"{root}: files outside date=YYYY-MM-DD directories cannot be "
                               "pruned by date")
    found.sort(key=lambda pd: (pd[1] or "", Path(pd[0]).name))
    return [Part(i, p, d, Path(p).stat().st_size) for i, (p, d) in enumerate(found)]


_FORMAT = ds.IpcFileFormat()
_FS = pafs.LocalFileSystem(use_mmap=True)


def _read_ahead(path: str) -> None:
    """Ask the kernel to start reading the whole file now (asynchronously), so the disk works
    while the first slabs are routed instead of one page fault at a time."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return                                # reported by the read itself
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)


def read_part(part: Part) -> pa.Table:
    """The replay's columns of one audit file, memory-mapped (buffers point into the file; no
    copy). A column the file lacks (other than `parcel_id`) is an error naming file and
    column."""
    _read_ahead(part.path)
    frag = _FORMAT.make_fragment(part.path, filesystem=_FS)
    try:
        schema = frag.physical_schema
    except (pa.ArrowInvalid, OSError) as e:
        raise AuditSourceError(f"{part.path}: not a readable Arrow IPC file: {e}") from None
    missing = [c for c in COLUMNS if c != "parcel_id" and schema.get_field_index(c) < 0]
    if missing:
        raise AuditSourceError(f"{part.path}: audit file has no column {', '.join(missing)}")
    columns = [c for c in COLUMNS if schema.get_field_index(c) >= 0]
    try:
        return frag.to_table(columns=columns, use_threads=False)
    except (pa.ArrowInvalid, OSError) as e:
        raise AuditSourceError(f"{part.path}: cannot read: {e}") from None


def table_nbytes(table: pa.Table) -> int:
    """Bytes of the buffers the replay reads (what it pulls from disk for these rows)."""
    return int(table.nbytes)


# ---------------------------------------------------------------------------------------------
# Arrow columns -> the core's arrays, without copying what need not be copied


def offsets_of(arr: pa.Array) -> np.ndarray:
    """The int32 offsets of a (non-large) list or string array, starting at 0."""
    off = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset: arr.offset + len(arr) + 1]
    return off - off[0] if len(off) and off[0] else off


def fixed(arr: pa.Array, dtype) -> np.ndarray:
    """The values buffer of a fixed-width array as numpy (no copy; null slots hold whatever
    the writer left there)."""
    return np.frombuffer(arr.buffers()[1], dtype)[arr.offset: arr.offset + len(arr)]


def reads_columns(reads: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(event_offsets, read_offsets, data) of a list<string|binary> reads column: the core's
    Arrow-style layout, pointing into the column's own buffers."""
    if pa.types.is_large_list(reads.type):
        reads = reads.cast(pa.list_(reads.type.value_type))
    if not pa.types.is_list(reads.type):
        raise AuditSourceError(f"reads column has type {reads.type}, expected list<string>")
    lo = np.frombuffer(reads.buffers()[1], np.int32)[reads.offset: reads.offset + len(reads) + 1]
    values = reads.values
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        values = values.cast(pa.binary())
    first, last = (int(lo[0]), int(lo[-1])) if len(lo) else (0, 0)
    if first:
        lo = lo - first
    values = values.slice(first, last - first)
    vo = np.frombuffer(values.buffers()[1], np.int32)[values.offset: values.offset + len(values) + 1]
    data = values.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    if len(vo) and vo[0]:
        data = data[vo[0]: vo[-1]]
        vo = vo - vo[0]
    elif len(vo):
        data = data[: vo[-1]]
    return lo, vo, data
