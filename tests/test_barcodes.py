"""Tests of the reference decoder (sorter/core/barcodes.py) against docs/routing.md section 1.

Worked examples first, then properties on generated reads checked against two independent
oracles: `tracking-numbers` for UPU S10 and `biip` for GS1 element strings. Where our rules
differ from an oracle on purpose, the generator avoids those inputs or the assertion says
exactly what differs, with the reason.
"""
from __future__ import annotations

import json
import pathlib
import re
import re._parser as re_parser   # sre_parse: min/max width of biip's patterns
import string

import biip
import pytest
from biip import ParseError
from biip.gs1_messages import GS1Message
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from tracking_numbers import get_definition

from sorter.core import codes
from sorter.core.barcodes import (
    Gs1SyntaxError,
    Read,
    decode,
    gs1_check_digit,
    item_key,
    s10_check_digit,
    split_gs1,
)
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
from sorter.core.gs1_ai import AI_LENGTH_BY_PREFIX, AI_TABLE, CHARSET_82, PREDEFINED_LENGTH, ROUTING_AIS

GS = b"\x1d"
KZ = 398
SSCC_OK = "106141411234567897"       # GS1's SSCC example (check digit 7)
SSCC_BAD = "106141411234567890"
GTIN_OK = "04006381333931"           # EAN-13 4006381333931 as GTIN-14 (check digit 1)


def d(raw: bytes, home: int = KZ) -> Read:
    return decode(raw, home)


# =============================================================================================
# Check digits
# =============================================================================================

def test_s10_check_digit_worked_example():
    # Wikipedia "S10 (UPU standard)": serial 47312482 -> S = 200 -> 11 - 200 mod 11 = 9.
    assert s10_check_digit("47312482") == 9


@pytest.mark.parametrize("serial, expected", [
    ("00000000", 5),   # S = 0 -> C = 11 -> 5
    ("00300000", 0),   # S = 3*4 = 12, 12 mod 11 = 1 -> C = 10 -> 0
    ("00000001", 4),   # S = 7 -> C = 4
    ("10000000", 3),   # S = 8 -> C = 3
])
def test_s10_check_digit_special_values(serial, expected):
    assert s10_check_digit(serial) == expected


@pytest.mark.parametrize("bad", ["4731248", "473124821", "4731248A", "", "٤٧٣١٢٤٨٢"])
def test_s10_check_digit_rejects_non_serials(bad):
    with pytest.raises(ValueError):
        s10_check_digit(bad)


def test_gs1_check_digit_examples():
    assert gs1_check_digit(SSCC_OK[:17]) == 7
    assert gs1_check_digit(GTIN_OK[:13]) == 1
    assert gs1_check_digit("400638133393") == 1       # leading zero does not matter
    with pytest.raises(ValueError):
        gs1_check_digit("12A")


@given(st.text(alphabet=string.digits, min_size=1, max_size=30))
def test_gs1_check_digit_against_biip(digits):
    from biip.checksums import gs1_standard_check_digit
    assert gs1_check_digit(digits) == int(gs1_standard_check_digit(digits))


# =============================================================================================
# Classification and S10 (sections 1, 1.1)
# =============================================================================================

def test_empty_read():
    r = d(b"")
    assert (r.kind, r.error) == (KIND_UNKNOWN, BAD_LENGTH)
    assert r.to_json() == {"kind": "unknown", "valid": False, "error": "bad_length", "raw": ""}


def test_s10_valid_worked_example():
    r = d(b"RR473124829GB")
    assert (r.kind, r.error, r.valid) == (KIND_S10, OK, True)
    assert (r.item_id, r.service, r.origin) == ("RR473124829GB", "RR", "GB")
    assert r.dest_country is None and r.postcode is None     # S10 says nothing about destination
    assert r.to_json() == {
        "kind": "s10", "valid": True, "error": None, "raw": "RR473124829GB",
        "item_id": "RR473124829GB", "service": "RR", "origin": "GB",
    }


@pytest.mark.parametrize("raw, error", [
    # 1. length not 13 (checked before anything else, so bad characters do not matter)
    (b"RR47312482GB", BAD_LENGTH),            # 12
    (b"RR4731248290GB", BAD_LENGTH),          # 14
    (b"RR4731248GB", BAD_LENGTH),             # 11: shortest read classified as S10
    (b"RR47312482900GB", BAD_LENGTH),         # 15: longest read classified as S10
    (b"rr47312482gb", BAD_LENGTH),
    (b"JJ4731248290GB", BAD_LENGTH),          # reserved and too long: length first
    # 2. a byte off the pattern (lower case included)
    (b"rr473124829GB", BAD_CHARACTER),
    (b"RR473124829gb", BAD_CHARACTER),
    (b"Rr473124829GB", BAD_CHARACTER),
    (b"RR47312482XGB", BAD_CHARACTER),
    (b"RR4731248 9GB", BAD_CHARACTER),        # a space is not repaired
    (b"RR473124829G1", BAD_CHARACTER),
    (b"RR473124829G\xc4", BAD_CHARACTER),
    (b"Jj473124829GB", BAD_CHARACTER),        # bad character beats reserved letter
    (b"jJ473124829GB", BAD_CHARACTER),
    # 3. reserved first letter (before the check digit: wrong digits too)
    (b"JJ473124829GB", RESERVED_SERVICE),
    (b"KA473124829GB", RESERVED_SERVICE),
    (b"SA473124829GB", RESERVED_SERVICE),
    (b"TA473124829GB", RESERVED_SERVICE),
    (b"WA473124829GB", RESERVED_SERVICE),
    (b"JJ473124820GB", RESERVED_SERVICE),
    # 4. check digit
    (b"RR473124828GB", BAD_CHECK_DIGIT),
    (b"RR374124829GB", BAD_CHECK_DIGIT),      # swapped serial digits
])
def test_s10_errors_in_check_order(raw, error):
    r = d(raw)
    assert (r.kind, r.error) == (KIND_S10, error), r.to_json()
    assert r.item_id is r.service is r.origin is None


@pytest.mark.parametrize("first", list("ABCDEFGHILMNOPQRUVXYZ"))
def test_s10_unreserved_first_letters_are_accepted(first):
    # Only J, K, S, T and W are refused: service letters are not checked against a list.
    raw = f"{first}Q473124829KZ".encode()
    assert d(raw).valid


def test_s10_two_letters_any_case_classify_as_s10_only_for_length_11_to_15():
    assert d(b"RR47312482").kind == KIND_UNKNOWN               # 10 bytes
    assert d(b"RR47312482").error == UNRECOGNISED
    assert d(b"RR4731248290000").kind == KIND_S10              # 15
    assert d(b"RR47312482900000").kind == KIND_UNKNOWN         # 16
    assert d(b"ab473124829GB").kind == KIND_S10                 # lower case: still S10 ...
    assert d(b"ab473124829GB").error == BAD_CHARACTER           # ... but invalid
    assert d(b"R1473124829GB").error == UNRECOGNISED            # one letter: not S10


@pytest.mark.parametrize("raw, postcode", [
    (b"050000", "050000"),          # old format, Almaty
    (b"010000", "010000"),          # old format, Astana
    (b"A01P3K4", "A01P3K4"),        # new format
    (b"A01 P3K4", "A01P3K4"),       # new format with its space
    (b"X41D8M0", "X41D8M0"),
    (b"Q99AAAA", "Q99AAAA"),        # region letters are not checked against a list
])
def test_bare_postcodes(raw, postcode):
    r = d(raw)
    assert (r.kind, r.error, r.postcode, r.dest_country) == (KIND_POSTCODE, OK, postcode, KZ)
    assert d(raw, home=276).dest_country == 276
    js = r.to_json()
    assert js["postcode"] == postcode
    assert (js["dest_country"], js["dest_country_numeric"]) == ("KZ", KZ)


@pytest.mark.parametrize("raw, kind, error", [
    (b"a01P3K4", KIND_UNKNOWN, UNRECOGNISED),    # lower case is not repaired
    (b"A01p3K4", KIND_UNKNOWN, UNRECOGNISED),
    (b"A0XP3K4", KIND_UNKNOWN, UNRECOGNISED),
    (b"A01-P3K4", KIND_UNKNOWN, UNRECOGNISED),
    (b"A01  P3K4", KIND_UNKNOWN, UNRECOGNISED),
    (b" A01P3K4", KIND_UNKNOWN, UNRECOGNISED),   # nothing is trimmed
    (b"A01P3K", KIND_UNKNOWN, UNRECOGNISED),
    (b"05000", KIND_GS1, BAD_GS1_SYNTAX),        # digits but not 6: an element string ...
    (b"0500001", KIND_GS1, BAD_GS1_SYNTAX),      # ... with unknown prefix 05
    (b"050000 ", KIND_GS1, BAD_GS1_SYNTAX),
    (b"HELLO", KIND_UNKNOWN, UNRECOGNISED),
    (b"]d1010400638133393", KIND_UNKNOWN, UNRECOGNISED),   # ]d1 is plain DataMatrix, not GS1
    (b"\x00", KIND_UNKNOWN, UNRECOGNISED),
])
def test_not_postcodes(raw, kind, error):
    """Near-postcodes that are not postcodes."""
    r = d(raw)
    assert (r.kind, r.error) == (kind, error)


# =============================================================================================
# GS1 element strings (section 1.3)
# =============================================================================================

def test_sscc_with_symbology_identifier():
    r = d(b"]C100" + SSCC_OK.encode())
    assert (r.kind, r.error, r.item_id) == (KIND_GS1, OK, SSCC_OK)
    r = d(b"]C100" + SSCC_BAD.encode())
    assert (r.kind, r.error, r.error_ai, r.item_id) == (KIND_GS1, BAD_CHECK_DIGIT, "00", None)
    assert r.to_json()["error"] == "bad_check_digit"
    assert r.to_json()["error_ai"] == "00"


def test_sscc_without_symbology_identifier():
    assert d(b"00" + SSCC_OK.encode()).item_id == SSCC_OK


def test_truncated_sscc_is_bad_ai_field():
    r = d(b"]C100" + SSCC_OK[:10].encode())
    assert (r.error, r.error_ai) == (BAD_AI_FIELD, "00")
    with pytest.raises(Gs1SyntaxError) as exc:
        split_gs1(b"00" + SSCC_OK[:10].encode())
    assert (exc.value.error, exc.value.ai) == (BAD_AI_FIELD, "00")


def test_sscc_field_must_be_18_digits():
    # Predefined length: 18 bytes are taken whatever they are (a GS inside included).
    r = d(b"]C100" + SSCC_OK[:16].encode() + b"A7")
    assert (r.error, r.error_ai) == (BAD_AI_FIELD, "00")
    r = d(b"]C100" + SSCC_OK[:17].encode() + GS)
    assert (r.error, r.error_ai) == (BAD_AI_FIELD, "00")


def test_truncated_non_routing_predefined_field_is_syntax_error():
    assert d(b"]C101" + GTIN_OK[:8].encode()).error == BAD_GS1_SYNTAX


def test_420_with_and_without_terminator():
    r = d(b"]C1420050000")
    assert (r.error, r.postcode, r.dest_country) == (OK, "050000", KZ)
    assert d(b"]C1420050000", home=276).dest_country == 276
    r = d(b"]C1420050000" + GS)
    assert (r.error, r.postcode) == (OK, "050000")
    r = d(b"]C1420050000" + GS + b"401CONS123")
    assert (r.error, r.postcode, r.consignment) == (OK, "050000", "CONS123")
    # Without GS the variable field is greedy: 401 becomes part of the postcode.
    r = d(b"]C1420050000401CONS123")
    assert (r.error, r.postcode, r.consignment) == (OK, "050000401CONS123", None)
    assert split_gs1(b"420050000401CONS123") == [("420", b"050000401CONS123")]


def test_421_country_and_postcode():
    for raw in (b"421398050000", b"]C1421398050000", b"]C1" + GS + b"421398050000" + GS):
        r = d(raw, home=276)
        assert (r.kind, r.error, r.dest_country, r.postcode) == (KIND_GS1, OK, KZ, "050000")
    r = d(b"]C1421276D10115")
    assert (r.dest_country, r.postcode) == (276, "D10115")
    assert r.to_json()["dest_country"] == "DE"
    # The postcode may be empty.
    r = d(b"]C1421398")
    assert (r.error, r.dest_country, r.postcode) == (OK, KZ, "")
    # n3 is not checked against ISO 3166: JSON then has no alpha-2.
    js = d(b"]C1421999ABC").to_json()
    assert (js["dest_country"], js["dest_country_numeric"], js["postcode"]) == (None, 999, "ABC")


@pytest.mark.parametrize("raw", [
    b"]C142139",                       # country shorter than n3
    b"]C1421",                         # nothing at all
    b"]C14213A8050000",                # country not numeric
    b"]C1421398A01 P3K4",              # space is not in character set 82
    b"]C14213980123456789",            # postcode of 10
    b"]C14213" + GS + b"420050000",    # country cut short by GS
])
def test_421_broken(raw):
    r = d(raw)
    assert (r.kind, r.error, r.error_ai) == (KIND_GS1, BAD_AI_FIELD, "421")


def test_421_beats_420_in_any_order():
    for raw in (b"]C1420111111" + GS + b"421276D10115",
                b"]C1421276D10115" + GS + b"420111111"):
        r = d(raw)
        assert (r.error, r.dest_country, r.postcode) == (OK, 276, "D10115")


def test_first_occurrence_of_a_routing_ai_counts():
    other = "37610425002123456"
    other += str(gs1_check_digit(other))
    r = d(b"]C100" + SSCC_OK.encode() + b"00" + other.encode()
          + b"420111111" + GS + b"420222222" + GS + b"401A" + GS + b"401B" + GS
          + b"403R1" + GS + b"403R2")
    assert r.valid
    assert (r.item_id, r.postcode, r.consignment, r.routing_code) == (SSCC_OK, "111111", "A", "R1")
    r = d(b"]C1421398111" + GS + b"421276222")
    assert (r.dest_country, r.postcode) == (KZ, "111")


def test_broken_later_duplicate_routing_ai_still_invalidates():
    # Decision (docs/routing.md is silent): every routing-AI field is checked, not only the
    # occurrence that counts; the first broken one, left to right, gives the error.
    r = d(b"]C100" + SSCC_OK.encode() + b"00" + SSCC_BAD.encode())
    assert (r.error, r.error_ai) == (BAD_CHECK_DIGIT, "00")
    r = d(b"]C1420111" + GS + b"420" + GS + b"00" + SSCC_BAD.encode())
    assert (r.error, r.error_ai) == (BAD_AI_FIELD, "420")


def test_syntax_error_beats_field_errors():
    # The whole message is split before fields are checked.
    r = d(b"]C1420" + GS + b"9")
    assert r.error == BAD_GS1_SYNTAX


@pytest.mark.parametrize("raw, error_ai", [
    (b"]C1401" + b"A" * 31, "401"),
    (b"]C1401" + GS + b"420050000", "401"),         # empty field
    (b"]C1403" + GS, "403"),
    (b"]C1403ROUTE 1", "403"),                      # space
    (b"]C1420" + b"1" * 21, "420"),
    (b"]C1420A01 P3K4", "420"),
    (b"]C1420050000#", "420"),                      # '#' is not in set 82
    (b"]C1420\xc4", "420"),
])
def test_broken_routing_fields(raw, error_ai):
    r = d(raw)
    assert (r.kind, r.error, r.error_ai) == (KIND_GS1, BAD_AI_FIELD, error_ai)
    assert r.postcode is r.consignment is r.routing_code is r.item_id is None


def test_routing_attributes_are_reported():
    r = d(b"]C100" + SSCC_OK.encode() + b"401" + b"C" * 30 + GS + b"403" + b"%&'()*+,-./:;<=>?_az")
    assert r.valid
    assert (r.consignment, r.routing_code) == ("C" * 30, "%&'()*+,-./:;<=>?_az")


@pytest.mark.parametrize("raw", [
    b"]C12310ABC",         # prefix 23 -> 3-digit AI 231: not assigned
    b"]C104123456789012345678",   # 04: reserved prefix, no AI
    b"]C105123",           # unknown prefix
    b"]C1" + b"99ABC" + GS + b"14123456",   # 14: reserved
    b"]C138123",           # 38 is not a prefix
    b"]C1ABC",
    b"]C1" + GS + b"A",
    b"]C14",               # not enough bytes for an AI
    b"]C141",              # 3-digit AI 41x cut short
    b"]C1420050000" + GS + b"42",
    b"]C1" + GS + GS,
    b"]C1",
    b"\x1d",
    b"\x1d\x1d\x1d",
    b"]C14399AB",          # 4399 not assigned
    b"]C1420050000" + GS + b"X",
])
def test_gs1_syntax_errors(raw):
    r = d(raw)
    assert (r.kind, r.error) == (KIND_GS1, BAD_GS1_SYNTAX), r.to_json()
    with pytest.raises(Gs1SyntaxError):
        split_gs1(raw[3:] if raw.startswith(b"]C1") else raw)


def test_four_digit_ais_split_on_their_prefix():
    assert split_gs1(b"431012" + GS + b"7003" + b"2501011200") == [
        ("4310", b"12"), ("7003", b"2501011200")]
    assert d(b"]C14310ACME" + GS + b"420050000").postcode == "050000"


def test_gs_bytes_between_elements_are_tolerated():
    raw = (GS + b"01" + GTIN_OK.encode() + GS + GS + b"10LOT7" + GS + GS
           + b"00" + SSCC_OK.encode() + GS + b"420050000" + GS + GS)
    r = d(b"]C1" + raw)
    assert (r.error, r.item_id, r.postcode) == (OK, SSCC_OK, "050000")
    assert split_gs1(raw) == [("01", GTIN_OK.encode()), ("10", b"LOT7"),
                              ("00", SSCC_OK.encode()), ("420", b"050000")]


def test_label_with_gtin_batch_and_ship_to_postcode():
    raw = b"]C101" + GTIN_OK.encode() + b"10ABC123" + GS + b"420050000"
    r = d(raw)
    assert (r.kind, r.error, r.postcode, r.dest_country) == (KIND_GS1, OK, "050000", KZ)
    assert r.item_id is None


def test_label_without_routing_ai_is_valid_and_empty():
    r = d(b"]C101" + GTIN_OK.encode() + b"17261231" + b"10ABC")
    assert r.valid
    assert r.to_json() == {"kind": "gs1", "valid": True, "error": None,
                           "raw": "]C101" + GTIN_OK + "17261231" + "10ABC"}


def test_broken_non_routing_fields_are_ignored():
    # Wrong GTIN check digit, letters in a date, over-long batch, bad character in a serial.
    raw = (b"]C101" + GTIN_OK[:13].encode() + b"0" + b"17ABCDEF" + b"10" + b"L" * 25 + GS
           + b"21SER IAL" + GS + b"420050000")
    r = d(raw)
    assert (r.error, r.postcode) == (OK, "050000")


# =============================================================================================
# Robustness
# =============================================================================================

def _check_read_invariants(raw: bytes, r: Read) -> None:
    assert r.raw == raw
    assert 0 <= r.kind < len(codes.KINDS)
    assert 0 <= r.error < len(codes.ERRORS)
    json.dumps(r.to_json())
    if not r.valid:
        assert r.item_id is r.service is r.origin is r.postcode is r.dest_country is None
        assert r.consignment is r.routing_code is None
    if r.kind == KIND_S10 and r.valid:
        assert item_key(r.item_id) >> 61 == 1
    if r.item_id is not None and r.kind == KIND_GS1:
        assert item_key(r.item_id) >> 62 == 1
    if r.kind == KIND_UNKNOWN:
        assert r.error in (BAD_LENGTH, UNRECOGNISED)


@given(st.binary(max_size=60))
@example(b"]C1")
@example(b"\x1d")
@example(b"\xff" * 13)
@example(b"]C1" + b"\x00" * 20)
def test_decode_never_raises_on_garbage(raw):
    _check_read_invariants(raw, decode(raw))


_GS1ISH = st.lists(st.sampled_from([b"0", b"1", b"4", b"2", b"9", b"\x1d", b"A", b" ", b"00",
                                    b"420", b"421", b"401", b"403", b"]C1", b"\xff"]),
                   max_size=30).map(b"".join)


@given(_GS1ISH, st.booleans())
def test_decode_never_raises_on_gs1ish_garbage(body, with_id):
    raw = (b"]C1" if with_id else b"") + body
    _check_read_invariants(raw, decode(raw))


def test_decode_accepts_bytearray_and_memoryview():
    assert decode(bytearray(b"RR473124829GB")).valid
    assert decode(memoryview(b"050000")).postcode == "050000"


# =============================================================================================
# Oracle: tracking-numbers for S10
# =============================================================================================

S10_DEF = get_definition("S10")
# tracking-numbers' S10 regex is `\s*([A-Z]\s*){2}([0-9]\s*){8}...`: it accepts whitespace
# anywhere, which scanners never send and we reject (bad_character / bad_length). Candidates
# below therefore never contain whitespace. It also validates the service indicator against a
# list of assigned ones (E*, L*, M*, Q[A-M], R*, U*, V*, C*, H*, [BDNPZ]*, A[V-Z], G[AD]) and
# the origin against a list of UPU member countries; we only refuse the reserved first letters
# J K S T W and accept any origin letters (docs/routing.md 1.1), so a read we accept may carry
# a "Service Type" or "Courier" error there.
_NON_WS_ASCII = "".join(c for c in string.printable if not c.isspace())
_LETTERS_OK = "ABCDEFGHILMNOPQRUVXYZ"       # not reserved
_UPPER = string.ascii_uppercase


@st.composite
def s10_ids(draw, service_first=_LETTERS_OK):
    svc = draw(st.sampled_from(service_first)) + draw(st.sampled_from(_UPPER))
    serial = draw(st.text(alphabet=string.digits, min_size=8, max_size=8))
    country = draw(st.sampled_from(_UPPER)) + draw(st.sampled_from(_UPPER))
    return f"{svc}{serial}{s10_check_digit(serial)}{country}"


@st.composite
def s10_candidates(draw):
    x = draw(s10_ids())
    mutation = draw(st.sampled_from(
        ["none", "check", "swap", "lower", "reserved", "replace", "insert", "delete", "multi"]))
    chars = list(x)
    if mutation == "check":
        chars[10] = str((int(chars[10]) + draw(st.integers(1, 9))) % 10)
    elif mutation == "swap":
        i = draw(st.integers(0, 11))
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    elif mutation == "lower":
        i = draw(st.sampled_from([0, 1, 11, 12]))
        chars[i] = chars[i].lower()
    elif mutation == "reserved":
        chars[0] = draw(st.sampled_from("JKSTW"))
    elif mutation == "replace":
        chars[draw(st.integers(0, 12))] = draw(st.sampled_from(_NON_WS_ASCII))
    elif mutation == "insert":
        chars.insert(draw(st.integers(0, 13)), draw(st.sampled_from(_NON_WS_ASCII)))
    elif mutation == "delete":
        del chars[draw(st.integers(0, 12))]
    elif mutation == "multi":
        for _ in range(draw(st.integers(2, 4))):
            chars[draw(st.integers(0, 12))] = draw(st.sampled_from(string.digits + _UPPER + "jkstw"))
    return "".join(chars)


def _tn_errors(x: str):
    """None when tracking-numbers does not recognise x as S10 at all, else its error names."""
    r = S10_DEF.test(x)
    return None if r is None else {name for name, _ in r.validation_errors}


@settings(max_examples=1000)
@given(s10_candidates())
@example("RR473124829GB")
@example("RR473124828GB")
@example("JJ473124829GB")
@example("rr473124829GB")
@example("10000000005AA")
def test_s10_agrees_with_tracking_numbers(x):
    assert not any(c.isspace() for c in x)
    ours = decode(x.encode())
    theirs = _tn_errors(x)
    if theirs is None:
        # Not S10-shaped for them (wrong length, lower case, a stray character), so not an
        # S10 for us either (a mutation can still be another valid code: "10000000005AA" is
        # a GS1 element string, AI 10 with a batch number).
        assert not (ours.kind == KIND_S10
                    and ours.error in (OK, RESERVED_SERVICE, BAD_CHECK_DIGIT)), (x, ours)
        return
    # S10-shaped for them: 13 characters of the right classes, so for us too.
    assert ours.kind == KIND_S10 and ours.error in (OK, RESERVED_SERVICE, BAD_CHECK_DIGIT), x
    if ours.error == RESERVED_SERVICE:
        assert "Service Type" in theirs          # J K S T W are not in their list either
        return
    assert ("checksum" in theirs) == (ours.error == BAD_CHECK_DIGIT), (x, theirs)
    if not theirs:
        assert ours.valid
    if ours.valid:
        # Deliberate: we do not check service indicators or origin countries against lists.
        assert theirs <= {"Service Type", "Courier"}, (x, theirs)


_TN_ORIGINS = sorted(m.value for v in S10_DEF.additional_validations if v.name == "Courier"
                     for m in v.value_matchers)


@given(s10_ids(service_first="ELMRUVCH"), st.sampled_from(_TN_ORIGINS),
       st.integers(0, 9))
def test_s10_with_assigned_services_and_known_origins_agree_exactly(x, origin, check):
    # Restricted to service letters and origins both accept: same verdict, check digit included.
    x = x[:10] + str(check) + origin
    assert S10_DEF.test(x).valid == decode(x.encode()).valid
    assert decode(x.encode()).error in (OK, BAD_CHECK_DIGIT)


# =============================================================================================
# Oracle: biip for GS1
# =============================================================================================

_CS82 = "".join(sorted(chr(b) for b in CHARSET_82))
_x = lambda lo, hi: st.text(alphabet=_CS82, min_size=lo, max_size=hi)      # noqa: E731
_n = lambda k: st.text(alphabet=string.digits, min_size=k, max_size=k)     # noqa: E731


@st.composite
def gs1_elements(draw):
    """One (ai, data) element: routing AIs 00/401/403/420/421 and non-routing 01/10/17."""
    ai = draw(st.sampled_from(["00", "00", "401", "403", "420", "421", "01", "10", "17"]))
    if ai == "00":
        body = draw(_n(17))
        check = gs1_check_digit(body)
        if draw(st.integers(0, 4)) == 0:
            check = (check + draw(st.integers(1, 9))) % 10        # wrong check digit
        data = body + str(check)
    elif ai == "01":
        body = draw(_n(13))
        data = body + str(gs1_check_digit(body))                 # biip checks GTINs too
    elif ai == "17":
        # biip verifies dates; our decoder ignores non-routing content anyway.
        data = f"{draw(st.integers(0, 99)):02d}{draw(st.integers(1, 12)):02d}{draw(st.integers(1, 28)):02d}"
    elif ai == "10":
        data = draw(_x(1, 20))
    elif ai in ("401", "403"):
        data = draw(_x(1, 30))
    elif ai == "420":
        data = draw(_x(1, 20))
    else:   # 421: biip requires a postcode of 1..9; we also accept an empty one (tested above)
        data = draw(_n(3)) + draw(_x(1, 9))
    return ai, data


def _predefined(ai: str) -> bool:
    return ai[:2] in PREDEFINED_LENGTH


@st.composite
def gs1_messages(draw):
    """A message every reading of GS1 splits the same way: variable fields that are not last
    end with GS; GS after predefined fields, a leading GS, a trailing GS and repeated GS are
    optional (both sides tolerate them)."""
    elements = draw(st.lists(gs1_elements(), min_size=1, max_size=6))
    out = GS * draw(st.integers(0, 2))
    for k, (ai, data) in enumerate(elements):
        out += (ai + data).encode()
        last = k == len(elements) - 1
        if not _predefined(ai) and not last:
            out += GS * draw(st.integers(1, 2))
        else:
            out += GS * draw(st.integers(0, 2))
    return elements, out


def _biip(message: bytes):
    return GS1Message.parse(message.decode("ascii"))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(gs1_messages())
def test_gs1_split_and_sscc_agree_with_biip(generated):
    elements, message = generated
    ours = [(ai, data.decode()) for ai, data in split_gs1(message)]
    assert ours == elements

    msg = _biip(message)                     # strict: raises ParseError on any broken element
    theirs = [(es.ai.ai, es.value) for es in msg.element_strings]
    assert ours == theirs
    for es in msg.element_strings:
        assert es.gtin_error is None
        if es.ai.ai == "00":
            assert (es.sscc_error is None) == (gs1_check_digit(es.value[:17]) == int(es.value[17]))

    for raw in (message, b"]C1" + message):
        r = decode(raw, KZ)
        if len(raw) == 6 and raw.isdigit():
            # Classification puts "exactly 6 digits" (old postcode) before bare element
            # strings, so e.g. b"401000" without ]C1 is the postcode 401000.
            assert (r.kind, r.postcode) == (KIND_POSTCODE, raw.decode())
            continue
        assert r.kind == KIND_GS1
        bad_sscc = [es for es in msg.element_strings if es.ai.ai == "00" and es.sscc_error]
        if bad_sscc:
            assert (r.error, r.error_ai) == (BAD_CHECK_DIGIT, "00")
            continue
        assert r.valid
        first = {}
        for es in msg.element_strings:
            first.setdefault(es.ai.ai, es.value)
        assert r.item_id == first.get("00")
        assert r.consignment == first.get("401")
        assert r.routing_code == first.get("403")
        if "421" in first:
            assert (r.dest_country, r.postcode) == (int(first["421"][:3]), first["421"][3:])
        elif "420" in first:
            assert (r.dest_country, r.postcode) == (KZ, first["420"])
        else:
            assert r.dest_country is None and r.postcode is None


@settings(max_examples=300)
@given(st.sampled_from(["10", "401", "403", "420"]), _x(1, 12), gs1_elements())
def test_missing_gs_makes_variable_field_greedy(ai, data, following):
    # Deliberate difference from biip: without a GS a variable field runs to the end of the
    # message (docs/routing.md 1.3), whatever its maximum length. biip instead stops a field at
    # its maximum length and parses the rest as further elements. They agree while the
    # swallowed remainder still fits the field.
    rest = (following[0] + following[1]).encode()
    message = (ai + data).encode() + rest
    assert split_gs1(message) == [(ai, data.encode() + rest)]
    lo, hi, _ = AI_TABLE[ai]
    fits = len(data) + len(rest) <= hi
    r = decode(b"]C1" + message)
    if ai in ROUTING_AIS:
        assert r.valid == fits
        if not fits:
            assert (r.error, r.error_ai) == (BAD_AI_FIELD, ai)
    else:
        assert r.valid and r.item_id is None and r.postcode is None
    if fits:
        assert [(es.ai.ai, es.value) for es in _biip(message).element_strings] == \
            [(ai, data + rest.decode())]


@settings(max_examples=300)
@given(_n(17), st.integers(0, 9))
def test_sscc_check_digit_agrees_with_biip(body, check):
    message = ("00" + body + str(check)).encode()
    biip_ok = _biip(message).element_strings[0].sscc_error is None
    r = decode(b"]C1" + message)
    assert biip_ok == r.valid
    assert r.error in (OK, BAD_CHECK_DIGIT)


_SOUP = st.lists(st.one_of(
    st.sampled_from(["00", "01", "10", "17", "20", "30", "37", "401", "403", "420", "421",
                     "4310", "7004", "8010", "90", "\x1d", "\x1d"]),
    st.text(alphabet=string.digits, min_size=1, max_size=18),
    st.text(alphabet=_UPPER + "-/", min_size=1, max_size=6)), max_size=8).map("".join)


@settings(max_examples=500)
@given(_SOUP)
def test_unknown_or_broken_structure_agrees_with_biip_when_we_split(body):
    # On arbitrary digit/letter/GS soup: whenever biip parses the whole message, our splitter
    # also splits it and into the same AIs. (The converse does not hold on purpose: biip
    # rejects elements whose content is broken, we split first and judge fields afterwards,
    # and biip bounds variable fields by their maximum length.)
    try:
        theirs = [(es.ai.ai, es.value) for es in _biip(body.encode()).element_strings]
    except ParseError:
        return
    if not theirs:
        # biip accepts an empty (or all-GS) message as a message without elements; for us it
        # is bad_gs1_syntax (docs/routing.md 1.3).
        with pytest.raises(Gs1SyntaxError):
            split_gs1(body.encode())
        return
    event(f"biip parsed {len(theirs)} element(s)")
    ours = [(ai, v.decode()) for ai, v in split_gs1(body.encode())]
    if [ai for ai, _ in ours] != [ai for ai, _ in theirs]:
        # Only acceptable difference: a variable field longer than its maximum (greedy here).
        assert any(len(v) > AI_TABLE[ai][1] for ai, v in ours if not _predefined(ai)), (ours, theirs)
    else:
        assert ours == theirs


# =============================================================================================
# gs1_ai tables
# =============================================================================================

_BIIP_AIS = {e["ai"]: e for e in json.loads(
    (pathlib.Path(biip.__file__).parent / "gs1_application_identifiers"
     / "_application_identifiers.json").read_text())}


def test_ai_table_consistent_with_prefix_lengths():
    for ai, (lo, hi, _) in AI_TABLE.items():
        assert len(ai) == AI_LENGTH_BY_PREFIX[ai[:2]], ai
        assert 0 < lo <= hi <= 90, ai
        if _predefined(ai):
            assert lo == hi and PREDEFINED_LENGTH[ai[:2]] == len(ai) + hi, ai
    assert set(PREDEFINED_LENGTH) <= set(AI_LENGTH_BY_PREFIX)
    assert all(AI_LENGTH_BY_PREFIX[p] == 2 for p in ("00", "01", "02", "03", "04", "11", "20"))
    assert set(ROUTING_AIS) <= set(AI_TABLE)


def test_ai_table_matches_biip():
    assert set(AI_TABLE) == set(_BIIP_AIS)
    for ai, e in _BIIP_AIS.items():
        # separator_required exactly when the prefix has no predefined length
        assert e["separator_required"] == (not _predefined(ai)), ai
        numeric = all(part.strip("[]").startswith("N") for part in e["format"].split("+")[1:])
        assert AI_TABLE[ai][2] == numeric, ai
        # Length bounds of biip's pattern (the data part), except where they differ on purpose.
        lo, hi = re_parser.parse(e["pattern"]).getwidth()
        lo, hi = lo - len(ai), hi - len(ai)
        if ai in ("30", "7004"):
            lo = 1      # biip allows an empty N..8 / N..4; GS1 "N..n" means 1 to n digits
        elif ai == "421":
            lo = 3      # docs/routing.md: the postcode after the n3 country may be empty
        elif ai == "8010":
            lo = 1      # biip wants 5..30; the GS1 syntax dictionary says Y..30
        elif "%[0-9A-Fa-f]" in e["pattern"]:
            # percent-encoded "pcenc" fields: biip's alternation lets a character be 6 bytes;
            # the GS1 maximum is in characters, and we check raw bytes against it
            hi = AI_TABLE[ai][1]
        assert AI_TABLE[ai][:2] == (lo, hi), ai


def test_charset_82_matches_biip():
    cls = re.compile(r"[!%-?A-Z_a-z\x22]")
    assert CHARSET_82 == {b for b in range(256) if cls.fullmatch(chr(b))}
    assert len(CHARSET_82) == 82


# =============================================================================================
# item_key
# =============================================================================================

def _unpack_key(key: int) -> str:
    """Inverse of item_key: proves the packing injective."""
    if key >> 62 == 1:
        return f"{key & ((1 << 62) - 1):018d}"
    assert key >> 61 == 1
    v = key & ((1 << 61) - 1)
    v, c1 = divmod(v, 26)
    v, c0 = divmod(v, 26)
    v, digits = divmod(v, 1_000_000_000)
    l0, l1 = divmod(v, 26)
    assert l0 < 26
    return f"{chr(65 + l0)}{chr(65 + l1)}{digits:09d}{chr(65 + c0)}{chr(65 + c1)}"


def test_item_key_examples():
    assert item_key("AA000000000AA") == 1 << 61
    assert item_key("AA000000000AB") == (1 << 61) + 1
    assert item_key("AA000000000BA") == (1 << 61) + 26
    assert item_key("AA000000001AA") == (1 << 61) + 676
    assert item_key("RR473124829GB") == (1 << 61) | (
        (((17 * 26 + 17) * 1_000_000_000 + 473124829) * 26 + 6) * 26 + 1)
    assert item_key("ZZ999999999ZZ") < 1 << 62
    assert item_key("000000000000000000") == 1 << 62
    assert item_key(SSCC_OK) == (1 << 62) | int(SSCC_OK)
    assert item_key("9" * 18) < 1 << 63                 # fits a signed 64-bit integer


@pytest.mark.parametrize("bad", [
    "", "RR473124829G", "rr473124829GB", "RR47312482XGB", "RR 73124829GB", "1" * 17, "1" * 19,
    "12345678901234567_", "1_2345678901234567", " 12345678901234567", "١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨",
    "RR４73124829GB", "050000", "A01P3K4",
])
def test_item_key_rejects(bad):
    with pytest.raises(ValueError):
        item_key(bad)


_any_s10 = st.builds(lambda a, b, d, c, e: f"{a}{b}{d:09d}{c}{e}",
                     *(st.sampled_from(_UPPER),) * 2, st.integers(0, 999_999_999),
                     *(st.sampled_from(_UPPER),) * 2)
_any_sscc = st.integers(0, 10**18 - 1).map(lambda v: f"{v:018d}")


@given(st.lists(st.one_of(_any_s10, _any_sscc), min_size=1, max_size=50))
def test_item_key_injective(ids):
    keys = [item_key(x) for x in ids]
    assert len(set(keys)) == len(set(ids))
    for x, k in zip(ids, keys):
        assert 0 < k < 1 << 63
        assert _unpack_key(k) == x
        is_s10 = len(x) == 13
        assert (k >> 61 == 1) == is_s10 and (k >> 62 == 1) == (not is_s10)


@given(s10_ids())
def test_decoded_item_ids_have_keys(x):
    r = decode(x.encode())
    assert r.valid and _unpack_key(item_key(r.item_id)) == x


@pytest.mark.parametrize("prefix", [b"]C1", b"]d2", b"]Q3", b"]e0"])
def test_gs1_symbology_identifiers(prefix):
    """GS1-128, GS1 DataMatrix, GS1 QR and GS1 DataBar carry the same element strings."""
    r = d(prefix + b"421398050000")
    assert (r.kind, r.error, r.dest_country, r.postcode) == (KIND_GS1, OK, KZ, "050000")
