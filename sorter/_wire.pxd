# C-level face of sorter._wire, for compiled callers (sorter._turn).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef bytes encode_decisions_c(const uint8_t* plan_version, Py_ssize_t plv, Py_ssize_t n,
                              const uint64_t* ppid, const uint64_t* pseq, const uint64_t* pdseq,
                              uint64_t first_dseq, const uint16_t* chute, const uint8_t* reason,
                              const uint16_t* psc, uint32_t batch_seq, Py_ssize_t max_frame,
                              Py_ssize_t max_records)
