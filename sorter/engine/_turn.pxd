# C-level face of sorter.engine._turn.
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t


cdef class BatchDecider:
    cdef cnp.ndarray _chute, _reason, _dest
    cdef readonly Py_ssize_t n
    cdef readonly bytes plan_version
    cdef readonly int64_t deadline_ns
    cdef readonly Py_ssize_t max_frame, max_records
    cdef readonly int decision_version        # 1, or 2: DECISION messages carry decided_ns
    cdef const int64_t* _ts                   # scan times of the last batch (held by _ts_ref)
    cdef object _ts_ref
    # per event since take_counts(): reason, scan -> sent, received -> sent, chute
    cdef cnp.ndarray _c_reason, _c_scan, _c_engine, _c_chute
    cdef Py_ssize_t _counted, _batches

    cdef _grow(self, Py_ssize_t capacity)
    cdef bint has_room(self, Py_ssize_t n) noexcept
    cdef int count_c(self, int64_t sent_ns, const int64_t* recv, int64_t one) except -1
