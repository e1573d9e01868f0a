# C-level face of sorter.wire._wire, for compiled callers (sorter.engine._turn, sorter.engine._scanloop).
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    HEADER_SIZE = 16
    SCAN_FIXED = 28
    DECISION_RECORD = 32
    CHUTE_RECORD = 4
    CONFIRM_RECORD = 16
    VERSION = 1
    VERSION_DECIDED = 2                 # a DECISION message with its decision time (protocol.md 6.1)
    K_SCAN = 1
    K_DECISION = 2
    K_CHUTE_STATUS = 3
    K_SORT_CONFIRM = 4
    K_HEARTBEAT = 5
    N_OUTCOMES = 3
    MAX_FRAME_CAP = 0x7fffffff          # int32 offsets into one frame's bytes stay exact
    MAX_OFFSET = 0x7fffffff             # int32 offsets of a combined batch (decode_scans)
    NOGIL_BYTES = 32768                 # decode_scans releases the GIL from this many bytes on


cdef enum:
    OK = 0
    E_BAD_MAGIC = 1
    E_UNKNOWN_VERSION = 2
    E_UNKNOWN_KIND = 3
    E_TRUNCATED = 4
    E_OVERSIZED = 5
    E_TOO_MANY_RECORDS = 6
    E_LENGTH_MISMATCH = 7
    E_UNEXPECTED_KIND = 8
    E_BAD_RECORD = 9
    E_TOO_MANY_READS = 10
    E_READ_TOO_LONG = 11


cdef struct Header:
    uint8_t version
    uint8_t kind
    uint32_t count
    uint32_t body_len
    uint32_t batch_seq


cdef struct Limits:
    Py_ssize_t max_frame
    Py_ssize_t max_records
    int max_reads
    int max_read_len


cdef struct Frame:
    const uint8_t* p             # the frame's bytes (EMPTY when it has none)
    Py_ssize_t size
    Header h                     # h.kind is 0 when the header itself is bad (checks 1-4)
    int err                      # OK, or the code of the first failed check
    Py_ssize_t off               # ... and its offset
    Py_ssize_t n_reads           # a valid SCAN: its reads and read bytes (first pass)
    Py_ssize_t n_data
    bint view                    # views[i] holds an acquired buffer to release


cdef Limits _limits(Py_ssize_t max_frame, Py_ssize_t max_records, int max_reads, int max_read_len)
cdef void scans_count(Frame* fs, Py_ssize_t n_frames, const Limits* lim, Py_ssize_t* n_events,
                      Py_ssize_t* n_reads, Py_ssize_t* n_data) noexcept nogil
cdef void scans_fill(Frame* fs, Py_ssize_t n_frames, const Limits* lim, uint64_t* pid,
                     uint64_t* seq, int64_t* ts, uint16_t* sc, uint8_t* rc, int32_t* eo,
                     int32_t* ro, uint8_t* data, int32_t* counts, uint8_t* kinds,
                     Py_ssize_t* n_events, Py_ssize_t* n_reads, Py_ssize_t* n_data) noexcept nogil


cdef bytes encode_decisions_c(const uint8_t* plan_version, Py_ssize_t plv, Py_ssize_t n,
                              const uint64_t* ppid, const uint64_t* pseq, const uint64_t* pdseq,
                              uint64_t first_dseq, const uint16_t* chute, const uint8_t* reason,
                              const uint16_t* psc, uint32_t batch_seq, Py_ssize_t max_frame,
                              Py_ssize_t max_records)
cdef bytes encode_decisions_at_c(const uint8_t* plan_version, Py_ssize_t plv, Py_ssize_t n,
                                 const uint64_t* ppid, const uint64_t* pseq, const uint64_t* pdseq,
                                 uint64_t first_dseq, const uint16_t* chute, const uint8_t* reason,
                                 const uint16_t* psc, uint32_t batch_seq, Py_ssize_t max_frame,
                                 Py_ssize_t max_records, int64_t decided_ns)
