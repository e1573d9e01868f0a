"""Columnar scan events: the shape in which events reach the core.

Arrow-style layout: `event_offsets[i]:event_offsets[i+1]` are the reads of event i, and
`read_offsets[r]:read_offsets[r+1]` the bytes of read r in `data`. Builders here turn Python
lists or Arrow arrays into that layout without per-event work in the core.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sorter.core.codes import REASONS


def arrow_offsets_data(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int32 offsets, uint8 data) of a binary or string Arrow array, without copying data.

    Null entries are read as empty. Offsets are rebased to start at 0 when the array is a slice.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.binary())
    if not (pa.types.is_binary(arr.type) or pa.types.is_string(arr.type)):
        raise TypeError(f"expected a binary or string array, got {arr.type}")
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int32)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    if len(offsets) == 0:
        return np.zeros(1, np.int32), data
    if offsets[0] != 0:
        data = data[offsets[0]: offsets[-1]]
        offsets = offsets - offsets[0]
    return offsets, data


@dataclass
class EventBatch:
    """A batch of scan events in the core's columnar layout."""
    parcel_ids: np.ndarray       # uint64: the sorter's tracking id
    scanner_ids: np.ndarray      # uint16
    ts_ns: np.ndarray            # int64: scan time, ns since the Unix epoch (UTC)
    recirculations: np.ndarray   # uint8: times the parcel has already gone round
    event_offsets: np.ndarray    # int32, n + 1: reads of each event
    read_offsets: np.ndarray     # int32, n_reads + 1: bytes of each read
    data: np.ndarray             # uint8: all reads, concatenated

    def __len__(self) -> int:
        return len(self.event_offsets) - 1

    def reads(self, i: int) -> list[bytes]:
        """The reads of event i, as bytes (for display, not for hot paths)."""
        r0, r1 = int(self.event_offsets[i]), int(self.event_offsets[i + 1])
        ro, d = self.read_offsets, self.data
        return [d[ro[r]: ro[r + 1]].tobytes() for r in range(r0, r1)]

    @classmethod
    def from_reads(cls, reads: list[list[bytes]], *, parcel_ids=None, scanner_ids=None,
                   ts_ns=None, recirculations=None) -> "EventBatch":
        """Build a batch from one list of reads per event; omitted columns get defaults
        (parcel ids 0..n-1, scanner 0, scan time 0, no recirculations)."""
        n = len(reads)
        flat = [r for rs in reads for r in rs]
        event_offsets = np.zeros(n + 1, np.int32)
        np.cumsum([len(rs) for rs in reads], out=event_offsets[1:])
        read_offsets = np.zeros(len(flat) + 1, np.int32)
        np.cumsum([len(r) for r in flat], out=read_offsets[1:])
        data = np.frombuffer(b"".join(flat), np.uint8).copy()
        return cls(
            parcel_ids=_column(parcel_ids, n, np.uint64, np.arange(n, dtype=np.uint64)),
            scanner_ids=_column(scanner_ids, n, np.uint16, 0),
            ts_ns=_column(ts_ns, n, np.int64, 0),
            recirculations=_column(recirculations, n, np.uint8, 0),
            event_offsets=event_offsets, read_offsets=read_offsets, data=data)

    @classmethod
    def from_arrow(cls, reads: pa.Array, **columns) -> "EventBatch":
        """Build a batch from an Arrow list<binary> (or list<string>) array of reads."""
        if isinstance(reads, pa.ChunkedArray):
            reads = reads.combine_chunks()
        if pa.types.is_large_list(reads.type):
            reads = reads.cast(pa.list_(reads.type.value_type))
        event_offsets = np.asarray(reads.offsets, np.int32)
        values = reads.values
        if event_offsets[0] != 0:
            values = values.slice(event_offsets[0], event_offsets[-1] - event_offsets[0])
            event_offsets = event_offsets - event_offsets[0]
        read_offsets, data = arrow_offsets_data(values)
        n = len(reads)
        return cls(
            parcel_ids=_column(columns.get("parcel_ids"), n, np.uint64, np.arange(n, dtype=np.uint64)),
            scanner_ids=_column(columns.get("scanner_ids"), n, np.uint16, 0),
            ts_ns=_column(columns.get("ts_ns"), n, np.int64, 0),
            recirculations=_column(columns.get("recirculations"), n, np.uint8, 0),
            event_offsets=np.ascontiguousarray(event_offsets), read_offsets=read_offsets, data=data)


def concat_batches(batches: list[EventBatch]) -> EventBatch:
    """One batch holding the events of several, in order (offsets rebased, data joined)."""
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return EventBatch.from_reads([])
    ev, rd = [np.zeros(1, np.int32)], [np.zeros(1, np.int32)]
    n_reads = n_bytes = 0
    for b in batches:
        ev.append(b.event_offsets[1:] - b.event_offsets[0] + n_reads)
        rd.append(b.read_offsets[b.event_offsets[0] + 1: b.event_offsets[-1] + 1]
                  - b.read_offsets[b.event_offsets[0]] + n_bytes)
        n_reads += int(b.event_offsets[-1] - b.event_offsets[0])
        n_bytes += int(b.read_offsets[b.event_offsets[-1]] - b.read_offsets[b.event_offsets[0]])
    data = np.concatenate([b.data[b.read_offsets[b.event_offsets[0]]: b.read_offsets[b.event_offsets[-1]]]
                           for b in batches])
    return EventBatch(
        parcel_ids=np.concatenate([b.parcel_ids for b in batches]),
        scanner_ids=np.concatenate([b.scanner_ids for b in batches]),
        ts_ns=np.concatenate([b.ts_ns for b in batches]),
        recirculations=np.concatenate([b.recirculations for b in batches]),
        event_offsets=np.concatenate(ev).astype(np.int32),
        read_offsets=np.concatenate(rd).astype(np.int32), data=data)


def _column(values, n: int, dtype, default) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype) if np.isscalar(default) else np.asarray(default, dtype)
    arr = np.ascontiguousarray(values, dtype)
    if arr.shape != (n,):
        raise ValueError(f"column has {arr.shape} entries, the batch has {n} events")
    return arr


@dataclass
class Decisions:
    """One decision per event, columnar, in event order."""
    chute: np.ndarray         # uint16, 0 = no divert
    reason: np.ndarray        # uint8, index into codes.REASONS
    destination: np.ndarray   # int32, index into the plan's destinations, -1 = none

    def __len__(self) -> int:
        return len(self.chute)

    def reason_names(self) -> list[str]:
        return [REASONS[r] for r in self.reason.tolist()]

    def as_tuples(self) -> list[tuple[int, str, int]]:
        return list(zip(self.chute.tolist(), self.reason_names(), self.destination.tolist()))
