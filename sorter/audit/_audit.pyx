# cython: language_level=3
"""Audit record batches as Arrow IPC messages, encoded in C and written with one write(2).

Why: pyarrow needs about 80 us to assemble a one-row record batch of the 14-column audit
schema from numpy columns (most of it in `RecordBatch.from_arrays`), and the engine pays that
on every turn, before it may send. The schema is fixed, so the IPC message of a decision batch
is fixed too but for its sizes: a flatbuffer header whose layout never changes (15 field nodes,
35 buffers; written once, then patched) and a body that is the columns' bytes. This module
fills both from the engine's arrays in one call without the GIL; `sorter.audit` owns the file
around the messages (magic, schema, dictionary, footer) and falls back to pyarrow for what
this encoder declines (reads that are not UTF-8) and for malformed-message rows.

Message layout (Arrow columnar format, "Encapsulated message format"): 0xFFFFFFFF, int32
metadata size (888), the flatbuffer `Message{version V5, header RecordBatch{length, nodes,
buffers}, bodyLength}`, then the body: each buffer at an 8-byte aligned offset, zero padded.
Field order (AUDIT_SCHEMA, depth first): ts, scanner_id, parcel_id, seq, decision_seq,
reads, reads.item, chute, reason, destination, plan_version, latency_ns, recirculations, raw,
error. `tests/test_audit_ipc.py` checks every message against pyarrow's reader.
"""
import sys

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from libc.errno cimport errno, EINTR
from posix.unistd cimport write as c_write

from sorter._shared cimport column_data, offsets_bad, reserve

if sys.byteorder != "little":        # the layout below stores host integers as they are
    raise ImportError("sorter.audit._audit writes little-endian Arrow IPC and needs a little-endian host")

cnp.import_array()

cdef enum:
    PREFIX = 8                  # continuation marker + int32 metadata size
    META_SIZE = 888             # the flatbuffer, padded to 8
    MESSAGE_HEADER = PREFIX + META_SIZE
    N_NODES = 15
    N_BUFFERS = 35
    # positions inside the flatbuffer (see _template)
    BODY_LENGTH_AT = 32
    LENGTH_AT = 64
    NODES_AT = 80
    BUFFERS_AT = 328

META_LENGTH = MESSAGE_HEADER     # FileBlock.metaDataLength of every message of this encoder
FIELD_NODES = N_NODES
BUFFERS = N_BUFFERS


cdef inline void st16(uint8_t* p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)

cdef inline void st32(uint8_t* p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void st64(uint8_t* p, int64_t v) noexcept nogil:
    memcpy(p, &v, 8)


cdef void _template(uint8_t* m) noexcept nogil:
    """The constant part of the flatbuffer (offsets from its start):

        0   uint32 root -> Message table at 16
        4   Message vtable: size 12, table 24; version +4, header_type +6, header +8, bodyLength +16
        16  Message table: soffset 12 (-> 4); 20 version=4 (V5); 22 header_type=3 (RecordBatch);
            24 header -> 52; 32 bodyLength (patched)
        40  RecordBatch vtable: size 10, table 20; length +12, nodes +4, buffers +8
        52  RecordBatch table: soffset 12 (-> 40); 56 nodes -> 76; 60 buffers -> 324;
            64 length (patched)
        76  uint32 15, then 15 FieldNode{int64 length, int64 null_count} from 80 (patched)
        324 uint32 35, then 35 Buffer{int64 offset, int64 length} from 328 (patched)
    """
    memset(m, 0, META_SIZE)
    st32(m + 0, 16)
    st16(m + 4, 12); st16(m + 6, 24); st16(m + 8, 4); st16(m + 10, 6); st16(m + 12, 8)
    st16(m + 14, 16)
    st32(m + 16, 12)
    st16(m + 20, 4)
    m[22] = 3
    st32(m + 24, 52 - 24)
    st16(m + 40, 10); st16(m + 42, 20); st16(m + 44, 12); st16(m + 46, 4); st16(m + 48, 8)
    st32(m + 52, 12)
    st32(m + 56, 76 - 56)
    st32(m + 60, 324 - 60)
    st32(m + 76, N_NODES)
    st32(m + 324, N_BUFFERS)


cdef bint valid_utf8(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as Arrow's
    string validation requires."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, c1
    cdef int need, k
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2:
            return False
        elif c < 0xE0:
            need = 1
        elif c < 0xF0:
            need = 2
        elif c < 0xF5:
            need = 3
        else:
            return False
        if i + need >= n:
            return False
        c1 = p[i + 1]
        if c == 0xE0 and c1 < 0xA0:
            return False
        if c == 0xED and c1 > 0x9F:
            return False
        if c == 0xF0 and c1 < 0x90:
            return False
        if c == 0xF4 and c1 > 0x8F:
            return False
        for k in range(1, need + 1):
            if (p[i + k] & 0xC0) != 0x80:
                return False
        i += need + 1
    return True


cdef bint all_ascii(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef uint64_t acc = 0, word
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        acc |= word
        i += 8
    while i < n:
        acc |= p[i]
        i += 1
    return (acc & 0x8080808080808080ULL) == 0


cdef bint utf8_ok(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Whether the encoder takes reads of these bytes (all of a batch's read bytes)."""
    return n == 0 or all_ascii(p, n) or valid_utf8(p, n)


cdef class DecisionEncoder:
    """Encodes one batch of decisions as one IPC record-batch message of AUDIT_SCHEMA into a
    buffer it owns (grown as needed, reused), and writes it to a file descriptor.

    `encode(...)` returns the message length, or -1 when a read is not valid UTF-8 (the caller
    transcodes with pyarrow instead); `write(fd)` hands the last message to the OS, all of it,
    or raises OSError; `message()` returns a copy (tests, salvage)."""
    def __cinit__(self):
        self.buf = NULL
        self.cap = self.length = 0
        self._reserve(1 << 16)

    def __dealloc__(self):
        free(self.buf)

    cdef int _reserve(self, Py_ssize_t need) except -1:
        return reserve(<void**> &self.buf, &self.cap, need, 1)

    # -- body building (the buffer is large enough: see encode's bound) ---------------------
    cdef void _node(self, int64_t length, int64_t nulls) noexcept nogil:
        cdef uint8_t* q = self.buf + PREFIX + NODES_AT + 16 * self.node_i
        st64(q, length)
        st64(q + 8, nulls)
        self.node_i += 1

    cdef uint8_t* _buffer(self, Py_ssize_t nbytes) noexcept nogil:
        """Records the next buffer (8-aligned, `nbytes` long) and returns where it goes; the
        padding after it is zeroed."""
        cdef Py_ssize_t off = self.pos - self.body_start
        cdef uint8_t* q = self.buf + PREFIX + BUFFERS_AT + 16 * self.buffer_i
        cdef Py_ssize_t padded = (nbytes + 7) & ~(<Py_ssize_t> 7)
        st64(q, off)
        st64(q + 8, nbytes)
        self.buffer_i += 1
        q = self.buf + self.pos
        if padded > nbytes:
            memset(q + nbytes, 0, padded - nbytes)
        self.pos += padded
        return q

    cdef void _copy(self, const void* src, Py_ssize_t nbytes) noexcept nogil:
        cdef uint8_t* q = self._buffer(nbytes)
        if nbytes:
            memcpy(q, src, nbytes)

    cdef void _absent(self) noexcept nogil:
        """A validity bitmap left out (no nulls) or an empty data buffer."""
        self._buffer(0)

    cdef void _fixed(self, int64_t n, const void* src, Py_ssize_t width) noexcept nogil:
        self._node(n, 0)
        self._absent()
        self._copy(src, n * width)

    cdef void _all_null_binary(self, int64_t n) noexcept nogil:
        self._node(n, n)
        memset(self._buffer((n + 7) // 8), 0, (n + 7) // 8)
        memset(self._buffer(4 * (n + 1)), 0, 4 * (n + 1))
        self._absent()

    def encode(self, int64_t now_ns, scanner_ids, parcel_ids, seq,
               uint64_t first_decision_seq, event_offsets, read_offsets, data, chute_, reason_,
               destination_, name_offsets_, name_data_, bytes plan_version_, scan_ts_,
               recirculations, int n_reasons):
        """Encode n decisions (n = len(chute)): decision time `now_ns` for every row, decision
        sequence numbers from `first_decision_seq`, latency_ns = now_ns - scan_ts, reads from
        the Arrow-style offsets, destination names gathered from `name_offsets`/`name_data`
        by `destination` (-1: null). Columns are numpy arrays of the audit's types (uint16
        scanner_ids and chute, uint64 parcel_ids and seq, int32 offsets and destination, uint8
        data, reason and recirculations, int64 scan_ts). Returns the message length, or -1 if
        a read is not UTF-8. Raises TypeError for a column that is not such an array (convert
        and call again), ValueError for a wrong length or a reason code >= n_reasons,
        IndexError for a destination past the names."""
        if not isinstance(chute_, cnp.ndarray):
            raise TypeError("chute: expected a numpy array")
        cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray> chute_)
        if n == 0:
            raise ValueError("an audit record batch needs at least one decision")
        cdef const uint16_t* chute = <const uint16_t*> column_data(chute_, cnp.NPY_UINT16, n, "chute")
        cdef const uint16_t* scanner = <const uint16_t*> column_data(scanner_ids, cnp.NPY_UINT16, n, "scanner_ids")
        cdef const uint64_t* parcel = <const uint64_t*> column_data(parcel_ids, cnp.NPY_UINT64, n, "parcel_ids")
        cdef const uint64_t* seqs = <const uint64_t*> column_data(seq, cnp.NPY_UINT64, n, "seq")
        cdef const int32_t* eo = <const int32_t*> column_data(event_offsets, cnp.NPY_INT32, n + 1, "event_offsets")
        cdef const int32_t* ro = <const int32_t*> column_data(read_offsets, cnp.NPY_INT32, -1, "read_offsets")
        cdef const uint8_t* bytes_ = <const uint8_t*> column_data(data, cnp.NPY_UINT8, -1, "data")
        cdef const uint8_t* reason = <const uint8_t*> column_data(reason_, cnp.NPY_UINT8, n, "reason")
        cdef const int32_t* destination = <const int32_t*> column_data(destination_, cnp.NPY_INT32, n, "destination")
        cdef const int32_t* name_offsets = <const int32_t*> column_data(name_offsets_, cnp.NPY_INT32, -1, "name_offsets")
        cdef const uint8_t* name_data = <const uint8_t*> column_data(name_data_, cnp.NPY_UINT8, -1, "name_data")
        cdef const int64_t* scan_ts = <const int64_t*> column_data(scan_ts_, cnp.NPY_INT64, n, "ts_ns")
        cdef const uint8_t* recirc = <const uint8_t*> column_data(recirculations, cnp.NPY_UINT8, n, "recirculations")
        cdef Py_ssize_t n_reads = cnp.PyArray_SIZE(<cnp.ndarray> read_offsets) - 1
        cdef Py_ssize_t n_bytes = cnp.PyArray_SIZE(<cnp.ndarray> data)
        cdef Py_ssize_t n_names = cnp.PyArray_SIZE(<cnp.ndarray> name_offsets_) - 1
        if n_reads < 0 or n_names < 0:
            raise ValueError("offsets need at least one entry")
        if offsets_bad(eo, n + 1, n_reads):
            raise ValueError("event_offsets are not non-decreasing offsets into read_offsets")
        if offsets_bad(ro, n_reads + 1, n_bytes):
            raise ValueError("read_offsets are not non-decreasing offsets into data")
        if offsets_bad(name_offsets, n_names + 1, cnp.PyArray_SIZE(<cnp.ndarray> name_data_)):
            raise ValueError("name_offsets are not non-decreasing offsets into name_data")
        return self.encode_c(now_ns, n, scanner, parcel, seqs, first_decision_seq, eo, ro,
                             bytes_, chute, reason, destination, name_offsets, n_names,
                             name_data, <const uint8_t*> (<char*> plan_version_),
                             len(plan_version_), scan_ts, recirc, n_reasons)

    cdef Py_ssize_t encode_c(self, int64_t now_ns, Py_ssize_t n, const uint16_t* scanner,
                             const uint64_t* parcel, const uint64_t* seqs,
                             uint64_t first_decision_seq, const int32_t* eo, const int32_t* ro,
                             const uint8_t* bytes_, const uint16_t* chute, const uint8_t* reason,
                             const int32_t* destination, const int32_t* name_offsets,
                             Py_ssize_t n_names, const uint8_t* name_data,
                             const uint8_t* plan_version, Py_ssize_t pv, const int64_t* scan_ts,
                             const uint8_t* recirc, int n_reasons) except -2:
        """`encode` at C level, for compiled callers: n >= 1 and the offsets already checked
        (read r of the batch is bytes_[ro[r]:ro[r + 1]], event i has reads eo[i]:eo[i + 1])."""
        cdef Py_ssize_t i, r0, r1, d0, d1, nr, nd, names = 0, nulls = 0
        cdef Py_ssize_t bound
        cdef int32_t dst, base, o
        cdef uint8_t top = 0
        cdef Py_ssize_t bad = -1
        cdef uint8_t* q
        cdef int32_t* qo
        cdef int64_t* qt
        cdef uint64_t* qs
        r0, r1 = eo[0], eo[n]
        d0, d1 = ro[r0], ro[r1]
        nr, nd = r1 - r0, d1 - d0
        with nogil:
            for i in range(n):
                if reason[i] > top:
                    top = reason[i]
                dst = destination[i]
                if dst < 0:
                    nulls += 1
                elif dst < n_names:
                    names += name_offsets[dst + 1] - name_offsets[dst]
                else:
                    bad = i
                    break
        if top >= n_reasons:
            raise ValueError(f"reason code {top} is not in codes.REASONS")
        if bad >= 0:
            raise IndexError(f"destination {destination[bad]} out of range: "
                             f"{n_names} destination names")
        if not utf8_ok(bytes_ + d0, nd):
            return -1
        bound = (MESSAGE_HEADER + 8 * N_BUFFERS + n * (8 + 2 + 8 + 8 + 8 + 4 + 2 + 1 + 4 + 4 + 8 + 1 + 4 + 4)
                 + 4 * (nr + 1) + nd + names + n * pv + 3 * ((n + 7) // 8) + 64)
        self._reserve(bound)
        with nogil:
            _template(self.buf + PREFIX)
            self.node_i = self.buffer_i = 0
            self.body_start = self.pos = MESSAGE_HEADER
            # ts: the decision time of every row
            self._node(n, 0)
            self._absent()
            qt = <int64_t*> self._buffer(8 * n)
            for i in range(n):
                qt[i] = now_ns
            self._fixed(n, scanner, 2)
            self._fixed(n, parcel, 8)
            self._fixed(n, seqs, 8)
            self._node(n, 0)
            self._absent()
            qs = <uint64_t*> self._buffer(8 * n)
            for i in range(n):
                qs[i] = first_decision_seq + i
            # reads: list offsets, then the string child (offsets, bytes) rebased to 0
            self._node(n, 0)
            self._absent()
            qo = <int32_t*> self._buffer(4 * (n + 1))
            for i in range(n + 1):
                qo[i] = eo[i] - r0
            self._node(nr, 0)
            self._absent()
            qo = <int32_t*> self._buffer(4 * (nr + 1))
            for i in range(nr + 1):
                qo[i] = ro[r0 + i] - d0
            self._copy(bytes_ + d0, nd)
            self._fixed(n, chute, 2)
            self._fixed(n, reason, 1)         # int8 dictionary indices, all < 128
            # destination: names gathered, null where there is none
            self._node(n, nulls)
            if nulls:
                q = self._buffer((n + 7) // 8)
                memset(q, 0, (n + 7) // 8)
                for i in range(n):
                    if destination[i] >= 0:
                        q[i >> 3] |= <uint8_t> (1 << (i & 7))
            else:
                self._absent()
            qo = <int32_t*> self._buffer(4 * (n + 1))
            q = self._buffer(names)
            o = 0
            qo[0] = 0
            for i in range(n):
                dst = destination[i]
                if dst >= 0:
                    base = name_offsets[dst]
                    memcpy(q + o, name_data + base, name_offsets[dst + 1] - base)
                    o += name_offsets[dst + 1] - base
                qo[i + 1] = o
            # plan_version: the same string on every row
            self._node(n, 0)
            self._absent()
            qo = <int32_t*> self._buffer(4 * (n + 1))
            q = self._buffer(n * pv)
            for i in range(n + 1):
                qo[i] = <int32_t> (i * pv)
            if pv:
                for i in range(n):
                    memcpy(q + i * pv, plan_version, pv)
            self._node(n, 0)
            self._absent()
            qt = <int64_t*> self._buffer(8 * n)
            for i in range(n):
                qt[i] = now_ns - scan_ts[i]
            self._fixed(n, recirc, 1)
            self._all_null_binary(n)              # raw: malformed rows only
            self._all_null_binary(n)              # error: malformed rows only
            st32(self.buf, 0xFFFFFFFF)
            st32(self.buf + 4, META_SIZE)
            st64(self.buf + PREFIX + BODY_LENGTH_AT, self.pos - self.body_start)
            st64(self.buf + PREFIX + LENGTH_AT, n)
            self.length = self.pos
        return self.length

    def write(self, int fd):
        """Write the last encoded message to `fd` (all of it; EINTR retried). Returns its
        length. Raises OSError; bytes already written then stay (a torn tail, which readers
        and `sorter.audit.recover` drop)."""
        return self.write_c(fd)

    cdef Py_ssize_t write_c(self, int fd) except -1:
        """`write`, for compiled callers (the GIL is released around write(2))."""
        cdef Py_ssize_t done = 0, k
        cdef int err = 0
        with nogil:
            while done < self.length:
                k = c_write(fd, self.buf + done, self.length - done)
                if k < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                done += k
        if err:
            import os
            raise OSError(err, os.strerror(err))
        return done

    def message(self):
        """A copy of the last encoded message."""
        return bytes((<char*> self.buf)[:self.length])
