"""Reference decoder: one scanner read -> kind, error and routing attributes.

This is the executable form of docs/routing.md section 1, written for clarity, not speed. The
compiled core implements the same rules and is tested against this module read by read.

    >>> r = decode(b"RR473124829GB")
    >>> r.kind_name, r.valid, r.item_id, r.service, r.origin
    ('s10', True, 'RR473124829GB', 'RR', 'GB')
    >>> decode(b"]C1421398050000").to_json()["dest_country"]
    'KZ'
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from sorter.core import codes
from sorter.core.codes import (
    BAD_AI_FIELD,
    BAD_CHARACTER,
    BAD_CHECK_DIGIT,
    BAD_GS1_SYNTAX,
    BAD_LENGTH,
    KIND_GS1,
    KIND_POSTCODE,
    KIND_S10,
    KIND_UNKNOWN,
    OK,
    RESERVED_SERVICE,
    UNRECOGNISED,
)
from sorter.core.countries import numeric_to_alpha2
from sorter.core.gs1_ai import AI_LENGTH_BY_PREFIX, AI_TABLE, CHARSET_82, PREDEFINED_LENGTH, ROUTING_AIS

__all__ = [
    "GS",
    "GS1_SYMBOLOGY_ID",
    "GS1_SYMBOLOGY_IDS",
    "Gs1SyntaxError",
    "Read",
    "decode",
    "gs1_check_digit",
    "item_key",
    "s10_check_digit",
    "split_gs1",
]

GS = 0x1D                      # ASCII group separator: how scanners transmit FNC1
GS1_SYMBOLOGY_ID = b"]C1"      # GS1-128 symbology identifier
# Symbology identifiers of GS1 element strings: GS1-128, GS1 DataMatrix, GS1 QR, GS1 DataBar.
GS1_SYMBOLOGY_IDS = (b"]C1", b"]d2", b"]Q3", b"]e0")
S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
S10_RESERVED_FIRST_LETTERS = b"JKSTW"

_DIGITS = frozenset(b"0123456789")
_UPPER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LETTERS = _UPPER | frozenset(b"abcdefghijklmnopqrstuvwxyz")


def _all_in(data: bytes, allowed: frozenset[int]) -> bool:
    return all(b in allowed for b in data)


# ---------------------------------------------------------------------------------------------
# The decoded read
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Read:
    """One decoded read. `error` is `codes.OK` (0) for a valid read, else the precise error."""
    raw: bytes
    kind: int                           # codes.KIND_*
    error: int                          # codes.OK or an error code
    item_id: str | None = None          # S10 13 chars or SSCC 18 digits
    service: str | None = None          # S10 service indicator, 2 letters
    origin: str | None = None           # S10 issuing country, alpha-2
    dest_country: int | None = None     # ISO 3166 numeric
    postcode: str | None = None         # without the space of `A01 P3K4`
    consignment: str | None = None      # AI 401
    routing_code: str | None = None     # AI 403
    error_ai: str | None = None         # the AI whose field broke, for messages

    @property
    def valid(self) -> bool:
        return self.error == OK

    @property
    def kind_name(self) -> str:
        return codes.KINDS[self.kind]

    @property
    def error_name(self) -> str | None:
        return codes.ERRORS[self.error]

    def to_json(self) -> dict:
        """JSON-friendly form: names instead of codes, raw as latin-1 text, countries alpha-2."""
        out: dict = {
            "kind": self.kind_name,
            "valid": self.valid,
            "error": self.error_name,
            "raw": self.raw.decode("latin-1"),
        }
        for f in fields(self):
            if f.name in ("raw", "kind", "error"):
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "dest_country":
                out["dest_country"] = numeric_to_alpha2(value)
                out["dest_country_numeric"] = value
            else:
                out[f.name] = value
        return out


# ---------------------------------------------------------------------------------------------
# Check digits and manifest keys
# ---------------------------------------------------------------------------------------------

def s10_check_digit(serial8: str) -> int:
    """UPU S10 check digit of an 8-digit serial: weights 8,6,4,2,3,5,9,7, C = 11 - S mod 11,
    10 -> 0, 11 -> 5."""
    if len(serial8) != 8 or not _all_in(serial8.encode("ascii", "replace"), _DIGITS):
        raise ValueError(f"S10 serial must be 8 ASCII digits, got {serial8!r}")
    s = sum(int(d) * w for d, w in zip(serial8, S10_WEIGHTS))
    c = 11 - s % 11
    return {10: 0, 11: 5}.get(c, c)


def gs1_check_digit(digits: str) -> int:
    """GS1 mod-10 check digit of the data digits (check digit excluded): weights 3,1,3,1,...
    starting from the rightmost data digit; check = (10 - S mod 10) mod 10."""
    if not _all_in(digits.encode("ascii", "replace"), _DIGITS):
        raise ValueError(f"GS1 data must be ASCII digits, got {digits!r}")
    s = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - s % 10) % 10


def _is_s10_shape(item_id: str) -> bool:
    """`[A-Z]{2}[0-9]{9}[A-Z]{2}` (the check digit is not verified)."""
    b = item_id.encode("ascii", "replace")
    return (len(b) == 13 and _all_in(b[:2], _UPPER) and _all_in(b[2:11], _DIGITS)
            and _all_in(b[11:], _UPPER))


def item_key(item_id: str) -> int:
    """Manifest key of an item id as a 64-bit integer, exactly as the compiled core packs it.

    S10 `L0 L1 D0..D8 C0 C1` (letters A-Z -> 0..25, D = the 9 digits incl. check digit):
    ``(1 << 61) | ((((L0*26 + L1) * 1_000_000_000 + D) * 26 + C0) * 26 + C1)``.
    SSCC (18 digits): ``(1 << 62) | int(sscc)``. Anything else: ValueError.
    The S10 payload is below 26**4 * 10**9 < 2**49 and the SSCC payload below 10**18 < 2**60,
    so the tag bits never overlap a payload and the two families never collide.
    """
    if not isinstance(item_id, str):
        raise ValueError(f"item id must be a str, got {type(item_id).__name__}")
    if _is_s10_shape(item_id):
        l0, l1, c0, c1 = (ord(item_id[i]) - ord("A") for i in (0, 1, 11, 12))
        d = int(item_id[2:11])
        return (1 << 61) | ((((l0 * 26 + l1) * 1_000_000_000 + d) * 26 + c0) * 26 + c1)
    b = item_id.encode("ascii", "replace")
    if len(b) == 18 and _all_in(b, _DIGITS):
        return (1 << 62) | int(item_id)
    raise ValueError(f"not an S10 item id or an SSCC: {item_id!r}")


# ---------------------------------------------------------------------------------------------
# GS1 element strings (section 1.3)
# ---------------------------------------------------------------------------------------------

class Gs1SyntaxError(ValueError):
    """The GS1 message cannot be split into (AI, field) pairs.

    `error` is the read error it causes: `codes.BAD_GS1_SYNTAX`, or `codes.BAD_AI_FIELD` when a
    routing AI with a predefined length (00) is cut short. `ai` names that AI (else None), `pos`
    is the offset in the message where splitting failed.
    """

    def __init__(self, message: str, pos: int, error: int = BAD_GS1_SYNTAX, ai: str | None = None):
        super().__init__(message)
        self.pos = pos
        self.error = error
        self.ai = ai


def split_gs1(message: bytes) -> list[tuple[str, bytes]]:
    """Split a GS1 message (without `]C1`) into (AI, field) pairs, left to right.

    GS bytes between elements are skipped; an AI's length comes from its first two digits;
    predefined-length elements take exactly their length (GS bytes inside included), every
    other field runs to the next GS or the end. Fields are not checked here.
    """
    message = bytes(message)
    pairs: list[tuple[str, bytes]] = []
    n = len(message)
    i = 0
    while True:
        while i < n and message[i] == GS:
            i += 1
        if i == n:
            break
        start = i
        prefix = message[i:i + 2]
        if len(prefix) < 2 or not _all_in(prefix, _DIGITS):
            raise Gs1SyntaxError(f"no AI at offset {start}: {message[start:start + 4]!r}", start)
        ai_len = AI_LENGTH_BY_PREFIX.get(prefix.decode())
        if ai_len is None:
            raise Gs1SyntaxError(f"unknown AI prefix {prefix.decode()!r} at offset {start}", start)
        ai_bytes = message[i:i + ai_len]
        if len(ai_bytes) < ai_len or not _all_in(ai_bytes, _DIGITS):
            raise Gs1SyntaxError(f"incomplete AI {ai_bytes!r} at offset {start}", start)
        ai = ai_bytes.decode()
        if ai not in AI_TABLE:
            raise Gs1SyntaxError(f"unknown AI {ai!r} at offset {start}", start)
        i += ai_len
        total = PREDEFINED_LENGTH.get(ai[:2])
        if total is not None:
            end = start + total
            if end > n:
                routing = ai in ROUTING_AIS
                raise Gs1SyntaxError(
                    f"AI {ai} needs {total - ai_len} data bytes, {n - i} left", start,
                    BAD_AI_FIELD if routing else BAD_GS1_SYNTAX, ai if routing else None)
        else:
            end = message.find(bytes((GS,)), i)
            if end < 0:
                end = n
        pairs.append((ai, message[i:end]))
        i = end
    if not pairs:
        raise Gs1SyntaxError("empty GS1 message", 0)
    return pairs


def _field_ok(ai: str, data: bytes) -> bool:
    """The field of `ai` against AI_TABLE (length bounds, numeric or character set 82); AI 421
    is n3 country + X..9 postcode (the postcode may be empty)."""
    if ai == "421":
        return (3 <= len(data) <= 12 and _all_in(data[:3], _DIGITS)
                and _all_in(data[3:], CHARSET_82))
    lo, hi, numeric_only = AI_TABLE[ai]
    return lo <= len(data) <= hi and _all_in(data, _DIGITS if numeric_only else CHARSET_82)


def _decode_gs1(raw: bytes, message: bytes, home_country: int) -> Read:
    try:
        pairs = split_gs1(message)
    except Gs1SyntaxError as exc:
        return Read(raw, KIND_GS1, exc.error, error_ai=exc.ai)

    # Check every routing-AI field left to right; the first broken one decides the error.
    # Broken non-routing fields are ignored.
    for ai, data in pairs:
        if ai not in ROUTING_AIS:
            continue
        if not _field_ok(ai, data):
            return Read(raw, KIND_GS1, BAD_AI_FIELD, error_ai=ai)
        if ai == "00" and gs1_check_digit(data[:17].decode()) != data[17] - 0x30:
            return Read(raw, KIND_GS1, BAD_CHECK_DIGIT, error_ai=ai)

    # First occurrence of each routing AI counts.
    first: dict[str, str] = {}
    for ai, data in pairs:
        if ai in ROUTING_AIS and ai not in first:
            first[ai] = data.decode("ascii")

    dest_country = postcode = None
    if "421" in first:                       # 421 beats 420
        dest_country, postcode = int(first["421"][:3]), first["421"][3:]
    elif "420" in first:
        dest_country, postcode = home_country, first["420"]
    return Read(
        raw, KIND_GS1, OK,
        item_id=first.get("00"),
        dest_country=dest_country,
        postcode=postcode,
        consignment=first.get("401"),
        routing_code=first.get("403"),
    )


# ---------------------------------------------------------------------------------------------
# UPU S10 (section 1.1) and bare postcodes (section 1.2)
# ---------------------------------------------------------------------------------------------

def _decode_s10(raw: bytes) -> Read:
    if len(raw) != 13:
        return Read(raw, KIND_S10, BAD_LENGTH)
    if not _is_s10_shape(raw.decode("latin-1")):
        return Read(raw, KIND_S10, BAD_CHARACTER)
    if raw[0] in S10_RESERVED_FIRST_LETTERS:
        return Read(raw, KIND_S10, RESERVED_SERVICE)
    text = raw.decode("ascii")
    if s10_check_digit(text[2:10]) != int(text[10]):
        return Read(raw, KIND_S10, BAD_CHECK_DIGIT)
    return Read(raw, KIND_S10, OK, item_id=text, service=text[:2], origin=text[11:])


def _is_new_postcode(code: bytes) -> bool:
    """`[A-Z][0-9]{2}[A-Z0-9]{4}` (Kazpost format from 2015; region letters not checked)."""
    return (len(code) == 7 and code[0] in _UPPER and _all_in(code[1:3], _DIGITS)
            and _all_in(code[3:], _UPPER | _DIGITS))


# ---------------------------------------------------------------------------------------------
# Classification (section 1)
# ---------------------------------------------------------------------------------------------

def decode(raw: bytes, home_country: int = 398) -> Read:
    """Decode one read. Never raises for bytes input; the outcome is in `Read.error`.

    `home_country` (ISO numeric, Kazakhstan = 398) is the destination country of AI 420 and of
    bare postcodes.
    """
    raw = bytes(raw)
    n = len(raw)
    if n == 0:                                                       # 1. empty
        return Read(raw, KIND_UNKNOWN, BAD_LENGTH)
    if raw[:3] in GS1_SYMBOLOGY_IDS:                                 # 2. ]C1 ]d2 ]Q3 ]e0
        return _decode_gs1(raw, raw[3:], home_country)
    if n >= 2 and _all_in(raw[:2], _LETTERS) and 11 <= n <= 15:      # 3. S10
        return _decode_s10(raw)
    if _is_new_postcode(raw) or (                                    # 4. new postcode
            n == 8 and raw[3] == 0x20 and _is_new_postcode(raw[:3] + raw[4:])):
        code = raw.replace(b" ", b"").decode("ascii")
        return Read(raw, KIND_POSTCODE, OK, dest_country=home_country, postcode=code)
    if n == 6 and _all_in(raw, _DIGITS):                             # 5. old postcode
        return Read(raw, KIND_POSTCODE, OK, dest_country=home_country, postcode=raw.decode())
    if raw[0] in _DIGITS or raw[0] == GS:                            # 6. bare element string
        return _decode_gs1(raw, raw, home_country)
    return Read(raw, KIND_UNKNOWN, UNRECOGNISED)                     # 7.
