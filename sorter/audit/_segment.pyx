# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Walk a journal segment's records in one compiled loop (`sorter.audit.journal.index_segment`).

Why: the compactor reads every record the engine journals. Walked in Python (a struct unpack,
a memoryview slice, a dataclass and a DECISION decode per record), a one-event record cost
~20 us: at 20,000 one-event scans/s the compactor alone took ~40% of a core on a 2-core
machine. Here the walk is a C loop that checks each record's length and CRC32C (the `crc32c`
package's function, called once per record) and notes where its parts lie; the wire codec then
decodes all the SCAN frames and all the DECISION messages of a segment in one call each
(`sorter.wire.decode_scans_in`, `decode_decisions_in`).

The layout is the journal's (docs/audit.md "Journal"); `sorter/audit/journal.py` holds its
description and the Python reader of single records.
"""
cimport numpy as cnp
from cpython.buffer cimport PyBUF_READ
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t

import numpy as np

cnp.import_array()

cdef enum:
    RECORD_SIZE = 16
    K_PLAN = 1
    K_DECISIONS = 2
    K_MALFORMED = 3
    DECISIONS_HEAD = 16        # i64 time, u32 frames, u32 message length


cdef inline uint32_t ld32(const uint8_t* p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline int64_t ld64(const uint8_t* p) noexcept nogil:
    return <int64_t>(ld32(p) | (<unsigned long long>ld32(p + 4) << 32))


cdef inline object _view(const uint8_t* p, Py_ssize_t n):
    return PyMemoryView_FromMemory(<char*>p, n, PyBUF_READ)


cdef Py_ssize_t _check_decisions(const uint8_t* q, Py_ssize_t length, uint32_t rows) noexcept nogil:
    """The frames of a DECISIONS payload if its lengths add up, else -1."""
    cdef Py_ssize_t n_frames, need, i
    if length < DECISIONS_HEAD:
        return -1
    n_frames = ld32(q + 8)
    if n_frames > (length - DECISIONS_HEAD) // 4:
        return -1
    need = DECISIONS_HEAD + 4 * n_frames + <Py_ssize_t>ld32(q + 12) + 4 * <Py_ssize_t>rows
    for i in range(n_frames):
        need += ld32(q + DECISIONS_HEAD + 4 * i)
        if need > length:
            return -1
    return n_frames if need == length else -1


def walk(const uint8_t[::1] buf, Py_ssize_t at, crc32c):
    """The records of `buf` (a segment's bytes) from offset `at` up to the zeroes that end it
    or the first bad record.

    -> (end, problem, records, frames, destination): end is the offset after the last good
    record; problem '' (a clean end) or why the walk stopped; records a dict of columns, one
    entry per record (kind u8, rows i64, offset i64 of its header, start/length i64 of its
    payload, time_ns i64, and for DECISIONS: first_frame/n_frames i64 into the frames,
    message_offset/message_length i64, destination_offset i64, first_row i64 into
    destination; -1 elsewhere); frames a dict (offset, length: i64) of every SCAN frame of
    every DECISIONS record, in order; destination (int32) the destination index of every
    decision of every DECISIONS record, in order."""
    cdef const uint8_t* p = &buf[0] if buf.shape[0] else NULL
    cdef Py_ssize_t size = buf.shape[0], pos = at, end, length, n_rec = 0, n_frames = 0, k
    cdef Py_ssize_t n_rows = 0
    cdef uint32_t crc, rows
    cdef uint8_t kind
    cdef bint zero
    problem = ""
    # pass 1: lengths, CRCs and the DECISIONS layouts; count records and frames
    while pos + RECORD_SIZE <= size:
        length = ld32(p + pos)
        crc = ld32(p + pos + 4)
        kind = p[pos + 8]
        rows = ld32(p + pos + 12)
        if length == 0 and crc == 0 and kind == 0:
            break
        end = pos + RECORD_SIZE + length
        if end > size or length > size or crc32c(
                _view(p + pos + RECORD_SIZE, length), crc32c(_view(p + pos + 8, 8))) != crc:
            problem = f"bad record at offset {pos}: length or CRC32C mismatch"
            break
        if kind == K_DECISIONS:
            k = _check_decisions(p + pos + RECORD_SIZE, length, rows)
            if k < 0:
                problem = f"bad record at offset {pos}: decisions record: lengths do not add up"
                break
            n_frames += k
            n_rows += rows
        elif kind == K_PLAN or kind == K_MALFORMED:
            if length < 10:
                problem = f"bad record at offset {pos}: shorter than its time and length"
                break
        else:
            problem = f"bad record at offset {pos}: unknown record kind {kind}"
            break
        n_rec += 1
        pos = end
    else:
        if pos < size:                     # a torn header in the last bytes, or zeroes
            zero = True
            for k in range(pos, size):
                if p[k]:
                    zero = False
                    break
            if not zero:
                problem = f"bad record at offset {pos}: truncated header"
    cdef Py_ssize_t stop = pos
    # pass 2: the columns
    cdef cnp.ndarray[uint8_t] r_kind = np.empty(n_rec, np.uint8)
    cdef cnp.ndarray[int64_t] r_rows = np.empty(n_rec, np.int64)
    cdef cnp.ndarray[int64_t] r_off = np.empty(n_rec, np.int64)
    cdef cnp.ndarray[int64_t] r_start = np.empty(n_rec, np.int64)
    cdef cnp.ndarray[int64_t] r_len = np.empty(n_rec, np.int64)
    cdef cnp.ndarray[int64_t] r_time = np.empty(n_rec, np.int64)
    cdef cnp.ndarray[int64_t] r_first = np.full(n_rec, -1, np.int64)
    cdef cnp.ndarray[int64_t] r_nf = np.full(n_rec, -1, np.int64)
    cdef cnp.ndarray[int64_t] r_moff = np.full(n_rec, -1, np.int64)
    cdef cnp.ndarray[int64_t] r_mlen = np.full(n_rec, -1, np.int64)
    cdef cnp.ndarray[int64_t] r_doff = np.full(n_rec, -1, np.int64)
    cdef cnp.ndarray[int64_t] f_off = np.empty(n_frames, np.int64)
    cdef cnp.ndarray[int64_t] f_len = np.empty(n_frames, np.int64)
    cdef cnp.ndarray[int64_t] r_row = np.full(n_rec, -1, np.int64)
    cdef cnp.ndarray[int32_t] dest = np.empty(n_rows, np.int32)
    cdef Py_ssize_t i, j, q, nf, fi = 0, ri = 0
    pos = at
    for i in range(n_rec):
        length = ld32(p + pos)
        q = pos + RECORD_SIZE
        r_kind[i] = p[pos + 8]
        r_rows[i] = ld32(p + pos + 12)
        r_off[i] = pos
        r_start[i] = q
        r_len[i] = length
        r_time[i] = ld64(p + q)
        if r_kind[i] == K_DECISIONS:
            nf = ld32(p + q + 8)
            r_first[i] = fi
            r_nf[i] = nf
            k = q + DECISIONS_HEAD + 4 * nf            # the first frame's bytes
            for j in range(nf):
                f_off[fi] = k
                f_len[fi] = ld32(p + q + DECISIONS_HEAD + 4 * j)
                k += f_len[fi]
                fi += 1
            r_moff[i] = k
            r_mlen[i] = ld32(p + q + 12)
            r_doff[i] = k + r_mlen[i]
            r_row[i] = ri
            k = r_doff[i]
            for j in range(r_rows[i]):
                dest[ri] = <int32_t>ld32(p + k + 4 * j)
                ri += 1
        pos = q + length
    records = {"kind": r_kind, "rows": r_rows, "offset": r_off, "start": r_start,
               "length": r_len, "time_ns": r_time, "first_frame": r_first, "n_frames": r_nf,
               "message_offset": r_moff, "message_length": r_mlen, "destination_offset": r_doff,
               "first_row": r_row}
    return stop, problem, records, {"offset": f_off, "length": f_len}, dest
