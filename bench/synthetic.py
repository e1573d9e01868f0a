"""Deterministic synthetic sort plans and scan-event streams for the benchmarks.

Everything here is driven by a seed (numpy `Generator`s on separate streams for the plan, the
events and the chute states) and built with vectorised numpy: a 1M-row manifest and 1M events
take seconds. Nothing here is timed; the suites build their inputs once and time only routing.

    plan = make_plan(n_prefixes=5000, n_chutes=200, manifest_rows=1_000_000, seed=0)
    events = make_events(plan, 1_000_000, seed=0)
    states = make_chute_states(plan, seed=0)      # {chute: "full" | "disabled"}

The plan looks like a Kazakh sorting centre: old 6-digit postcodes (prefixes of 2-4 digits) and
new `A01P3K4` postcodes (region letter + 1-3 more characters), destinations served by 1-4 chutes
(fill_first and round_robin), country rules abroad, service rule E -> EMS, special chutes, and a
pre-advice manifest of S10 ids (correct check digits) and some SSCCs. No two prefixes are
equal and no prefix maps to the destination of its longest shorter prefix ("shadowed").

The event mix (`CATEGORIES`, `CATEGORY_WEIGHTS`) is exact, not sampled: round(weight * n)
events of each category, shuffled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sorter.core.countries import alpha2_to_numeric
from sorter.core.events import EventBatch, arrow_offsets_data
from sorter.plan import Destination, Plan

__all__ = [
    "CATEGORIES", "CATEGORY_WEIGHTS", "make_plan", "make_events", "make_events_labelled",
    "make_chute_states", "take", "s10_check_digits", "gs1_check_digits",
]

HOME = "KZ"
GS = 0x1D
_DIGITS = np.frombuffer(b"0123456789", np.uint8)
_UPPER = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
_ALNUM = np.concatenate([_DIGITS, _UPPER])
_S10_WEIGHTS = np.array([8, 6, 4, 2, 3, 5, 9, 7], np.int64)

# Region letters of new-format postcodes used by the plan; old-format regions 01..20. Codes
# outside these are "unplanned": they match no prefix and fall back to the home-country rule.
REGION_LETTERS = b"ABCDEFHLMNPRTVXYZ"
OLD_REGIONS = tuple(f"{r:02d}" for r in range(1, 21))

# S10 service indicators: first letter (never J K S T W), weights.
_S10_FIRST = {b"R": 0.35, b"C": 0.25, b"E": 0.10, b"L": 0.10, b"U": 0.05, b"V": 0.05}
_S10_OTHER_FIRST = b"ABDFGHIMNOPQXYZ"            # share the remaining 10 %
_S10_RESERVED_FIRST = b"JKSTW"
# S10 issuing countries (an attribute only).
_ORIGINS = (b"KZ", b"CN", b"RU", b"DE", b"US", b"TR", b"GB", b"KR", b"UZ", b"FR")
_ORIGIN_WEIGHTS = (0.50, 0.25, 0.10, 0.03, 0.03, 0.03, 0.02, 0.02, 0.01, 0.01)

# International destinations and the countries they serve; fewer groups on small plans.
INTL_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("INTL-CIS", ("RU", "BY", "AM", "AZ", "GE", "MD", "UA")),
    ("INTL-CENTRAL-ASIA", ("UZ", "KG", "TJ", "TM", "MN")),
    ("INTL-CHINA", ("CN", "HK", "MO", "TW")),
    ("INTL-ASIA", ("KR", "JP", "IN", "TH", "VN", "SG", "MY", "ID")),
    ("INTL-EUROPE", ("DE", "FR", "GB", "IT", "PL", "NL", "ES", "CZ", "AT", "FI", "SE", "LT",
                     "LV", "EE")),
    ("INTL-AMERICAS", ("US", "CA")),
    ("INTL-MIDEAST", ("TR", "AE", "IL", "SA", "IR")),
)
# Countries with no rule: reads addressed there resolve to no destination.
UNRULED_COUNTRIES = ("BR", "AU", "ZA", "MX", "AR", "NZ", "EG", "NG")
NOT_A_COUNTRY = 999                    # AI 421 with a numeric code ISO does not assign

# Event categories and their share of the stream.
CATEGORIES = ("s10_manifest", "s10_unadvised", "gs1", "postcode", "no_read", "damaged", "multi")
CATEGORY_WEIGHTS = (0.36, 0.04, 0.30, 0.20, 0.03, 0.04, 0.03)

_AFFINE_A = 7_919_317                  # coprime to 10**8: i -> (A*i + B) mod 10**8 is a bijection


# ---------------------------------------------------------------------------------------------
# Fixed-width byte rows with a length each: the building block of every generator

@dataclass
class Reads:
    """m byte strings as an (m, w) uint8 matrix (row i is buf[i, :lens[i]])."""
    buf: np.ndarray
    lens: np.ndarray

    def __len__(self) -> int:
        return len(self.lens)

    def to_list(self) -> list[bytes]:
        """As Python bytes (for tests and debugging only)."""
        return [bytes(row[:n]) for row, n in zip(self.buf, self.lens.tolist())]


def _const(b: bytes, m: int) -> Reads:
    arr = np.frombuffer(b, np.uint8)
    return Reads(np.broadcast_to(arr, (m, len(arr))), np.full(m, len(arr), np.int64))


def _full(buf: np.ndarray) -> Reads:
    return Reads(buf, np.full(len(buf), buf.shape[1], np.int64))


def _concat(m: int, *parts: Reads | bytes) -> Reads:
    """Row-wise concatenation of variable-length pieces."""
    ps = [_const(p, m) if isinstance(p, bytes) else p for p in parts]
    width = sum(p.buf.shape[1] for p in ps)
    out = np.zeros(m * width, np.uint8)
    base = np.arange(m, dtype=np.int64) * width
    pos = base.copy()
    for p in ps:
        w = p.buf.shape[1]
        if w == 0:
            continue
        cols = np.arange(w)
        if bool((p.lens == w).all()):
            out[pos[:, None] + cols] = p.buf
        else:
            mask = cols < p.lens[:, None]
            out[(pos[:, None] + cols)[mask]] = p.buf[mask]
        pos += p.lens
    return Reads(out.reshape(m, width), pos - base)


def _by_variant(variant: np.ndarray, makers) -> Reads:
    """Row i built by makers[variant[i]]; each maker is called once with its row count."""
    built = []
    for k, make in enumerate(makers):
        rows = np.flatnonzero(variant == k)
        if len(rows):
            built.append((rows, make(len(rows))))
    m = len(variant)
    out = np.zeros((m, max([r.buf.shape[1] for _, r in built] or [0])), np.uint8)
    lens = np.zeros(m, np.int64)
    for rows, r in built:
        out[rows, : r.buf.shape[1]] = r.buf
        lens[rows] = r.lens
    return Reads(out, lens)


def _select(choice: np.ndarray, options: list[Reads]) -> Reads:
    """Row i from options[choice[i]] (all options have m rows)."""
    m = len(choice)
    width = max(o.buf.shape[1] for o in options)
    out = np.zeros((m, width), np.uint8)
    lens = np.zeros(m, np.int64)
    for k, o in enumerate(options):
        rows = choice == k
        out[rows, : o.buf.shape[1]] = o.buf[rows]
        lens[rows] = o.lens[rows]
    return Reads(out, lens)


def _chars(rng: np.random.Generator, alphabet: np.ndarray, shape) -> np.ndarray:
    return alphabet[rng.integers(len(alphabet), size=shape)]


def _digits_of(values: np.ndarray, width: int) -> np.ndarray:
    """(m, width) ASCII digits of non-negative integers, zero padded."""
    values = np.asarray(values, np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + 48).astype(np.uint8)


def _exact_labels(rng: np.random.Generator, m: int, weights) -> np.ndarray:
    """m labels 0..k-1 in exact proportions (largest remainder), shuffled."""
    w = np.asarray(weights, float)
    w = w / w.sum()
    counts = np.floor(w * m).astype(np.int64)
    rest = m - counts.sum()
    if rest:
        counts[np.argsort(-(w * m - counts), kind="stable")[:rest]] += 1
    labels = np.repeat(np.arange(len(w)), counts)
    rng.shuffle(labels)
    return labels


def _weighted(rng: np.random.Generator, m: int, options, weights) -> np.ndarray:
    p = np.asarray(weights, float)
    return np.asarray(options)[rng.choice(len(options), size=m, p=p / p.sum())]


# ---------------------------------------------------------------------------------------------
# Check digits and identifiers

def s10_check_digits(serial_digits: np.ndarray) -> np.ndarray:
    """UPU S10 check digit per row of (m, 8) ASCII digits: weights 8,6,4,2,3,5,9,7,
    C = 11 - S mod 11, 10 -> 0, 11 -> 5. Returns ints 0..9."""
    s = (serial_digits.astype(np.int64) - 48) @ _S10_WEIGHTS
    c = 11 - s % 11
    c[c == 10] = 0
    c[c == 11] = 5
    return c


def gs1_check_digits(data_digits: np.ndarray) -> np.ndarray:
    """GS1 mod-10 check digit per row of (m, k) ASCII data digits (weights 3,1,3,... from the
    right). Returns ints 0..9."""
    k = data_digits.shape[1]
    weights = np.where((k - 1 - np.arange(k)) % 2 == 0, 3, 1)
    return (10 - ((data_digits.astype(np.int64) - 48) @ weights) % 10) % 10


def _s10_first_letters(rng: np.random.Generator, m: int) -> np.ndarray:
    letters = [k[0] for k in _S10_FIRST] + list(_S10_OTHER_FIRST)
    weights = list(_S10_FIRST.values()) + [0.10 / len(_S10_OTHER_FIRST)] * len(_S10_OTHER_FIRST)
    return _weighted(rng, m, letters, weights).astype(np.uint8)


def _s10(rng: np.random.Generator, serials: np.ndarray, first: np.ndarray | None = None,
         check_offset: np.ndarray | int = 0) -> Reads:
    """S10 ids `LL` + 8-digit serial + check digit + origin. check_offset != 0 breaks the check
    digit on purpose."""
    m = len(serials)
    buf = np.empty((m, 13), np.uint8)
    buf[:, 0] = _s10_first_letters(rng, m) if first is None else first
    buf[:, 1] = _chars(rng, _UPPER, m)
    buf[:, 2:10] = _digits_of(serials, 8)
    buf[:, 10] = (s10_check_digits(buf[:, 2:10]) + check_offset) % 10 + 48
    origin = np.frombuffer(b"".join(_ORIGINS), np.uint8).reshape(-1, 2)
    buf[:, 11:13] = origin[rng.choice(len(_ORIGINS), size=m, p=_ORIGIN_WEIGHTS)]
    return _full(buf)


def _s10_keys(buf: np.ndarray) -> np.ndarray:
    """Manifest keys of (m, 13) S10 rows, packed as sorter.core.barcodes.item_key does."""
    b = buf.astype(np.uint64)
    d = np.zeros(len(buf), np.uint64)
    for i in range(2, 11):
        d = d * np.uint64(10) + (b[:, i] - np.uint64(48))
    l0, l1, c0, c1 = (b[:, i] - np.uint64(65) for i in (0, 1, 11, 12))
    k = ((((l0 * np.uint64(26) + l1) * np.uint64(10**9) + d) * np.uint64(26) + c0)
         * np.uint64(26) + c1)
    return k | np.uint64(1 << 61)


def _sscc(rng: np.random.Generator, serials: np.ndarray, check_offset: np.ndarray | int = 0
          ) -> Reads:
    """SSCCs: extension digit, GS1 Kazakhstan prefix 487, 5-digit company, 8-digit serial,
    mod-10 check digit."""
    m = len(serials)
    buf = np.empty((m, 18), np.uint8)
    buf[:, 0] = _chars(rng, _DIGITS, m)
    buf[:, 1:4] = np.frombuffer(b"487", np.uint8)
    buf[:, 4:9] = _digits_of(rng.integers(100_000, size=m), 5)
    buf[:, 9:17] = _digits_of(serials, 8)
    buf[:, 17] = (gs1_check_digits(buf[:, :17]) + check_offset) % 10 + 48
    return _full(buf)


def _affine_serials(start: int, m: int, b: int) -> np.ndarray:
    """Distinct 8-digit serials for indices start..start+m-1."""
    i = np.arange(start, start + m, dtype=np.int64)
    return (_AFFINE_A * i + b) % 10**8


# ---------------------------------------------------------------------------------------------
# Postcodes

@dataclass
class _PrefixInfo:
    buf: np.ndarray            # (P, 4) uint8, prefixes left aligned (at most 4 used here)
    lens: np.ndarray           # (P,)
    old: np.ndarray            # (P,) bool: old 6-digit format
    free_old: np.ndarray       # (K, 2) uint8: 2-digit starts that no old prefix begins with
    free_letters: np.ndarray   # (L,) uint8: region letters no new prefix begins with


def _prefix_info(plan: Plan) -> _PrefixInfo:
    prefixes = [p.replace(" ", "") for p in plan.postcode_rules]
    width = max([4] + [len(p) for p in prefixes])
    buf = np.zeros((len(prefixes), width), np.uint8)
    for i, p in enumerate(prefixes):
        buf[i, : len(p)] = np.frombuffer(p.encode(), np.uint8)
    lens = np.array([len(p) for p in prefixes], np.int64)
    old = np.array([p[:1].isdigit() for p in prefixes], bool)
    used_old = {p[:2] for p in prefixes if p[:1].isdigit()}
    used_letters = {p[0] for p in prefixes if not p[:1].isdigit()}
    free_old = [f"{r:02d}" for r in range(100)
                if not any(f"{r:02d}".startswith(u) for u in used_old)]
    free_letters = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used_letters]
    return _PrefixInfo(
        buf=buf[:, :max(4, int(lens.max(initial=0)))], lens=lens, old=old,
        free_old=np.frombuffer("".join(free_old).encode(), np.uint8).reshape(-1, 2),
        free_letters=np.frombuffer("".join(free_letters).encode(), np.uint8))


def _postcodes(rng: np.random.Generator, m: int, info: _PrefixInfo, matched: float = 0.92
               ) -> Reads:
    """Full domestic postcodes (6 digits or 7 new-format characters, no space): a fraction
    `matched` extends a random plan prefix, the rest starts with an unplanned region."""
    fill_old = np.empty((m, 7), np.uint8)
    fill_old[:, :6] = _chars(rng, _DIGITS, (m, 6))
    fill_old[:, 6] = 0
    fill_new = np.empty((m, 7), np.uint8)
    fill_new[:, 0] = _chars(rng, _UPPER, m)
    fill_new[:, 1:3] = _chars(rng, _DIGITS, (m, 2))
    fill_new[:, 3:7] = _chars(rng, _ALNUM, (m, 4))
    n_pfx = len(info.lens)
    is_matched = rng.random(m) < matched if n_pfx else np.zeros(m, bool)
    pi = rng.integers(max(n_pfx, 1), size=m)
    old = np.where(is_matched, info.old[pi] if n_pfx else False, rng.random(m) < 0.4)
    if not len(info.free_old):
        old &= is_matched
    if not len(info.free_letters):
        old |= ~is_matched
    buf = np.where(old[:, None], fill_old, fill_new)
    if n_pfx:
        w = min(info.buf.shape[1], 7)
        overlay = (np.arange(w) < np.minimum(info.lens[pi], w)[:, None]) & is_matched[:, None]
        buf[:, :w] = np.where(overlay, info.buf[pi, :w], buf[:, :w])
    un_old = ~is_matched & old
    if un_old.any():
        buf[un_old, :2] = info.free_old[rng.integers(len(info.free_old), size=un_old.sum())]
    un_new = ~is_matched & ~old
    if un_new.any():
        buf[un_new, 0] = info.free_letters[rng.integers(len(info.free_letters), size=un_new.sum())]
    return Reads(buf, np.where(old, 6, 7).astype(np.int64))


def _spaced(pcs: Reads) -> Reads:
    """New-format postcodes with the space of `A01 P3K4` (old ones unchanged)."""
    m = len(pcs)
    new = pcs.lens == 7
    out = np.zeros((m, 8), np.uint8)
    out[:, :7] = pcs.buf[:, :7]
    out[new, 3] = 32
    out[new, 4:8] = pcs.buf[new, 3:7]
    return Reads(out, np.where(new, 8, pcs.lens))


# ---------------------------------------------------------------------------------------------
# Plan

def _prefix_pools() -> list[tuple[bool, int, list[str]]]:
    """(old format, length, candidates) for each prefix level."""
    d, an = "0123456789", "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    letters = REGION_LETTERS.decode()
    old2 = list(OLD_REGIONS)
    old3 = [r + a for r in old2 for a in d]
    old4 = [r + a for r in old3 for a in d]
    new2 = [c + a for c in letters for a in d]
    new3 = [p + a for p in new2 for a in d]
    new4 = [p + a for p in new3 for a in an]
    return [(True, 2, old2), (True, 3, old3), (True, 4, old4),
            (False, 2, new2), (False, 3, new3), (False, 4, new4)]


def _choose_prefixes(rng: np.random.Generator, n: int) -> list[str]:
    pools = _prefix_pools()
    capacity = sum(len(p) for _, _, p in pools)
    if not 1 <= n <= capacity:
        raise ValueError(f"n_prefixes must be 1..{capacity}, got {n}")
    level_share = {2: 0.02, 3: 0.18, 4: 0.80}
    chosen: list[str] = []
    for old, total in ((True, round(n * 0.4)), (False, n - round(n * 0.4))):
        levels = [(ln, cands) for o, ln, cands in pools if o == old]
        left = total
        for k, (ln, cands) in enumerate(levels):
            want = left if k == len(levels) - 1 else max(1, round(total * level_share[ln]))
            take_n = min(want, len(cands), left)
            idx = rng.choice(len(cands), size=take_n, replace=False)
            chosen.extend(cands[i] for i in idx)
            left -= take_n
        if left:      # an old-format level was full: the rest goes to the new format
            extra = [c for o, _, cands in pools if not o for c in cands if c not in set(chosen)]
            chosen.extend(extra[i] for i in rng.choice(len(extra), size=left, replace=False))
    return chosen


def _assign_destinations(rng: np.random.Generator, prefixes: list[str], n_dest: int
                         ) -> dict[str, int]:
    """Destination per prefix, never the one of its longest shorter prefix (not shadowed)."""
    rules: dict[str, int] = {}
    for p in sorted(prefixes, key=len):
        parent = next((rules[p[:k]] for k in range(len(p) - 1, 0, -1) if p[:k] in rules), None)
        if parent is None:
            rules[p] = int(rng.integers(n_dest))
        else:
            d = int(rng.integers(n_dest - 1))
            rules[p] = d + 1 if d >= parent else d
    return rules


def _strings(reads: Reads, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow string array from byte rows, built from buffers (no per-row Python)."""
    m = len(reads)
    lens = reads.lens if valid is None else np.where(valid, reads.lens, 0)
    offsets = np.zeros(m + 1, np.int32)
    np.cumsum(lens, out=offsets[1:])
    mask = np.arange(reads.buf.shape[1]) < lens[:, None]
    data = np.ascontiguousarray(reads.buf[mask])
    if valid is None:
        return pa.StringArray.from_buffers(m, pa.py_buffer(offsets), pa.py_buffer(data))
    bitmap = np.packbits(valid.astype(np.uint8), bitorder="little")
    return pa.StringArray.from_buffers(m, pa.py_buffer(offsets), pa.py_buffer(data),
                                       pa.py_buffer(bitmap), int((~valid).sum()))


def _make_manifest(rng: np.random.Generator, rows: int, info: _PrefixInfo,
                   ruled: list[str], sscc_fraction: float) -> pa.Table:
    """item_id (S10, some SSCC), postcode, country; every id distinct."""
    is_sscc = np.zeros(rows, bool)
    n_sscc = int(round(rows * sscc_fraction))
    is_sscc[rng.choice(rows, size=n_sscc, replace=False)] = True
    ids = np.zeros((rows, 18), np.uint8)
    serials = _affine_serials(0, rows - n_sscc, int(rng.integers(10**8)))
    rng.shuffle(serials)
    s10 = _s10(rng, serials)
    ids[~is_sscc, :13] = s10.buf
    ssccs = _sscc(rng, _affine_serials(0, n_sscc, int(rng.integers(10**8))))
    ids[is_sscc] = ssccs.buf
    item_id = _strings(Reads(ids, np.where(is_sscc, 18, 13)))

    # Addresses: 0 planned domestic, 1 unplanned domestic, 2 abroad (some to countries without
    # a rule: no destination), 3 KZ without postcode. Every row has a postcode or a country, as
    # sorter.plan.validate requires.
    kind = _exact_labels(rng, rows, (0.62, 0.10, 0.22, 0.06))
    postcodes = _by_variant(np.minimum(kind, 2), [
        lambda k: _postcodes(rng, k, info, matched=1.0),
        lambda k: _postcodes(rng, k, info, matched=0.0),
        lambda k: _full(_chars(rng, _DIGITS, (k, 6)))])
    has_pc = (kind <= 1) | ((kind == 2) & (rng.random(rows) < 0.7))
    names = [HOME] + ruled + list(UNRULED_COUNTRIES)
    country_idx = np.zeros(rows, np.int64)
    abroad = kind == 2
    n_abroad = int(abroad.sum())
    country_idx[abroad] = np.where(
        rng.random(n_abroad) < 0.85,
        1 + rng.integers(len(ruled), size=n_abroad),
        1 + len(ruled) + rng.integers(len(UNRULED_COUNTRIES), size=n_abroad))
    has_country = (kind == 2) | (kind == 3) | ((kind <= 1) & (rng.random(rows) < 0.5))
    country = pc.take(pa.array(names, pa.string()), pa.array(country_idx, mask=~has_country))
    return pa.table({"item_id": item_id, "postcode": _strings(postcodes, has_pc),
                     "country": country})


def make_plan(n_prefixes: int = 5000, n_chutes: int = 200, manifest_rows: int = 1_000_000,
              seed: int = 0, *, sscc_fraction: float = 0.05) -> Plan:
    """A synthetic Kazakh sort plan, built directly (not via TOML)."""
    if n_chutes < 10:
        raise ValueError("n_chutes must be at least 10")
    rng = np.random.default_rng([seed, 0])
    reject, conflict, unknown, overflow = n_chutes - 3, n_chutes - 2, n_chutes - 1, n_chutes
    pool = np.arange(1, n_chutes - 3)
    sizes: list[int] = []
    while sum(sizes) < len(pool):
        sizes.append(min(int(rng.integers(1, 5)), len(pool) - sum(sizes)))
    if len(sizes) < 6:          # a tiny plan: one chute per destination
        sizes = [1] * len(pool)
    n_groups = len(sizes)
    n_intl = max(1, min(len(INTL_GROUPS), n_groups // 10))
    n_dom = n_groups - n_intl - 2
    if n_dom < 2:
        raise ValueError("too few chutes for a plan")
    names = ([f"DOM-{i:03d}" for i in range(n_dom)] + ["DOM-RESIDUE"]
             + [g for g, _ in INTL_GROUPS[:n_intl]] + ["EMS"])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    destinations = []
    for i, name in enumerate(names):
        chutes = tuple(int(c) for c in pool[bounds[i]: bounds[i + 1]])
        rr = len(chutes) > 1 and (name == "EMS" or rng.random() < 0.4)
        destinations.append(Destination(name, chutes, "round_robin" if rr else "fill_first"))

    prefixes = _choose_prefixes(rng, n_prefixes)
    assigned = _assign_destinations(rng, prefixes, n_dom)
    postcode_rules = {p: names[d] for p, d in assigned.items()}

    country_rules = {HOME: "DOM-RESIDUE"}
    ruled: list[str] = []
    for g, (_, countries) in enumerate(INTL_GROUPS):
        for c in countries:
            country_rules[c] = names[n_dom + 1 + g % n_intl]
            ruled.append(c)

    plan = Plan(
        name="synthetic", version=f"seed-{seed}", home_country=HOME,
        chutes=tuple(range(1, n_chutes + 1)),
        special={"no_read": reject, "invalid": reject, "conflict": conflict,
                 "unknown_destination": unknown, "overflow": overflow},
        destinations=destinations, postcode_rules=postcode_rules,
        country_rules=country_rules, service_rules={"E": "EMS"},
        recirculation_limit=3, source=f"bench.synthetic.make_plan(seed={seed})")
    if manifest_rows:
        plan.manifest = _make_manifest(rng, manifest_rows, _prefix_info(plan), ruled,
                                       sscc_fraction)
    return plan


def make_chute_states(plan: Plan, seed: int = 0, *, blocked_destinations: float = 0.03,
                      full: float = 0.03, disabled: float = 0.01) -> dict[int, str]:
    """Chute states for a run: every chute of a few domestic destinations full (recirculate,
    then overflow), and a few more chutes full or disabled (fill_first falls back, round_robin
    skips). Special chutes stay available."""
    rng = np.random.default_rng([seed, 2])
    states: dict[int, str] = {}
    domestic = [d for d in plan.destinations if d.name.startswith("DOM-")
                and d.name != "DOM-RESIDUE"] or list(plan.destinations)
    n_blocked = max(1, round(blocked_destinations * len(domestic)))
    for i in rng.choice(len(domestic), size=n_blocked, replace=False):
        for c in domestic[i].chutes:
            states[c] = "full"
    special = set(plan.special.values())
    others = np.array(sorted({c for d in plan.destinations for c in d.chutes}
                             - special - set(states)), np.int64)
    n_full, n_off = round(full * len(others)), round(disabled * len(others))
    picked = rng.choice(others, size=min(len(others), n_full + n_off), replace=False)
    for k, c in enumerate(picked.tolist()):
        states[c] = "full" if k < n_full else "disabled"
    return states


# ---------------------------------------------------------------------------------------------
# Events

@dataclass
class _Context:
    rng: np.random.Generator
    info: _PrefixInfo
    home_numeric: int
    ruled: np.ndarray             # numeric codes of countries with a rule (not home)
    unruled: np.ndarray           # numeric codes without a rule
    s10_ids: Reads | None         # manifest S10 ids
    sscc_ids: Reads | None        # manifest SSCCs
    manifest_s10_keys: np.ndarray
    serial_base: int


def _gather_ids(table: pa.Table) -> tuple[Reads | None, Reads | None]:
    offsets, data = arrow_offsets_data(table.column("item_id"))
    lens = np.diff(offsets)
    out = []
    for width in (13, 18):
        rows = np.flatnonzero(lens == width)
        if not len(rows):
            out.append(None)
            continue
        out.append(_full(data[offsets[rows][:, None] + np.arange(width)]))
    return out[0], out[1]


def _pick(ctx: _Context, ids: Reads | None, m: int) -> Reads | None:
    if ids is None or not len(ids):
        return None
    return _full(ids.buf[ctx.rng.integers(len(ids), size=m)])


def _s10_manifest(ctx: _Context, m: int) -> Reads:
    ids = _pick(ctx, ctx.s10_ids, m)
    return ids if ids is not None else _s10_unadvised(ctx, m)


def _s10_unadvised(ctx: _Context, m: int, first: np.ndarray | None = None) -> Reads:
    """Valid S10 ids that are not in the manifest."""
    ids = _s10(ctx.rng, _affine_serials(ctx.serial_base, m, 12_345), first)
    ctx.serial_base += m
    clash = _in_sorted(_s10_keys(ids.buf), ctx.manifest_s10_keys)
    while clash.any():
        redo = _s10(ctx.rng, ctx.rng.integers(10**8, size=int(clash.sum())),
                    None if first is None else first[clash])
        ids.buf[clash] = redo.buf
        clash = _in_sorted(_s10_keys(ids.buf), ctx.manifest_s10_keys)
    return ids


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _random_sscc(ctx: _Context, m: int, check_offset=0) -> Reads:
    return _sscc(ctx.rng, ctx.rng.integers(10**8, size=m), check_offset)


def _country_field(ctx: _Context, m: int) -> Reads:
    """AI 421 data: n3 country + postcode. Home with a domestic postcode, a ruled country, an
    unruled one (no destination), or a number ISO does not assign."""
    rng = ctx.rng
    which = _exact_labels(rng, m, (0.40, 0.45, 0.12, 0.03))
    codes = np.select(
        [which == 0, which == 1, which == 2],
        [np.full(m, ctx.home_numeric), ctx.ruled[rng.integers(len(ctx.ruled), size=m)],
         ctx.unruled[rng.integers(len(ctx.unruled), size=m)]], NOT_A_COUNTRY)
    foreign_pc = _full(_chars(rng, _DIGITS, (m, 6)))
    foreign_pc.lens[rng.random(m) < 0.2] = 0                   # country only
    pcs = _select((which != 0).astype(np.int64), [_postcodes(rng, m, ctx.info), foreign_pc])
    return _concat(m, _full(_digits_of(codes, 3)), pcs)


def _gs1(ctx: _Context, m: int) -> Reads:
    """GS1-128 messages: SSCC + 420 / 421, GS separators where a variable field is followed by
    another element (and sometimes where none is needed), 401 / 403, GTIN-only labels, element
    strings without the ]C1 symbology identifier."""
    rng, info = ctx.rng, ctx.info
    g = bytes([GS])

    def sscc(k):
        return _random_sscc(ctx, k)

    def pc420(k):
        return _postcodes(rng, k, info)

    def alnum(k, lo, hi):
        r = _full(_chars(rng, _ALNUM, (k, hi)))
        r.lens = rng.integers(lo, hi + 1, size=k)
        return r

    def advised(k):
        ids = _pick(ctx, ctx.sscc_ids, k)
        return ids if ids is not None else sscc(k)

    return _by_variant(_exact_labels(rng, m, (30, 15, 15, 10, 10, 8, 5, 4, 3)), [
        lambda k: _concat(k, b"]C100", sscc(k), b"420", pc420(k)),
        lambda k: _concat(k, b"]C100", sscc(k), g + b"421", _country_field(ctx, k)),
        lambda k: _concat(k, b"]C1420", pc420(k), g + b"00", sscc(k)),
        lambda k: _concat(k, b"]C1421", _country_field(ctx, k), g + b"401", alnum(k, 6, 12)),
        lambda k: _concat(k, b"]C100", advised(k)),
        lambda k: _concat(k, b"00", sscc(k), b"420", pc420(k)),
        lambda k: _concat(k, g + b"00", sscc(k), b"403", alnum(k, 4, 6), g + b"420", pc420(k)),
        lambda k: _concat(k, b"]C101", _full(_chars(rng, _DIGITS, (k, 14))), b"10",
                          alnum(k, 8, 8)),
        lambda k: _concat(k, b"]C1420", pc420(k), g + b"421", _country_field(ctx, k)),
    ])


def _bare_postcode(ctx: _Context, m: int) -> Reads:
    pcs = _postcodes(ctx.rng, m, ctx.info)
    spaced = _spaced(pcs)
    return _select((ctx.rng.random(m) < 0.35).astype(np.int64), [pcs, spaced])


def _damaged(ctx: _Context, m: int) -> Reads:
    """Reads that are all invalid: wrong check digits, truncation, lower case, reserved S10
    service, SSCC cut short, junk."""
    rng = ctx.rng

    def wrong_s10(k):
        return _s10(rng, rng.integers(10**8, size=k), check_offset=rng.integers(1, 10, size=k))

    def truncated(k):
        good = _s10_manifest(ctx, k)
        return Reads(good.buf, 13 - rng.integers(1, 3, size=k))

    def lower(k):
        good = _s10_manifest(ctx, k)
        buf = good.buf.copy()
        buf[:, :2] += 32
        return Reads(buf, good.lens)

    def reserved(k):
        return _s10(rng, rng.integers(10**8, size=k),
                    first=_chars(rng, np.frombuffer(_S10_RESERVED_FIRST, np.uint8), k))

    def bad_sscc(k):
        return _concat(k, b"]C100", _random_sscc(ctx, k, rng.integers(1, 10, size=k)),
                       b"420", _postcodes(rng, k, ctx.info))

    def cut_sscc(k):
        return _concat(k, b"]C100", Reads(_random_sscc(ctx, k).buf, rng.integers(5, 17, size=k)))

    def junk(k):
        return _by_variant((rng.random(k) < 0.5).astype(np.int64), [
            lambda j: _concat(j, b"?", _full(_chars(rng, _ALNUM, (j, 8)))),
            lambda j: _const(b"NOREAD", j)])

    return _by_variant(_exact_labels(rng, m, (30, 15, 15, 10, 10, 10, 10)),
                       [wrong_s10, truncated, bad_sscc, cut_sscc, lower, reserved, junk])


def _multi(ctx: _Context, m: int) -> tuple[Reads, Reads]:
    """Two reads per event: the same code twice, one postcode in two encodings, two different
    postcodes (mostly a conflict), a damaged read beside a valid one, an S10 without
    pre-advice beside a postcode (EMS ones go to EMS whatever the postcode says)."""
    rng = ctx.rng
    v = _exact_labels(rng, m, (35, 25, 25, 10, 5))
    single = _select(_exact_labels(rng, m, (40, 30, 30)),
                     [_s10_manifest(ctx, m), _gs1(ctx, m), _bare_postcode(ctx, m)])
    pc_a, pc_b = _postcodes(rng, m, ctx.info), _postcodes(rng, m, ctx.info)
    spaced_a = _spaced(pc_a)
    as_420 = _concat(m, b"]C1420", pc_a)
    damaged = _damaged(ctx, m)
    unadvised = _s10_unadvised(ctx, m)
    first = [single, spaced_a, pc_a, damaged, unadvised]
    second = [single, as_420, pc_b, pc_a, pc_b]
    return _select(v, first), _select(v, second)


def make_events_labelled(plan: Plan, n: int, seed: int = 0
                         ) -> tuple[EventBatch, np.ndarray]:
    """`make_events` plus the category of each event (an index into CATEGORIES)."""
    rng = np.random.default_rng([seed, 1])
    home = alpha2_to_numeric(plan.home_country)
    ruled = sorted({alpha2_to_numeric(c) for c in plan.country_rules} - {home})
    unruled = [u for u in (alpha2_to_numeric(c) for c in UNRULED_COUNTRIES) if u not in ruled]
    s10_ids = sscc_ids = None
    manifest_keys = np.zeros(0, np.uint64)
    if plan.manifest is not None and plan.manifest.num_rows:
        s10_ids, sscc_ids = _gather_ids(plan.manifest)
        if s10_ids is not None:
            manifest_keys = np.sort(_s10_keys(s10_ids.buf))
    ctx = _Context(rng=rng, info=_prefix_info(plan), home_numeric=home,
                   ruled=np.array(ruled or [NOT_A_COUNTRY], np.int64),
                   unruled=np.array(unruled or [NOT_A_COUNTRY], np.int64),
                   s10_ids=s10_ids, sscc_ids=sscc_ids, manifest_s10_keys=manifest_keys,
                   serial_base=0)

    labels = _exact_labels(rng, n, CATEGORY_WEIGHTS)
    cat = {name: i for i, name in enumerate(CATEGORIES)}
    n_reads = np.where(labels == cat["no_read"], 0, np.where(labels == cat["multi"], 2, 1))
    event_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(n_reads, out=event_offsets[1:])

    builders = {"s10_manifest": _s10_manifest, "s10_unadvised": _s10_unadvised, "gs1": _gs1,
                "postcode": _bare_postcode, "damaged": _damaged}
    placed: list[tuple[np.ndarray, Reads]] = []
    for name, build in builders.items():
        idx = np.flatnonzero(labels == cat[name])
        if len(idx):
            placed.append((event_offsets[idx], build(ctx, len(idx))))
    idx = np.flatnonzero(labels == cat["multi"])
    if len(idx):
        first, second = _multi(ctx, len(idx))
        placed += [(event_offsets[idx], first), (event_offsets[idx] + 1, second)]

    total_reads = int(event_offsets[-1])
    read_lens = np.zeros(total_reads, np.int64)
    for where, reads in placed:
        read_lens[where] = reads.lens
    read_offsets = np.zeros(total_reads + 1, np.int64)
    np.cumsum(read_lens, out=read_offsets[1:])
    if read_offsets[-1] >= 2**31:
        raise ValueError("too many bytes for int32 offsets; make fewer events")
    data = np.zeros(int(read_offsets[-1]), np.uint8)
    for where, reads in placed:
        cols = np.arange(reads.buf.shape[1])
        mask = cols < reads.lens[:, None]
        data[(read_offsets[where][:, None] + cols)[mask]] = reads.buf[mask]

    recirculations = rng.choice(5, size=n, p=(0.86, 0.06, 0.03, 0.03, 0.02)).astype(np.uint8)
    ts_ns = 1_767_225_600_000_000_000 + np.cumsum(rng.integers(50_000, 300_000, size=n))
    batch = EventBatch(
        parcel_ids=np.arange(n, dtype=np.uint64),
        scanner_ids=rng.integers(8, size=n).astype(np.uint16),
        ts_ns=ts_ns.astype(np.int64), recirculations=recirculations,
        event_offsets=event_offsets.astype(np.int32), read_offsets=read_offsets.astype(np.int32),
        data=data)
    return batch, labels


def make_events(plan: Plan, n: int, seed: int = 0) -> EventBatch:
    """n synthetic scan events for `plan` (see the module docstring for the mix)."""
    return make_events_labelled(plan, n, seed)[0]


def take(batch: EventBatch, idx: np.ndarray) -> EventBatch:
    """The events idx of a batch as a new, compact batch (vectorised copy)."""
    idx = np.asarray(idx, np.int64)
    ev, ro = batch.event_offsets.astype(np.int64), batch.read_offsets.astype(np.int64)
    n_reads = ev[idx + 1] - ev[idx]
    new_ev = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(n_reads, out=new_ev[1:])
    read_idx = np.repeat(ev[idx] - new_ev[:-1], n_reads) + np.arange(new_ev[-1])
    read_lens = ro[read_idx + 1] - ro[read_idx]
    new_ro = np.zeros(len(read_idx) + 1, np.int64)
    np.cumsum(read_lens, out=new_ro[1:])
    byte_idx = np.repeat(ro[read_idx] - new_ro[:-1], read_lens) + np.arange(new_ro[-1])
    return EventBatch(
        parcel_ids=batch.parcel_ids[idx], scanner_ids=batch.scanner_ids[idx],
        ts_ns=batch.ts_ns[idx], recirculations=batch.recirculations[idx],
        event_offsets=new_ev.astype(np.int32), read_offsets=new_ro.astype(np.int32),
        data=batch.data[byte_idx])
