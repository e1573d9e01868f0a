# C-level face of sorter.audit._audit: the encoder, for compiled callers (sorter.engine._turn, sorter.engine._scanloop).
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t


cdef bint utf8_ok(const uint8_t* p, Py_ssize_t n) noexcept nogil


cdef class DecisionEncoder:
    cdef uint8_t* buf
    cdef Py_ssize_t cap, length, body_start, pos
    cdef int node_i, buffer_i

    cdef int _reserve(self, Py_ssize_t need) except -1
    cdef void _node(self, int64_t length, int64_t nulls) noexcept nogil
    cdef uint8_t* _buffer(self, Py_ssize_t nbytes) noexcept nogil
    cdef void _copy(self, const void* src, Py_ssize_t nbytes) noexcept nogil
    cdef void _absent(self) noexcept nogil
    cdef void _fixed(self, int64_t n, const void* src, Py_ssize_t width) noexcept nogil
    cdef void _all_null_binary(self, int64_t n) noexcept nogil
    cdef Py_ssize_t encode_c(self, int64_t now_ns, Py_ssize_t n, const uint16_t* scanner,
                             const uint64_t* parcel, const uint64_t* seqs,
                             uint64_t first_decision_seq, const int32_t* eo, const int32_t* ro,
                             const uint8_t* bytes_, const uint16_t* chute, const uint8_t* reason,
                             const int32_t* destination, const int32_t* name_offsets,
                             Py_ssize_t n_names, const uint8_t* name_data,
                             const uint8_t* plan_version, Py_ssize_t pv, const int64_t* scan_ts,
                             const uint8_t* recirc, int n_reasons) except -2
    cdef Py_ssize_t write_c(self, int fd) except -1
