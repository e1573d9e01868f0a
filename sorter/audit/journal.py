"""The audit's write-ahead journal: one record per engine turn, on disk before the decision is
sent (the Kafka / PostgreSQL pattern; docs/audit.md "Journal").

Why: an Arrow record batch per turn cost ~1.1 KB (896 bytes of it IPC metadata) and a
hand-kept IPC encoder; a journal record is the turn's wire bytes plus a 16-byte header, written
with one `write(2)`. The compactor (`sorter.audit.compactor`) turns sealed segments into Arrow
files behind the engine.

Layout::

    <audit>/_journal/lock                       flock held by the live writer
    <audit>/_journal/<segment id>.open          the segment being written
    <audit>/_journal/<segment id>.wal           sealed segments, waiting for the compactor

A segment is a file preallocated to `segment_bytes` (so writes into it never need new disk
blocks), starting with a 32-byte header (`SEGMENT`) and then records, each a 16-byte header
(`RECORD`: payload length, CRC32C of the rest of the header and the payload, kind, rows) and
its payload. The zeroes after the last record end it (length 0). Segment ids are the creation
time in ns, kept increasing, so they never repeat across restarts.

Record kinds and payloads (little-endian):
  PLAN (1)       i64 time, u16 + plan version (UTF-8), u32 n, n x (u16 + destination name):
                 first in every segment, and again when a plan is swapped in
  DECISIONS (2)  i64 decision time, u32 frames, u32 message length, frames x u32 frame length,
                 the SCAN frames routed, the DECISION message as sent, rows x i32 destination
                 index (-1 = none) into the PLAN's names
  MALFORMED (3)  i64 time, u16 + error (UTF-8), the frame's raw bytes
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import crc32c as _crc32c
import numpy as np

from sorter.audit.files import AuditLocked

__all__ = ["JournalWriter", "decisions_parts", "record_parts", "Record", "SegmentScan",
           "SegmentIndex", "index_segment", "read_segment", "segments", "recover",
           "PLAN", "DECISIONS", "MALFORMED", "JOURNAL_DIR"]

log = logging.getLogger(__name__)

JOURNAL_DIR = "_journal"
LOCK_NAME = "lock"
OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".wal"
MAGIC = b"SORTJRN1"
FORMAT_VERSION = 1

SEGMENT = struct.Struct("<8sIIqq")          # magic, version, reserved, segment id, created ns
RECORD = struct.Struct("<IIBBHI")           # length, crc32c, kind, reserved, reserved, rows
PLAN, DECISIONS, MALFORMED = 1, 2, 3
KINDS = {PLAN: "plan", DECISIONS: "decisions", MALFORMED: "malformed"}
_DECISIONS_HEAD = struct.Struct("<qII")     # decision time, frames, message length
_DECISIONS_HEAD_1 = struct.Struct("<qIII")  # ... of one frame, and that frame's length
_TAIL = struct.Struct("<BBHI")              # a record header's bytes 8..16: kind, 0, 0, rows
_I4 = np.dtype(np.int32)
_LITTLE = sys.byteorder == "little"
_JOIN_BYTES = 4096                          # records up to this payload are joined, not vectored
_TIME_LEN = struct.Struct("<qH")            # time, then a u16 length
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
crc32c = _crc32c.crc32c                     # the `crc32c` package: hardware CRC32C (SSE4.2)


def record_parts(kind: int, rows: int, parts) -> list:
    """One record as a list of buffers: its header (length, CRC32C over the rest of the header
    and the payload, kind, rows), then `parts`, the payload. The engine hands the list to one
    `pwritev(2)`, so a turn's frames are not copied into one bytes object first."""
    length = 0
    crc = crc32c(_TAIL.pack(kind, 0, 0, rows))
    for part in parts:
        crc = crc32c(part, crc)
        length += memoryview(part).nbytes
    return [RECORD.pack(length, crc, kind, 0, 0, rows), *parts]


def record_bytes(kind: int, rows: int, parts) -> bytes:
    """One record as bytes (`record_parts` joined)."""
    return b"".join(record_parts(kind, rows, parts))


def plan_record(time_ns: int, version: str, names: list[str]) -> bytes:
    v = version.encode("utf-8")
    parts = [_TIME_LEN.pack(time_ns, len(v)), v, _U32.pack(len(names))]
    for name in names:
        b = name.encode("utf-8")
        parts += [_U16.pack(len(b)), b]
    return record_bytes(PLAN, 0, parts)


def decisions_parts(decision_ns: int, frames, message, destination: np.ndarray):
    """The record of one turn: the SCAN frames routed, the DECISION message as sent and the
    destination index of each decision (int32, one per decision). A small record (the usual
    one-frame turn at low rates) comes back as bytes, joined: one CRC32C call and few Python
    steps are what its latency is made of. A larger one comes back as buffers
    (`record_parts`), nothing copied, for one pwritev(2): write it before they change."""
    rows = len(destination)
    if not (_LITTLE and type(destination) is np.ndarray and destination.dtype is _I4
            and destination.flags.c_contiguous):
        destination = np.ascontiguousarray(destination, "<i4")
    if len(frames) == 1:
        frame = frames[0]
        size = len(frame) + len(message) + 4 * rows
        head = _DECISIONS_HEAD_1.pack(decision_ns, 1, len(message), len(frame))
        if size <= _JOIN_BYTES:
            payload = b"".join((head, frame, message, destination))
            tail = _TAIL.pack(DECISIONS, 0, 0, rows)
            return RECORD.pack(len(payload), crc32c(payload, crc32c(tail)), DECISIONS, 0, 0,
                               rows) + payload
        return record_parts(DECISIONS, rows, [head, frame, message, destination])
    head = _DECISIONS_HEAD.pack(decision_ns, len(frames), len(message))
    lengths = struct.pack(f"<{len(frames)}I", *map(len, frames))
    return record_parts(DECISIONS, rows, [head, lengths, *frames, message, destination])


def decisions_record(decision_ns: int, frames, message, destination: np.ndarray) -> bytes:
    """`decisions_parts` as one bytes object."""
    record = decisions_parts(decision_ns, frames, message, destination)
    return record if isinstance(record, bytes) else b"".join(record)


def malformed_record(time_ns: int, raw, error: str) -> bytes:
    e = error.encode("utf-8")[:65535]
    return record_bytes(MALFORMED, 1, [_TIME_LEN.pack(time_ns, len(e)), e, raw])


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class Record:
    """One journal record, decoded as far as the journal knows it (the wire bytes stay bytes:
    the compactor decodes them)."""
    kind: int
    rows: int
    offset: int                      # in the segment
    time_ns: int
    plan_version: str = ""           # PLAN
    names: list[str] = field(default_factory=list)          # PLAN
    frames: list[bytes] = field(default_factory=list)       # DECISIONS: SCAN frames
    message: bytes = b""             # DECISIONS: the DECISION message as sent
    destination: np.ndarray | None = None                   # DECISIONS: int32 per decision
    raw: bytes = b""                 # MALFORMED
    error: str = ""                  # MALFORMED


@dataclass
class SegmentScan:
    """A segment read up to its end or its first bad record."""
    path: Path
    segment_id: int
    records: list[Record]
    end: int                         # offset after the last good record
    torn: bool                       # stopped at a record whose length or CRC is wrong
    problem: str = ""                # why it stopped early (torn) or could not be read


def _decode(kind: int, rows: int, offset: int, p: memoryview) -> Record:
    if kind == PLAN:
        t, n = _TIME_LEN.unpack_from(p, 0)
        at = _TIME_LEN.size
        version = bytes(p[at:at + n]).decode("utf-8")
        at += n
        (count,) = _U32.unpack_from(p, at)
        at += 4
        names = []
        for _ in range(count):
            (k,) = _U16.unpack_from(p, at)
            names.append(bytes(p[at + 2:at + 2 + k]).decode("utf-8"))
            at += 2 + k
        return Record(kind, rows, offset, t, plan_version=version, names=names)
    if kind == DECISIONS:
        t, n_frames, message_len = _DECISIONS_HEAD.unpack_from(p, 0)
        at = _DECISIONS_HEAD.size
        if n_frames == 1:                     # the usual turn: one SCAN frame
            (k,) = _U32.unpack_from(p, at)
            at += 4
            frames = [p[at:at + k]]
            at += k
        else:
            lengths = struct.unpack_from(f"<{n_frames}I", p, at)
            at += 4 * n_frames
            frames = []
            for k in lengths:
                frames.append(p[at:at + k])
                at += k
        message = p[at:at + message_len]
        at += message_len
        if at + 4 * rows != len(p):
            raise ValueError("decisions record: lengths do not add up")
        dest = np.frombuffer(p, "<i4", rows, at) if rows else np.empty(0, np.int32)
        return Record(kind, rows, offset, t, frames=frames, message=message, destination=dest)
    if kind == MALFORMED:
        t, n = _TIME_LEN.unpack_from(p, 0)
        at = _TIME_LEN.size
        error = bytes(p[at:at + n]).decode("utf-8", "replace")
        return Record(kind, rows, offset, t, raw=bytes(p[at + n:]), error=error)
    raise ValueError(f"unknown record kind {kind}")


@dataclass
class SegmentIndex:
    """Where a segment's good records lie, as columns (`index_segment`): what the compactor
    and the audit readers decode in bulk. `records` and `frames` are the dicts of
    `sorter.audit._segment.walk` (one entry per record; one per SCAN frame of the DECISIONS
    records); `data` holds the bytes they point into (a read-only map of the file)."""
    path: Path
    segment_id: int
    data: bytes
    end: int                         # offset after the last good record
    torn: bool
    problem: str
    records: dict
    frames: dict
    destination: np.ndarray          # int32: every decision's destination index, in order

    def __len__(self) -> int:
        return len(self.records["kind"])

    def record(self, i: int) -> Record:
        """Record i decoded (ValueError, struct.error or UnicodeDecodeError when its payload
        does not decode)."""
        r = self.records
        start, length = int(r["start"][i]), int(r["length"][i])
        return _decode(int(r["kind"][i]), int(r["rows"][i]), int(r["offset"][i]),
                       memoryview(self.data)[start:start + length])


def index_segment(path) -> SegmentIndex:
    """Every good record of a segment, as columns, up to the end (zeroes) or the first record
    whose length runs past the file, whose CRC32C does not match or whose parts do not add up
    (a torn tail). One compiled walk (`sorter.audit._segment`)."""
    from sorter.audit import _segment

    path = Path(path)
    data = _read_used(path)
    sid = _segment_id(path)
    empty = _segment.walk(b"", 0, crc32c)[2:]
    if len(data) < SEGMENT.size:
        return SegmentIndex(path, sid, data, 0, len(data) > 0, "shorter than a segment header"
                            if data else "", *empty)
    magic, version, _, stored_id, _ = SEGMENT.unpack_from(data, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        return SegmentIndex(path, sid, data, 0, True,
                            "not a journal segment (bad magic or version)", *empty)
    end, problem, records, frames, destination = _segment.walk(data, SEGMENT.size, crc32c)
    index = SegmentIndex(path, sid, data, end, bool(problem), problem, records, frames,
                         destination)
    # the few PLAN and MALFORMED records are decoded here: one that does not decode ends the
    # segment as a torn tail does (as `read_segment` sees it)
    for i in np.flatnonzero(records["kind"] != DECISIONS).tolist():
        try:
            index.record(i)
        except (ValueError, struct.error, UnicodeDecodeError) as e:
            return _cut(index, i, str(e))
    return index


def _cut(index: SegmentIndex, i: int, why: str) -> SegmentIndex:
    """`index` without record i and the ones after it (torn there)."""
    r = index.records
    dec = r["kind"][:i] == DECISIONS
    n_frames = int(r["n_frames"][:i][dec].sum())
    n_rows = int(r["rows"][:i][dec].sum())
    end = int(r["offset"][i])
    return SegmentIndex(index.path, index.segment_id, index.data, end, True,
                        f"bad record at offset {end}: {why}",
                        {k: v[:i] for k, v in r.items()},
                        {k: v[:n_frames] for k, v in index.frames.items()},
                        index.destination[:n_rows])


def read_segment(path) -> SegmentScan:
    """Every good record of a segment, in order, decoded (`Record`), up to the end (zeroes)
    or the first bad record (a torn tail)."""
    index = index_segment(path)
    records = [index.record(i) for i in range(len(index))]
    return SegmentScan(index.path, index.segment_id, records, index.end, index.torn,
                       index.problem)


def _read_used(path: Path):
    """The segment's bytes, read-only: a map of the file (nothing is copied; the zeroes after
    the last record are never touched), or b"" for an empty file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)


def _segment_id(path: Path) -> int:
    try:
        return int(path.name.split(".")[0])
    except ValueError:
        return -1


def journal_dir(directory) -> Path:
    return Path(directory) / JOURNAL_DIR


def segments(directory, *, include_open: bool = True) -> list[Path]:
    """The journal's segments, oldest first: sealed ones and (if asked) the open one."""
    d = journal_dir(directory)
    if not d.is_dir():
        return []
    suffixes = (SEALED_SUFFIX, OPEN_SUFFIX) if include_open else (SEALED_SUFFIX,)
    found = [p for p in d.iterdir() if p.suffix in suffixes and _segment_id(p) >= 0]
    return sorted(found, key=_segment_id)


# --------------------------------------------------------------------------------------------
# locking and recovery


def lock_directory(directory) -> int:
    """Take the audit directory's lock (flock on _journal/lock); AuditLocked if another live
    process holds it. Returns the lock's descriptor (closing it releases the lock)."""
    d = journal_dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise AuditLocked(f"{Path(directory)}: the audit directory is in use by another "
                              f"engine (lock {d / LOCK_NAME})") from None
        raise
    return fd


@dataclass
class Recovered:
    """What `recover` found: segments sealed, torn tails cut, the last decision_seq."""
    sealed: list[Path]
    torn: list[tuple[Path, int, str]]         # (segment, offset cut at, why)
    last_decision_seq: int


def fsync_dir(path: Path) -> None:
    """fsync a directory: its entries (a new or renamed file) survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(directory) -> Recovered:
    """At start, with the lock held: seal what a crash left open, cutting a torn tail (the
    bytes from the first bad record on are zeroed, counted and logged, never fatal), and find
    the highest decision_seq in the journal. Idempotent."""
    from sorter.wire import decode_decisions

    sealed, torn, last = [], [], 0
    for path in segments(directory):
        scan = read_segment(path)
        if scan.torn:
            with open(path, "r+b") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                if scan.end >= SEGMENT.size:
                    f.seek(scan.end)
                    f.write(bytes(size - scan.end))
                    f.flush()
                    os.fsync(f.fileno())
            torn.append((path, scan.end, scan.problem))
            log.warning("audit journal torn tail cut", extra={"fields": {
                "segment": str(path), "offset": scan.end, "problem": scan.problem}})
        for r in scan.records:
            if r.kind == DECISIONS and r.rows:
                last = max(last, int(decode_decisions(r.message).decision_seq[-1]))
        if path.suffix == OPEN_SUFFIX:
            target = path.with_suffix(SEALED_SUFFIX)
            os.rename(path, target)
            sealed.append(target)
    if sealed:
        fsync_dir(journal_dir(directory))
    return Recovered(sealed, torn, last)


# --------------------------------------------------------------------------------------------
# writing


class JournalWriter:
    """Appends records to the open segment with one write(2) each; seals segments when full
    or when `seal_after_s` has passed (so the compactor sees them within seconds).

    Not thread-safe: one caller (the engine's thread) appends. fsync policy as the audit's has
    always been: `fsync_interval_s` 0 fsyncs (fdatasync) every record before `append`
    returns; x > 0 has a thread fdatasync the segment every x seconds when something was
    written; None never fsyncs (the OS writes back). Any OSError of a write is raised to the
    caller, which must not send that decision; the segment is then sealed at its last good
    record and the next append starts a new one."""

    def __init__(self, directory, *, segment_bytes: int = 64 << 20, seal_after_s: float = 5.0,
                 fsync_interval_s: float | None = 1.0, on_seal=None, clock=time.time_ns,
                 lock_fd: int | None = None):
        self.directory = Path(directory)
        self.dir = journal_dir(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._own_lock = lock_fd is None           # a lock taken here is released by close()
        self._lock_fd = lock_directory(directory) if lock_fd is None else lock_fd
        self.segment_bytes = max(int(segment_bytes), 4096)
        self.seal_after_ns = None if seal_after_s is None else int(seal_after_s * 1e9)
        self.fsync_interval_s = fsync_interval_s
        self.on_seal = on_seal
        self.clock = clock
        self._fd = -1
        self._path: Path | None = None
        self._pos = 0
        self._size = 0
        self._opened_ns = 0
        self._last_id = 0                        # id of the latest segment opened for appends
        self._last_made = 0                      # id of the latest segment created
        self._spare = None                       # (fd, path, size, id): the next segment, ready
        self._want_spare = threading.Event()
        self._plan: bytes | None = None          # the PLAN record every segment starts with
        self.records = 0
        self.bytes_written = 0
        self.fsyncs = 0
        self._dirty = False
        self._lock = threading.Lock()            # the fsync thread's view of the segment
        self._to_close: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        if fsync_interval_s is not None and fsync_interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="audit-fsync", daemon=True)
            self._thread.start()

    @property
    def path(self) -> Path | None:
        """The open segment, or None."""
        return self._path

    @property
    def spare(self) -> Path | None:
        """The segment the fsync thread made ready for the next roll, or None."""
        spare = self._spare
        return spare[1] if spare is not None else None

    def set_plan(self, time_ns: int, version: str, names: list[str]) -> None:
        """The plan the next decisions are made by: a PLAN record now (and first in every new
        segment), so the compactor knows the version and the destination names."""
        self._plan = plan_record(time_ns, version, names)
        if self._fd >= 0:
            self.append(self._plan)

    def append(self, record) -> None:
        """Write one record with one write(2): `record` is its bytes (`decisions_record`
        etc.) or its buffers (`decisions_parts`, written by one pwritev(2), no copy first).
        Raises OSError (nothing is then appended: the caller must withhold what it was about
        to send)."""
        if isinstance(record, (bytes, bytearray)):
            size = len(record)
        else:
            if len(record) > _IOV_MAX:                 # pwritev takes IOV_MAX buffers at most
                record = [record[0], b"".join(record[1:])]
            size = RECORD.size + _U32.unpack_from(record[0])[0]     # the header's length
        if self._fd < 0 or self._pos + size > self._size:
            self._next_segment(size)
        try:
            if isinstance(record, (bytes, bytearray)):
                n = os.pwrite(self._fd, record, self._pos)
            else:
                n = os.pwritev(self._fd, record, self._pos)
            if n < size:                                # regular files: short only on error
                rest = memoryview(record if isinstance(record, (bytes, bytearray))
                                  else b"".join(record))
                while n < size:
                    k = os.pwrite(self._fd, rest[n:], self._pos + n)
                    if k <= 0:
                        raise OSError(errno.EIO, "short write to the audit journal")
                    n += k
            if self.fsync_interval_s == 0:
                os.fdatasync(self._fd)
                self.fsyncs += 1
        except OSError:
            self._seal(failed=True)
            raise
        self._pos += size
        self.records += 1
        self.bytes_written += size
        self._dirty = True

    def tick(self, now_ns: int | None = None) -> None:
        """Seal the open segment when it has records and is older than `seal_after_s` (call
        it from the engine's timer turn)."""
        if self._fd < 0 or self.seal_after_ns is None:
            return
        now = self.clock() if now_ns is None else now_ns
        if now - self._opened_ns >= self.seal_after_ns and self.records_in_segment():
            self._seal()

    def probe(self) -> None:
        """Open a new segment now (after a failure: can the journal be written again?).
        Raises OSError while it cannot."""
        self._next_segment(0)

    @property
    def ready(self) -> bool:
        """A segment is open for appends."""
        return self._fd >= 0

    def records_in_segment(self) -> bool:
        return self._pos > SEGMENT.size + (len(self._plan) if self._plan else 0)

    def _next_segment(self, need: int) -> None:
        """Seal the open segment and open the next one that `need` bytes fit in, its PLAN
        record first. The next segment is usually the spare the fsync thread made ready
        (created, preallocated, its header fsynced, the directory fsynced): a roll on the hot
        path is then a seal and one pwrite, not ~30 ms of fsyncs at 130 MB/s of journal."""
        if self._fd >= 0:
            self._seal()
        plan = self._plan or b""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and (spare[3] <= self._last_id
                                  or spare[2] < SEGMENT.size + len(plan) + need):
            self._drop(spare)                     # older than the segment before, or too small
            spare = None
        if spare is None:
            spare = self._make_segment(SEGMENT.size + len(plan) + need)
        fd, path, size, sid = spare
        try:
            if plan and os.pwrite(fd, plan, SEGMENT.size) != len(plan):
                raise OSError(errno.EIO, "short write to the audit journal")
        except OSError:
            self._drop(spare)
            raise
        self._last_id = sid
        with self._lock:
            self._fd, self._path, self._pos, self._size = fd, path, SEGMENT.size + len(plan), size
            self._dirty = True
        self._opened_ns = self.clock()
        if self._thread is not None:
            self._want_spare.set()                # the fsync thread makes the next one ready

    def _make_segment(self, need: int) -> tuple[int, Path, int, int]:
        """Create a segment (fd, path, size, id): preallocated to max(segment_bytes, need), its
        header written and fsynced, the directory fsynced. Raises OSError (nothing is left)."""
        with self._lock:
            sid = max(self.clock(), self._last_made + 1)
            self._last_made = sid
        path = self.dir / f"{sid:020d}{OPEN_SUFFIX}"
        size = max(self.segment_bytes, need)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
            head = SEGMENT.pack(MAGIC, FORMAT_VERSION, 0, sid, self.clock())
            if os.pwrite(fd, head, 0) != len(head):
                raise OSError(errno.EIO, "short write to the audit journal")
            os.fdatasync(fd)
            fsync_dir(self.dir)
        except OSError:
            self._drop((fd, path, size, sid))
            raise
        return fd, path, size, sid

    @staticmethod
    def _drop(segment) -> None:
        """Close and delete a segment that holds no record."""
        fd, path = segment[0], segment[1]
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass

    def _make_spare(self) -> None:
        """The fsync thread: make the next segment ready (a failure is left to the hot path,
        which then tries itself and reports it)."""
        with self._lock:
            if self._spare is not None or self._stop.is_set():
                return
        try:
            spare = self._make_segment(0)
        except OSError as e:
            log.debug("audit journal: no spare segment", extra={"fields": {"error": str(e)}})
            return
        with self._lock:
            if self._spare is None and not self._stop.is_set():
                self._spare, spare = spare, None
        if spare is not None:
            self._drop(spare)

    def _seal(self, failed: bool = False) -> None:
        """Close the open segment for writing and rename it `.wal`: from now on it is the
        compactor's. After a failed write the record being written is not part of it (the
        reader stops at its bad CRC, and recovery zeroes it)."""
        fd, path = self._fd, self._path
        if fd < 0:
            return
        with self._lock:
            self._fd, self._path, self._pos, self._size = -1, None, 0, 0
            if self.fsync_interval_s is not None and self.fsync_interval_s > 0:
                self._to_close.append(fd)           # the thread fsyncs, then closes it
                fd = -1
        sealed = path.with_suffix(SEALED_SUFFIX)
        try:
            if fd >= 0:
                if self.fsync_interval_s is not None and not failed:
                    os.fdatasync(fd)
                os.close(fd)
            os.rename(path, sealed)
        except OSError as e:
            log.warning("audit journal: sealing a segment failed; recovery seals it at the "
                        "next start", extra={"fields": {"segment": str(path), "error": str(e)}})
            return
        if self.on_seal is not None:
            self.on_seal(sealed)

    def fsync(self) -> None:
        """fdatasync the open segment now (if written since the last time) and the sealed
        ones handed to this thread, then close those. Only this call closes a handed fd, so
        the engine's thread never closes a descriptor another thread is syncing."""
        with self._lock:
            current = self._fd
            closing, self._to_close = self._to_close, []
            dirty, self._dirty = self._dirty, False
        for fd in ([current] if current >= 0 and dirty else []) + closing:
            try:
                os.fdatasync(fd)
                self.fsyncs += 1
            except OSError as e:
                log.warning("audit journal fsync failed", extra={"fields": {"error": str(e)}})
        for fd in closing:
            os.close(fd)

    def _run(self) -> None:
        """fsync every `fsync_interval_s`; in between, make a spare segment when asked."""
        next_sync = time.monotonic() + self.fsync_interval_s
        while not self._stop.is_set():
            if self._want_spare.wait(max(0.0, next_sync - time.monotonic())):
                self._want_spare.clear()
                self._make_spare()
            if time.monotonic() >= next_sync:
                self.fsync()
                next_sync = time.monotonic() + self.fsync_interval_s

    def close(self) -> None:
        """Stop the fsync thread, seal the open segment (fsynced), and release the lock if it
        was taken here. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._want_spare.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            self._drop(spare)
        try:
            if self._fd >= 0 and not self.records_in_segment():
                fd, path = self._fd, self._path          # nothing but its PLAN: drop it
                self._fd, self._path = -1, None
                os.close(fd)
                os.unlink(path)
            else:
                self._dirty = True
                self._seal()
        finally:
            self.fsync()
            if self._own_lock and self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "JournalWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
