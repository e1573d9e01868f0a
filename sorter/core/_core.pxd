# C-level types of the routing core. The numbers repeat sorter/core/codes.py (a test checks them).
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint16_t, int32_t, int64_t, uint64_t

cdef enum:
    R_SORTED = 0
    R_NO_READ = 1
    R_INVALID = 2
    R_CONFLICT = 3
    R_UNKNOWN_DESTINATION = 4
    R_RECIRCULATE = 5
    R_OVERFLOW = 6
    R_LATE = 7
    R_MALFORMED = 8
    N_REASONS = 9

cdef enum:
    K_UNKNOWN = 0
    K_S10 = 1
    K_GS1 = 2
    K_POSTCODE = 3

cdef enum:
    E_OK = 0
    E_BAD_LENGTH = 1
    E_BAD_CHARACTER = 2
    E_BAD_CHECK_DIGIT = 3
    E_RESERVED_SERVICE = 4
    E_BAD_AI_FIELD = 5
    E_BAD_GS1_SYNTAX = 6
    E_UNRECOGNISED = 7

cdef enum:
    CHUTE_AVAILABLE = 0
    CHUTE_DISABLED = 1
    CHUTE_FULL = 2
    N_CHUTES = 65536

cdef enum:
    POLICY_FILL_FIRST = 0
    POLICY_ROUND_ROBIN = 1

cdef enum:
    NO_COUNTRY = 0xFFFF
    MAX_POSTCODE = 20
    TRIE_FANOUT = 36

# One decoded read: everything routing needs, nothing it does not.
cdef struct Decoded:
    uint8_t kind
    uint8_t error
    uint8_t service0          # S10 service indicator letters, 0 when absent
    uint8_t service1
    uint8_t postcode_len      # 0 when absent
    uint16_t dest_country     # ISO numeric, NO_COUNTRY when absent
    uint64_t item_key         # manifest key (S10 or SSCC), 0 when absent
    char postcode[MAX_POSTCODE]

# One manifest hash slot: key and destination side by side, one cache line access per probe.
cdef struct ManifestSlot:
    uint64_t key                   # 0 = empty
    int32_t dest                   # -1 = the row resolves to no destination
    int32_t _pad

# The immutable tables of one compiled plan, as raw pointers into arrays the plan owns.
cdef struct Tables:
    uint16_t home_country
    int32_t n_destinations
    const int32_t* trie_children   # n_nodes * TRIE_FANOUT, -1 = none; node 0 is the root
    const int32_t* trie_dest       # n_nodes, -1 = none
    const int32_t* country_dest    # 1000, -1 = none
    const int32_t* service_dest    # 26 * 27: [first*27 + second], [first*27 + 26] = one-letter rule
    const ManifestSlot* manifest   # capacity slots
    uint64_t manifest_mask         # capacity - 1 (capacity is a power of two)
    const int32_t* group_offsets   # n_destinations + 1
    const uint16_t* group_chutes
    const uint8_t* policy          # n_destinations
    uint16_t special[N_REASONS]    # chute per reason, 0 = none
    int32_t recirculation_limit


# The compiled classes, declared here so that other compiled modules (sorter.engine._turn) can call
# the router at C level, without a Python call per batch.
cdef class CompiledPlan:
    cdef Tables t
    cdef object _keep          # the arrays the raw pointers in `t` point into
    cdef readonly int manifest_rows
    cdef readonly int n_destinations
    cdef list _build_manifest(self, keys_in, countries_in, pc_offsets_in, pc_data_in)


cdef class RouterState:
    cdef CompiledPlan _plan
    cdef uint8_t state[N_CHUTES]
    cdef cnp.ndarray _rr       # int32 per destination: last chosen position (round robin)
    cdef Py_ssize_t route_c(self, const int32_t* ev_off, const int32_t* rd_off,
                            const uint8_t* data, const uint8_t* recirc, const int64_t* ts,
                            int64_t now_ns, int64_t deadline_ns, uint16_t* chute,
                            uint8_t* reason, int32_t* dest, Py_ssize_t n) except -1
