"""Decision audit: every decision in Arrow IPC files, written before it is sent.

Layout (see docs/audit.md)::

    <directory>/_writer.lock                                     flock held by the live writer
    <directory>/date=YYYY-MM-DD/decisions-HHMMSS-<seq>.arrow     sealed: IPC file with footer
    <directory>/date=YYYY-MM-DD/_decisions-HHMMSS-<seq>.arrow.part   being written (hidden)

`AuditWriter` writes one record batch per call and hands it to the OS before returning (one
`write(2)` of the serialized batch), so a decision whose `write_decisions` call returned
survives SIGKILL. The files are standard Arrow IPC files, but their bytes are laid out here
(`_IpcFile`): pyarrow serializes the schema and dictionary once, the compiled
`sorter.audit._audit.DecisionEncoder` encodes each decision batch (pyarrow's batch assembly cost
~80 us per one-event batch, the engine's largest fixed cost per turn), and the footer is built
from the recorded block positions when the file is sealed. fsync per policy bounds what a
power loss can take, and with an interval the
writer's own thread fsyncs and seals rotated files, so writes never wait for the disk. A file
is written under a hidden name (leading `_`, suffix `.part`: `pyarrow.dataset` skips names
starting with `_`, a `**/*.arrow` glob skips the suffix) and renamed to its final name once
its footer is written, so datasets only ever see complete files. `recover` seals what a crash
left unsealed; `read_audit` reads everything, unsealed files included, batch by batch.
"""
from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from sorter.audit import _audit
from sorter.core.codes import MALFORMED, REASONS
from sorter.core.events import Decisions, EventBatch, arrow_offsets_data

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
#
# A batch of one event is the engine's usual case at low rates, so the fixed cost per column
# matters: columns are made straight from the numpy buffers (`Array.from_buffers`, no copy, no
# conversion), constant columns are cached, and each check is one numpy reduction.

READS_TYPE = AUDIT_SCHEMA.field("reads").type
_U8, _U16, _I32, _I64, _U64 = pa.uint8(), pa.uint16(), pa.int32(), pa.int64(), pa.uint64()


def _fixed(type_: pa.DataType, values: np.ndarray) -> pa.Array:
    """A fixed-width array without nulls over `values`, which must be contiguous with the
    width of `type_` (see `_vector`). No copy: the array's buffer keeps `values` alive."""
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def _top(values: np.ndarray) -> int:
    """The largest value of a non-empty vector (no reduction for a single value)."""
    return int(values[0]) if len(values) == 1 else int(values.max())


def _is_scalar(value) -> bool:
    """np.isscalar, without its cost for the arrays of the hot path."""
    return not isinstance(value, np.ndarray) and np.isscalar(value)


def _ts_array(now_ns, n: int) -> pa.Array:
    values = (np.full(n, now_ns, np.int64) if _is_scalar(now_ns)
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
    if _is_scalar(values):
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
    eo = np.ascontiguousarray(events.event_offsets, np.int32)
    # from_buffers validates the offsets against the values, as ListArray.from_arrays does
    return pa.Array.from_buffers(READS_TYPE, len(eo) - 1, [None, pa.py_buffer(eo)],
                                 children=[values])


class _Repeat:
    """A cached array of one repeated value (or nulls), sliced to the batch size. The last
    slice is kept too: at low rates every batch has the same size (one event)."""

    def __init__(self, type_: pa.DataType):
        self.type = type_
        empty = pa.nulls(0, type_)
        # (value, array, n, array[:n]) in one tuple: safe from several threads
        self._cached: tuple[object, pa.Array, int, pa.Array] = (None, empty, 0, empty)

    def get(self, value, n: int) -> pa.Array:
        cached_value, array, last_n, last = self._cached
        if n == last_n and value == cached_value:
            return last
        if value != cached_value or len(array) < n:
            size = max(n, 1024)
            array = (pa.nulls(size, self.type) if value is None
                     else pa.repeat(pa.scalar(value, self.type), size))
        last = array.slice(0, n) if len(array) != n else array
        self._cached = (value, array, n, last)
        return last


# what `_audit.DecisionEncoder.encode` takes: scanner_ids, parcel_ids, seq, event_offsets,
# read_offsets, data, chute, reason, destination, ts_ns, recirculations
_ENCODER_DTYPES = (np.uint16, np.uint64, np.uint64, np.int32, np.int32, np.uint8, np.uint16,
                   np.uint8, np.int32, np.int64, np.uint8)

# Arrow's take kernel, called directly: `Array.take` goes through pyarrow.compute's Python
# wrapper, which costs as much again for a small batch
_TAKE = pc.get_function("array_take")


class _Destinations:
    """The destination names of one plan, ready to be gathered by destination index.

    Index -1 (any negative index) is no destination: null. Arrow's `take` gathers (measured
    faster than gathering the bytes with numpy at every batch size); a batch of one event, the
    common case at low rates, gets a cached one-row array.
    """

    def __init__(self, names):
        if isinstance(names, pa.ChunkedArray):
            names = names.combine_chunks()
        arr = names if isinstance(names, pa.Array) else pa.array(list(names), pa.string())
        if arr.type != pa.string():
            arr = arr.cast(pa.string())
        self.count = len(arr)
        # for the compiled encoder: int32 offsets from 0 and the UTF-8 bytes of the names
        self.offsets, self.data = arrow_offsets_data(arr)
        # the null at index `count` stands for every negative index
        self.table = pa.concat_arrays([arr, pa.nulls(1, pa.string())])
        self._one_row: dict[int, pa.Array] = {}

    def _out_of_range(self, index: int) -> IndexError:
        return IndexError(f"destination {index} out of range: {self.count} destination names")

    def column(self, dest: np.ndarray) -> pa.Array:
        """The destination column for `dest` (int32, contiguous); IndexError past the names."""
        if len(dest) == 1:
            i = int(dest[0])
            if i >= self.count:
                raise self._out_of_range(i)
            i = self.count if i < 0 else i
            column = self._one_row.get(i)
            if column is None:
                column = self._one_row[i] = _TAKE.call([self.table, pa.array([i], _I32)])
            return column
        # viewed as uint32 a negative index is >= 2**31: one reduction checks the usual batch,
        # and a minimum maps the negative ones to the null
        as_unsigned = dest.view(np.uint32)
        if _top(as_unsigned) >= self.count:
            top = _top(dest)
            if top >= self.count:
                raise self._out_of_range(top)
            dest = np.minimum(as_unsigned, np.uint32(self.count)).view(np.int32)
        return _TAKE.call([self.table, _fixed(_I32, dest)])


# --------------------------------------------------------------------------------------------
# the file: Arrow IPC file format, laid out here
#
#   "ARROW1\0\0" | schema message | dictionary message (reasons) | record batch messages ...
#   | end-of-stream marker | footer flatbuffer | int32 footer length | "ARROW1"
#
# Everything between the magic and the footer is an IPC stream (what `_salvage` reads after a
# crash). The schema and dictionary messages are pyarrow's own bytes; record batches come from
# `_audit.DecisionEncoder` or from `RecordBatch.serialize()`; the footer repeats the schema and
# lists the position of every message (`Block`), see `_footer`.

_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _u16(b, at: int) -> int:
    return int.from_bytes(b[at:at + 2], "little")


def _u32(b, at: int) -> int:
    return int.from_bytes(b[at:at + 4], "little")


def _prelude() -> tuple[bytes, tuple[int, int, int], bytes]:
    """(magic + schema + dictionary messages, the dictionary's Block, the schema message's
    flatbuffer), serialized by pyarrow from a stream of one empty batch."""
    columns = [pa.DictionaryArray.from_arrays(pa.array([], pa.int8()), REASON_DICTIONARY)
               if f.name == "reason" else pa.nulls(0, f.type) for f in AUDIT_SCHEMA]
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, AUDIT_SCHEMA) as w:
        w.write_batch(pa.RecordBatch.from_arrays(columns, schema=AUDIT_SCHEMA))
    messages = list(ipc.MessageReader.open_stream(sink.getvalue()))
    schema, dictionary = messages[0], messages[1]
    if (schema.type, dictionary.type) != ("schema", "dictionary"):
        raise RuntimeError(f"unexpected IPC stream from pyarrow: {[m.type for m in messages]}")
    head = _IPC_MAGIC + b"\x00\x00" + schema.serialize().to_pybytes()
    block = (len(head), 8 + dictionary.metadata.size, dictionary.body.size)
    flatbuffer = schema.metadata.to_pybytes()
    flatbuffer += bytes(-len(flatbuffer) % 8)       # the footer lays it out 8-aligned
    return head + dictionary.serialize().to_pybytes(), block, flatbuffer


_PRELUDE, _DICTIONARY_BLOCK, _SCHEMA_FLATBUFFER = _prelude()


def _footer(blocks: "_Blocks") -> tuple[bytes, np.ndarray]:
    """The IPC file footer: `Footer{version V5, schema, dictionaries, recordBatches}`.

    The Schema table is not rebuilt: the whole flatbuffer of the schema message is copied in
    (8-aligned; flatbuffer references are relative, so it stays valid wherever it lies) and
    the footer points at the Schema table inside it. Layout (offsets from the start):
    0 root -> 16; 4 vtable (size 12, table 20: version +4, schema +8, dictionaries +12,
    recordBatches +16); 16 table; 40 the schema message's flatbuffer; then the two vectors
    of Block{int64 offset, int32 metaDataLength, pad, int64 bodyLength}, 8-aligned. The
    record batch Blocks are packed with numpy: a 256 MiB file of small batches lists ~10^5 of
    them, and a Python loop over them held the GIL (and so the engine) for ~0.1 s. Returns
    the footer as (everything but the record batch Blocks, the Blocks), to be written one
    after the other without joining them."""
    blob = _SCHEMA_FLATBUFFER
    table = _u32(blob, 0)
    vtable = table - int.from_bytes(blob[table:table + 4], "little", signed=True)
    if _u16(blob, vtable) <= 8 or _u16(blob, vtable + 8) == 0:
        raise RuntimeError("the schema message has no header")
    field = table + _u16(blob, vtable + 8)
    schema_at = 40 + field + _u32(blob, field)
    dicts_at = 40 + len(blob)                       # 8-aligned; its count at +4
    batches_at = dicts_at + 8 + 24
    n = len(blocks)
    out = bytearray(batches_at + 8)
    struct.pack_into("<I6H", out, 0, 16, 12, 20, 4, 8, 12, 16)
    struct.pack_into("<ihxxIII", out, 16, 12, 4, schema_at - 24, dicts_at + 4 - 28,
                     batches_at + 4 - 32)
    out[40:40 + len(blob)] = blob
    struct.pack_into("<I", out, dicts_at + 4, 1)
    struct.pack_into("<qixxxxq", out, dicts_at + 8, *_DICTIONARY_BLOCK)
    struct.pack_into("<I", out, batches_at + 4, n)
    # each Block as three little-endian int64: offset, metaDataLength (+ 4 zero bytes of
    # padding: the int32 widened), bodyLength
    packed = np.empty((n, 3), "<i8")
    packed[:, 0] = np.frombuffer(blocks.offset, np.int64)
    packed[:, 1] = np.frombuffer(blocks.meta, np.int32)
    packed[:, 2] = np.frombuffer(blocks.body, np.int64)
    return bytes(out), packed


class _Blocks:
    """Where each record batch of a file lies, for its footer: three typed arrays (an append
    is ~50 ns, and the footer packs them without a Python loop)."""

    def __init__(self):
        self.offset = array.array("q")
        self.meta = array.array("i")
        self.body = array.array("q")

    def append(self, offset: int, meta: int, body: int) -> None:
        self.offset.append(offset)
        self.meta.append(meta)
        self.body.append(body)

    def extend(self, offsets, meta: int, bodies) -> None:
        """Many blocks with one metadata length (int64 arrays of offsets and body lengths)."""
        self.offset.frombytes(np.ascontiguousarray(offsets, np.int64).tobytes())
        self.meta.frombytes(np.full(len(offsets), meta, np.int32).tobytes())
        self.body.frombytes(np.ascontiguousarray(bodies, np.int64).tobytes())

    def __len__(self) -> int:
        return len(self.offset)


_WRITEBACK_S = 0.05
_WRITEBACK_BYTES = 1 << 20
_PAGE = 4096        # writeback stops at a page boundary: the page being appended to stays out
_SYNC_FILE_RANGE_WRITE = 2


def _libc_sync_file_range():
    """Linux's sync_file_range(2) through ctypes (the os module has no binding); None where
    there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _libc_sync_file_range()


def _write_all(fd: int, data) -> None:
    """All of `data` (any C-contiguous buffer) to `fd`, however many write(2) it takes."""
    view = memoryview(data)
    if not view.nbytes:                 # (an empty numpy array's view cannot be cast)
        return
    view = view.cast("B")
    while view:
        view = view[os.write(fd, view):]


class _IpcFile:
    """One audit file being written: the descriptor, the write position and the Block of every
    record batch, for the footer. Each message goes to the OS in one write(2)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(self.fd, _PRELUDE)
        except BaseException:
            os.close(self.fd)
            raise
        self.pos = len(_PRELUDE)
        self.writeback_from = 0                 # the writer's thread: start writeback here
        self.blocks = _Blocks()

    def fileno(self) -> int:
        return self.fd

    def tell(self) -> int:
        return self.pos

    def write_encoded(self, encoder: _audit.DecisionEncoder) -> None:
        """The message last encoded by `encoder`."""
        length = encoder.write(self.fd)
        self.blocks.append(self.pos, _audit.META_LENGTH, length - _audit.META_LENGTH)
        self.pos += length

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """A record batch built by pyarrow (its dictionary column holds indices only)."""
        message = batch.serialize()
        meta = 8 + _u32(message, 4)
        _write_all(self.fd, message)
        self.blocks.append(self.pos, meta, message.size - meta)
        self.pos += message.size

    def finish(self) -> None:
        """End of stream, footer, footer length, magic: the file is complete."""
        head, packed = _footer(self.blocks)
        size = len(head) + packed.nbytes
        _write_all(self.fd, _EOS + head)
        _write_all(self.fd, packed)
        _write_all(self.fd, struct.pack("<i", size) + _IPC_MAGIC)
        self.pos += len(_EOS) + size + 4 + len(_IPC_MAGIC)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


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


def _close_quietly(*files) -> None:
    """Close after a failure, best effort."""
    for f in files:
        try:
            if f is not None:
                f.close()
        except Exception:
            pass


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
    fsync_interval_s: at most this many seconds of written rows are not yet fsynced. 0 = fsync
        after every batch, inside `write_decisions`; > 0 = a thread of the writer fsyncs the
        file every interval when rows were written since the last fsync, and seals rotated
        files (footer, fsync, rename), so writes never wait for the disk; None = never fsync
        (the OS decides).
    clock: ns since the epoch; the default decision time, and `maybe_fsync`'s timer.

    Rotation and partition follow the decision time (`now_ns` of each write), so every row of
    `date=D/` has a `ts` on the UTC date D. One writer per directory (an flock on
    `_writer.lock` enforces it). Methods may be called from several threads (a lock
    serialises them). With fsync_interval_s > 0 only the writer's thread, `fsync`,
    `maybe_fsync` and `close` fsync, and none of them holds the lock meanwhile except `close`.
    Call `close()` (or use `with`): it stops the thread and seals the current file. A failure
    of the thread (an fsync or a seal) is logged and raised by the next write or `close`.
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
        self._file: _IpcFile | None = None            # the file being written
        self._encoder = _audit.DecisionEncoder()      # decision batches, used under the lock
        self._plan_version_bytes: tuple[str | None, bytes] = (None, b"")
        self._part: Path | None = None
        self._final: Path | None = None
        self._file_start_ns = 0
        self._day_start_ns = 0
        self._dirty = False                   # rows written to the current file, not fsynced
        self._lent: _IpcFile | None = None    # the file `lend` handed out, until `settle`
        self._last_fsync_ns = clock()
        self._closed = False
        self._destination_cache: tuple[object, _Destinations | None] = (None, None)
        self._plan_version = _Repeat(pa.string())
        self._null_binary = _Repeat(pa.binary())
        self._null_string = _Repeat(pa.string())
        # files sealed by this writer, in order (a rotated file is listed when it is handed to
        # the thread, and sealed by the time close() returns)
        self.files: list[Path] = []
        self.rows_written = 0
        self.batches_written = 0
        self.fsyncs = 0
        # the background thread (fsync_interval_s > 0) and what it has to do
        self._seals: list[_Seal] = []         # rotated files to seal, in order
        self._dirs: list[Path] = []           # directories whose new entries need an fsync
        self._error: BaseException | None = None   # its failure, raised by the next call
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if self.fsync_interval_ns:
            self._thread = threading.Thread(target=self._run, name="audit-fsync", daemon=True)
            self._thread.start()

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
        if latency_ns is None and _is_scalar(now_ns) and _is_scalar(decision_seq):
            # the engine's case: one decision time, consecutive decision numbers
            if self._write_encoded(events, seq, decisions, int(decision_seq),
                                   destination_names, plan_version, int(now_ns)):
                return n
        batch, first_seq, first_ns = self._decision_batch(
            events, seq, decisions, decision_seq, destination_names, plan_version, now_ns,
            latency_ns)
        self._write(batch.num_rows, first_seq, first_ns, batch)
        return n

    def _write_encoded(self, events: EventBatch, seq, decisions: Decisions, first_seq: int,
                       destination_names, plan_version: str, now_ns: int) -> bool:
        """Encode with the compiled encoder and write; False (nothing written) when it
        declines the batch (reads that are not UTF-8), for the pyarrow path."""
        n = len(events)
        if _is_scalar(seq):
            seq = np.full(n, seq, np.uint64)
        version, encoded = self._plan_version_bytes
        if plan_version != version:
            encoded = b"" if plan_version is None else plan_version.encode("utf-8")
            self._plan_version_bytes = (plan_version, encoded)
        destinations = self._destinations(destination_names)
        columns = [events.scanner_ids, events.parcel_ids, seq, events.event_offsets,
                   events.read_offsets, events.data, decisions.chute, decisions.reason,
                   decisions.destination, events.ts_ns, events.recirculations]
        with self._lock:
            try:
                length = self._encode(now_ns, first_seq, columns, destinations, encoded)
            except TypeError:
                # a column of another dtype, not contiguous or not an ndarray: convert once
                # (ValueError: shape and range checks, raised again by the second call)
                columns = [np.ascontiguousarray(c, t) for c, t in zip(columns, _ENCODER_DTYPES)]
                length = self._encode(now_ns, first_seq, columns, destinations, encoded)
            if length < 0:
                return False
            self._write(n, first_seq, now_ns, self._encoder)
        return True

    def write_message(self, encoder: _audit.DecisionEncoder, rows: int, first_seq: int,
                      now_ns: int) -> None:
        """Write the message `encoder` encoded last (`rows` decisions numbered from
        `first_seq`, decided at `now_ns`): for compiled callers that encode themselves
        (`sorter.engine._turn.EngineTurn`). Same guarantees as `write_decisions`."""
        self._write(rows, first_seq, now_ns, encoder)

    def lend(self, now_ns: int, first_seq: int, *, open_file: bool) -> tuple:
        """The current file, lent to a compiled writer (`sorter.engine._scanloop.ScanLoop`) that writes
        whole messages of `_audit.DecisionEncoder` itself: (fd, position, position limit,
        time limit in ns, fsync after each message). Seals the file if its time is up (by
        now_ns); with open_file, opens one when there is none (else fd is -1). The borrower
        hands back what it wrote with `settle` before anything else writes here.

        Why: a write of ~100 bytes through this class costs ~4 us of Python bookkeeping,
        as much as the write(2) itself; lent, the bookkeeping is done once per `settle`."""
        with self._lock:
            self._lent = file = self._file_for(now_ns, first_seq, open_file=open_file)
            if file is None:
                return -1, 0, 0, 0, False
            until = self._day_start_ns + _DAY_NS
            if self.rotate_ns is not None:
                until = min(until, self._file_start_ns + self.rotate_ns)
            limit = self.rotate_bytes if self.rotate_bytes is not None else 1 << 62
            return file.fd, file.pos, limit, until, self.fsync_interval_ns == 0

    def settle(self, pos: int, blocks, rows: int, fsyncs: int, *, failed: bool = False) -> None:
        """What the borrower of `lend` wrote: its new position, (offset, body length) of
        each message (an int64 array of shape (k, 2)), the rows in them and the fsyncs it
        did (fsync after each message). Seals the file if it is full. failed: a write or
        an fsync failed, the file is abandoned (as `write_decisions` does)."""
        with self._lock:
            file, self._lent = self._lent, None
            if len(blocks):
                if file is None or file is not self._file:
                    raise RuntimeError("settle without the file lent")
                file.blocks.extend(blocks[:, 0], _audit.META_LENGTH, blocks[:, 1])
                file.pos = int(pos)
                self.rows_written += int(rows)
                self.batches_written += len(blocks)
                self.fsyncs += int(fsyncs)
                if fsyncs:
                    self._dirty = False
                    self._last_fsync_ns = self.clock()
                else:
                    self._dirty = True
            if file is None or file is not self._file:
                return
            if failed:
                self._abandon()
            elif self.rotate_bytes is not None and file.tell() >= self.rotate_bytes:
                self._seal()

    def _encode(self, now_ns: int, first_seq: int, columns, destinations, plan_version: bytes):
        sc, pid, seq, eo, ro, data, chute, reason, dest, ts, rc = columns
        return self._encoder.encode(
            now_ns, sc, pid, seq, first_seq, eo, ro, data, chute, reason, dest,
            destinations.offsets, destinations.data, plan_version, ts, rc, len(REASONS))

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
        self._write(1, int(decision_seq), int(now_ns), batch)

    def flush(self) -> None:
        """Push written bytes to the OS. Every write already hands its batch to the OS (one
        write(2)) before it returns, so there is nothing to push; durability is `fsync`'s
        job. Kept for callers written against buffered writers."""

    def maybe_fsync(self) -> bool:
        """fsync if there are unsynced rows and the last fsync is older than the interval (by
        `clock`); returns whether it synced. The writer's thread already does this (interval >
        0); this is for callers that want it now. The lock is not held while the disk syncs."""
        return self._sync_current(due_only=True)

    def fsync(self) -> None:
        """fsync the current file now, if rows were written since the last fsync (a no-op
        with fsync_interval_s=None or no file).

        Safe from any thread: the descriptor is duplicated under the lock, the sync itself
        runs outside it, so writes are not held up by a slow disk."""
        self._sync_current(due_only=False)

    def tick(self, now_ns=None) -> None:
        """Timer hook: seal the current file if its time is up (a quiet line gets no write
        that would do it). fsyncs are the writer's thread's job (fsync_interval_s > 0)."""
        with self._lock:
            if self._file is not None:
                now = self.clock() if now_ns is None else int(now_ns)
                if self._rotation_due(now):
                    self._seal()

    def close(self) -> None:
        """Stop the writer's thread (after it has sealed the files it was given), seal the
        current file (footer, fsync unless the policy is None, rename) and release the
        directory. Raises a failure of the thread not raised yet. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True                # writes are refused from now on
            self._stopping = True
        try:
            if self._thread is not None:
                self._wake.set()
                self._thread.join()
            with self._lock:
                self._seal_now()
        finally:
            os.close(self._lock_fd)
        self._raise_deferred()

    def __enter__(self) -> "AuditWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- building batches ------------------------------------------------------------------

    def _decision_batch(self, events: EventBatch, seq, decisions: Decisions, decision_seq,
                        destination_names, plan_version, now_ns, latency_ns):
        """(record batch, first decision_seq, first decision time) of one `write_decisions`;
        raises on invalid input."""
        n = len(events)
        if now_ns is None:
            now_ns = self.clock()
        if _is_scalar(now_ns):
            ts = np.full(n, now_ns, np.int64)
            first_ns = int(now_ns)
        else:
            now_ns = ts = _vector(now_ns, n, np.int64, "now_ns")
            first_ns = int(ts[0])
        if _is_scalar(decision_seq):
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
        top = _top(reason)
        if top >= len(REASONS):
            raise ValueError(f"reason code {top} is not in codes.REASONS")
        destination = self._destinations(destination_names).column(
            _vector(decisions.destination, n, np.int32, "destination"))
        columns = [
            _fixed(TS_TYPE, ts),
            _fixed(_U16, _vector(events.scanner_ids, n, np.uint16, "scanner_ids")),
            _fixed(_U64, _vector(events.parcel_ids, n, np.uint64, "parcel_ids")),
            _fixed(_U64, _scalar_or_vector(seq, n, np.uint64, "seq")),
            _fixed(_U64, dseq),
            reads_array(events),
            _fixed(_U16, _vector(decisions.chute, n, np.uint16, "chute")),
            # the codes were checked above: uint8 and int8 have the same bytes below 128
            pa.DictionaryArray.from_buffers(REASON_TYPE, n, [None, pa.py_buffer(reason)],
                                            REASON_DICTIONARY),
            destination,
            self._plan_version.get(plan_version, n),
            _fixed(_I64, latency),
            _fixed(_U8, _vector(events.recirculations, n, np.uint8, "recirculations")),
            self._null_binary.get(None, n),
            self._null_string.get(None, n),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=AUDIT_SCHEMA), first_seq, first_ns

    def _destinations(self, names) -> _Destinations:
        cached_names, destinations = self._destination_cache
        if names is not cached_names or destinations is None:
            destinations = _Destinations(names)
            self._destination_cache = (names, destinations)    # keeps `names` alive
        return destinations

    # -- files ------------------------------------------------------------------------------

    def _rotation_due(self, now_ns: int) -> bool:
        if not (self._day_start_ns <= now_ns < self._day_start_ns + _DAY_NS):
            return True
        return self.rotate_ns is not None and now_ns - self._file_start_ns >= self.rotate_ns

    def _file_for(self, now_ns: int, first_seq: int, *, open_file: bool) -> _IpcFile | None:
        """The file rows decided at now_ns go to (under the lock): raises a deferred failure
        of the thread, seals the current file if its time is up, opens one if there is none
        and open_file (named after first_seq)."""
        if self._closed:
            raise ValueError("write to a closed AuditWriter")
        if self._error is not None:
            self._raise_deferred()
        if self._file is not None and self._rotation_due(now_ns):
            self._seal()
        if self._file is None and open_file:
            self._open(first_seq, now_ns)
        return self._file

    def _write(self, rows: int, first_seq: int, now_ns: int,
               batch: pa.RecordBatch | _audit.DecisionEncoder) -> None:
        """Write a record batch, or the message an encoder encoded last."""
        with self._lock:
            self._file_for(now_ns, first_seq, open_file=True)
            try:
                if isinstance(batch, pa.RecordBatch):
                    self._file.write_batch(batch)
                else:
                    self._file.write_encoded(batch)
            except BaseException:
                self._abandon()
                raise
            self._dirty = True
            self.rows_written += rows
            self.batches_written += 1
            if self.fsync_interval_ns == 0:    # the strongest policy: synced before returning
                os.fsync(self._file.fileno())
                self.fsyncs += 1
                self._dirty = False
                self._last_fsync_ns = self.clock()
            if self.rotate_bytes is not None and self._file.tell() >= self.rotate_bytes:
                self._seal()

    def _open(self, first_seq: int, now_ns: int) -> None:
        date, hhmmss = _utc_parts(now_ns)
        part_dir = self.directory / f"date={date}"
        created = not part_dir.exists()
        part_dir.mkdir(parents=True, exist_ok=True)
        base = f"decisions-{hhmmss}-{first_seq}"
        name, k = base, 0
        while ((part_dir / f"{name}.arrow").exists()
               or (part_dir / f"_{name}.arrow{_PART_SUFFIX}").exists()
               or any(s.final == part_dir / f"{name}.arrow" for s in self._seals)):
            k += 1
            name = f"{base}-{k}"
        self._final = part_dir / f"{name}.arrow"
        self._part = part_dir / f"_{name}.arrow{_PART_SUFFIX}"
        self._file = _IpcFile(self._part)
        self._file_start_ns = now_ns
        self._day_start_ns = now_ns - now_ns % _DAY_NS
        self._dirty = False
        # make the new names survive a power loss: now, or by the thread before it fsyncs
        # the file's rows
        dirs = [part_dir, self.directory] if created else [part_dir]
        if self._thread is not None:
            self._dirs.extend(dirs)
        elif self.fsync_interval_ns is not None:
            for d in dirs:
                _fsync_dir(d)

    def _seal(self) -> None:
        """Seal the current file: handed to the thread (interval > 0; the next write opens a
        new file meanwhile), else now."""
        if self._file is None:
            return
        if self._thread is None or self._stopping:
            self._seal_now()
            return
        self._seals.append(_Seal(self._file, self._part, self._final))
        self.files.append(self._final)
        self._file = self._part = self._final = None
        self._dirty = False
        self._wake.set()

    def _seal_now(self) -> None:
        """Footer, fsync (policy permitting), rename to the final name."""
        if self._file is None:
            return
        try:
            self._file.finish()
            if self.fsync_interval_ns is not None:
                os.fsync(self._file.fileno())
                self.fsyncs += 1
                self._last_fsync_ns = self.clock()
            self._file.close()
            os.replace(self._part, self._final)
            if self.fsync_interval_ns is not None:
                _fsync_dir(self._final.parent)
            self.files.append(self._final)
        except BaseException:
            self._abandon()
            raise
        self._file = self._part = self._final = None
        self._dirty = False

    def _abandon(self) -> None:
        """Drop a file after a failed write: it keeps its hidden name and `recover` salvages
        its complete batches; the next write starts a new file."""
        log.error("audit: abandoning %s after a failed write", self._part)
        _close_quietly(self._file)
        self._file = self._part = self._final = None
        self._dirty = False

    # -- fsync, and the writer's thread -----------------------------------------------------

    def _sync_current(self, *, due_only: bool) -> bool:
        """fsync the directories of new files, then the current file if it has unsynced rows
        (and, with due_only, its last fsync is older than the interval by `clock`). The
        descriptor is duplicated under the lock and synced outside it: a rotation meanwhile
        closes the writer's descriptor, not this one. Returns whether the file was synced."""
        if self.fsync_interval_ns is None:
            return False
        with self._lock:
            dirs, self._dirs = self._dirs, []
            fd = None
            if self._file is not None and self._dirty and not (
                    due_only and self.clock() - self._last_fsync_ns < self.fsync_interval_ns):
                fd = os.dup(self._file.fileno())
                self._dirty = False
                self._last_fsync_ns = self.clock()
        try:
            for d in dirs:
                _fsync_dir(d)
            if fd is not None:
                os.fsync(fd)
        except BaseException:
            with self._lock:                   # try again next time
                self._dirs[:0] = dirs
                self._dirty = self._dirty or fd is not None
            raise
        finally:
            if fd is not None:
                os.close(fd)
        if fd is None:
            return False
        with self._lock:
            self.fsyncs += 1
        return True

    def _finish_seals(self) -> None:
        """Seal the files rotation handed over, in order: footer, fsync, rename, fsync of the
        directory. A crash half way leaves the hidden `.part` name, for `recover`."""
        while True:
            with self._lock:
                if not self._seals:
                    return
                seal = self._seals[0]
            renamed = False
            try:
                seal.file.finish()
                os.fsync(seal.file.fileno())
                seal.file.close()
                os.replace(seal.part, seal.final)
                renamed = True
                _fsync_dir(seal.final.parent)
            except BaseException as e:
                log.error("audit: sealing %s failed: %s", seal.part, e)
                _close_quietly(seal.file)
                with self._lock:
                    self._seals.pop(0)
                    if not renamed:            # it stays hidden, for recover()
                        self.files.remove(seal.final)
                    self._error = self._error or e
                continue
            with self._lock:
                self._seals.pop(0)
                self.fsyncs += 1

    def _run(self) -> None:
        """The writer's thread: every fsync_interval_s (or at once when woken by a rotation
        or `close`), seal the rotated files, then fsync the current file if rows were written
        since the last fsync. On close, it seals and syncs directories only: `close` seals the
        current file itself.

        Between fsyncs it starts the writeback of what was written (every _WRITEBACK_S, once
        _WRITEBACK_BYTES have piled up; Linux `sync_file_range`, asynchronous): an fsync over a
        second of a busy line's rows (tens of MB) stalled the engine's writes for tens of ms on
        ext4, while the kernel allocated and wrote them all at once."""
        interval_s = min(self.fsync_interval_ns / _NS, threading.TIMEOUT_MAX)
        step_s = min(interval_s, _WRITEBACK_S) if _sync_file_range else interval_s
        next_sync = time.monotonic() + interval_s
        while True:
            woken = self._wake.wait(max(0.0, min(step_s, next_sync - time.monotonic())))
            self._wake.clear()
            stopping = self._stopping
            self._finish_seals()
            if not woken and not stopping and time.monotonic() < next_sync:
                self._start_writeback()
                continue
            next_sync = time.monotonic() + interval_s
            try:
                if stopping:
                    with self._lock:
                        dirs, self._dirs = self._dirs, []
                    for d in dirs:
                        _fsync_dir(d)
                else:
                    self._sync_current(due_only=False)
            except BaseException as e:         # raised by the writer's next call
                log.error("audit: fsync of %s failed: %s", self._part, e)
                with self._lock:
                    self._error = self._error or e
            if stopping:
                return

    def _start_writeback(self) -> None:
        """Ask the kernel to start writing the current file's new bytes (no wait, no
        durability promise: the fsync still comes at its time)."""
        with self._lock:
            file = self._file
            end = -1 if file is None else file.tell() & ~(_PAGE - 1)
            if (file is None or _sync_file_range is None
                    or end - file.writeback_from < _WRITEBACK_BYTES):
                return
            start = file.writeback_from
            fd = os.dup(file.fileno())
            file.writeback_from = end
        try:
            _sync_file_range(fd, start, end - start, _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)

    def _raise_deferred(self) -> None:
        """Raise (once) a failure of the writer's thread: an fsync or a seal that failed."""
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error


@dataclass
class _Seal:
    """A rotated file waiting for the writer's thread: its footer, fsync and rename."""
    file: _IpcFile
    part: Path
    final: Path


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
