"""Decision audit: every decision in Arrow IPC files, written before it is sent.

Layout (see docs/audit.md)::

    <directory>/_writer.lock                                     flock held by the live writer
    <directory>/date=YYYY-MM-DD/decisions-HHMMSS-<seq>.arrow     sealed: IPC file with footer
    <directory>/date=YYYY-MM-DD/_decisions-HHMMSS-<seq>.arrow.part   being written (hidden)

`AuditWriter` writes one record batch per call straight to the OS (`pyarrow.OSFile`, no user
space buffer), so a decision whose `write_decisions` call returned survives SIGKILL; fsync per
policy bounds what a power loss can take. A file is written under a hidden name (leading `_`,
suffix `.part`: `pyarrow.dataset` skips names starting with `_`, a `**/*.arrow` glob skips
the suffix) and renamed to its final name once its footer is written, so datasets only ever
see complete files. `recover` seals what a crash left unsealed; `read_audit` reads everything,
unsealed files included, batch by batch.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from .codes import MALFORMED, REASONS
from .events import Decisions, EventBatch

__all__ = ["AUDIT_SCHEMA", "REASON_DICTIONARY", "AuditWriter", "AuditLocked", "Recovery",
           "recover", "recover_files", "read_audit", "audit_files"]

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

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
_LOCK_NAME = "_writer.lock"
_PART_SUFFIX = ".part"
_IPC_MAGIC = b"ARROW1"
_STREAM_START = 8          # 6-byte magic + 2 bytes of padding, then the embedded IPC stream
_NAME_RE = re.compile(r"^_?decisions-(\d{6})-(\d+)(?:-(\d+))?\.arrow(?:\.part)?$")


# --------------------------------------------------------------------------------------------
# building batches


def _ts_array(now_ns, n: int) -> pa.Array:
    values = (np.full(n, now_ns, np.int64) if np.isscalar(now_ns)
              else _vector(now_ns, n, np.int64, "now_ns"))
    return pa.Array.from_buffers(TS_TYPE, n, [None, pa.py_buffer(values)])


def _vector(values, n: int, dtype, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(values, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, the batch has {n} events")
    return arr


def _scalar_or_vector(values, n: int, dtype, name: str) -> np.ndarray:
    if values is None:
        raise ValueError(f"{name} is required")
    if np.isscalar(values):
        return np.full(n, values, dtype)
    return _vector(values, n, dtype, name)


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
    eo = pa.array(np.ascontiguousarray(events.event_offsets, np.int32))
    return pa.ListArray.from_arrays(eo, values)


class _Repeat:
    """A cached array of one repeated value (or nulls), sliced to the batch size."""

    def __init__(self, type_: pa.DataType):
        self.type = type_
        self.value: object = None
        self.array: pa.Array = pa.nulls(0, type_)

    def get(self, value, n: int) -> pa.Array:
        if value != self.value or len(self.array) < n:
            size = max(n, 1024)
            self.array = (pa.nulls(size, self.type) if value is None
                          else pa.repeat(pa.scalar(value, self.type), size))
            self.value = value
        return self.array.slice(0, n) if len(self.array) != n else self.array


# --------------------------------------------------------------------------------------------
# the writer


class AuditLocked(RuntimeError):
    """Another live writer holds the audit directory."""


def _utc_parts(now_ns: int) -> tuple[str, str]:
    st = time.gmtime(now_ns // _NS)
    return time.strftime("%Y-%m-%d", st), time.strftime("%H%M%S", st)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise AuditLocked(f"{directory} is in use by another audit writer") from None
        raise
    return fd


class AuditWriter:
    """Writes decisions to hive-partitioned Arrow IPC files, one record batch per call.

    directory: the audit root; `date=YYYY-MM-DD/` partitions are created below it.
    rotate_bytes: seal the file once it holds at least this many bytes (None: never).
    rotate_seconds: seal the file when a write comes this long after its first row (None:
        never). Files are also sealed when the UTC date of a write differs from the file's.
    fsync_interval_s: fsync the file when a write (or `maybe_fsync`, or `close`) finds the last
        fsync older than this; 0 = after every batch; None = never (the OS decides).
    clock: ns since the epoch; the fsync timer, and the default decision time.

    Rotation and partition follow the decision time (`now_ns` of each write), so every row of
    `date=D/` has a `ts` on the UTC date D. One writer per directory (an flock on
    `_writer.lock` enforces it). Methods may be called from several threads (a lock
    serialises them); `fsync()` from a timer thread does not block writes while it syncs.
    """

    def __init__(self, directory, *, rotate_bytes: int | None = 256 << 20,
                 rotate_seconds: float | None = 3600, fsync_interval_s: float | None = 1.0,
                 clock=time.time_ns):
        if rotate_bytes is not None and rotate_bytes <= 0:
            raise ValueError("rotate_bytes must be positive or None")
        if rotate_seconds is not None and rotate_seconds <= 0:
            raise ValueError("rotate_seconds must be positive or None")
        if fsync_interval_s is not None and fsync_interval_s < 0:
            raise ValueError("fsync_interval_s must be >= 0 or None")
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.rotate_ns = None if rotate_seconds is None else int(rotate_seconds * _NS)
        self.fsync_interval_ns = None if fsync_interval_s is None else int(fsync_interval_s * _NS)
        self.clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(self.directory)
        self._lock = threading.RLock()
        self._sink: pa.NativeFile | None = None
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._part: Path | None = None
        self._final: Path | None = None
        self._file_start_ns = 0
        self._day_start_ns = 0
        self._dirty = False                   # bytes written since the last fsync
        self._last_fsync_ns = clock()
        self._closed = False
        self._names: object = None            # cache of the destination names array
        self._names_array: pa.Array | None = None
        self._plan_version = _Repeat(pa.string())
        self._null_binary = _Repeat(pa.binary())
        self._null_string = _Repeat(pa.string())
        self.files: list[Path] = []           # files sealed by this writer, in order
        self.rows_written = 0
        self.batches_written = 0
        self.fsyncs = 0

    # -- public API -----------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The file being written (hidden name), or None between files."""
        return self._part

    def write_decisions(self, events: EventBatch, seq, decisions: Decisions, decision_seq,
                        destination_names, plan_version: str, now_ns=None,
                        latency_ns=None) -> int:
        """Write one batch of decisions as one record batch; returns the number of rows.

        seq: wire sequence number, a scalar for the whole batch or one per event.
        decision_seq: the first decision number (rows get decision_seq, decision_seq + 1, ...)
            or one per event.
        destination_names: destination names by index (`decisions.destination`, -1 = none),
            a list or a string Arrow array (pass the same object every time: it is cached).
        now_ns: decision time (scalar, or one per event); default clock().
        latency_ns: scan -> decision, scalar or one per event; default now_ns - events.ts_ns.
        When this returns, the rows are in the OS: a SIGKILL does not lose them.
        """
        n = len(events)
        if len(decisions) != n:
            raise ValueError(f"{len(decisions)} decisions for {n} events")
        if n == 0:
            return 0
        if now_ns is None:
            now_ns = self.clock()
        if not np.isscalar(now_ns):
            now_ns = _vector(now_ns, n, np.int64, "now_ns")
        ts = _ts_array(now_ns, n)
        first_ns = int(now_ns) if np.isscalar(now_ns) else int(now_ns[0])
        if np.isscalar(decision_seq):
            first_seq = int(decision_seq)
            dseq = np.arange(first_seq, first_seq + n, dtype=np.uint64)
        else:
            dseq = _vector(decision_seq, n, np.uint64, "decision_seq")
            first_seq = int(dseq[0])
        if latency_ns is None:
            latency = np.subtract(now_ns, _vector(events.ts_ns, n, np.int64, "ts_ns"),
                                  dtype=np.int64)
        else:
            latency = _scalar_or_vector(latency_ns, n, np.int64, "latency_ns")
        reason = _vector(decisions.reason, n, np.uint8, "reason")
        if int(reason.max()) >= len(REASONS):
            raise ValueError(f"reason code {int(reason.max())} is not in codes.REASONS")
        dest = _vector(decisions.destination, n, np.int32, "destination")
        names = self._destination_array(destination_names)     # names + a trailing null
        if int(dest.max()) >= len(names) - 1:
            raise IndexError(f"destination {int(dest.max())} out of range: "
                             f"{len(names) - 1} destination names")
        none = dest < 0
        if none.any():
            dest = np.where(none, np.int32(len(names) - 1), dest)
        columns = [
            ts,
            pa.array(_vector(events.scanner_ids, n, np.uint16, "scanner_ids")),
            pa.array(_vector(events.parcel_ids, n, np.uint64, "parcel_ids")),
            pa.array(_scalar_or_vector(seq, n, np.uint64, "seq")),
            pa.array(dseq),
            reads_array(events),
            pa.array(_vector(decisions.chute, n, np.uint16, "chute")),
            pa.DictionaryArray.from_arrays(pa.array(reason.view(np.int8)), REASON_DICTIONARY),
            names.take(pa.array(dest)),
            self._plan_version.get(plan_version, n),
            pa.array(latency),
            pa.array(_vector(events.recirculations, n, np.uint8, "recirculations")),
            self._null_binary.get(None, n),
            self._null_string.get(None, n),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=AUDIT_SCHEMA)
        self._write(batch, first_seq, first_ns)
        return n

    def write_malformed(self, raw: bytes, error: str, decision_seq: int, now_ns=None, *,
                        plan_version: str | None = None) -> None:
        """Audit a wire message that could not be decoded: reason `malformed`, its raw bytes
        and the error; the event columns (scanner, parcel, seq, reads, chute...) are null."""
        if now_ns is None:
            now_ns = self.clock()
        n = 1
        columns = [
            _ts_array(now_ns, 1),
            pa.nulls(n, pa.uint16()),
            pa.nulls(n, pa.uint64()),
            pa.nulls(n, pa.uint64()),
            pa.array([decision_seq], pa.uint64()),
            pa.nulls(n, pa.list_(pa.string())),
            pa.nulls(n, pa.uint16()),
            pa.DictionaryArray.from_arrays(pa.array([MALFORMED], pa.int8()), REASON_DICTIONARY),
            pa.nulls(n, pa.string()),
            pa.array([plan_version], pa.string()),
            pa.nulls(n, pa.int64()),
            pa.nulls(n, pa.uint8()),
            pa.array([bytes(raw)], pa.binary()),
            pa.array([str(error)], pa.string()),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=AUDIT_SCHEMA)
        self._write(batch, int(decision_seq), int(now_ns))

    def flush(self) -> None:
        """Push written bytes to the OS. Writes already go straight to the OS (no user-space
        buffer), so this only flushes the sink; durability is `fsync`'s job."""
        with self._lock:
            if self._sink is not None:
                self._sink.flush()

    def maybe_fsync(self) -> bool:
        """fsync if there are unsynced bytes and the last fsync is older than the interval.
        Called at every write; call it from a timer too so that a quiet line still gets its
        last batches synced within the interval. Returns whether it synced."""
        with self._lock:
            return self._maybe_fsync_locked()

    def fsync(self) -> None:
        """fsync the current file now (a no-op with fsync_interval_s=None or no file).

        Safe from a timer thread: the descriptor is duplicated under the lock, the sync itself
        runs outside it, so writes are not held up by a slow disk."""
        if self.fsync_interval_ns is None:
            return
        with self._lock:
            if self._sink is None or not self._dirty:
                return
            fd = os.dup(self._sink.fileno())
            self._dirty = False
            self._last_fsync_ns = self.clock()
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self.fsyncs += 1

    def tick(self, now_ns=None) -> None:
        """Timer hook: seal the current file if its time is up, else `maybe_fsync`."""
        with self._lock:
            if self._writer is not None:
                now = self.clock() if now_ns is None else int(now_ns)
                if self._rotation_due(now):
                    self._seal()
                    return
            self._maybe_fsync_locked()

    def close(self) -> None:
        """Seal the current file (footer, fsync unless the policy is None, rename) and release
        the directory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                self._seal()
            finally:
                self._closed = True
                os.close(self._lock_fd)

    def __enter__(self) -> "AuditWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _destination_array(self, names) -> pa.Array:
        if names is not self._names or self._names_array is None:
            if isinstance(names, pa.ChunkedArray):
                names = names.combine_chunks()
            arr = names if isinstance(names, pa.Array) else pa.array(list(names), pa.string())
            if arr.type != pa.string():
                arr = arr.cast(pa.string())
            # index -1 (no destination) is mapped to a null appended at the end
            arr = pa.concat_arrays([arr, pa.nulls(1, pa.string())])
            self._names, self._names_array = names, arr
        return self._names_array

    def _rotation_due(self, now_ns: int) -> bool:
        if not (self._day_start_ns <= now_ns < self._day_start_ns + _DAY_NS):
            return True
        return self.rotate_ns is not None and now_ns - self._file_start_ns >= self.rotate_ns

    def _write(self, batch: pa.RecordBatch, first_seq: int, now_ns: int) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("write to a closed AuditWriter")
            if self._writer is not None and self._rotation_due(now_ns):
                self._seal()
            if self._writer is None:
                self._open(first_seq, now_ns)
            try:
                self._writer.write_batch(batch)
            except BaseException:
                self._abandon()
                raise
            self._dirty = True
            self.rows_written += batch.num_rows
            self.batches_written += 1
            self._maybe_fsync_locked()
            if self.rotate_bytes is not None and self._sink.tell() >= self.rotate_bytes:
                self._seal()

    def _maybe_fsync_locked(self) -> bool:
        if self.fsync_interval_ns is None or self._sink is None or not self._dirty:
            return False
        now = self.clock()
        if now - self._last_fsync_ns < self.fsync_interval_ns:
            return False
        os.fsync(self._sink.fileno())
        self.fsyncs += 1
        self._dirty = False
        self._last_fsync_ns = now
        return True

    def _open(self, first_seq: int, now_ns: int) -> None:
        date, hhmmss = _utc_parts(now_ns)
        part_dir = self.directory / f"date={date}"
        created = not part_dir.exists()
        part_dir.mkdir(parents=True, exist_ok=True)
        base = f"decisions-{hhmmss}-{first_seq}"
        name, k = base, 0
        while ((part_dir / f"{name}.arrow").exists()
               or (part_dir / f"_{name}.arrow{_PART_SUFFIX}").exists()):
            k += 1
            name = f"{base}-{k}"
        self._final = part_dir / f"{name}.arrow"
        self._part = part_dir / f"_{name}.arrow{_PART_SUFFIX}"
        self._sink = pa.OSFile(str(self._part), "wb")
        self._writer = ipc.new_file(self._sink, AUDIT_SCHEMA)
        self._file_start_ns = now_ns
        self._day_start_ns = now_ns - now_ns % _DAY_NS
        self._dirty = False
        if self.fsync_interval_ns is not None:     # make the new names survive a power loss
            _fsync_dir(part_dir)
            if created:
                _fsync_dir(self.directory)

    def _seal(self) -> None:
        """Footer, fsync (policy permitting), rename to the final name."""
        if self._writer is None:
            return
        try:
            self._writer.close()
            if self.fsync_interval_ns is not None:
                os.fsync(self._sink.fileno())
                self.fsyncs += 1
                self._last_fsync_ns = self.clock()
            self._sink.close()
            os.replace(self._part, self._final)
            if self.fsync_interval_ns is not None:
                _fsync_dir(self._final.parent)
            self.files.append(self._final)
        except BaseException:
            self._abandon()
            raise
        self._writer = self._sink = self._part = self._final = None
        self._dirty = False

    def _abandon(self) -> None:
        """Drop a file after a failed write: it keeps its hidden name and `recover` salvages
        its complete batches; the next write starts a new file."""
        log.error("audit: abandoning %s after a failed write", self._part)
        try:
            if self._sink is not None:
                self._sink.close()
        except Exception:                      # pragma: no cover - best effort
            pass
        self._writer = self._sink = self._part = self._final = None
        self._dirty = False


# --------------------------------------------------------------------------------------------
# reading and recovery


def _sort_key(path: Path):
    m = _NAME_RE.match(path.name)
    date = path.parent.name
    if m:
        return (date, 0, m.group(1), int(m.group(2)), int(m.group(3) or 0), path.name)
    return (date, 1, "", 0, 0, path.name)


def audit_files(directory) -> list[Path]:
    """Every audit file under `directory`, sealed (`*.arrow`) and unsealed (`_*.arrow.part`),
    in write order (date, start time, first decision_seq)."""
    root = Path(directory)
    if root.is_file():
        return [root]
    # unsealed first: a file sealed (renamed) between the two listings is then seen twice,
    # never missed; read_audit reads it once
    found = list(root.rglob(f"_*.arrow{_PART_SUFFIX}"))
    found += [p for p in root.rglob("*.arrow") if not p.name.startswith((".", "_"))]
    return sorted(set(found), key=_sort_key)


def _has_footer(path: Path) -> bool:
    try:
        with pa.memory_map(str(path)) as f:
            ipc.open_file(f)
        return True
    except (pa.ArrowInvalid, OSError):
        return False


def _salvage(path: Path):
    """(schema or None, list of complete batches, torn_tail) of an IPC file without a usable
    footer, reading its embedded stream batch by batch."""
    with pa.OSFile(str(path)) as f:       # reads copy: batches outlive the file object
        size = f.size()
        if size < _STREAM_START or f.read(len(_IPC_MAGIC)) != _IPC_MAGIC:
            return None, [], size > 0
        if size == _STREAM_START:
            return None, [], False
        f.seek(_STREAM_START)
        try:
            reader = ipc.open_stream(f)
        except (pa.ArrowInvalid, OSError):
            return None, [], True
        batches, torn = [], False
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError):
                torn = True
                break
            try:
                batch.validate(full=True)
            except pa.ArrowInvalid:
                torn = True
                break
            batches.append(batch)
        return reader.schema, batches, torn


def read_audit(directory) -> pa.Table:
    """Every row under `directory` (or of one file) as one table with AUDIT_SCHEMA, in write
    order. Unsealed files (a live writer's, or a crash's) are read batch by batch up to their
    last complete batch. Read-only: nothing is repaired (see `recover`)."""
    tables, seen = [], set()
    for path in audit_files(directory):
        if path.name.endswith(_PART_SUFFIX) and not path.exists():    # sealed meanwhile
            path = path.with_name(path.name[1:-len(_PART_SUFFIX)])
        if path in seen or not path.exists():
            continue
        seen.add(path)
        if _has_footer(path):
            with pa.OSFile(str(path)) as f:
                tables.append(ipc.open_file(f).read_all())
        else:
            schema, batches, _ = _salvage(path)
            if batches:
                tables.append(pa.Table.from_batches(batches, schema=schema))
    if not tables:
        return AUDIT_SCHEMA.empty_table()
    return pa.concat_tables(tables)


@dataclass
class Recovery:
    """What `recover_files` did with one file."""
    source: Path            # the file found unsealed
    path: Path | None       # the sealed file, None when nothing was recoverable (removed)
    rows: int               # rows kept
    batches: int            # record batches kept
    torn_tail: bool         # an incomplete or unreadable tail was dropped


def _seal_copy(source: Path, schema: pa.Schema, batches, target: Path) -> None:
    """Write batches as a sealed IPC file at `target`, atomically (temp file, fsync, rename)."""
    tmp = target.parent / f".recover-{target.name}.tmp"
    with pa.OSFile(str(tmp), "wb") as sink:
        with ipc.new_file(sink, schema) as w:
            for b in batches:
                w.write_batch(b)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def recover_files(directory) -> list[Recovery]:
    """Seal every audit file a crash left without a valid footer, keeping its complete batches.

    Unsealed `_X.arrow.part` files become `X.arrow`; a `X.arrow` with a broken footer (power
    loss without fsync) is rewritten in place. Each rewrite goes through a hidden temp file,
    fsync and rename, so a crash during recovery leaves either the old or the new file and
    recovery can simply run again. Files with no complete batch are removed. Call it before
    starting the writer: it raises AuditLocked while a writer holds the directory.
    """
    root = Path(directory)
    if not root.exists():
        return []
    lock_fd = _lock_directory(root)
    try:
        for stale in root.rglob(".recover-*.tmp"):
            stale.unlink()
        out = []
        for path in audit_files(root):
            hidden = path.name.endswith(_PART_SUFFIX)
            if _has_footer(path):
                if hidden:          # crashed between footer and rename
                    target = _free_name(path)
                    os.replace(path, target)
                    _fsync_dir(target.parent)
                    with pa.memory_map(str(target)) as f:
                        r = ipc.open_file(f)
                        rows = sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
                        nb = r.num_record_batches
                    out.append(Recovery(path, target, rows, nb, False))
                continue
            schema, batches, torn = _salvage(path)
            rows = sum(b.num_rows for b in batches)
            if not batches:
                path.unlink()
                _fsync_dir(path.parent)
                rec = Recovery(path, None, 0, 0, torn)
            else:
                if hidden:
                    _seal_copy(path, schema, batches, path)       # sealed, still hidden
                    target = _free_name(path)
                    os.replace(path, target)                      # then visible
                    _fsync_dir(target.parent)
                else:
                    target = path
                    _seal_copy(path, schema, batches, target)
                rec = Recovery(path, target, rows, len(batches), torn)
            out.append(rec)
            log.warning("audit: recovered %s -> %s: %d rows in %d batches%s", rec.source,
                        rec.path, rec.rows, rec.batches,
                        ", torn tail dropped" if rec.torn_tail else "")
        return out
    finally:
        os.close(lock_fd)


def _free_name(part: Path) -> Path:
    """The final name of an unsealed `_X.arrow.part`: `X.arrow`, or `X-k.arrow` if taken."""
    stem = part.name[1:-len(_PART_SUFFIX)][:-len(".arrow")]
    target, k = part.parent / f"{stem}.arrow", 0
    while target.exists():
        k += 1
        target = part.parent / f"{stem}-{k}.arrow"
    return target


def recover(directory) -> list[Path]:
    """`recover_files`, returning the sealed files it produced (each one is logged with its row
    count and whether a torn tail was dropped)."""
    return [r.path for r in recover_files(directory) if r.path is not None]
