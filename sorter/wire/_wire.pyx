# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled half of the wire protocol (docs/protocol.md): validate and parse whole messages
into numpy columns, and encode columns into messages.

This module faces the network. Every parser takes a pointer and the exact length of the frame
and checks every length it reads against the bytes that remain *before* touching them: no input,
however short, long or hostile, reads outside the frame or writes outside the arrays it
allocated. Parsers run without the GIL over raw pointers; they never raise, they return an error
code and the byte offset of the offending field, and the `def` wrappers raise `WireError`.

Loads and stores assemble little-endian values byte by byte (no unaligned access, any host byte
order); the compiler turns them into plain moves on x86 and ARM.

`sorter.wire` is the documented API; call these functions through it.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, \
    PyBytes_CheckExact
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.pyport cimport PY_SSIZE_T_MAX

from sorter._shared cimport as_column, column_ptr, is_column, new_column

from sorter.core.codes import REASONS as _REASONS, CHUTE_STATES as _CHUTE_STATES

cnp.import_array()



# Stable names of the error codes above (index = code); sorter.wire.ERROR_CODES repeats them.
ERROR_NAMES = (None, "bad_magic", "unknown_version", "unknown_kind", "truncated", "oversized",
               "too_many_records", "length_mismatch", "unexpected_kind", "bad_record",
               "too_many_reads", "read_too_long")

cdef int N_REASONS = len(_REASONS)
cdef int N_CHUTE_STATES = len(_CHUTE_STATES)
cdef uint8_t EMPTY[1]                    # a valid base pointer for empty buffers


class WireError(ValueError):
    """A message that is not a valid wire message (or columns that cannot be encoded as one).

    `code` is a short stable name (`sorter.wire.ERROR_CODES`), `offset` the byte offset in the
    message of the field found wrong (None when encoding). The message is rejected whole.
    """

    def __init__(self, code, offset=None, detail=""):
        self.code = code
        self.offset = offset
        self.detail = detail
        text = code if offset is None else f"{code} at byte {offset}"
        super().__init__(f"{text}: {detail}" if detail else text)

    def __reduce__(self):
        return (type(self), (self.code, self.offset, self.detail))


cdef inline object _fail(int code, Py_ssize_t offset, str detail=""):
    return WireError(ERROR_NAMES[code], offset, detail)


# ---------------------------------------------------------------------------------------------
# Columns: fresh arrays and raw pointers through the NumPy C API (sorter/_shared.pxd: no
# memoryview acquisition, no Python call per array: what a one-event message costs is mostly
# this bookkeeping).

cdef inline cnp.ndarray _as(object values, int typenum, str name):
    """values as a contiguous 1-d array of typenum, converted with range checks; a value that
    does not fit is a WireError `bad_record`, never wrapped."""
    if is_column(values, typenum, False):
        return <cnp.ndarray> values
    try:
        return as_column(values, typenum, name, True)
    except (ValueError, OverflowError) as e:
        raise WireError("bad_record", None, str(e)) from None


# ---------------------------------------------------------------------------------------------
# Little-endian loads and stores

cdef inline uint16_t ld16(const uint8_t* p) noexcept nogil:
    return <uint16_t>(<uint16_t>p[0] | (<uint16_t>p[1] << 8))

cdef inline uint32_t ld32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)

cdef inline uint64_t ld64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>ld32(p)) | ((<uint64_t>ld32(p + 4)) << 32)

cdef inline void st16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)

cdef inline void st32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)

cdef inline void st64(uint8_t* p, uint64_t v) noexcept nogil:
    st32(p, <uint32_t>v)
    st32(p + 4, <uint32_t>(v >> 32))


# ---------------------------------------------------------------------------------------------
# Header

cdef int check_prefix(const uint8_t* p, Py_ssize_t n, Header* h, Py_ssize_t* off) noexcept nogil:
    """Magic, version and kind on the bytes that exist, then the rest of the header: a short
    frame of garbage is `bad_magic`, a short frame that starts right is `truncated`."""
    if n >= 1 and p[0] != 0x50:
        off[0] = 0
        return E_BAD_MAGIC
    if n >= 2 and p[1] != 0x53:
        off[0] = 1
        return E_BAD_MAGIC
    if n >= 3 and p[2] != VERSION and not (p[2] == VERSION_DECIDED and n >= 4 and p[3] == K_DECISION):
        off[0] = 2                  # version 2 exists for DECISION only (protocol.md 6.1)
        return E_UNKNOWN_VERSION
    if n >= 4 and (p[3] < K_SCAN or p[3] > K_HEARTBEAT):
        off[0] = 3
        return E_UNKNOWN_KIND
    if n < HEADER_SIZE:
        off[0] = n
        return E_TRUNCATED
    h.version = p[2]
    h.kind = p[3]
    h.count = ld32(p + 4)
    h.body_len = ld32(p + 8)
    h.batch_seq = ld32(p + 12)
    return OK


cdef int check_header(const uint8_t* p, Py_ssize_t n, const Limits* lim, Header* h,
                      Py_ssize_t* off) noexcept nogil:
    """Validate the header and the frame length against it (docs/protocol.md, "Validation",
    checks 1-9)."""
    cdef int e = check_prefix(p, n, h, off)
    if e != OK:
        return e
    if n > lim.max_frame:
        off[0] = lim.max_frame
        return E_OVERSIZED
    if <Py_ssize_t>h.body_len > lim.max_frame - HEADER_SIZE:
        off[0] = 8
        return E_OVERSIZED
    if <Py_ssize_t>h.count > lim.max_records:
        off[0] = 4
        return E_TOO_MANY_RECORDS
    if n < HEADER_SIZE + <Py_ssize_t>h.body_len:
        off[0] = n
        return E_TRUNCATED
    if n > HEADER_SIZE + <Py_ssize_t>h.body_len:
        off[0] = HEADER_SIZE + <Py_ssize_t>h.body_len
        return E_LENGTH_MISMATCH
    return OK


cdef inline void put_header(uint8_t* q, uint8_t kind, uint32_t count, uint32_t body_len,
                            uint32_t batch_seq) noexcept nogil:
    q[0] = 0x50
    q[1] = 0x53
    q[2] = VERSION
    q[3] = kind
    st32(q + 4, count)
    st32(q + 8, body_len)
    st32(q + 12, batch_seq)


cdef inline const uint8_t* _ptr(const uint8_t[::1] buf) noexcept:
    """The first byte of buf, or a valid dummy address when buf is empty."""
    if buf.shape[0] > 0:
        return &buf[0]
    return EMPTY


cdef Limits _limits(Py_ssize_t max_frame, Py_ssize_t max_records, int max_reads, int max_read_len):
    cdef Limits lim
    lim.max_frame = max(HEADER_SIZE, min(max_frame, <Py_ssize_t>MAX_FRAME_CAP))
    lim.max_records = max(0, min(max_records, <Py_ssize_t>0xffffffff))
    lim.max_reads = max(0, min(max_reads, 255))
    lim.max_read_len = max(0, min(max_read_len, 65535))
    return lim


cdef tuple _header_tuple(const Header* h):
    return (h.version, h.kind, h.count, h.body_len, h.batch_seq)


cdef Header _open(const uint8_t[::1] buf, const Limits* lim, int expect) except *:
    """Check the header and frame length; with expect > 0, also that the kind is `expect`."""
    cdef Header h
    cdef Py_ssize_t off = 0
    cdef int e = check_header(_ptr(buf), buf.shape[0], lim, &h, &off)
    if e != OK:
        raise _fail(e, off)
    if expect > 0 and h.kind != expect:
        raise _fail(E_UNEXPECTED_KIND, 3, f"kind {h.kind}, expected {expect}")
    return h


def header(const uint8_t[::1] buf, Py_ssize_t max_frame, Py_ssize_t max_records, bint check_frame):
    """(version, kind, count, body_len, batch_seq). With check_frame false, only the header
    itself is checked (magic, version, kind, 16 bytes present): peeking without the body."""
    cdef Header h
    cdef Py_ssize_t off = 0
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef int e
    if check_frame:
        h = _open(buf, &lim, 0)
    else:
        e = check_prefix(_ptr(buf), buf.shape[0], &h, &off)
        if e != OK:
            raise _fail(e, off)
    return _header_tuple(&h)


cdef int check_heartbeat(const Header* h, Py_ssize_t* off) noexcept nogil:
    """The body check of a HEARTBEAT whose header passed check_header."""
    if h.count != 0:
        off[0] = 4
        return E_LENGTH_MISMATCH
    if h.body_len != 0:
        off[0] = 8
        return E_LENGTH_MISMATCH
    return OK


cdef object _body_fail(int e, Py_ssize_t off, const Header* h):
    """The WireError of check_heartbeat, check_scan_counts, parse_scan or check_header for a
    frame with header h (h.kind 0 when the header itself was bad): code, offset and detail."""
    cdef str detail = ""
    if e == E_LENGTH_MISMATCH and h.kind == K_HEARTBEAT and off == 4:
        detail = "a HEARTBEAT has count 0"
    elif e == E_LENGTH_MISMATCH and h.kind == K_HEARTBEAT and off == 8:
        detail = "a HEARTBEAT has no body"
    elif e == E_LENGTH_MISMATCH and h.kind == K_SCAN and off == 4:
        detail = (f"{h.count} SCAN records need at least {SCAN_FIXED * <Py_ssize_t>h.count} "
                  f"bytes, body_len is {h.body_len}")
    return _fail(e, off, detail)


def heartbeat(const uint8_t[::1] buf, Py_ssize_t max_frame, Py_ssize_t max_records):
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef Header h = _open(buf, &lim, K_HEARTBEAT)
    cdef Py_ssize_t off = 0
    cdef int e = check_heartbeat(&h, &off)
    if e != OK:
        raise _body_fail(e, off, &h)
    return _header_tuple(&h)


# ---------------------------------------------------------------------------------------------
# SCAN

cdef int check_scan_counts(const Header* h, Py_ssize_t* off) noexcept nogil:
    """The first body check of a SCAN whose header passed check_header: room for the fixed
    part of every record."""
    if SCAN_FIXED * <Py_ssize_t>h.count > <Py_ssize_t>h.body_len:
        off[0] = 4
        return E_LENGTH_MISMATCH
    return OK


cdef inline int parse_scan(const uint8_t* p, Py_ssize_t end, Py_ssize_t n, const Limits* lim,
                           bint fill, uint64_t* pid, uint64_t* seq, int64_t* ts, uint16_t* sc,
                           uint8_t* rc, int32_t* eo, int32_t* ro, Py_ssize_t ro_cap,
                           uint8_t* data, Py_ssize_t data_cap, int32_t eo_base, int32_t ro_base,
                           Py_ssize_t* off, Py_ssize_t* n_reads,
                           Py_ssize_t* n_data) noexcept nogil:
    """Check n SCAN records from p[16:end] and, with `fill`, parse them into the columns, in
    one pass. Without `fill` the column pointers are not touched (they may be NULL): this is
    the validation and counting pass of decode_scans, the very same checks.

    Offsets are stored rebased: eo[0..n] = eo_base + reads so far, ro[0..reads] = ro_base +
    bytes so far (decode_scan passes 0, 0; decode_scans the position of the frame's reads and
    bytes in the combined columns).

    The caller checked end - 16 >= 28 * n. While parsing event i, the fixed parts of the events
    after it stay reserved (`limit`), so at every point 28 * n + 2 * reads + bytes <= body_len:
    `ro` needs (body_len - 28 n) / 2 + 1 entries and `data` body_len - 28 n bytes. The capacity
    checks below restate the caller's bound (decode_scan: that one; decode_scans: the exact
    counts of its first pass) and fire only if the frame's bytes changed since it was sized.
    """
    cdef Py_ssize_t pos = HEADER_SIZE, limit, i, k, nr = 0, nd = 0
    cdef Py_ssize_t m, length
    if fill:
        eo[0] = eo_base
        ro[0] = ro_base
    for i in range(n):
        limit = end - SCAN_FIXED * (n - 1 - i)
        if limit - pos < SCAN_FIXED:
            off[0] = pos
            return E_LENGTH_MISMATCH
        if fill:
            pid[i] = ld64(p + pos)
            seq[i] = ld64(p + pos + 8)
            ts[i] = <int64_t>ld64(p + pos + 16)
            sc[i] = ld16(p + pos + 24)
            rc[i] = p[pos + 26]
        m = p[pos + 27]
        if m > lim.max_reads:
            off[0] = pos + 27
            return E_TOO_MANY_READS
        pos += SCAN_FIXED
        for k in range(m):
            if limit - pos < 2:
                off[0] = pos
                return E_LENGTH_MISMATCH
            length = ld16(p + pos)
            if length > lim.max_read_len:
                off[0] = pos
                return E_READ_TOO_LONG
            pos += 2
            if limit - pos < length or nr + 1 >= ro_cap or data_cap - nd < length:
                off[0] = pos - 2
                return E_LENGTH_MISMATCH
            if fill and length:
                memcpy(data + nd, p + pos, <size_t>length)
            pos += length
            nd += length
            nr += 1
            if fill:
                ro[nr] = ro_base + <int32_t>nd
        if fill:
            eo[i + 1] = eo_base + <int32_t>nr
    if pos != end:
        off[0] = pos
        return E_LENGTH_MISMATCH
    n_reads[0] = nr
    n_data[0] = nd
    return OK


def decode_scan(const uint8_t[::1] buf, Py_ssize_t max_frame, Py_ssize_t max_records,
                int max_reads, int max_read_len):
    """-> (header tuple, parcel_ids, seq, ts_ns, scanner_ids, recirculations, event_offsets,
    read_offsets, data): fresh arrays (the last two are views of fresh arrays, trimmed)."""
    cdef Limits lim = _limits(max_frame, max_records, max_reads, max_read_len)
    cdef Header h = _open(buf, &lim, K_SCAN)
    cdef Py_ssize_t n = h.count, body = h.body_len, off = 0, nr = 0, nd = 0, spare
    cdef int e = check_scan_counts(&h, &off)
    if e != OK:
        raise _body_fail(e, off, &h)
    spare = body - SCAN_FIXED * n
    cdef cnp.ndarray pid = new_column(n, cnp.NPY_UINT64), seq = new_column(n, cnp.NPY_UINT64)
    cdef cnp.ndarray ts = new_column(n, cnp.NPY_INT64), sc = new_column(n, cnp.NPY_UINT16)
    cdef cnp.ndarray rc = new_column(n, cnp.NPY_UINT8), eo = new_column(n + 1, cnp.NPY_INT32)
    cdef cnp.ndarray ro = new_column(spare // 2 + 1, cnp.NPY_INT32), data = new_column(spare, cnp.NPY_UINT8)
    cdef const uint8_t* p = _ptr(buf)
    cdef uint64_t* ppid = <uint64_t*>column_ptr(pid)
    cdef uint64_t* pseq = <uint64_t*>column_ptr(seq)
    cdef int64_t* pts = <int64_t*>column_ptr(ts)
    cdef uint16_t* psc = <uint16_t*>column_ptr(sc)
    cdef uint8_t* prc = <uint8_t*>column_ptr(rc)
    cdef int32_t* peo = <int32_t*>column_ptr(eo)
    cdef int32_t* pro = <int32_t*>column_ptr(ro)
    cdef uint8_t* pdata = <uint8_t*>column_ptr(data)
    with nogil:
        e = parse_scan(p, HEADER_SIZE + body, n, &lim, True, ppid, pseq, pts, psc, prc, peo,
                       pro, spare // 2 + 1, pdata, spare, 0, 0, &off, &nr, &nd)
    if e != OK:
        raise _fail(e, off)
    if nr + 1 < spare // 2 + 1:
        ro = ro[:nr + 1]
    if nd < spare:
        data = data[:nd]
    return (_header_tuple(&h), pid, seq, ts, sc, rc, eo, ro, data)


# ---------------------------------------------------------------------------------------------
# Many SCAN frames at once: what a receiver drains from its socket, decoded into one batch

cdef int check_scan_socket(const uint8_t* p, Py_ssize_t size, const Limits* lim, Header* h,
                           Py_ssize_t* off) noexcept nogil:
    """Checks 1-10 of a frame received where SCAN and HEARTBEAT are expected, then the kind's
    body checks that need only the header (SCAN: room for the fixed parts; HEARTBEAT: all)."""
    h.kind = 0
    cdef int e = check_header(p, size, lim, h, off)
    if e != OK:
        return e
    if h.kind == K_SCAN:
        return check_scan_counts(h, off)
    if h.kind == K_HEARTBEAT:
        return check_heartbeat(h, off)
    off[0] = 3
    return E_UNEXPECTED_KIND


cdef void scans_count(Frame* fs, Py_ssize_t n_frames, const Limits* lim, Py_ssize_t* n_events,
                      Py_ssize_t* n_reads, Py_ssize_t* n_data) noexcept nogil:
    """First pass: validate every frame completely and count what the valid SCANs hold."""
    cdef Py_ssize_t i, ne = 0, nr = 0, nd = 0
    cdef Frame* f
    for i in range(n_frames):
        f = &fs[i]
        f.err = check_scan_socket(f.p, f.size, lim, &f.h, &f.off)
        if f.err != OK or f.h.kind != K_SCAN:
            continue
        f.err = parse_scan(f.p, HEADER_SIZE + <Py_ssize_t>f.h.body_len, f.h.count, lim, False,
                           NULL, NULL, NULL, NULL, NULL, NULL, NULL, PY_SSIZE_T_MAX, NULL,
                           PY_SSIZE_T_MAX, 0, 0, &f.off, &f.n_reads, &f.n_data)
        if f.err == OK:
            ne += f.h.count
            nr += f.n_reads
            nd += f.n_data
    n_events[0] = ne
    n_reads[0] = nr
    n_data[0] = nd


cdef void scans_fill(Frame* fs, Py_ssize_t n_frames, const Limits* lim, uint64_t* pid,
                     uint64_t* seq, int64_t* ts, uint16_t* sc, uint8_t* rc, int32_t* eo,
                     int32_t* ro, uint8_t* data, int32_t* counts, uint8_t* kinds,
                     Py_ssize_t* n_events, Py_ssize_t* n_reads, Py_ssize_t* n_data) noexcept nogil:
    """Second pass: parse the valid SCANs into the columns, sized by the first pass.

    Each frame gets exactly the room the first pass counted for it, and its event count is the
    one the first pass read: if its bytes changed in between (another thread writing into a
    bytearray), it fails here alone, is marked bad and takes no room (the totals come back
    smaller and the caller trims the columns)."""
    cdef Py_ssize_t i, n, ne = 0, nr = 0, nd = 0, fr = 0, fd = 0
    cdef Frame* f
    eo[0] = 0
    ro[0] = 0
    for i in range(n_frames):
        f = &fs[i]
        kinds[i] = f.h.kind
        counts[i] = 0
        if f.err != OK or f.h.kind != K_SCAN:
            continue
        n = f.h.count
        f.err = parse_scan(f.p, HEADER_SIZE + <Py_ssize_t>f.h.body_len, n, lim, True,
                           pid + ne, seq + ne, ts + ne, sc + ne, rc + ne, eo + ne, ro + nr,
                           f.n_reads + 1, data + nd, f.n_data, <int32_t>nr, <int32_t>nd,
                           &f.off, &fr, &fd)
        if f.err != OK:
            continue                 # what it wrote past eo[ne], ro[nr] is overwritten or trimmed
        counts[i] = <int32_t>n
        ne += n
        nr += fr
        nd += fd
    n_events[0] = ne
    n_reads[0] = nr
    n_data[0] = nd


def decode_scans(frames, Py_ssize_t max_frame, Py_ssize_t max_records, int max_reads,
                 int max_read_len):
    """Decode every frame of `frames` (a sequence of buffers) received where SCAN and HEARTBEAT
    are expected, into one combined batch.

    -> (parcel_ids, seq, ts_ns, scanner_ids, recirculations, event_offsets, read_offsets, data,
    counts, kinds, errors): the columns hold the events of the valid SCAN frames in frame
    order; counts (int32) and kinds (uint8, 0 = bad header) have one entry per frame; errors
    is a list of (frame index, WireError) in frame order, for every frame that decode_scan
    (SCAN, other kinds: unexpected_kind) or heartbeat (HEARTBEAT) would reject, with the same
    code, offset and detail.

    Three loops: take a pointer to every frame's bytes (with the GIL: bytes directly, anything
    else through the buffer protocol), then validate and count, then fill columns allocated to
    the exact size. The last two release the GIL when the frames are large enough for it to pay.
    Raises TypeError / BufferError for an item that is not a contiguous buffer, and
    OverflowError when the valid frames together hold more than 2**31 - 1 reads or read bytes
    (int32 offsets); nothing is decoded then.
    """
    cdef Limits lim = _limits(max_frame, max_records, max_reads, max_read_len)
    cdef tuple items = tuple(frames)      # holds every frame for the call, whatever the list does
    cdef Py_ssize_t n_frames = len(items), i
    cdef Frame* fs = <Frame*>PyMem_Malloc(max(n_frames, 1) * sizeof(Frame))
    cdef Py_buffer* views = NULL
    cdef Frame* f
    cdef object item
    if fs == NULL:
        raise MemoryError()
    memset(fs, 0, max(n_frames, 1) * sizeof(Frame))
    try:
        for i in range(n_frames):
            item = items[i]
            f = &fs[i]
            if PyBytes_CheckExact(item):
                f.p = <const uint8_t*>PyBytes_AS_STRING(item)
                f.size = PyBytes_GET_SIZE(item)
            else:
                if views == NULL:
                    views = <Py_buffer*>PyMem_Malloc(n_frames * sizeof(Py_buffer))
                    if views == NULL:
                        raise MemoryError()
                try:
                    PyObject_GetBuffer(item, &views[i], PyBUF_SIMPLE)
                except (TypeError, BufferError) as e:
                    raise type(e)(f"frame {i}: {e}") from None
                f.view = True
                f.p = <const uint8_t*>views[i].buf
                f.size = views[i].len
            if f.size == 0:
                f.p = EMPTY
        return _decode_frames(fs, n_frames, &lim)
    finally:
        if views != NULL:
            for i in range(n_frames):
                if fs[i].view:
                    PyBuffer_Release(&views[i])
            PyMem_Free(views)
        PyMem_Free(fs)


def decode_scans_in(const uint8_t[::1] buf, offsets_, lengths_, Py_ssize_t max_frame,
                    Py_ssize_t max_records, int max_reads, int max_read_len):
    """`decode_scans` of frames that lie in one buffer (a journal segment): frame i is
    buf[offsets[i]:offsets[i] + lengths[i]] (int64 columns). No object per frame. Raises
    ValueError for a frame outside the buffer."""
    cdef cnp.ndarray offsets = _as(offsets_, cnp.NPY_INT64, "offsets")
    cdef cnp.ndarray lengths = _as(lengths_, cnp.NPY_INT64, "lengths")
    cdef Py_ssize_t n_frames = cnp.PyArray_SIZE(offsets), i
    if cnp.PyArray_SIZE(lengths) != n_frames:
        raise ValueError("offsets and lengths differ in length")
    cdef const int64_t* po = <const int64_t*>column_ptr(offsets)
    cdef const int64_t* pl = <const int64_t*>column_ptr(lengths)
    cdef Limits lim = _limits(max_frame, max_records, max_reads, max_read_len)
    cdef Frame* fs = <Frame*>PyMem_Malloc(max(n_frames, 1) * sizeof(Frame))
    if fs == NULL:
        raise MemoryError()
    memset(fs, 0, max(n_frames, 1) * sizeof(Frame))
    try:
        for i in range(n_frames):
            if po[i] < 0 or pl[i] < 0 or po[i] > buf.shape[0] - pl[i]:
                raise ValueError(f"frame {i} ({po[i]}, {pl[i]} bytes) is outside the buffer")
            fs[i].p = _ptr(buf) + po[i] if pl[i] else EMPTY
            fs[i].size = pl[i]
        return _decode_frames(fs, n_frames, &lim)
    finally:
        PyMem_Free(fs)


cdef tuple _decode_frames(Frame* fs, Py_ssize_t n_frames, const Limits* lim):
    """decode_scans' last two loops: validate and count, then fill columns of the exact size;
    the GIL is released when the frames are large enough for it to pay."""
    cdef Py_ssize_t i, total = 0
    cdef Py_ssize_t ne = 0, nr = 0, nd = 0, fe = 0, fr = 0, fd = 0
    cdef Frame* f
    cdef cnp.ndarray pid, seq, ts, sc, rc, eo, ro, data, counts, kinds
    cdef uint64_t* ppid
    cdef uint64_t* pseq
    cdef int64_t* pts
    cdef uint16_t* psc
    cdef uint8_t* prc
    cdef int32_t* peo
    cdef int32_t* pro
    cdef uint8_t* pdata
    cdef int32_t* pcounts
    cdef uint8_t* pkinds
    for i in range(n_frames):
        total += fs[i].size
    if total >= NOGIL_BYTES:
        with nogil:
            scans_count(fs, n_frames, lim, &ne, &nr, &nd)
    else:
        scans_count(fs, n_frames, lim, &ne, &nr, &nd)
    if nr > MAX_OFFSET or nd > MAX_OFFSET:
        raise OverflowError(f"the frames hold {nr} reads of {nd} bytes in all, more than "
                            f"int32 offsets address: decode fewer frames per call")
    pid = new_column(ne, cnp.NPY_UINT64)
    seq = new_column(ne, cnp.NPY_UINT64)
    ts = new_column(ne, cnp.NPY_INT64)
    sc = new_column(ne, cnp.NPY_UINT16)
    rc = new_column(ne, cnp.NPY_UINT8)
    eo = new_column(ne + 1, cnp.NPY_INT32)
    ro = new_column(nr + 1, cnp.NPY_INT32)
    data = new_column(nd, cnp.NPY_UINT8)
    counts = new_column(n_frames, cnp.NPY_INT32)
    kinds = new_column(n_frames, cnp.NPY_UINT8)
    ppid, pseq, pts = <uint64_t*>column_ptr(pid), <uint64_t*>column_ptr(seq), <int64_t*>column_ptr(ts)
    psc, prc = <uint16_t*>column_ptr(sc), <uint8_t*>column_ptr(rc)
    peo, pro, pdata = <int32_t*>column_ptr(eo), <int32_t*>column_ptr(ro), <uint8_t*>column_ptr(data)
    pcounts, pkinds = <int32_t*>column_ptr(counts), <uint8_t*>column_ptr(kinds)
    if nd >= NOGIL_BYTES:
        with nogil:
            scans_fill(fs, n_frames, lim, ppid, pseq, pts, psc, prc, peo, pro, pdata,
                       pcounts, pkinds, &fe, &fr, &fd)
    else:
        scans_fill(fs, n_frames, lim, ppid, pseq, pts, psc, prc, peo, pro, pdata,
                   pcounts, pkinds, &fe, &fr, &fd)
    if fe < ne:
        pid, seq, ts, sc, rc, eo = pid[:fe], seq[:fe], ts[:fe], sc[:fe], rc[:fe], eo[:fe + 1]
    if fr < nr:
        ro = ro[:fr + 1]
    if fd < nd:
        data = data[:fd]
    errors = []
    for i in range(n_frames):
        f = &fs[i]
        if f.err == E_UNEXPECTED_KIND:
            errors.append((i, _fail(f.err, f.off, f"kind {f.h.kind}, expected {K_SCAN} "
                                                  f"or {K_HEARTBEAT}")))
        elif f.err != OK:
            errors.append((i, _body_fail(f.err, f.off, &f.h)))
    return (pid, seq, ts, sc, rc, eo, ro, data, counts, kinds, errors)


def frame_of_event(counts_):
    """int32 np.repeat(arange(len(counts)), counts), in one loop: the frame of each event."""
    cdef cnp.ndarray counts = _as(counts_, cnp.NPY_INT32, "counts")
    cdef const int32_t* c = <const int32_t*>column_ptr(counts)
    cdef Py_ssize_t n = cnp.PyArray_DIM(counts, 0), i, k, total = 0
    for i in range(n):
        if c[i] < 0:
            raise ValueError(f"counts[{i}] is negative")
        total += c[i]
    cdef cnp.ndarray out = new_column(total, cnp.NPY_INT32)
    cdef int32_t* q = <int32_t*>column_ptr(out)
    total = 0
    for i in range(n):
        for k in range(c[i]):
            q[total + k] = <int32_t>i
        total += c[i]
    return out


cdef int size_scan(Py_ssize_t n, const int32_t* eo, const int32_t* ro, Py_ssize_t n_ro,
                   Py_ssize_t n_data, const Limits* lim, Py_ssize_t* total,
                   Py_ssize_t* where) noexcept nogil:
    """Check the batch's offsets and the per-read limits; the message size in `total`."""
    cdef Py_ssize_t i, r, a, b, s, t, size = HEADER_SIZE
    for i in range(n):
        a = eo[i]
        b = eo[i + 1]
        where[0] = i
        if a < 0 or b < a or (b > a and b >= n_ro):
            return E_BAD_RECORD
        if b - a > lim.max_reads:
            return E_TOO_MANY_READS
        size += SCAN_FIXED
        for r in range(a, b):
            s = ro[r]
            t = ro[r + 1]
            if s < 0 or t < s or t > n_data:
                return E_BAD_RECORD
            if t - s > lim.max_read_len:
                return E_READ_TOO_LONG
            size += 2 + t - s
        if size > lim.max_frame:
            return E_OVERSIZED
    total[0] = size
    return OK


cdef void write_scan(uint8_t* q, Py_ssize_t n, const uint64_t* pid, const uint64_t* seq,
                     const int64_t* ts, const uint16_t* sc, const uint8_t* rc,
                     const int32_t* eo, const int32_t* ro, const uint8_t* data) noexcept nogil:
    cdef Py_ssize_t i, r, pos = HEADER_SIZE, length
    for i in range(n):
        st64(q + pos, pid[i])
        st64(q + pos + 8, seq[i])
        st64(q + pos + 16, <uint64_t>ts[i])
        st16(q + pos + 24, sc[i])
        q[pos + 26] = rc[i]
        q[pos + 27] = <uint8_t>(eo[i + 1] - eo[i])
        pos += SCAN_FIXED
        for r in range(eo[i], eo[i + 1]):
            length = ro[r + 1] - ro[r]
            st16(q + pos, <uint16_t>length)
            if length:
                memcpy(q + pos + 2, data + ro[r], <size_t>length)
            pos += 2 + length


def encode_scan(pid_, seq_, ts_, sc_, rc_, eo_, ro_, data_, uint32_t batch_seq,
                Py_ssize_t max_frame, Py_ssize_t max_records, int max_reads, int max_read_len):
    """The SCAN message of the columns (any integer array-likes; EventBatch dtypes pass
    through without a copy)."""
    cdef Limits lim = _limits(max_frame, max_records, max_reads, max_read_len)
    cdef cnp.ndarray pid = _as(pid_, cnp.NPY_UINT64, "parcel_ids")
    cdef cnp.ndarray seq = _as(seq_, cnp.NPY_UINT64, "seq")
    cdef cnp.ndarray ts = _as(ts_, cnp.NPY_INT64, "ts_ns")
    cdef cnp.ndarray sc = _as(sc_, cnp.NPY_UINT16, "scanner_ids")
    cdef cnp.ndarray rc = _as(rc_, cnp.NPY_UINT8, "recirculations")
    cdef cnp.ndarray eo = _as(eo_, cnp.NPY_INT32, "event_offsets")
    cdef cnp.ndarray ro = _as(ro_, cnp.NPY_INT32, "read_offsets")
    cdef cnp.ndarray data = _as(data_, cnp.NPY_UINT8, "data")
    cdef Py_ssize_t n = cnp.PyArray_DIM(eo, 0) - 1, total = 0, where = 0
    cdef Py_ssize_t n_ro = cnp.PyArray_DIM(ro, 0), n_data = cnp.PyArray_DIM(data, 0)
    cdef int e
    if n < 0:
        raise WireError("bad_record", None, "event_offsets is empty (it has n + 1 entries)")
    if cnp.PyArray_DIM(pid, 0) != n or cnp.PyArray_DIM(seq, 0) != n \
            or cnp.PyArray_DIM(ts, 0) != n or cnp.PyArray_DIM(sc, 0) != n \
            or cnp.PyArray_DIM(rc, 0) != n:
        raise WireError("bad_record", None, f"columns must all have {n} entries")
    if n > lim.max_records:
        raise WireError("too_many_records", None, f"{n} events, the limit is {lim.max_records}")
    cdef const int32_t* peo = <const int32_t*>column_ptr(eo)
    cdef const int32_t* pro = <const int32_t*>column_ptr(ro)
    cdef const uint8_t* pdata = <const uint8_t*>column_ptr(data)
    with nogil:
        e = size_scan(n, peo, pro, n_ro, n_data, &lim, &total, &where)
    if e != OK:
        raise WireError(ERROR_NAMES[e], None, f"event {where}")
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t* q = <uint8_t*>PyBytes_AS_STRING(out)
    put_header(q, K_SCAN, <uint32_t>n, <uint32_t>(total - HEADER_SIZE), batch_seq)
    cdef const uint64_t* ppid = <const uint64_t*>column_ptr(pid)
    cdef const uint64_t* pseq = <const uint64_t*>column_ptr(seq)
    cdef const int64_t* pts = <const int64_t*>column_ptr(ts)
    cdef const uint16_t* psc = <const uint16_t*>column_ptr(sc)
    cdef const uint8_t* prc = <const uint8_t*>column_ptr(rc)
    with nogil:
        write_scan(q, n, ppid, pseq, pts, psc, prc, peo, pro, pdata)
    return out


# ---------------------------------------------------------------------------------------------
# DECISION

cdef int parse_decisions(const uint8_t* p, Py_ssize_t n, uint64_t* pid, uint64_t* seq,
                         uint64_t* dseq, uint16_t* chute, uint8_t* reason, uint16_t* sc,
                         Py_ssize_t* off) noexcept nogil:
    """n 32-byte records from p (the first record); the caller checked the length."""
    cdef Py_ssize_t i
    cdef const uint8_t* r
    for i in range(n):
        r = p + DECISION_RECORD * i
        pid[i] = ld64(r)
        seq[i] = ld64(r + 8)
        dseq[i] = ld64(r + 16)
        chute[i] = ld16(r + 24)
        reason[i] = r[26]
        sc[i] = ld16(r + 28)
        if r[26] >= N_REASONS:
            off[0] = DECISION_RECORD * i + 26
            return E_BAD_RECORD
        if r[27] != 0:
            off[0] = DECISION_RECORD * i + 27
            return E_BAD_RECORD
        if r[30] != 0 or r[31] != 0:
            off[0] = DECISION_RECORD * i + 30
            return E_BAD_RECORD
    return OK


cdef tuple _decision_columns(Py_ssize_t n):
    """The six record columns of n decisions: parcel_id, seq, decision_seq, chute, reason,
    scanner_id."""
    return (new_column(n, cnp.NPY_UINT64), new_column(n, cnp.NPY_UINT64),
            new_column(n, cnp.NPY_UINT64), new_column(n, cnp.NPY_UINT16),
            new_column(n, cnp.NPY_UINT8), new_column(n, cnp.NPY_UINT16))


cdef int _parse_decisions_into(const uint8_t* p, Py_ssize_t n, tuple cols, Py_ssize_t at,
                               Py_ssize_t* off):
    """parse_decisions into `_decision_columns`, from row `at` on (without the GIL)."""
    cdef uint64_t* ppid = <uint64_t*>column_ptr(<cnp.ndarray>cols[0]) + at
    cdef uint64_t* pseq = <uint64_t*>column_ptr(<cnp.ndarray>cols[1]) + at
    cdef uint64_t* pdseq = <uint64_t*>column_ptr(<cnp.ndarray>cols[2]) + at
    cdef uint16_t* pchute = <uint16_t*>column_ptr(<cnp.ndarray>cols[3]) + at
    cdef uint8_t* preason = <uint8_t*>column_ptr(<cnp.ndarray>cols[4]) + at
    cdef uint16_t* psc = <uint16_t*>column_ptr(<cnp.ndarray>cols[5]) + at
    cdef int e
    with nogil:
        e = parse_decisions(p, n, ppid, pseq, pdseq, pchute, preason, psc, off)
    return e


def decode_decisions(const uint8_t[::1] buf, Py_ssize_t max_frame, Py_ssize_t max_records):
    """-> (header tuple, plan_version bytes, parcel_id, seq, decision_seq, chute, reason,
    scanner_id, decided_ns: int, or None for a version 1 message)."""
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef Header h = _open(buf, &lim, K_DECISION)
    cdef Py_ssize_t n = h.count, body = h.body_len, plv, start, off = 0
    cdef Py_ssize_t timed = 8 if h.version == VERSION_DECIDED else 0
    cdef const uint8_t* p = _ptr(buf)
    cdef int e = OK
    if body < 1:
        raise _fail(E_LENGTH_MISMATCH, 8, "a DECISION body starts with the plan_version length")
    plv = p[HEADER_SIZE]
    if body - 1 < plv + timed:
        raise _fail(E_LENGTH_MISMATCH, HEADER_SIZE, "plan_version runs past the body" if body - 1 < plv
                    else "decided_ns runs past the body")
    start = HEADER_SIZE + 1 + plv + timed
    if body - 1 - plv - timed != DECISION_RECORD * n:
        raise _fail(E_LENGTH_MISMATCH, 4, f"{n} DECISION records need {DECISION_RECORD * n} bytes after plan_version, the body has {body - 1 - plv - timed}")
    decided = <int64_t>ld64(p + HEADER_SIZE + 1 + plv) if timed else None
    plan_version = PyBytes_FromStringAndSize(<const char*>p + HEADER_SIZE + 1, plv)
    cdef tuple cols = _decision_columns(n)
    e = _parse_decisions_into(p + start, n, cols, 0, &off)
    if e != OK:
        raise _fail(e, start + off)
    return (_header_tuple(&h), plan_version) + cols + (decided,)


def decode_decisions_in(const uint8_t[::1] buf, offsets_, lengths_, Py_ssize_t max_frame,
                        Py_ssize_t max_records):
    """Many DECISION messages that lie in one buffer (a journal segment), message i at
    buf[offsets[i]:offsets[i] + lengths[i]], each checked as `decode_decisions` checks one,
    into one set of columns. -> (parcel_id, seq, decision_seq, chute, reason, scanner_id,
    counts int64 (records per message), version_of int32 (index into versions per message),
    versions (list of distinct plan_version bytes, first seen first)). Raises WireError
    naming the message (its index) and the offset in it."""
    cdef cnp.ndarray offsets = _as(offsets_, cnp.NPY_INT64, "offsets")
    cdef cnp.ndarray lengths = _as(lengths_, cnp.NPY_INT64, "lengths")
    cdef Py_ssize_t n_msgs = cnp.PyArray_SIZE(offsets), i, n, total = 0, plv, timed, start
    cdef Py_ssize_t off = 0
    if cnp.PyArray_SIZE(lengths) != n_msgs:
        raise ValueError("offsets and lengths differ in length")
    cdef const int64_t* po = <const int64_t*>column_ptr(offsets)
    cdef const int64_t* pl = <const int64_t*>column_ptr(lengths)
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef Header h
    cdef const uint8_t* p
    cdef int e
    cdef cnp.ndarray counts = new_column(n_msgs, cnp.NPY_INT64)
    cdef cnp.ndarray version_of = new_column(n_msgs, cnp.NPY_INT32)
    cdef int64_t* pcounts = <int64_t*>column_ptr(counts)
    cdef int32_t* pvof = <int32_t*>column_ptr(version_of)
    cdef list versions = []
    cdef dict known = {}
    cdef bytes last = None
    cdef int32_t last_index = -1
    for i in range(n_msgs):                       # pass 1: every header, the totals
        if po[i] < 0 or pl[i] < 0 or po[i] > buf.shape[0] - pl[i]:
            raise ValueError(f"message {i} ({po[i]}, {pl[i]} bytes) is outside the buffer")
        p = _ptr(buf) + po[i]
        e = check_header(p, pl[i], &lim, &h, &off)
        if e == OK and h.kind != K_DECISION:
            e, off = E_UNEXPECTED_KIND, 3
        if e != OK:
            raise _fail(e, off, f"message {i}")
        timed = 8 if h.version == VERSION_DECIDED else 0
        if h.body_len < 1 or h.body_len - 1 < p[HEADER_SIZE] + timed or \
                h.body_len - 1 - p[HEADER_SIZE] - timed != DECISION_RECORD * h.count:
            raise _fail(E_LENGTH_MISMATCH, 4, f"message {i}: its records and body_len differ")
        plv = p[HEADER_SIZE]
        if last is None or plv != len(last) or \
                memcmp(<const char*>p + HEADER_SIZE + 1, PyBytes_AS_STRING(last), plv) != 0:
            last = PyBytes_FromStringAndSize(<const char*>p + HEADER_SIZE + 1, plv)
            last_index = known.setdefault(last, len(versions))
            if last_index == len(versions):
                versions.append(last)
        pvof[i] = last_index
        pcounts[i] = h.count
        total += h.count
    cdef tuple cols = _decision_columns(total)
    cdef Py_ssize_t at = 0
    for i in range(n_msgs):                       # pass 2: the records
        p = _ptr(buf) + po[i]
        timed = 8 if p[2] == VERSION_DECIDED else 0
        start = HEADER_SIZE + 1 + p[HEADER_SIZE] + timed
        n = pcounts[i]
        e = _parse_decisions_into(p + start, n, cols, at, &off)
        if e != OK:
            raise _fail(e, start + off, f"message {i}")
        at += n
    return cols + (counts, version_of, versions)


def encode_decisions(bytes plan_version, pid_, seq_, dseq_, chute_, reason_, sc_,
                     uint32_t batch_seq, Py_ssize_t max_frame, Py_ssize_t max_records,
                     decided_ns=None):
    """decided_ns None: a version 1 message; an int: version 2 carrying it."""
    cdef cnp.ndarray pid = _as(pid_, cnp.NPY_UINT64, "parcel_id")
    cdef cnp.ndarray seq = _as(seq_, cnp.NPY_UINT64, "seq")
    cdef cnp.ndarray dseq = _as(dseq_, cnp.NPY_UINT64, "decision_seq")
    cdef cnp.ndarray chute_a = _as(chute_, cnp.NPY_UINT16, "chute")
    cdef cnp.ndarray reason_a = _as(reason_, cnp.NPY_UINT8, "reason")
    cdef cnp.ndarray sc = _as(sc_, cnp.NPY_UINT16, "scanner_id")
    cdef Py_ssize_t n = cnp.PyArray_DIM(pid, 0)
    if cnp.PyArray_DIM(seq, 0) != n or cnp.PyArray_DIM(dseq, 0) != n \
            or cnp.PyArray_DIM(chute_a, 0) != n or cnp.PyArray_DIM(reason_a, 0) != n \
            or cnp.PyArray_DIM(sc, 0) != n:
        raise WireError("bad_record", None, f"columns must all have {n} entries")
    if decided_ns is not None and not -2**63 <= decided_ns < 2**63:
        raise WireError("bad_record", None, f"decided_ns {decided_ns} is not an int64")
    return _encode_decisions(<const uint8_t*> (<char*> plan_version), len(plan_version), n,
                             <const uint64_t*>column_ptr(pid), <const uint64_t*>column_ptr(seq),
                             <const uint64_t*>column_ptr(dseq), 0, <const uint16_t*>column_ptr(chute_a),
                             <const uint8_t*>column_ptr(reason_a), <const uint16_t*>column_ptr(sc), batch_seq,
                             max_frame, max_records, decided_ns if decided_ns is not None else 0,
                             decided_ns is not None)


cdef bytes encode_decisions_c(const uint8_t* plan_version, Py_ssize_t plv, Py_ssize_t n,
                              const uint64_t* ppid, const uint64_t* pseq, const uint64_t* pdseq,
                              uint64_t first_dseq, const uint16_t* chute, const uint8_t* reason,
                              const uint16_t* psc, uint32_t batch_seq, Py_ssize_t max_frame,
                              Py_ssize_t max_records):
    """One version 1 DECISION message from column pointers (n entries each); pdseq NULL:
    decision sequence numbers first_dseq, first_dseq + 1, ... Raises WireError."""
    return _encode_decisions(plan_version, plv, n, ppid, pseq, pdseq, first_dseq, chute, reason,
                             psc, batch_seq, max_frame, max_records, 0, False)


cdef bytes encode_decisions_at_c(const uint8_t* plan_version, Py_ssize_t plv, Py_ssize_t n,
                                 const uint64_t* ppid, const uint64_t* pseq, const uint64_t* pdseq,
                                 uint64_t first_dseq, const uint16_t* chute, const uint8_t* reason,
                                 const uint16_t* psc, uint32_t batch_seq, Py_ssize_t max_frame,
                                 Py_ssize_t max_records, int64_t decided_ns):
    """`encode_decisions_c` as a version 2 message carrying the decision time `decided_ns`."""
    return _encode_decisions(plan_version, plv, n, ppid, pseq, pdseq, first_dseq, chute, reason,
                             psc, batch_seq, max_frame, max_records, decided_ns, True)


cdef bytes _encode_decisions(const uint8_t* plan_version, Py_ssize_t plv, Py_ssize_t n,
                             const uint64_t* ppid, const uint64_t* pseq, const uint64_t* pdseq,
                             uint64_t first_dseq, const uint16_t* chute, const uint8_t* reason,
                             const uint16_t* psc, uint32_t batch_seq, Py_ssize_t max_frame,
                             Py_ssize_t max_records, int64_t decided_ns, bint timed):
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef Py_ssize_t i, total, pos
    cdef uint8_t* q
    cdef uint8_t* r
    cdef Py_ssize_t bad = -1
    if plv > 255:
        raise WireError("bad_record", None, f"plan_version is {plv} bytes, at most 255")
    if n > lim.max_records:
        raise WireError("too_many_records", None, f"{n} decisions, the limit is {lim.max_records}")
    total = HEADER_SIZE + 1 + plv + (8 if timed else 0) + DECISION_RECORD * n
    if total > lim.max_frame:
        raise WireError("oversized", None, f"{total} bytes, the limit is {lim.max_frame}")
    out = PyBytes_FromStringAndSize(NULL, total)
    q = <uint8_t*>PyBytes_AS_STRING(out)
    put_header(q, K_DECISION, <uint32_t>n, <uint32_t>(total - HEADER_SIZE), batch_seq)
    q[HEADER_SIZE] = <uint8_t>plv
    if plv:
        memcpy(q + HEADER_SIZE + 1, <const char*>plan_version, plv)
    pos = HEADER_SIZE + 1 + plv
    if timed:
        q[2] = VERSION_DECIDED
        st64(q + pos, <uint64_t>decided_ns)
        pos += 8
    with nogil:
        for i in range(n):
            if reason[i] >= N_REASONS:
                bad = i
                break
            r = q + pos + DECISION_RECORD * i
            st64(r, ppid[i])
            st64(r + 8, pseq[i])
            st64(r + 16, pdseq[i] if pdseq != NULL else first_dseq + <uint64_t> i)
            st16(r + 24, chute[i])
            r[26] = reason[i]
            r[27] = 0
            st16(r + 28, psc[i])
            r[30] = 0
            r[31] = 0
    if bad >= 0:
        raise WireError("bad_record", None, f"decision {bad}: reason {reason[bad]} is not in codes.REASONS")
    return out


# ---------------------------------------------------------------------------------------------
# CHUTE_STATUS and SORT_CONFIRM

def decode_chute_status(const uint8_t[::1] buf, Py_ssize_t max_frame, Py_ssize_t max_records):
    """-> (header tuple, chute, state)."""
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef Header h = _open(buf, &lim, K_CHUTE_STATUS)
    cdef Py_ssize_t n = h.count, i, off = -1
    cdef const uint8_t* r
    if <Py_ssize_t>h.body_len != CHUTE_RECORD * n:
        raise _fail(E_LENGTH_MISMATCH, 4, f"{n} CHUTE_STATUS records are {CHUTE_RECORD * n} bytes, body_len is {h.body_len}")
    cdef cnp.ndarray chute_a = new_column(n, cnp.NPY_UINT16), state_a = new_column(n, cnp.NPY_UINT8)
    cdef uint16_t* chute = <uint16_t*>column_ptr(chute_a)
    cdef uint8_t* state = <uint8_t*>column_ptr(state_a)
    cdef const uint8_t* p = _ptr(buf)
    with nogil:
        for i in range(n):
            r = p + HEADER_SIZE + CHUTE_RECORD * i
            chute[i] = ld16(r)
            state[i] = r[2]
            if chute[i] == 0:
                off = HEADER_SIZE + CHUTE_RECORD * i
                break
            if r[2] >= N_CHUTE_STATES:
                off = HEADER_SIZE + CHUTE_RECORD * i + 2
                break
            if r[3] != 0:
                off = HEADER_SIZE + CHUTE_RECORD * i + 3
                break
    if off >= 0:
        raise _fail(E_BAD_RECORD, off)
    return (_header_tuple(&h), chute_a, state_a)


def encode_chute_status(chute_, state_, uint32_t batch_seq, Py_ssize_t max_frame,
                        Py_ssize_t max_records):
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef cnp.ndarray chute_a = _as(chute_, cnp.NPY_UINT16, "chutes")
    cdef cnp.ndarray state_a = _as(state_, cnp.NPY_UINT8, "states")
    cdef const uint16_t* chute = <const uint16_t*>column_ptr(chute_a)
    cdef const uint8_t* state = <const uint8_t*>column_ptr(state_a)
    cdef Py_ssize_t n = cnp.PyArray_DIM(chute_a, 0), i, total, bad = -1
    cdef uint8_t* q
    cdef uint8_t* r
    if cnp.PyArray_DIM(state_a, 0) != n:
        raise WireError("bad_record", None, f"columns must both have {n} entries")
    if n > lim.max_records:
        raise WireError("too_many_records", None, f"{n} records, the limit is {lim.max_records}")
    total = HEADER_SIZE + CHUTE_RECORD * n
    if total > lim.max_frame:
        raise WireError("oversized", None, f"{total} bytes, the limit is {lim.max_frame}")
    out = PyBytes_FromStringAndSize(NULL, total)
    q = <uint8_t*>PyBytes_AS_STRING(out)
    put_header(q, K_CHUTE_STATUS, <uint32_t>n, <uint32_t>(total - HEADER_SIZE), batch_seq)
    with nogil:
        for i in range(n):
            if chute[i] == 0 or state[i] >= N_CHUTE_STATES:
                bad = i
                break
            r = q + HEADER_SIZE + CHUTE_RECORD * i
            st16(r, chute[i])
            r[2] = state[i]
            r[3] = 0
    if bad >= 0:
        raise WireError("bad_record", None, f"record {bad}: chute {chute[bad]} state {state[bad]}")
    return out


def decode_sort_confirm(const uint8_t[::1] buf, Py_ssize_t max_frame, Py_ssize_t max_records):
    """-> (header tuple, parcel_id, chute, outcome)."""
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef Header h = _open(buf, &lim, K_SORT_CONFIRM)
    cdef Py_ssize_t n = h.count, i, off = -1
    cdef const uint8_t* r
    if <Py_ssize_t>h.body_len != CONFIRM_RECORD * n:
        raise _fail(E_LENGTH_MISMATCH, 4, f"{n} SORT_CONFIRM records are {CONFIRM_RECORD * n} bytes, body_len is {h.body_len}")
    cdef cnp.ndarray pid_a = new_column(n, cnp.NPY_UINT64), chute_a = new_column(n, cnp.NPY_UINT16)
    cdef cnp.ndarray outcome_a = new_column(n, cnp.NPY_UINT8)
    cdef uint64_t* pid = <uint64_t*>column_ptr(pid_a)
    cdef uint16_t* chute = <uint16_t*>column_ptr(chute_a)
    cdef uint8_t* outcome = <uint8_t*>column_ptr(outcome_a)
    cdef const uint8_t* p = _ptr(buf)
    with nogil:
        for i in range(n):
            r = p + HEADER_SIZE + CONFIRM_RECORD * i
            pid[i] = ld64(r)
            chute[i] = ld16(r + 8)
            outcome[i] = r[10]
            if r[10] >= N_OUTCOMES:
                off = HEADER_SIZE + CONFIRM_RECORD * i + 10
                break
            if r[11] != 0:
                off = HEADER_SIZE + CONFIRM_RECORD * i + 11
                break
            if ld32(r + 12) != 0:
                off = HEADER_SIZE + CONFIRM_RECORD * i + 12
                break
    if off >= 0:
        raise _fail(E_BAD_RECORD, off)
    return (_header_tuple(&h), pid_a, chute_a, outcome_a)


def encode_sort_confirm(pid_, chute_, outcome_, uint32_t batch_seq, Py_ssize_t max_frame,
                        Py_ssize_t max_records):
    cdef Limits lim = _limits(max_frame, max_records, 255, 65535)
    cdef cnp.ndarray pid_a = _as(pid_, cnp.NPY_UINT64, "parcel_id")
    cdef cnp.ndarray chute_a = _as(chute_, cnp.NPY_UINT16, "chute")
    cdef cnp.ndarray outcome_a = _as(outcome_, cnp.NPY_UINT8, "outcome")
    cdef const uint64_t* pid = <const uint64_t*>column_ptr(pid_a)
    cdef const uint16_t* chute = <const uint16_t*>column_ptr(chute_a)
    cdef const uint8_t* outcome = <const uint8_t*>column_ptr(outcome_a)
    cdef Py_ssize_t n = cnp.PyArray_DIM(pid_a, 0), i, total, bad = -1
    cdef uint8_t* q
    cdef uint8_t* r
    if cnp.PyArray_DIM(chute_a, 0) != n or cnp.PyArray_DIM(outcome_a, 0) != n:
        raise WireError("bad_record", None, f"columns must all have {n} entries")
    if n > lim.max_records:
        raise WireError("too_many_records", None, f"{n} records, the limit is {lim.max_records}")
    total = HEADER_SIZE + CONFIRM_RECORD * n
    if total > lim.max_frame:
        raise WireError("oversized", None, f"{total} bytes, the limit is {lim.max_frame}")
    out = PyBytes_FromStringAndSize(NULL, total)
    q = <uint8_t*>PyBytes_AS_STRING(out)
    put_header(q, K_SORT_CONFIRM, <uint32_t>n, <uint32_t>(total - HEADER_SIZE), batch_seq)
    with nogil:
        for i in range(n):
            if outcome[i] >= N_OUTCOMES:
                bad = i
                break
            r = q + HEADER_SIZE + CONFIRM_RECORD * i
            st64(r, pid[i])
            st16(r + 8, chute[i])
            r[10] = outcome[i]
            r[11] = 0
            st32(r + 12, 0)
    if bad >= 0:
        raise WireError("bad_record", None, f"record {bad}: outcome {outcome[bad]}")
    return out


def encode_heartbeat(uint32_t batch_seq):
    out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE)
    put_header(<uint8_t*>PyBytes_AS_STRING(out), K_HEARTBEAT, 0, 0, batch_seq)
    return out


def constants():
    """The layout constants compiled in, for a test against sorter.wire."""
    return dict(header_size=HEADER_SIZE, scan_fixed=SCAN_FIXED, decision_record=DECISION_RECORD,
                chute_record=CHUTE_RECORD, confirm_record=CONFIRM_RECORD, version=VERSION,
                kinds=[K_SCAN, K_DECISION, K_CHUTE_STATUS, K_SORT_CONFIRM, K_HEARTBEAT],
                outcomes=N_OUTCOMES, reasons=N_REASONS, chute_states=N_CHUTE_STATES,
                errors=list(ERROR_NAMES))
