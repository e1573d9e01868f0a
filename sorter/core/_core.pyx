# cython: language_level=3
"""The compiled routing core: decode reads, resolve destinations, choose chutes.

Sans-IO: columnar arrays in, columnar arrays out. Every hot loop runs without the GIL over
typed memoryviews and C structs; docs/routing.md is the specification and
`sorter.core.reference` the readable twin this module is tested against.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint16_t, int32_t, int64_t, uint64_t
from libc.string cimport memset, memcpy

from sorter._shared cimport as_column, offsets_bad, out_column

from sorter.core import gs1_ai as _gs1_ai

cnp.import_array()

# ---------------------------------------------------------------------------------------------
# GS1 Application Identifier tables, built once at import from sorter/core/gs1_ai.py.
# AI index: 2-digit AIs at 0..99, 3-digit at 100 + ai, 4-digit at 1100 + ai.

cdef struct AiInfo:
    uint8_t known
    uint8_t minlen
    uint8_t maxlen
    uint8_t numeric
    uint8_t routing     # 1 = 00, 2 = 401, 3 = 403, 4 = 420, 5 = 421

cdef enum:
    AI_SLOTS = 11100
    RT_NONE = 0
    RT_SSCC = 1
    RT_401 = 2
    RT_403 = 3
    RT_420 = 4
    RT_421 = 5

cdef uint8_t AI_LEN[100]
cdef uint8_t PREDEF[100]
cdef AiInfo AI[AI_SLOTS]
cdef uint8_t CS82[256]
cdef uint8_t EMPTY[1]                    # a valid base pointer for empty data buffers


cdef int _ai_slot(str ai):
    if len(ai) == 2:
        return int(ai)
    if len(ai) == 3:
        return 100 + int(ai)
    return 1100 + int(ai)


def _build_ai_tables():
    memset(AI_LEN, 0, sizeof(AI_LEN))
    memset(PREDEF, 0, sizeof(PREDEF))
    memset(AI, 0, sizeof(AI))
    memset(CS82, 0, sizeof(CS82))
    for prefix, n in _gs1_ai.AI_LENGTH_BY_PREFIX.items():
        AI_LEN[int(prefix)] = n
    for prefix, n in _gs1_ai.PREDEFINED_LENGTH.items():
        PREDEF[int(prefix)] = n
    routing = {"00": RT_SSCC, "401": RT_401, "403": RT_403, "420": RT_420, "421": RT_421}
    for ai, (lo, hi, numeric) in _gs1_ai.AI_TABLE.items():
        s = _ai_slot(ai)
        AI[s].known = 1
        AI[s].minlen = lo
        AI[s].maxlen = hi
        AI[s].numeric = 1 if numeric else 0
        AI[s].routing = routing.get(ai, RT_NONE)
    for b in _gs1_ai.CHARSET_82:
        CS82[b] = 1


_build_ai_tables()

cdef int S10_WEIGHTS[8]
S10_WEIGHTS[:] = [8, 6, 4, 2, 3, 5, 9, 7]

# ---------------------------------------------------------------------------------------------
# Decoding


cdef inline bint is_digit(uint8_t c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint is_upper(uint8_t c) noexcept nogil:
    return 65 <= c <= 90


cdef inline bint is_letter(uint8_t c) noexcept nogil:
    return 65 <= c <= 90 or 97 <= c <= 122


cdef inline uint64_t s10_key(const uint8_t* p) noexcept nogil:
    """Manifest key of a shape-checked S10 id (see sorter.core.barcodes.item_key)."""
    cdef uint64_t d = 0
    cdef int i
    for i in range(2, 11):
        d = d * 10 + (p[i] - 48)
    return (<uint64_t>1 << 61) | (((((<uint64_t>(p[0] - 65)) * 26 + (p[1] - 65)) * 1000000000ULL + d)
                                    * 26 + (p[11] - 65)) * 26 + (p[12] - 65))


cdef inline uint64_t sscc_key(const uint8_t* p) noexcept nogil:
    cdef uint64_t d = 0
    cdef int i
    for i in range(18):
        d = d * 10 + (p[i] - 48)
    return (<uint64_t>1 << 62) | d


cdef inline int s10_error(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef int i, s, c
    if n != 13:
        return E_BAD_LENGTH
    if not (is_upper(p[0]) and is_upper(p[1]) and is_upper(p[11]) and is_upper(p[12])):
        return E_BAD_CHARACTER
    for i in range(2, 11):
        if not is_digit(p[i]):
            return E_BAD_CHARACTER
    c = p[0]
    if c == 74 or c == 75 or c == 83 or c == 84 or c == 87:   # J K S T W
        return E_RESERVED_SERVICE
    s = 0
    for i in range(8):
        s += (p[2 + i] - 48) * S10_WEIGHTS[i]
    c = 11 - s % 11
    if c == 10:
        c = 0
    elif c == 11:
        c = 5
    if c != p[10] - 48:
        return E_BAD_CHECK_DIGIT
    return E_OK


cdef inline bint gs1_check_ok(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """GS1 mod-10 over n digits, the last being the check digit."""
    cdef int s = 0, w = 3
    cdef Py_ssize_t i
    for i in range(n - 2, -1, -1):
        s += (p[i] - 48) * w
        w = 4 - w
    return (10 - s % 10) % 10 == p[n - 1] - 48


cdef inline bint field_ok(const AiInfo* info, const uint8_t* f, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if n < info.minlen or n > info.maxlen:
        return False
    for i in range(n):
        if info.numeric:
            if not is_digit(f[i]):
                return False
        elif not CS82[f[i]]:
            return False
    return True


cdef int decode_gs1(const uint8_t* p, Py_ssize_t n, uint16_t home, Decoded* d) noexcept nogil:
    """Split an element string and keep its routing AIs (docs/routing.md 1.3)."""
    cdef Py_ssize_t i = 0, start, end, k, alen, flen
    cdef int pre, code, slot, field_error = E_OK, elements = 0
    cdef const AiInfo* info
    cdef bint seen_sscc = False, seen_420 = False, seen_421 = False
    cdef const uint8_t* pc420 = NULL
    cdef const uint8_t* pc421 = NULL
    cdef Py_ssize_t len420 = 0, len421 = 0
    cdef uint16_t country421 = 0
    d.kind = K_GS1
    while i < n:
        if p[i] == 29:
            i += 1
            continue
        if i + 2 > n or not is_digit(p[i]) or not is_digit(p[i + 1]):
            d.error = E_BAD_GS1_SYNTAX
            return 0
        pre = (p[i] - 48) * 10 + (p[i + 1] - 48)
        alen = AI_LEN[pre]
        if alen == 0 or i + alen > n:
            d.error = E_BAD_GS1_SYNTAX
            return 0
        code = 0
        for k in range(i, i + alen):
            if not is_digit(p[k]):
                d.error = E_BAD_GS1_SYNTAX
                return 0
            code = code * 10 + (p[k] - 48)
        slot = code if alen == 2 else (100 + code if alen == 3 else 1100 + code)
        info = &AI[slot]
        if not info.known:
            d.error = E_BAD_GS1_SYNTAX
            return 0
        start = i + alen
        if PREDEF[pre]:
            flen = PREDEF[pre] - alen
            if start + flen > n:
                d.error = E_BAD_AI_FIELD if info.routing else E_BAD_GS1_SYNTAX
                return 0
            end = start + flen
        else:
            end = start
            while end < n and p[end] != 29:
                end += 1
        elements += 1
        i = end
        if info.routing == RT_NONE or field_error != E_OK:
            continue
        flen = end - start
        if info.routing == RT_421:
            if flen < 3 or flen > 12 or not (is_digit(p[start]) and is_digit(p[start + 1])
                                             and is_digit(p[start + 2])):
                field_error = E_BAD_AI_FIELD
                continue
            for k in range(start + 3, end):
                if not CS82[p[k]]:
                    field_error = E_BAD_AI_FIELD
                    break
            if field_error == E_OK and not seen_421:
                seen_421 = True
                country421 = (p[start] - 48) * 100 + (p[start + 1] - 48) * 10 + (p[start + 2] - 48)
                pc421 = p + start + 3
                len421 = flen - 3
            continue
        if not field_ok(info, p + start, flen):
            field_error = E_BAD_AI_FIELD
            continue
        if info.routing == RT_SSCC:
            if not gs1_check_ok(p + start, 18):
                field_error = E_BAD_CHECK_DIGIT
            elif not seen_sscc:
                seen_sscc = True
                d.item_key = sscc_key(p + start)
        elif info.routing == RT_420 and not seen_420:
            seen_420 = True
            pc420 = p + start
            len420 = flen
    if elements == 0:
        d.error = E_BAD_GS1_SYNTAX
        return 0
    if field_error != E_OK:
        d.error = field_error
        d.item_key = 0
        return 0
    if seen_421:
        d.dest_country = country421
        d.postcode_len = <uint8_t>len421
        memcpy(d.postcode, pc421, len421)
    elif seen_420:
        d.dest_country = home
        d.postcode_len = <uint8_t>len420
        memcpy(d.postcode, pc420, len420)
    return 0


cdef inline bint gs1_symbology(uint8_t a, uint8_t b) noexcept nogil:
    """Symbology identifiers of GS1 data: GS1-128, GS1 DataMatrix, GS1 QR, GS1 DataBar."""
    return (a == 67 and b == 49) or (a == 100 and b == 50) or (a == 81 and b == 51) or \
        (a == 101 and b == 48)


cdef inline bint new_postcode(const uint8_t* p) noexcept nogil:
    """`[A-Z][0-9]{2}[A-Z0-9]{4}` on 7 bytes."""
    cdef int k
    if not (is_upper(p[0]) and is_digit(p[1]) and is_digit(p[2])):
        return False
    for k in range(3, 7):
        if not (is_upper(p[k]) or is_digit(p[k])):
            return False
    return True


cdef int decode_read(const uint8_t* p, Py_ssize_t n, uint16_t home, Decoded* d) noexcept nogil:
    """Classify and validate one read (docs/routing.md section 1)."""
    cdef int k
    d.kind = K_UNKNOWN
    d.error = E_OK
    d.service0 = 0
    d.service1 = 0
    d.postcode_len = 0
    d.dest_country = NO_COUNTRY
    d.item_key = 0
    if n == 0:
        d.error = E_BAD_LENGTH
        return 0
    if n >= 3 and p[0] == 93 and gs1_symbology(p[1], p[2]):     # "]C1" "]d2" "]Q3" "]e0"
        return decode_gs1(p + 3, n - 3, home, d)
    if n >= 11 and n <= 15 and is_letter(p[0]) and is_letter(p[1]):
        d.kind = K_S10
        d.error = s10_error(p, n)
        if d.error == E_OK:
            d.service0 = p[0]
            d.service1 = p[1]
            d.item_key = s10_key(p)
        return 0
    if n == 7 and new_postcode(p):
        d.kind = K_POSTCODE
        memcpy(d.postcode, p, 7)
        d.postcode_len = 7
        d.dest_country = home
        return 0
    if n == 8 and p[3] == 32:
        d.postcode[0] = p[0]
        d.postcode[1] = p[1]
        d.postcode[2] = p[2]
        memcpy(d.postcode + 3, p + 4, 4)
        if new_postcode(<const uint8_t*>d.postcode):
            d.kind = K_POSTCODE
            d.postcode_len = 7
            d.dest_country = home
            return 0
    if n == 6:
        for k in range(6):
            if not is_digit(p[k]):
                break
        else:
            d.kind = K_POSTCODE
            memcpy(d.postcode, p, 6)
            d.postcode_len = 6
            d.dest_country = home
            return 0
    if is_digit(p[0]) or p[0] == 29:
        return decode_gs1(p, n, home, d)
    d.error = E_UNRECOGNISED
    return 0

# ---------------------------------------------------------------------------------------------
# Resolution


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


cdef extern from *:
    """
    #define SORTER_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 1)
    """
    void SORTER_PREFETCH(const void* p) noexcept nogil


cdef inline bint manifest_get(const Tables* t, uint64_t key, int32_t* dest) noexcept nogil:
    cdef uint64_t slot
    if t.manifest_mask == 0:
        return False
    slot = mix64(key) & t.manifest_mask
    while True:
        if t.manifest[slot].key == key:
            dest[0] = t.manifest[slot].dest
            return True
        if t.manifest[slot].key == 0:
            return False
        slot = (slot + 1) & t.manifest_mask


cdef inline void manifest_prefetch(const Tables* t, uint64_t key) noexcept nogil:
    """Start loading the key's slot now; resolving it later then rarely waits for memory."""
    if t.manifest_mask != 0 and key != 0:
        SORTER_PREFETCH(&t.manifest[mix64(key) & t.manifest_mask])


cdef inline int32_t trie_lookup(const Tables* t, const char* pc, int n) noexcept nogil:
    """Destination of the longest prefix rule that is a prefix of pc, or -1."""
    cdef int32_t node = 0, best = t.trie_dest[0], child
    cdef int i, c, idx
    for i in range(n):
        c = <uint8_t>pc[i]
        if 48 <= c <= 57:
            idx = c - 48
        elif 65 <= c <= 90:
            idx = c - 55
        else:
            break
        child = t.trie_children[node * TRIE_FANOUT + idx]
        if child < 0:
            break
        node = child
        if t.trie_dest[node] >= 0:
            best = t.trie_dest[node]
    return best


cdef inline int32_t resolve_address(const Tables* t, uint16_t country, const char* pc, int pclen,
                                    uint64_t key) noexcept nogil:
    """Steps 2 to 6 of docs/routing.md section 2."""
    cdef int32_t r
    if country != NO_COUNTRY and country != t.home_country:
        return t.country_dest[country] if country < 1000 else -1
    if pclen > 0:
        r = trie_lookup(t, pc, pclen)
        if r >= 0:
            return r
    if key != 0 and manifest_get(t, key, &r):
        return r
    if country == t.home_country:
        return t.country_dest[country] if country < 1000 else -1
    return -1


cdef inline int32_t resolve_read(const Tables* t, const Decoded* d, bint* via_service) noexcept nogil:
    cdef int32_t r
    via_service[0] = False
    if d.kind == K_S10:
        r = t.service_dest[(d.service0 - 65) * 27 + (d.service1 - 65)]
        if r < 0:
            r = t.service_dest[(d.service0 - 65) * 27 + 26]
        if r >= 0:
            via_service[0] = True
            return r
    return resolve_address(t, d.dest_country, d.postcode, d.postcode_len, d.item_key)

# ---------------------------------------------------------------------------------------------
# Compiled plan


cdef uint64_t _capacity_for(Py_ssize_t n):
    cdef uint64_t cap = 16
    while cap < <uint64_t>(n + n // 2 + 1):
        cap <<= 1
    return cap


cdef class CompiledPlan:
    """Immutable routing tables of one plan. Build with `sorter.core.router.compile_plan`.
    (Attributes: _core.pxd.)"""

    def __cinit__(self, *, int home_country, trie_children, trie_dest, country_dest, service_dest,
                  group_offsets, group_chutes, policy, special, int recirculation_limit,
                  manifest_keys=None, manifest_countries=None, manifest_pc_offsets=None,
                  manifest_pc_data=None):
        cdef cnp.ndarray[int32_t, ndim=1] tc = np.ascontiguousarray(trie_children, np.int32).ravel()
        cdef cnp.ndarray[int32_t, ndim=1] td = np.ascontiguousarray(trie_dest, np.int32)
        cdef cnp.ndarray[int32_t, ndim=1] cd = np.ascontiguousarray(country_dest, np.int32)
        cdef cnp.ndarray[int32_t, ndim=1] sd = np.ascontiguousarray(service_dest, np.int32)
        cdef cnp.ndarray[int32_t, ndim=1] go = np.ascontiguousarray(group_offsets, np.int32)
        cdef cnp.ndarray[uint16_t, ndim=1] gc = np.ascontiguousarray(group_chutes, np.uint16)
        cdef cnp.ndarray[uint8_t, ndim=1] po = np.ascontiguousarray(policy, np.uint8)
        cdef int i
        if td.shape[0] < 1 or tc.shape[0] != td.shape[0] * TRIE_FANOUT:
            raise ValueError("trie arrays do not match (need n_nodes >= 1 and n_nodes * 36 children)")
        if cd.shape[0] != 1000 or sd.shape[0] != 26 * 27:
            raise ValueError("country_dest needs 1000 entries and service_dest 702")
        if go.shape[0] != po.shape[0] + 1 or go[0] != 0 or go[go.shape[0] - 1] != gc.shape[0]:
            raise ValueError("group_offsets must have n_destinations + 1 entries spanning group_chutes")
        if not 0 <= home_country < 1000:
            raise ValueError(f"home_country {home_country} is not an ISO numeric code")
        n_dest = po.shape[0]
        for arr, name in ((td, "trie_dest"), (cd, "country_dest"), (sd, "service_dest")):
            if arr.shape[0] and (arr.max() >= n_dest or arr.min() < -1):
                raise ValueError(f"{name} names a destination outside 0..{n_dest - 1}")
        if tc.max() >= td.shape[0] or tc.min() < -1:
            raise ValueError("trie_children names a node that does not exist")
        memset(&self.t, 0, sizeof(Tables))
        self.t.home_country = home_country
        self.t.n_destinations = n_dest
        self.n_destinations = n_dest
        self.t.trie_children = &tc[0]
        self.t.trie_dest = &td[0]
        self.t.country_dest = &cd[0]
        self.t.service_dest = &sd[0]
        self.t.group_offsets = &go[0]
        self.t.group_chutes = &gc[0] if gc.shape[0] else NULL
        self.t.policy = &po[0] if n_dest else NULL
        self.t.recirculation_limit = recirculation_limit
        for reason, chute in special.items():
            if not 0 <= reason < N_REASONS:
                raise ValueError(f"special chute for unknown reason code {reason}")
            self.t.special[reason] = chute
        keep = [tc, td, cd, sd, go, gc, po]
        self.manifest_rows = 0
        if manifest_keys is not None:
            keep.extend(self._build_manifest(manifest_keys, manifest_countries,
                                             manifest_pc_offsets, manifest_pc_data))
        self._keep = keep

    cdef list _build_manifest(self, keys_in, countries_in, pc_offsets_in, pc_data_in):
        """Hash table item key -> destination; each row's address resolved now, once."""
        cdef const uint64_t[::1] keys = np.ascontiguousarray(keys_in, np.uint64)
        cdef const uint16_t[::1] countries = np.ascontiguousarray(countries_in, np.uint16)
        cdef const int32_t[::1] pco = np.ascontiguousarray(pc_offsets_in, np.int32)
        cdef const uint8_t[::1] pcd = np.ascontiguousarray(pc_data_in, np.uint8)
        cdef Py_ssize_t n = keys.shape[0], i
        if countries.shape[0] != n or pco.shape[0] != n + 1:
            raise ValueError("manifest columns differ in length")
        if n and (pco[0] < 0 or pco[n] > pcd.shape[0]):
            raise ValueError("manifest postcode offsets outside the data")
        cdef uint64_t cap = _capacity_for(n), mask = cap - 1, slot, key
        table = np.zeros(cap * sizeof(ManifestSlot), np.uint8)    # key 0 = empty
        cdef uint8_t[::1] raw = table
        cdef ManifestSlot* slots = <ManifestSlot*>&raw[0]
        cdef int32_t dest
        cdef int pclen, rows = 0
        cdef char pc[MAX_POSTCODE]
        with nogil:
            for i in range(n):
                key = keys[i]
                if key == 0:
                    continue
                pclen = pco[i + 1] - pco[i]
                if pclen > MAX_POSTCODE:      # prefix rules are at most MAX_POSTCODE long
                    pclen = MAX_POSTCODE
                if pclen:
                    memcpy(pc, &pcd[pco[i]], pclen)
                dest = resolve_address(&self.t, countries[i], pc, pclen, 0)
                slot = mix64(key) & mask
                while slots[slot].key != 0 and slots[slot].key != key:
                    slot = (slot + 1) & mask
                if slots[slot].key == 0:          # the first row of a duplicated id wins
                    slots[slot].key = key
                    slots[slot].dest = dest
                    rows += 1
        self.t.manifest = slots
        self.t.manifest_mask = mask
        self.manifest_rows = rows
        return [table]

    @property
    def nbytes(self):
        """Bytes held by the tables (the manifest hash table dominates)."""
        return sum(a.nbytes for a in self._keep)

    def lookup_postcode(self, bytes postcode):
        """Longest-prefix destination of one postcode, or -1 (for tools and tests)."""
        return trie_lookup(&self.t, postcode, len(postcode))

    def lookup_manifest(self, uint64_t key):
        """Destination of a manifest key: -1 for a row with no destination, None if absent."""
        cdef int32_t r
        if manifest_get(&self.t, key, &r):
            return r
        return None


# ---------------------------------------------------------------------------------------------
# Batch calls


cdef inline bint bad_offsets(const int32_t[::1] offsets, Py_ssize_t limit) noexcept nogil:
    """offsets_bad for a memoryview (empty: bad)."""
    return offsets_bad(&offsets[0] if offsets.shape[0] else NULL, offsets.shape[0], limit)


def decode_reads(const int32_t[::1] read_offsets, const uint8_t[::1] data, int home_country):
    """Decode every read of a batch. Returns a dict of columns (for tools and tests)."""
    cdef Py_ssize_t n = read_offsets.shape[0] - 1, i
    if bad_offsets(read_offsets, data.shape[0]):
        raise ValueError("read_offsets are not non-decreasing offsets into data")
    kind = np.empty(n, np.uint8)
    error = np.empty(n, np.uint8)
    service = np.zeros((n, 2), np.uint8)
    country = np.empty(n, np.uint16)
    key = np.empty(n, np.uint64)
    postcode = np.zeros((n, MAX_POSTCODE), np.uint8)
    cdef uint8_t[::1] kv = kind, ev = error
    cdef uint16_t[::1] cv = country
    cdef uint64_t[::1] yv = key
    cdef uint8_t[:, ::1] sv = service
    cdef uint8_t[:, ::1] pv = postcode
    cdef Decoded d
    cdef const uint8_t* base = &data[0] if data.shape[0] else EMPTY
    with nogil:
        for i in range(n):
            decode_read(base + read_offsets[i], read_offsets[i + 1] - read_offsets[i],
                        <uint16_t>home_country, &d)
            kv[i] = d.kind
            ev[i] = d.error
            cv[i] = d.dest_country
            yv[i] = d.item_key
            sv[i, 0] = d.service0
            sv[i, 1] = d.service1
            if d.postcode_len:
                memcpy(&pv[i, 0], d.postcode, d.postcode_len)
    return {"kind": kind, "error": error, "service": service.view("S2").ravel(),
            "dest_country": country, "item_key": key, "postcode": postcode.view("S20").ravel()}


def item_keys(const int32_t[::1] offsets, const uint8_t[::1] data):
    """Manifest key per item id string (S10 or SSCC, validated), 0 where it is neither."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, i, ln, j
    if bad_offsets(offsets, data.shape[0]):
        raise ValueError("offsets are not non-decreasing offsets into data")
    out = np.zeros(max(n, 0), np.uint64)
    cdef uint64_t[::1] ov = out
    cdef const uint8_t* p
    cdef const uint8_t* base = &data[0] if data.shape[0] else EMPTY
    cdef bint digits
    with nogil:
        for i in range(n):
            p = base + offsets[i]
            ln = offsets[i + 1] - offsets[i]
            if ln == 13:
                if s10_error(p, 13) == E_OK:
                    ov[i] = s10_key(p)
            elif ln == 18:
                digits = True
                for j in range(18):
                    if not is_digit(p[j]):
                        digits = False
                        break
                if digits and gs1_check_ok(p, 18):
                    ov[i] = sscc_key(p)
    return out


cdef class RouterState:
    """Routes batches with one compiled plan at a time and the live chute states.

    Not thread-safe: one router per routing thread. `set_plan` between batches is atomic
    with respect to `route` (a batch holds its plan for the whole call). (Attributes:
    _core.pxd.)
    """

    def __cinit__(self, CompiledPlan plan):
        memset(self.state, CHUTE_AVAILABLE, sizeof(self.state))
        self.set_plan(plan)

    def set_plan(self, CompiledPlan plan):
        self._plan = plan
        self._rr = np.full(max(plan.n_destinations, 1), -1, np.int32)

    @property
    def plan(self):
        return self._plan

    def set_chute_state(self, int chute, int state):
        if not 0 < chute < N_CHUTES:
            raise ValueError(f"chute {chute} outside 1..65535")
        if state not in (CHUTE_AVAILABLE, CHUTE_DISABLED, CHUTE_FULL):
            raise ValueError(f"unknown chute state {state}")
        self.state[chute] = state

    def chute_state(self, int chute):
        if not 0 <= chute < N_CHUTES:
            raise ValueError(f"chute {chute} outside 0..65535")
        return self.state[chute]

    def chute_states(self):
        """A copy of the whole state table, indexed by chute number."""
        return np.asarray(<uint8_t[:N_CHUTES]> self.state).copy()

    def route(self, event_offsets, read_offsets, data, recirculations, ts_ns, out_chute,
              out_reason, out_dest, int64_t now_ns=0, int64_t deadline_ns=0):
        """Decide every event of a batch into the out_* arrays; returns the event count.

        Inputs: int32 event_offsets (n + 1) and read_offsets, uint8 data and recirculations,
        int64 ts_ns; outputs: writable uint16 out_chute, uint8 out_reason, int32 out_dest of
        at least n entries. NumPy arrays of exactly these types are used as they are (checked
        through the NumPy C API, ~20 ns each: typed memoryviews cost ~0.3 us apiece, most of
        a one-event call); other buffers are converted, outputs never are."""
        cdef cnp.ndarray eo = as_column(event_offsets, cnp.NPY_INT32, "event_offsets", False)
        cdef cnp.ndarray ro = as_column(read_offsets, cnp.NPY_INT32, "read_offsets", False)
        cdef cnp.ndarray da = as_column(data, cnp.NPY_UINT8, "data", False)
        cdef cnp.ndarray rc = as_column(recirculations, cnp.NPY_UINT8, "recirculations", False)
        cdef cnp.ndarray ts = as_column(ts_ns, cnp.NPY_INT64, "ts_ns", False)
        cdef cnp.ndarray oc = out_column(out_chute, cnp.NPY_UINT16, "out_chute")
        cdef cnp.ndarray orr = out_column(out_reason, cnp.NPY_UINT8, "out_reason")
        cdef cnp.ndarray od = out_column(out_dest, cnp.NPY_INT32, "out_dest")
        cdef Py_ssize_t n = cnp.PyArray_DIM(eo, 0) - 1
        cdef Py_ssize_t n_reads = cnp.PyArray_DIM(ro, 0) - 1, n_bytes = cnp.PyArray_DIM(da, 0)
        if n < 0:
            raise ValueError("event_offsets needs n_events + 1 entries")
        if cnp.PyArray_DIM(rc, 0) != n or cnp.PyArray_DIM(ts, 0) != n:
            raise ValueError("recirculations and ts_ns need one entry per event")
        if cnp.PyArray_DIM(oc, 0) < n or cnp.PyArray_DIM(orr, 0) < n or cnp.PyArray_DIM(od, 0) < n:
            raise ValueError("output arrays are shorter than the batch")
        cdef const int32_t* ev_off = <const int32_t*> cnp.PyArray_DATA(eo)
        cdef const int32_t* rd_off = <const int32_t*> cnp.PyArray_DATA(ro)
        if offsets_bad(ev_off, n + 1, n_reads):
            raise ValueError("event_offsets are not non-decreasing offsets into read_offsets")
        if offsets_bad(rd_off, n_reads + 1, n_bytes):
            raise ValueError("read_offsets are not non-decreasing offsets into data")
        if n == 0:
            return 0
        cdef const uint8_t* base = <const uint8_t*> cnp.PyArray_DATA(da) if n_bytes else EMPTY
        cdef const uint8_t* recirc = <const uint8_t*> cnp.PyArray_DATA(rc)
        cdef const int64_t* scan_ts = <const int64_t*> cnp.PyArray_DATA(ts)
        cdef uint16_t* chute = <uint16_t*> cnp.PyArray_DATA(oc)
        cdef uint8_t* reason = <uint8_t*> cnp.PyArray_DATA(orr)
        cdef int32_t* dest = <int32_t*> cnp.PyArray_DATA(od)
        return self.route_c(ev_off, rd_off, base, recirc, scan_ts, now_ns, deadline_ns, chute,
                            reason, dest, n)

    cdef Py_ssize_t route_c(self, const int32_t* ev_off, const int32_t* rd_off,
                            const uint8_t* data, const uint8_t* recirc, const int64_t* ts,
                            int64_t now_ns, int64_t deadline_ns, uint16_t* chute,
                            uint8_t* reason, int32_t* dest, Py_ssize_t n) except -1:
        """`route` at C level, for compiled callers (with the GIL; released while routing):
        the offsets must already be valid, as `route` checks them and as
        `sorter.wire._wire.decode_scans` produces them. The plan and round-robin table are held
        for the whole batch, so a swap from another thread can neither tear nor free them."""
        cdef CompiledPlan plan = self._plan
        cdef cnp.ndarray rr = self._rr
        cdef int32_t* prr = <int32_t*> cnp.PyArray_DATA(rr)
        with nogil:
            route_batch(&plan.t, self.state, prr, ev_off, rd_off, data, recirc, ts, now_ns,
                        deadline_ns, chute, reason, dest, n)
        return n


cdef inline uint16_t special_chute(const Tables* t, const uint8_t* state, int reason) noexcept nogil:
    cdef uint16_t c = t.special[reason]
    return c if c != 0 and state[c] == CHUTE_AVAILABLE else 0


cdef inline uint16_t choose_chute(const Tables* t, const uint8_t* state, int32_t* rr,
                                  int32_t dest) noexcept nogil:
    cdef int32_t start = t.group_offsets[dest], m = t.group_offsets[dest + 1] - start, j, k
    cdef uint16_t c
    if m <= 0:
        return 0
    if t.policy[dest] == POLICY_ROUND_ROBIN:
        for j in range(1, m + 1):
            k = (rr[dest] + j) % m
            c = t.group_chutes[start + k]
            if state[c] == CHUTE_AVAILABLE:
                rr[dest] = k
                return c
        return 0
    for k in range(m):
        c = t.group_chutes[start + k]
        if state[c] == CHUTE_AVAILABLE:
            return c
    return 0


# Reads decoded ahead per block: decode a block of events, prefetching manifest slots, then
# resolve the block, so the manifest's cache misses overlap instead of queueing.
cdef enum:
    BLOCK_EVENTS = 32
    BLOCK_READS = 128


# What the reads of one event add up to (docs/routing.md section 3, steps 4-5).
cdef struct Acc:
    int n_valid
    int32_t dest
    int32_t svc_dest
    bint conflict
    bint svc_conflict
    bint any_svc


cdef inline void acc_init(Acc* a) noexcept nogil:
    a.n_valid = 0
    a.dest = -1
    a.svc_dest = -1
    a.conflict = False
    a.svc_conflict = False
    a.any_svc = False


cdef inline void acc_add(Acc* a, const Tables* t, const Decoded* d) noexcept nogil:
    cdef bint via
    cdef int32_t x
    if d.error != E_OK:
        return
    a.n_valid += 1
    x = resolve_read(t, d, &via)
    if via:
        if not a.any_svc:
            a.any_svc = True
            a.svc_dest = x
        elif x != a.svc_dest:
            a.svc_conflict = True
    elif x >= 0:
        if a.dest < 0:
            a.dest = x
        elif x != a.dest:
            a.conflict = True


cdef inline void decide(const Tables* t, const uint8_t* state, int32_t* rr, Acc* a, bint no_reads,
                        uint8_t recirc, uint16_t* chute, uint8_t* reason, int32_t* dest) noexcept nogil:
    """Steps 2-7 of docs/routing.md section 3, from the folded reads."""
    cdef int r
    cdef int32_t d = a.dest
    cdef bint conflict = a.conflict
    cdef uint16_t c
    if a.any_svc:
        d = a.svc_dest
        conflict = a.svc_conflict
    if no_reads:
        r = R_NO_READ
        d = -1
    elif a.n_valid == 0:
        r = R_INVALID
        d = -1
    elif conflict:
        r = R_CONFLICT
        d = -1
    elif d < 0:
        r = R_UNKNOWN_DESTINATION
    else:
        c = choose_chute(t, state, rr, d)
        if c != 0:
            chute[0] = c
            reason[0] = R_SORTED
            dest[0] = d
            return
        if recirc < t.recirculation_limit:
            chute[0] = 0
            reason[0] = R_RECIRCULATE
            dest[0] = d
            return
        r = R_OVERFLOW
    chute[0] = special_chute(t, state, r)
    reason[0] = r
    dest[0] = d


cdef inline bint is_late(int64_t now_ns, int64_t ts_ns, int64_t deadline_ns) noexcept nogil:
    """`now - ts > deadline`, exactly, for any int64 scan time (docs/routing.md): the age is
    taken as an unsigned difference when now >= ts, so i64 min is as late as it looks."""
    if deadline_ns <= 0 or now_ns < ts_ns:
        return False
    return <uint64_t> now_ns - <uint64_t> ts_ns > <uint64_t> deadline_ns


cdef void route_batch(const Tables* t, const uint8_t* state, int32_t* rr,
                      const int32_t* ev_off, const int32_t* rd_off, const uint8_t* data,
                      const uint8_t* recirc, const int64_t* ts, int64_t now_ns,
                      int64_t deadline_ns, uint16_t* out_chute, uint8_t* out_reason,
                      int32_t* out_dest, Py_ssize_t n) noexcept nogil:
    cdef Decoded buf[BLOCK_READS]
    cdef Decoded one
    cdef Acc acc
    cdef Py_ssize_t e = 0, e_end, ev, r, nr, k, nb
    cdef bint late
    while e < n:
        # pass 1: decode the reads of up to BLOCK_EVENTS events, prefetching manifest slots
        nb = 0
        e_end = e
        while e_end < n and e_end - e < BLOCK_EVENTS:
            late = is_late(now_ns, ts[e_end], deadline_ns)
            nr = 0 if late else ev_off[e_end + 1] - ev_off[e_end]
            if nb + nr > BLOCK_READS:
                break
            for r in range(ev_off[e_end], ev_off[e_end] + nr):
                decode_read(data + rd_off[r], rd_off[r + 1] - rd_off[r], t.home_country, &buf[nb])
                if buf[nb].error == E_OK:
                    manifest_prefetch(t, buf[nb].item_key)
                nb += 1
            e_end += 1
        if e_end == e:
            # one event with more reads than a block holds: decode and fold one read at a time
            acc_init(&acc)
            for r in range(ev_off[e], ev_off[e + 1]):
                decode_read(data + rd_off[r], rd_off[r + 1] - rd_off[r], t.home_country, &one)
                acc_add(&acc, t, &one)
            decide(t, state, rr, &acc, False, recirc[e], &out_chute[e], &out_reason[e], &out_dest[e])
            e += 1
            continue
        # pass 2: resolve and decide, in event order (round robin is order-dependent)
        k = 0
        for ev in range(e, e_end):
            if is_late(now_ns, ts[ev], deadline_ns):
                out_chute[ev] = 0
                out_reason[ev] = R_LATE
                out_dest[ev] = -1
                continue
            nr = ev_off[ev + 1] - ev_off[ev]
            acc_init(&acc)
            for r in range(nr):
                acc_add(&acc, t, &buf[k + r])
            k += nr
            decide(t, state, rr, &acc, nr == 0, recirc[ev], &out_chute[ev], &out_reason[ev],
                   &out_dest[ev])
        e = e_end

def constants():
    """The C enums of _core.pxd, so a test can hold them equal to sorter/core/codes.py."""
    return {
        "reasons": [R_SORTED, R_NO_READ, R_INVALID, R_CONFLICT, R_UNKNOWN_DESTINATION,
                    R_RECIRCULATE, R_OVERFLOW, R_LATE, R_MALFORMED],
        "kinds": [K_UNKNOWN, K_S10, K_GS1, K_POSTCODE],
        "errors": [E_OK, E_BAD_LENGTH, E_BAD_CHARACTER, E_BAD_CHECK_DIGIT, E_RESERVED_SERVICE,
                   E_BAD_AI_FIELD, E_BAD_GS1_SYNTAX, E_UNRECOGNISED],
        "chute_states": [CHUTE_AVAILABLE, CHUTE_DISABLED, CHUTE_FULL],
        "policies": [POLICY_FILL_FIRST, POLICY_ROUND_ROBIN],
        "no_country": NO_COUNTRY,
        "max_postcode": MAX_POSTCODE,
    }
