"""The compactor: sealed journal segments in, Arrow IPC files out (docs/audit.md "Compaction").

A background process (or thread: `Compactor`) takes each sealed segment (`sorter.audit.journal`), decodes
its records with the compiled wire codec into columns (`sorter.wire.decode_scans` for the SCAN
frames, `decode_decisions` for the DECISION messages), and writes them with pyarrow's own IPC
file writer into `date=YYYY-MM-DD/`, one file per segment and date, under a hidden name; the
file is fsynced and renamed into place (and its directory fsynced), and only then is the
segment deleted. A file's name carries its `decision_seq` range and its footer the segment it
came from, so compacting a segment again after a crash finds its files and writes nothing
twice.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from sorter import jsonlog, wire
from sorter.audit import journal as jr
from sorter.audit.files import AUDIT_SCHEMA, decision_batch, malformed_batch

__all__ = ["Compactor", "compact_segment", "segment_batches", "journal_table", "CompactResult"]

log = logging.getLogger(__name__)

_DAY_NS = 86_400 * 1_000_000_000
_PART_SUFFIX = ".part"
# the journal holds only frames the engine accepted, so its own limits never refuse one
_LIMITS = wire.Limits(max_frame=(1 << 31) - 1, max_records=(1 << 31) - 1)


def _date(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns // 1_000_000_000, _dt.UTC).strftime("%Y-%m-%d")


def _take_names(names: list, index: np.ndarray) -> pa.Array:
    """names[index] as a string array, null where index < 0 (or past the names)."""
    table = pa.array(list(names) + [None], pa.string())
    index = np.where((index < 0) | (index >= len(names)), len(names), index)
    return table.take(pa.array(index, pa.int64()))


def _run_batches(index: jr.SegmentIndex, lo: int, hi: int, plan_of: np.ndarray,
                 plans: dict[int, jr.Record]) -> list[pa.RecordBatch]:
    """Record batches (AUDIT_SCHEMA) of records lo..hi-1 of a segment: one for the
    decisions, one for the malformed messages, in journal order within each. plan_of: per
    record, the PLAN record in force (-1: none); plans: those PLAN records decoded."""
    r, f = index.records, index.frames
    kind = r["kind"][lo:hi]
    dec = np.flatnonzero(kind == jr.DECISIONS) + lo
    out = []
    if len(dec):
        rows = r["rows"][dec]
        first = int(r["first_frame"][dec[0]])
        last = int(r["first_frame"][dec[-1]] + r["n_frames"][dec[-1]])
        scans = wire.decode_scans_in(index.data, f["offset"][first:last],
                                     f["length"][first:last], limits=_LIMITS)
        if scans.errors:
            _, error = scans.errors[0]
            raise ValueError(f"a journaled SCAN frame does not decode: {error.code}: {error}")
        n = len(scans.seq)
        if n != int(rows.sum()):
            raise ValueError(f"journal: {n} scan events but {int(rows.sum())} decisions")
        m = wire.decode_decisions_in(index.data, r["message_offset"][dec],
                                     r["message_length"][dec], limits=_LIMITS)
        if not np.array_equal(m.counts, rows):
            raise ValueError("journal: a DECISION message's records differ from its rows")
        if not np.array_equal(m.parcel_id, scans.events.parcel_ids):
            raise ValueError("journal: DECISION parcel ids differ from the SCAN frames'")
        ts = np.repeat(r["time_ns"][dec], rows)
        # destination names: each record's indices into its PLAN's names (-1: null); the
        # names of all the plans in one table, each plan's block at its offset
        row0 = int(r["first_row"][dec[0]])
        dest = index.destination[row0:row0 + int(rows.sum())].astype(np.int64)
        plan_ids = sorted(set(plan_of[dec].tolist()))
        all_names, offset, size = [], [], []
        for k in plan_ids:
            names = plans[k].names if k >= 0 else []
            offset.append(len(all_names))
            size.append(len(names))
            all_names += names
        which = np.searchsorted(np.asarray(plan_ids, np.int64), plan_of[dec])
        base = np.repeat(np.asarray(offset, np.int64)[which], rows)
        limit = np.repeat(np.asarray(size, np.int64)[which], rows)
        dest = np.where((dest >= 0) & (dest < limit), base + dest, -1)
        version_of = np.repeat(m.version_of.astype(np.int64), rows)
        out.append(decision_batch(scans.events, scans.seq, m.decision_seq, m.chute, m.reason,
                                  _take_names(all_names, dest),
                                  _take_names(m.versions, version_of), ts))
    bad = np.flatnonzero(kind == jr.MALFORMED) + lo
    if len(bad):
        recs = [index.record(int(i)) for i in bad]
        versions = [plans[k].plan_version if k >= 0 else None for k in plan_of[bad].tolist()]
        out.append(malformed_batch([x.time_ns for x in recs], [x.raw for x in recs],
                                   [x.error for x in recs], versions))
    return out


def segment_batches(index: jr.SegmentIndex) -> list[tuple[str, list[pa.RecordBatch]]]:
    """(date, batches) per run of consecutive records with the same UTC date (of their
    decision time), in journal order: one compacted file each. Decoded in bulk: one
    `decode_scans_in` and one `decode_decisions_in` call per run."""
    kind = index.records["kind"]
    n = len(kind)
    if n == 0:
        return []
    is_plan = kind == jr.PLAN
    positions = np.where(is_plan, np.arange(n), -1)
    plan_of = np.maximum.accumulate(positions)              # the PLAN in force at each record
    plans = {int(i): index.record(int(i)) for i in np.flatnonzero(is_plan)}
    # runs: a new one where a non-PLAN record's day differs from the previous non-PLAN one's
    data_rec = np.flatnonzero(~is_plan)
    if len(data_rec) == 0:
        return []
    day = index.records["time_ns"][data_rec] // _DAY_NS
    starts = data_rec[np.concatenate(([True], day[1:] != day[:-1]))]
    bounds = list(starts) + [n]
    runs = []
    for k in range(len(starts)):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        runs.append((_date(int(index.records["time_ns"][lo])),
                     _run_batches(index, lo, hi, plan_of, plans)))
    return runs


@dataclass
class CompactResult:
    segment: Path
    files: list[Path]             # written now (not those found from an earlier attempt)
    rows: int
    torn: bool


def _name(batches: list[pa.RecordBatch], segment_id: int, part: int) -> str:
    seqs = [b.column("decision_seq") for b in batches if b.num_rows]
    seqs = [s for s in seqs if pc.max(s).as_py()]
    if seqs:
        first = min(pc.min(s).as_py() for s in seqs)
        last = max(pc.max(s).as_py() for s in seqs)
        return f"decisions-{first:012d}-{last:012d}.arrow"
    return f"malformed-{segment_id:020d}-{part}.arrow"


def _already_written(path: Path, segment_id: int) -> bool:
    """A file of this name exists and came from this segment (an earlier attempt that died
    before the segment was deleted)."""
    if not path.exists():
        return False
    try:
        with pa.memory_map(str(path)) as f:
            meta = ipc.open_file(f).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return False
    return meta.get(b"sorter.audit.segment") == str(segment_id).encode()


def compact_segment(directory, segment: Path, *, compression: str | None = None,
                    batch_rows: int = 1 << 16) -> CompactResult:
    """Write the Arrow files of one sealed segment, then delete it. Idempotent: a file this
    segment already produced (same name, same segment in its footer) is not written again."""
    root = Path(directory)
    scan = jr.index_segment(segment)
    written, rows = [], 0
    options = ipc.IpcWriteOptions(compression=compression)
    for part, (date, batches) in enumerate(segment_batches(scan)):
        batches = [b for b in batches if b.num_rows]
        if not batches:
            continue
        rows += sum(b.num_rows for b in batches)
        folder = root / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        name = _name(batches, scan.segment_id, part)
        final = folder / name
        if _already_written(final, scan.segment_id):
            continue
        k = 0
        while final.exists():                    # another segment's file of the same name
            k += 1
            final = folder / name.replace(".arrow", f"-{k}.arrow")
        seqs = [int(x) for b in batches for x in (
            pc.min(b.column("decision_seq")).as_py(),
            pc.max(b.column("decision_seq")).as_py())]
        metadata = {"sorter.audit.segment": str(scan.segment_id),
                    "sorter.audit.part": str(part),
                    "sorter.audit.first_decision_seq": str(min(s for s in seqs if s) if any(seqs) else 0),
                    "sorter.audit.last_decision_seq": str(max(seqs)),
                    "sorter.audit.rows": str(sum(b.num_rows for b in batches))}
        hidden = folder / f"_{final.name}{_PART_SUFFIX}"
        with pa.OSFile(str(hidden), "wb") as sink:
            with ipc.new_file(sink, AUDIT_SCHEMA, options=options, metadata=metadata) as w:
                for b in batches:
                    w.write_table(pa.Table.from_batches([b]), max_chunksize=batch_rows)
        fd = os.open(hidden, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(hidden, final)
        jr.fsync_dir(folder)
        written.append(final)
    os.unlink(segment)
    jr.fsync_dir(segment.parent)
    return CompactResult(segment, written, rows, scan.torn)


def journal_tables(directory) -> list[tuple[int, pa.Table]]:
    """(segment id, table) of every segment in the journal, sealed or open, oldest first:
    the rows not compacted yet, as the compactor would write them. Read-only."""
    out = []
    for path in jr.segments(directory):
        try:
            scan = jr.index_segment(path)
        except FileNotFoundError:               # compacted meanwhile
            continue
        batches = [b for _, bs in segment_batches(scan) for b in bs if b.num_rows]
        if batches:
            out.append((scan.segment_id, pa.Table.from_batches(batches, schema=AUDIT_SCHEMA)))
    return out


def journal_table(directory, *, skip_segments=()) -> pa.Table:
    tables = [t for sid, t in journal_tables(directory) if sid not in skip_segments]
    return pa.concat_tables(tables) if tables else AUDIT_SCHEMA.empty_table()


class Compactor:
    """Compacts every sealed segment, oldest first, every `interval_s` (and when woken, in
    thread mode). A failure (disk full...) is logged once and the segment tried again later;
    the journal keeps it meanwhile.

    `process=True` (the engine's choice) runs the passes in a child process
    (`python -m sorter.audit.compactor DIR`), so decoding and Arrow work never hold the
    engine's GIL (a thread would stall its turns for a switch interval, 5 ms, at a time);
    the child dies with its parent (PR_SET_PDEATHSIG) and runs at nice 10, so the engine's
    turns get the CPU first. `stop(finish=True)` stops it and
    compacts what is left in the calling process (a clean shutdown leaves no journal)."""

    def __init__(self, directory, *, interval_s: float = 1.0, compression: str | None = None,
                 process: bool = False):
        self.directory = Path(directory)
        self.interval_s = interval_s
        self.compression = compression
        self.process = process
        self.rows = self.files = self.segments = self.failures = 0
        self.torn = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-compactor", daemon=True)
        self._child = None

    def start(self) -> "Compactor":
        if self.process:
            import subprocess
            import sys

            cmd = [sys.executable, "-m", "sorter.audit.compactor", str(self.directory),
                   "--interval", str(self.interval_s)]
            if self.compression:
                cmd += ["--compression", self.compression]
            self._child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        else:
            self._thread.start()
        return self

    def wake(self, *_args) -> None:
        self._wake.set()

    def run_once(self) -> int:
        """Compact what is sealed now; returns the segments done."""
        done = 0
        for segment in jr.segments(self.directory, include_open=False):
            try:
                result = compact_segment(self.directory, segment, compression=self.compression)
            except FileNotFoundError:
                continue                            # compacted meanwhile (another pass)
            except Exception as e:                  # noqa: BLE001 - keep the segment, retry
                self.failures += 1
                if str(e) != self.last_error:
                    log.warning("audit compaction failed; the journal keeps the segment",
                                extra={"fields": {"segment": str(segment), "error": str(e)}})
                self.last_error = str(e)
                break
            self.last_error = None
            done += 1
            self.segments += 1
            self.rows += result.rows
            self.files += len(result.files)
            self.torn += int(result.torn)
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            self._idle.clear()
            self.run_once()
            self._idle.set()
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until no sealed segment is left (tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._wake.set()
            if not jr.segments(self.directory, include_open=False):
                return True
            time.sleep(0.05)
        return False

    def stop(self, *, finish: bool = True) -> None:
        """Stop the thread or process; with `finish`, compact what is sealed first."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._child is not None:
            import signal
            import subprocess

            self._child.send_signal(signal.SIGTERM)      # it ends its pass, then exits
            try:
                self._child.wait(60)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
            self._child = None
        if finish:
            self.run_once()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (no orphan compacting beside the
    next engine)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    """`python -m sorter.audit.compactor DIR`: the engine's compactor process. Compacts every
    `--interval` seconds until SIGTERM (then finishes its pass) or its parent is gone."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m sorter.audit.compactor")
    parser.add_argument("directory")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--compression", default=None)
    args = parser.parse_args(argv)
    _die_with_parent()
    try:
        os.nice(10)            # background work: the engine's turns get the CPU first
    except OSError:
        pass
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the engine decides when to stop
    jsonlog.setup_logging(("sorter",), "INFO")       # the engine's log line shape, on stderr
    c = Compactor(args.directory, interval_s=args.interval, compression=args.compression)
    while not stop.is_set() and os.getppid() == parent:
        c.run_once()
        stop.wait(args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
