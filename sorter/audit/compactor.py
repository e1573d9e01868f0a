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

from sorter import wire
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


def _batches_of(records: list[jr.Record], plan: jr.Record | None) -> list[pa.RecordBatch]:
    """Record batches (AUDIT_SCHEMA) of consecutive records: one for the decisions, one for
    the malformed messages, in journal order within each."""
    frames, counts, messages, times, dests, plan_of = [], [], [], [], [], []
    plans = [plan]
    bad_ts, bad_raw, bad_error, bad_version = [], [], [], []
    for r in records:
        if r.kind == jr.PLAN:
            plan = r
            plans.append(r)
        elif r.kind == jr.DECISIONS:
            frames += r.frames
            messages.append(wire.decode_decisions(r.message, limits=_LIMITS))
            times.append(r.time_ns)
            counts.append(r.rows)
            dests.append(r.destination)
            plan_of.append(len(plans) - 1)
        elif r.kind == jr.MALFORMED:
            bad_ts.append(r.time_ns)
            bad_raw.append(r.raw)
            bad_error.append(r.error)
            bad_version.append(plan.plan_version if plan is not None else None)
    out = []
    if frames:
        scans = wire.decode_scans(frames, limits=_LIMITS)
        if scans.errors:
            index, error = scans.errors[0]
            raise ValueError(f"a journaled SCAN frame does not decode: {error.code}: {error}")
        n = len(scans.seq)
        counts_a = np.asarray(counts, np.int64)
        if n != int(counts_a.sum()):
            raise ValueError(f"journal: {n} scan events but {int(counts_a.sum())} decisions")
        dseq = np.concatenate([m.decision_seq for m in messages])
        chute = np.concatenate([m.chute for m in messages])
        reason = np.concatenate([m.reason for m in messages])
        pid = np.concatenate([m.parcel_id for m in messages])
        if not np.array_equal(pid, scans.events.parcel_ids):
            raise ValueError("journal: DECISION parcel ids differ from the SCAN frames'")
        ts = np.repeat(np.asarray(times, np.int64), counts_a)
        # destination names: each record's indices into its PLAN's names (-1: null); the
        # names of all the plans in one table, each plan's block at its offset
        dest = np.concatenate(dests).astype(np.int64)
        all_names, offset = [], []
        for p in plans:
            offset.append(len(all_names))
            all_names += p.names if p is not None else []
        base = np.repeat(np.asarray(offset, np.int64)[plan_of], counts_a)
        size = np.repeat(np.asarray([len(p.names) if p is not None else 0 for p in plans],
                                    np.int64)[plan_of], counts_a)
        dest = np.where((dest >= 0) & (dest < size), base + dest, -1)
        versions = sorted({m.plan_version for m in messages})
        version_of = np.repeat(np.asarray([versions.index(m.plan_version) for m in messages],
                                          np.int64), counts_a)
        out.append(decision_batch(scans.events, scans.seq, dseq, chute, reason,
                                  _take_names(all_names, dest),
                                  _take_names(versions, version_of), ts))
    if bad_ts:
        out.append(malformed_batch(bad_ts, bad_raw, bad_error, bad_version))
    return out


def segment_batches(scan: jr.SegmentScan) -> list[tuple[str, list[pa.RecordBatch]]]:
    """(date, batches) per run of consecutive records with the same UTC date (of their
    decision time), in journal order: one compacted file each."""
    runs: list[tuple[str, list[jr.Record]]] = []
    plan, plans_before = None, []
    day, d = None, None
    for r in scan.records:
        if r.kind == jr.PLAN:
            plan = r
            if runs:
                runs[-1][1].append(r)
            continue
        if r.time_ns // _DAY_NS != day:
            day, d = r.time_ns // _DAY_NS, _date(r.time_ns)
        if not runs or runs[-1][0] != d:
            runs.append((d, []))
            plans_before.append(plan)
        runs[-1][1].append(r)
    # each run starts with the plan in force before it
    return [(d, _batches_of(records, p)) for (d, records), p in zip(runs, plans_before)]


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
    scan = jr.read_segment(segment)
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
            scan = jr.read_segment(path)
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
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('{"level": "%(levelname)s", "event": "%(message)s"}'))
    logging.getLogger("sorter").addHandler(handler)
    c = Compactor(args.directory, interval_s=args.interval, compression=args.compression)
    while not stop.is_set() and os.getppid() == parent:
        c.run_once()
        stop.wait(args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
