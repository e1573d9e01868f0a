"""Worked routing scenarios from docs/routing.md, run through the core and the reference."""
import numpy as np
import pyarrow as pa
import pytest

from sorter.core.events import EventBatch
from sorter.plan import Destination, Plan
from sorter.core.reference import ReferenceRouter
from sorter.core.router import Router, compile_plan

from strategies import s10, sscc

GS = b"\x1d"


def make_plan(**over) -> Plan:
    fields = dict(
        name="t", version="v1", home_country="KZ", chutes=tuple(range(1, 21)),
        special={"no_read": 17, "invalid": 18, "conflict": 18, "unknown_destination": 19,
                 "overflow": 20},
        destinations=[Destination("ALMATY", (1, 2, 3)), Destination("ASTANA", (4, 5), "round_robin"),
                      Destination("EMS", (6,)), Destination("INTL", (7,)),
                      Destination("DOMESTIC_MANUAL", (8,))],
        postcode_rules={"05": "ALMATY", "A": "ALMATY", "01": "ASTANA", "Z": "ASTANA",
                        "0500": "ASTANA"},
        country_rules={"RU": "INTL", "KZ": "DOMESTIC_MANUAL"},
        service_rules={"E": "EMS"},
        manifest=pa.table({"item_id": [s10("RR", 1, "CN").decode(), sscc(7).decode(),
                                       s10("CP", 2, "DE").decode()],
                           "postcode": ["010000", None, None],
                           "country": [None, "RU", None]}),
        recirculation_limit=2)
    fields.update(over)
    return Plan(**fields)


@pytest.fixture(params=[Router, ReferenceRouter], ids=["core", "reference"])
def router_cls(request):
    return request.param


def route(router, events, **kw):
    batch = EventBatch.from_reads([e if isinstance(e, list) else [e] for e in events], **kw)
    return router.route(batch).as_tuples()


def test_reasons_and_destinations(router_cls):
    r = router_cls(make_plan())
    got = route(r, [
        [],                                    # no_read
        b"RR473124820GB",                      # bad check digit -> invalid
        b"050123",                             # old postcode, prefix 05 -> ALMATY
        b"050012",                             # longest prefix 0500 -> ASTANA
        b"A15 K2P4",                           # new postcode with space -> ALMATY
        s10("EE", 5, "CN"),                    # EMS by service whatever its address
        s10("RR", 1, "CN"),                    # manifest -> 010000 -> ASTANA
        b"]C100" + sscc(7),                    # manifest -> RU -> INTL
        s10("RR", 9, "CN"),                    # valid, no pre-advice -> unknown
        b"]C1421643101000",                    # RU by AI 421
        b"]C1421156101000",                    # CN: no country rule -> unknown
        b"]C1420990000",                       # domestic postcode with no prefix -> KZ rule
        s10("CP", 2, "DE"),                    # manifest row with neither address -> unknown
    ])
    assert got == [
        (17, "no_read", -1), (18, "invalid", -1), (1, "sorted", 0), (4, "sorted", 1),
        (1, "sorted", 0), (6, "sorted", 2), (5, "sorted", 1), (7, "sorted", 3),
        (19, "unknown_destination", -1), (7, "sorted", 3), (19, "unknown_destination", -1),
        (8, "sorted", 4), (19, "unknown_destination", -1)]


def test_multi_read_rules(router_cls):
    r = router_cls(make_plan())
    got = route(r, [
        [b"050123", b"A01P3K4"],               # agree: both ALMATY
        [b"050123", b"Z01P3K4"],               # ALMATY vs ASTANA -> conflict
        [s10("RR", 9, "CN"), b"050123"],       # no pre-advice does not block the postcode
        [s10("EE", 5, "CN"), b"Z01P3K4"],      # service rule outranks the address
        [b"garbage!", b"050123"],              # invalid read ignored beside a valid one
        [b"garbage!", b"\x00\x01"],            # nothing valid -> invalid
    ])
    assert got == [(1, "sorted", 0), (18, "conflict", -1), (1, "sorted", 0), (6, "sorted", 2),
                   (1, "sorted", 0), (18, "invalid", -1)]


def test_fill_first_falls_back_and_round_robin_rotates(router_cls):
    r = router_cls(make_plan())
    assert [c for c, _, _ in route(r, [b"050123"] * 3)] == [1, 1, 1]
    r.set_chute_state(1, "full")
    r.set_chute_state(2, "disabled")
    assert [c for c, _, _ in route(r, [b"050123"] * 2)] == [3, 3]
    assert [c for c, _, _ in route(r, [b"Z01P3K4"] * 3)] == [4, 5, 4]
    # the position survives between batches
    assert [c for c, _, _ in route(r, [b"Z01P3K4"])] == [5]
    r.set_chute_state(4, "full")
    assert [c for c, _, _ in route(r, [b"Z01P3K4"] * 2)] == [5, 5]


def test_recirculate_then_overflow(router_cls):
    r = router_cls(make_plan())
    for chute in (1, 2, 3):
        r.set_chute_state(chute, "full")
    got = route(r, [b"050123"] * 3, recirculations=[0, 1, 2])
    assert got == [(0, "recirculate", 0), (0, "recirculate", 0), (20, "overflow", 0)]
    r.set_chute_state(20, "full")
    assert route(r, [b"050123"], recirculations=[5]) == [(0, "overflow", 0)]


def test_unavailable_special_chute_keeps_reason_with_no_divert(router_cls):
    r = router_cls(make_plan())
    r.set_chute_state(17, "disabled")
    assert route(r, [[]]) == [(0, "no_read", -1)]


def test_late_events(router_cls):
    r = router_cls(make_plan())
    batch = EventBatch.from_reads([[b"050123"], [b"050123"]], ts_ns=[1_000, 9_000])
    got = r.route(batch, now_ns=10_000, deadline_ns=5_000).as_tuples()
    assert got == [(0, "late", -1), (1, "sorted", 0)]


def test_plan_swap_keeps_chute_states_and_applies_to_next_batch(router_cls):
    r = router_cls(make_plan())
    r.set_chute_state(1, "full")
    assert route(r, [b"050123"]) == [(2, "sorted", 0)]
    r.swap_plan(make_plan(postcode_rules={"05": "ASTANA"}, version="v2"))
    assert route(r, [b"050123"]) == [(4, "sorted", 1)]
    assert r.chute_state(1) == "full"


def test_bad_plan_swap_keeps_running_plan():
    r = Router(make_plan())
    with pytest.raises(ValueError):
        r.swap_plan(make_plan(postcode_rules={"0-5": "ALMATY"}))
    assert route(r, [b"050123"]) == [(1, "sorted", 0)]
    assert r.plan.version == "v1"


def test_compiled_manifest_lookup():
    compiled = compile_plan(make_plan())
    from sorter.core.barcodes import item_key
    assert compiled.manifest_rows == 3
    assert compiled.lookup_manifest(item_key(s10("RR", 1, "CN").decode())) == 1
    assert compiled.lookup_manifest(item_key(s10("CP", 2, "DE").decode())) == -1
    assert compiled.lookup_manifest(item_key(s10("CP", 3, "DE").decode())) is None
    assert compiled.lookup_postcode(b"050099") == 1
    assert compiled.lookup_postcode(b"059999") == 0
    assert compiled.lookup_postcode(b"999999") == -1


def test_batch_from_arrow_matches_from_reads():
    reads = [[b"050123", b"x"], [], [b"Z01P3K4"]]
    arr = pa.array(reads, pa.list_(pa.binary()))
    a = Router(make_plan()).route(EventBatch.from_arrow(arr.slice(1))).as_tuples()
    b = Router(make_plan()).route(EventBatch.from_reads(reads[1:])).as_tuples()
    assert a == b == [(17, "no_read", -1), (4, "sorted", 1)]


def test_core_rejects_offsets_outside_the_data():
    r = Router(make_plan())
    batch = EventBatch.from_reads([[b"050000"], [b"A01P3K4"]])
    batch.read_offsets = np.array([0, 6, 100], np.int32)
    with pytest.raises(ValueError, match="read_offsets"):
        r.route(batch)
    batch.read_offsets = np.array([0, 6, 13], np.int32)
    batch.event_offsets = np.array([0, 2, 1], np.int32)
    with pytest.raises(ValueError, match="event_offsets"):
        r.route(batch)
