# cython: language_level=3
"""One engine turn's compiled part: route the decoded scans, encode their DECISION message, and
keep their counts, in one call per turn (`BatchDecider`).

Why: at low rates every scan message is a turn of its own, and what a turn costs is the
engine's added latency. Made of Python calls (route, wire encode, sequence numbers, counting),
a one-event turn spent ~20 us in calls and checks around ~1 us of work. The parts stay where
they live: routing in `sorter.core._core`, the wire format in `sorter.wire._wire`; this module
only strings them together at C level. The I/O stays with the engine: it journals the turn
(`sorter.audit.journal`) before it sends the DECISION message.
"""
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from sorter._shared cimport column_data, new_column, offsets_bad
from sorter.core._core cimport RouterState
from sorter.wire._wire cimport encode_decisions_at_c, encode_decisions_c

import numpy as np

cnp.import_array()


cdef class BatchDecider:
    """Decides batches into arrays it owns (grown as needed) and keeps their counts.

    `configure(plan_version, deadline_ns, max_frame, max_records)` once per plan (and at
    start); `run(router, events, seq, now_ns, first_decision_seq, batch_seq)` routes one
    batch and returns its DECISION message; `decisions()` are its (chute, reason,
    destination) columns. `count(sent_ns, recv_ns)` then keeps the batch's figures until
    `take_counts()` hands them over for the metrics fold."""
    def __cinit__(self, Py_ssize_t capacity=1024, Py_ssize_t count_capacity=1 << 16):
        self._grow(max(capacity, 1))
        self.decision_version = 2
        self._c_reason = np.empty(max(count_capacity, 1), np.uint8)
        self._c_scan = np.empty(max(count_capacity, 1), np.int64)
        self._c_engine = np.empty(max(count_capacity, 1), np.int64)
        self._c_chute = np.empty(max(count_capacity, 1), np.uint16)
        self.n = 0
        self.plan_version = b""
        self.deadline_ns = 0
        self.max_frame = 16 * 1024 * 1024
        self.max_records = 65536

    cdef _grow(self, Py_ssize_t capacity):
        self._chute = new_column(capacity, cnp.NPY_UINT16)
        self._reason = new_column(capacity, cnp.NPY_UINT8)
        self._dest = new_column(capacity, cnp.NPY_INT32)

    def configure(self, bytes plan_version, int64_t deadline_ns, Py_ssize_t max_frame,
                  Py_ssize_t max_records, int decision_version=2):
        """What stays the same from turn to turn: the plan's version (UTF-8, in every
        DECISION message), the `late` deadline (0: none), the wire limits and the DECISION
        version to send (1, or 2 with the decision time: docs/protocol.md 6.1)."""
        if decision_version not in (1, 2):
            raise ValueError(f"decision_version must be 1 or 2, got {decision_version}")
        self.decision_version = decision_version
        self.plan_version = plan_version
        self.deadline_ns = deadline_ns
        self.max_frame = max_frame
        self.max_records = max_records

    def run(self, RouterState router, events, seq, int64_t now_ns,
            uint64_t first_decision_seq, uint32_t batch_seq):
        """Route `events` (a `sorter.core.events.EventBatch`; `seq` its wire sequence
        numbers) by `router`'s plan at `now_ns` and return its DECISION message (decision
        numbers from first_decision_seq, `batch_seq`). Raises ValueError for inconsistent
        columns, TypeError for a column that is not an array of its type, WireError for a
        message the limits refuse (nothing is kept then)."""
        event_offsets, read_offsets, data = events.event_offsets, events.read_offsets, events.data
        ts_ns = events.ts_ns
        cdef Py_ssize_t n = cnp.PyArray_SIZE(event_offsets) - 1 if isinstance(
            event_offsets, cnp.ndarray) else -1
        if n < 1:
            raise ValueError("a turn needs at least one event (event_offsets of n + 1 >= 2)")
        cdef const int32_t* eo = <const int32_t*> column_data(event_offsets, cnp.NPY_INT32, n + 1, "event_offsets")
        cdef const int32_t* ro = <const int32_t*> column_data(read_offsets, cnp.NPY_INT32, -1, "read_offsets")
        cdef const uint8_t* bytes_ = <const uint8_t*> column_data(data, cnp.NPY_UINT8, -1, "data")
        cdef const uint64_t* pid = <const uint64_t*> column_data(events.parcel_ids, cnp.NPY_UINT64, n, "parcel_ids")
        cdef const uint16_t* sc = <const uint16_t*> column_data(events.scanner_ids, cnp.NPY_UINT16, n, "scanner_ids")
        cdef const int64_t* ts = <const int64_t*> column_data(ts_ns, cnp.NPY_INT64, n, "ts_ns")
        cdef const uint8_t* rc = <const uint8_t*> column_data(events.recirculations, cnp.NPY_UINT8, n, "recirculations")
        cdef const uint64_t* sq = <const uint64_t*> column_data(seq, cnp.NPY_UINT64, n, "seq")
        cdef Py_ssize_t n_reads = cnp.PyArray_SIZE(read_offsets) - 1
        if n_reads < 0:
            raise ValueError("offsets need at least one entry")
        if offsets_bad(eo, n + 1, n_reads) or offsets_bad(ro, n_reads + 1, cnp.PyArray_SIZE(data)):
            raise ValueError("offsets are not non-decreasing offsets into their data")
        if cnp.PyArray_DIM(self._chute, 0) < n:
            self._grow(n)
        cdef uint16_t* chute = <uint16_t*> cnp.PyArray_DATA(self._chute)
        cdef uint8_t* reason = <uint8_t*> cnp.PyArray_DATA(self._reason)
        cdef int32_t* dest = <int32_t*> cnp.PyArray_DATA(self._dest)
        self.n = 0
        self._ts_ref = None
        router.route_c(eo, ro, bytes_, rc, ts, now_ns, self.deadline_ns, chute, reason, dest, n)
        if self.decision_version == 2:
            message = encode_decisions_at_c(<const uint8_t*> (<char*> self.plan_version),
                                            len(self.plan_version), n, pid, sq, NULL,
                                            first_decision_seq, chute, reason, sc, batch_seq,
                                            self.max_frame, self.max_records, now_ns)
        else:
            message = encode_decisions_c(<const uint8_t*> (<char*> self.plan_version),
                                         len(self.plan_version), n, pid, sq, NULL,
                                         first_decision_seq, chute, reason, sc, batch_seq,
                                         self.max_frame, self.max_records)
        self.n = n
        self._ts = ts
        self._ts_ref = ts_ns
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
            self._c_chute = np.empty(n, np.uint16)
        cdef uint16_t* cc = <uint16_t*> cnp.PyArray_DATA(self._c_chute) + start
        cdef const uint16_t* chute = <const uint16_t*> cnp.PyArray_DATA(self._chute)
        cdef uint8_t* cr = <uint8_t*> cnp.PyArray_DATA(self._c_reason) + start
        cdef int64_t* cs = <int64_t*> cnp.PyArray_DATA(self._c_scan) + start
        cdef int64_t* ce = <int64_t*> cnp.PyArray_DATA(self._c_engine) + start
        cdef const uint8_t* reason = <const uint8_t*> cnp.PyArray_DATA(self._reason)
        for i in range(n):
            cr[i] = reason[i]
            cc[i] = chute[i]
            cs[i] = sent_ns - self._ts[i]
            ce[i] = sent_ns - (recv[i] if recv != NULL else one)
        self._counted = start + n
        self._batches += 1
        self.n = 0                            # counted once
        self._ts_ref = None
        return 0

    def take_counts(self):
        """(reason uint8, scan_to_decision_ns int64, engine_ns int64, batches) kept since the
        last call, as copies; the buffers start over. The chutes of the same events are
        `take_chutes()`'s: call it first."""
        cdef Py_ssize_t k = self._counted
        out = (self._c_reason[:k].copy(), self._c_scan[:k].copy(), self._c_engine[:k].copy(),
               self._batches)
        self._counted = self._batches = 0
        return out

    def take_chutes(self):
        """The chute (uint16) of every event `take_counts()` will hand over, in the same
        order, as a copy; call it just before `take_counts()`, which starts the buffers over."""
        return self._c_chute[:self._counted].copy()
