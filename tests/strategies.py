"""Hypothesis strategies for plans, chute states and scan events, shared by the tests.

The generators aim at the edges of docs/routing.md: codes that are almost valid (one wrong
check digit, lower case, one byte short or long), GS-separated GS1 messages with and without
the symbology identifier, multi-reads that agree or conflict, and plain garbage.
"""
from __future__ import annotations

import pyarrow as pa
from hypothesis import strategies as st

from sorter.core.barcodes import gs1_check_digit, s10_check_digit
from sorter.core.codes import CHUTE_STATES, SPECIAL_REASONS
from sorter.plan import Destination, Plan

COUNTRIES = ["KZ", "RU", "CN", "DE", "US", "KG"]
NUMERIC = {"KZ": "398", "RU": "643", "CN": "156", "DE": "276", "US": "840", "KG": "417"}
PREFIX_ALPHABET = "0123456789ABXZ"
SERVICES = ["EE", "EA", "CP", "RR", "RA", "LX", "HB", "VV", "UA"]
GS = b"\x1d"


def s10(service: str, serial: int, country: str, *, good: bool = True) -> bytes:
    digits = f"{serial:08d}"
    check = s10_check_digit(digits)
    if not good:
        check = (check + 1) % 10
    return f"{service}{digits}{check}{country}".encode()


def sscc(body: int, *, good: bool = True) -> bytes:
    digits = f"{body:017d}"
    check = gs1_check_digit(digits)
    if not good:
        check = (check + 1) % 10
    return f"{digits}{check}".encode()


s10_ids = st.builds(s10, st.sampled_from(SERVICES), st.integers(0, 99_999_999),
                    st.sampled_from(COUNTRIES))
ssccs = st.builds(sscc, st.integers(0, 10**17 - 1))
prefixes = st.text(PREFIX_ALPHABET, min_size=1, max_size=4)


@st.composite
def plans(draw) -> Plan:
    """A structurally sound plan (what compile_plan accepts); not necessarily lint-clean."""
    n_dest = draw(st.integers(1, 6))
    chute_pool = draw(st.permutations(list(range(1, 25))))
    destinations, used = [], 0
    for i in range(n_dest):
        k = draw(st.integers(1, 3))
        destinations.append(Destination(f"D{i}", tuple(chute_pool[used:used + k]),
                                        draw(st.sampled_from(["fill_first", "round_robin"]))))
        used += k
    special_pool = [40, 41, 42]
    special = {r: draw(st.sampled_from(special_pool)) for r in SPECIAL_REASONS}
    names = [d.name for d in destinations]
    dest = st.sampled_from(names)
    postcode_rules = draw(st.dictionaries(prefixes, dest, max_size=8))
    country_rules = draw(st.dictionaries(st.sampled_from(COUNTRIES), dest, max_size=4))
    service_rules = draw(st.dictionaries(st.sampled_from(["E", "EE", "C", "R", "RA", "U"]), dest,
                                         max_size=3))
    items = draw(st.lists(st.one_of(s10_ids, ssccs), max_size=6, unique=True))
    rows = {"item_id": [], "postcode": [], "country": []}
    for item in items:
        rows["item_id"].append(item.decode())
        rows["postcode"].append(draw(st.one_of(st.none(), prefixes.map(lambda p: p + "0"))))
        rows["country"].append(draw(st.one_of(st.none(), st.sampled_from(COUNTRIES))))
    manifest = pa.table({k: pa.array(v, pa.string()) for k, v in rows.items()})
    return Plan(name="generated", version="1", home_country="KZ",
                chutes=tuple(sorted(set(chute_pool[:used]) | set(special_pool))),
                special=special, destinations=destinations, postcode_rules=postcode_rules,
                country_rules=country_rules, service_rules=service_rules,
                manifest=manifest if items else None,
                recirculation_limit=draw(st.integers(0, 3)))


def chute_states(plan: Plan):
    chutes = sorted(set(plan.chutes))
    return st.dictionaries(st.sampled_from(chutes), st.sampled_from(CHUTE_STATES), max_size=len(chutes))


def _mutate(code: bytes, draw) -> bytes:
    """Truncate, extend, swap a byte, or lower-case a code."""
    how = draw(st.sampled_from(["truncate", "extend", "replace", "lower", "space"]))
    if how == "truncate" and len(code) > 1:
        return code[:draw(st.integers(0, len(code) - 1))]
    if how == "extend":
        return code + draw(st.binary(min_size=1, max_size=3))
    if how == "replace" and code:
        i = draw(st.integers(0, len(code) - 1))
        return code[:i] + draw(st.binary(min_size=1, max_size=1)) + code[i + 1:]
    if how == "lower":
        return code.lower()
    return code[:3] + b" " + code[3:]


def reads_for(plan: Plan):
    """Reads a scanner might report for parcels of this plan, good and bad."""
    known_items = [i.encode() for i in plan.manifest.column("item_id").to_pylist()] \
        if plan.manifest is not None else []
    rule_prefixes = list(plan.postcode_rules) or ["05"]

    @st.composite
    def postcode(draw) -> bytes:
        if draw(st.booleans()):     # old format: 6 digits
            start = draw(st.sampled_from([p for p in rule_prefixes if p.isdigit()] or ["05"]))
            return (start + draw(st.text("0123456789", min_size=6, max_size=6)))[:6].encode()
        letter = draw(st.sampled_from("ABXZ"))
        body = letter + draw(st.text("0123456789", min_size=2, max_size=2)) + \
            draw(st.text("0123456789ABXZ", min_size=4, max_size=4))
        if draw(st.booleans()):
            body = body[:3] + " " + body[3:]
        return body.encode()

    @st.composite
    def gs1(draw) -> bytes:
        elements = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["00", "00bad", "420", "421", "401", "403", "01", "10", "17", "99"]))
            if kind == "00":
                known_ssccs = [i for i in known_items if len(i) == 18] or [sscc(1)]
                elements.append((b"00" + draw(st.one_of(ssccs, st.sampled_from(known_ssccs))), False))
            elif kind == "00bad":
                elements.append((b"00" + sscc(draw(st.integers(0, 10**17 - 1)), good=False), False))
            elif kind == "420":
                pc = draw(st.sampled_from(rule_prefixes)) + draw(st.text("0123456789", max_size=4))
                elements.append((b"420" + pc.encode(), True))
            elif kind == "421":
                country = NUMERIC[draw(st.sampled_from(COUNTRIES))]
                pc = draw(st.sampled_from(rule_prefixes + [""])) + draw(st.text("0123456789", max_size=3))
                elements.append((b"421" + (country + pc)[:12].encode(), True))
            elif kind in ("401", "403"):
                elements.append((kind.encode() + draw(st.text("ABC0123-/", min_size=0, max_size=32)).encode(), True))
            elif kind == "01":
                body = draw(st.text("0123456789", min_size=13, max_size=13))
                elements.append((b"01" + (body + str(gs1_check_digit(body))).encode(), False))
            elif kind == "10":
                elements.append((b"10" + draw(st.text("AB12", min_size=1, max_size=22)).encode(), True))
            elif kind == "17":
                elements.append((b"17" + draw(st.text("0123456789", min_size=5, max_size=7)).encode(), False))
            else:
                elements.append((b"99" + draw(st.text("XY9", min_size=1, max_size=5)).encode(), True))
        out = draw(st.sampled_from([b"]C1", b"]C1", b"]d2", b"]Q3", b"]e0", b"", b"", b"]C0"]))
        for i, (element, variable) in enumerate(elements):
            out += element
            if i < len(elements) - 1 and (variable or draw(st.booleans())) and draw(st.integers(0, 9)) > 0:
                out += GS
        return out

    @st.composite
    def item(draw) -> bytes:
        if known_items and draw(st.booleans()):
            return draw(st.sampled_from(known_items))
        if draw(st.booleans()):
            return draw(s10_ids)
        return s10(draw(st.sampled_from(SERVICES + ["JA", "SX", "TT", "WW", "KA"])),
                   draw(st.integers(0, 99_999_999)), draw(st.sampled_from(COUNTRIES)),
                   good=draw(st.booleans()))

    good = st.one_of(item(), postcode(), gs1())

    @st.composite
    def damaged(draw) -> bytes:
        return _mutate(draw(good), draw)

    return st.one_of(good, good, damaged(), st.binary(max_size=24))


@st.composite
def event_streams(draw, plan: Plan, max_batches: int = 3, max_events: int = 12):
    """Batches of events: (reads per event, recirculations, scan times), with chute state
    changes between batches."""
    reads = reads_for(plan)
    batches = []
    for _ in range(draw(st.integers(1, max_batches))):
        n = draw(st.integers(0, max_events))
        events = [draw(st.lists(reads, max_size=3)) for _ in range(n)]
        recirc = [draw(st.integers(0, 4)) for _ in range(n)]
        ts = [draw(st.integers(0, 2_000)) for _ in range(n)]
        states = draw(chute_states(plan))
        batches.append((events, recirc, ts, states))
    return batches
