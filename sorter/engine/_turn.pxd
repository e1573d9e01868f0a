# C-level face of sorter.engine._turn, for compiled callers (sorter.engine._scanloop).
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from sorter.audit._audit cimport DecisionEncoder
from sorter.core._core cimport RouterState


cdef class EngineTurn:
    cdef readonly DecisionEncoder encoder
    cdef cnp.ndarray _chute, _reason, _dest
    cdef readonly Py_ssize_t n
    cdef readonly Py_ssize_t audit_length
    cdef const int64_t* _ts                   # scan times of the last batch (held by _ts_ref)
    cdef object _ts_ref
    # per event since take_counts(): reason, scan -> sent, received -> sent, chute
    cdef cnp.ndarray _c_reason, _c_scan, _c_engine, _c_chute
    cdef Py_ssize_t _counted, _batches

    cdef _grow(self, Py_ssize_t capacity)
    cdef bytes run_c(self, RouterState router, Py_ssize_t n, const uint64_t* pid,
                     const uint16_t* sc, const int64_t* ts, const uint8_t* rc,
                     const int32_t* eo, const int32_t* ro, const uint8_t* bytes_,
                     const uint64_t* sq, int64_t now_ns, int64_t deadline_ns,
                     uint64_t first_decision_seq, bytes plan_version, const int32_t* no,
                     Py_ssize_t n_names, const uint8_t* nd, uint32_t batch_seq,
                     Py_ssize_t max_frame, Py_ssize_t max_records)
    cdef bint has_room(self, Py_ssize_t n) noexcept
    cdef int count_c(self, int64_t sent_ns, const int64_t* recv, int64_t one) except -1
