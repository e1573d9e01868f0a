# cython: language_level=3
"""One engine turn in C: route the decoded scans, encode their audit record batch and their
DECISION message, and count them, in one call per step.

Why: at low rates every scan message is a turn of its own, and what a turn costs is the
engine's added latency. Made of Python calls (route, audit encode, wire encode, sequence
numbers, counting), a one-event turn spent ~20 us in calls and checks around ~1 us of work.
The parts stay where they live: routing in `sorter.core._core`, the IPC message in `sorter.audit._audit`,
the wire format in `sorter.wire._wire`; this module only strings them together at C level. The I/O
stays with the engine: it writes the audit message (`AuditWriter.write_message`) before it
sends the decision message.
"""
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from sorter._shared cimport column_data, new_column, offsets_bad
from sorter.core._core cimport RouterState
from sorter.audit._audit cimport DecisionEncoder
from sorter.wire._wire cimport encode_decisions_at_c

import numpy as np

from sorter.core.codes import REASONS as _REASONS

cnp.import_array()

cdef int N_REASONS = len(_REASONS)


cdef class EngineTurn:
    """Decides batches into arrays it owns (grown as needed) and an audit encoder of its own.

    `run(...)` routes one batch, encodes its audit message (`encoder`, or `audit_length` -1
    when a read is not UTF-8: write that batch through `AuditWriter.write_decisions`) and
    returns its DECISION message. `count(sent_ns, recv_ns)` then keeps the batch's figures
    until `take_counts()` hands them over for the metrics fold."""
    def __cinit__(self, Py_ssize_t capacity=1024, Py_ssize_t count_capacity=1 << 16):
        self.encoder = DecisionEncoder()
        self._grow(max(capacity, 1))
        self._c_reason = np.empty(max(count_capacity, 1), np.uint8)
        self._c_scan = np.empty(max(count_capacity, 1), np.int64)
        self._c_engine = np.empty(max(count_capacity, 1), np.int64)
        self.n = 0
        self.audit_length = 0

    cdef _grow(self, Py_ssize_t capacity):
        self._chute = new_column(capacity, cnp.NPY_UINT16)
        self._reason = new_column(capacity, cnp.NPY_UINT8)
        self._dest = new_column(capacity, cnp.NPY_INT32)

    def run(self, RouterState router, parcel_ids, scanner_ids, ts_ns, recirculations,
            event_offsets, read_offsets, data, seq, int64_t now_ns, int64_t deadline_ns,
            uint64_t first_decision_seq, bytes plan_version, name_offsets, name_data,
            uint32_t batch_seq, Py_ssize_t max_frame, Py_ssize_t max_records):
        """Route the batch (columns as `sorter.core.events.EventBatch` holds them, `seq` its wire
        sequence numbers) by `router`'s plan at `now_ns`, encode its audit record batch
        (decision numbers from first_decision_seq; destination names by index in
        name_offsets/name_data, which must be the plan's) and return its DECISION message
        (`plan_version` UTF-8, `batch_seq`). Raises ValueError for inconsistent columns,
        TypeError for a column that is not an array of its type, WireError for a message the
        limits refuse (nothing is kept then)."""
        cdef Py_ssize_t n = cnp.PyArray_SIZE(event_offsets) - 1 if isinstance(
            event_offsets, cnp.ndarray) else -1
        if n < 1:
            raise ValueError("a turn needs at least one event (event_offsets of n + 1 >= 2)")
        cdef const int32_t* eo = <const int32_t*> column_data(event_offsets, cnp.NPY_INT32, n + 1, "event_offsets")
        cdef const int32_t* ro = <const int32_t*> column_data(read_offsets, cnp.NPY_INT32, -1, "read_offsets")
        cdef const uint8_t* bytes_ = <const uint8_t*> column_data(data, cnp.NPY_UINT8, -1, "data")
        cdef const uint64_t* pid = <const uint64_t*> column_data(parcel_ids, cnp.NPY_UINT64, n, "parcel_ids")
        cdef const uint16_t* sc = <const uint16_t*> column_data(scanner_ids, cnp.NPY_UINT16, n, "scanner_ids")
        cdef const int64_t* ts = <const int64_t*> column_data(ts_ns, cnp.NPY_INT64, n, "ts_ns")
        cdef const uint8_t* rc = <const uint8_t*> column_data(recirculations, cnp.NPY_UINT8, n, "recirculations")
        cdef const uint64_t* sq = <const uint64_t*> column_data(seq, cnp.NPY_UINT64, n, "seq")
        cdef const int32_t* no = <const int32_t*> column_data(name_offsets, cnp.NPY_INT32, -1, "name_offsets")
        cdef const uint8_t* nd = <const uint8_t*> column_data(name_data, cnp.NPY_UINT8, -1, "name_data")
        cdef Py_ssize_t n_reads = cnp.PyArray_SIZE(read_offsets) - 1
        cdef Py_ssize_t n_names = cnp.PyArray_SIZE(name_offsets) - 1
        if n_reads < 0 or n_names < 0:
            raise ValueError("offsets need at least one entry")
        if (offsets_bad(eo, n + 1, n_reads) or offsets_bad(ro, n_reads + 1, cnp.PyArray_SIZE(data))
                or offsets_bad(no, n_names + 1, cnp.PyArray_SIZE(name_data))):
            raise ValueError("offsets are not non-decreasing offsets into their data")
        message = self.run_c(router, n, pid, sc, ts, rc, eo, ro, bytes_, sq, now_ns,
                             deadline_ns, first_decision_seq, plan_version, no, n_names, nd,
                             batch_seq, max_frame, max_records)
        self._ts_ref = ts_ns
        return message

    cdef bytes run_c(self, RouterState router, Py_ssize_t n, const uint64_t* pid,
                     const uint16_t* sc, const int64_t* ts, const uint8_t* rc,
                     const int32_t* eo, const int32_t* ro, const uint8_t* bytes_,
                     const uint64_t* sq, int64_t now_ns, int64_t deadline_ns,
                     uint64_t first_decision_seq, bytes plan_version, const int32_t* no,
                     Py_ssize_t n_names, const uint8_t* nd, uint32_t batch_seq,
                     Py_ssize_t max_frame, Py_ssize_t max_records):
        """`run` on checked columns. The scan times `ts` must stay valid until `count_c`
        (the caller owns them)."""
        if cnp.PyArray_DIM(self._chute, 0) < n:
            self._grow(n)
        cdef uint16_t* chute = <uint16_t*> cnp.PyArray_DATA(self._chute)
        cdef uint8_t* reason = <uint8_t*> cnp.PyArray_DATA(self._reason)
        cdef int32_t* dest = <int32_t*> cnp.PyArray_DATA(self._dest)
        self.n = 0
        self._ts_ref = None
        router.route_c(eo, ro, bytes_, rc, ts, now_ns, deadline_ns, chute, reason, dest, n)
        message = encode_decisions_at_c(<const uint8_t*> (<char*> plan_version), len(plan_version),
                                        n, pid, sq, NULL, first_decision_seq, chute, reason, sc,
                                        batch_seq, max_frame, max_records, now_ns)
        self.audit_length = self.encoder.encode_c(
            now_ns, n, sc, pid, sq, first_decision_seq, eo, ro, bytes_, chute, reason, dest, no,
            n_names, nd, <const uint8_t*> (<char*> plan_version), len(plan_version), ts, rc,
            N_REASONS)
        self.n = n
        self._ts = ts
        return message

    def decisions(self):
        """(chute, reason, destination) of the last batch: views, valid until the next run."""
        return self._chute[:self.n], self._reason[:self.n], self._dest[:self.n]

    def count(self, int64_t sent_ns, recv_ns):
        """Keep the last batch's reasons and latencies (scan -> sent, received -> sent;
        `recv_ns` an int for the whole batch or an int64 array per event). Returns False
        (nothing kept) when the buffers are full: `take_counts()` first, then again."""
        cdef const int64_t* recv = NULL
        cdef int64_t one = 0
        if self.n == 0:
            return True
        if not self.has_room(self.n):
            return False
        if isinstance(recv_ns, int):
            one = recv_ns
        else:
            recv = <const int64_t*> column_data(recv_ns, cnp.NPY_INT64, self.n, "recv_ns")
        self.count_c(sent_ns, recv, one)
        return True

    cdef bint has_room(self, Py_ssize_t n) noexcept:
        """Whether `count_c` can keep n more events (an empty buffer always can: it grows)."""
        return self._counted == 0 or self._counted + n <= cnp.PyArray_DIM(self._c_reason, 0)

    cdef int count_c(self, int64_t sent_ns, const int64_t* recv, int64_t one) except -1:
        """`count` with the receive times as a pointer (one per event) or, when NULL, `one`.
        The caller checked `has_room`."""
        cdef Py_ssize_t n = self.n, i, start = self._counted
        if n == 0:
            return 0
        if start + n > cnp.PyArray_DIM(self._c_reason, 0):     # only when empty: make room
            self._c_reason = np.empty(n, np.uint8)
            self._c_scan = np.empty(n, np.int64)
            self._c_engine = np.empty(n, np.int64)
        cdef uint8_t* cr = <uint8_t*> cnp.PyArray_DATA(self._c_reason) + start
        cdef int64_t* cs = <int64_t*> cnp.PyArray_DATA(self._c_scan) + start
        cdef int64_t* ce = <int64_t*> cnp.PyArray_DATA(self._c_engine) + start
        cdef const uint8_t* reason = <const uint8_t*> cnp.PyArray_DATA(self._reason)
        for i in range(n):
            cr[i] = reason[i]
            cs[i] = sent_ns - self._ts[i]
            ce[i] = sent_ns - (recv[i] if recv != NULL else one)
        self._counted = start + n
        self._batches += 1
        self.n = 0                            # counted once
        self._ts_ref = None
        return 0

    def take_counts(self):
        """(reason uint8, scan_to_decision_ns int64, engine_ns int64, batches) kept since the
        last call, as copies; the buffers start over."""
        cdef Py_ssize_t k = self._counted
        out = (self._c_reason[:k].copy(), self._c_scan[:k].copy(), self._c_engine[:k].copy(),
               self._batches)
        self._counted = self._batches = 0
        return out
