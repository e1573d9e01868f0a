"""The compiled core agrees with the reference router, decision by decision and read by read,
and both keep the routing invariants (docs/routing.md)."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter.core import _core, codes
from sorter.core.barcodes import decode, item_key
from sorter.core.events import EventBatch
from sorter.core.reference import ReferenceRouter
from sorter.core.router import Router

from strategies import event_streams, plans, reads_for

SPECIAL_REASON_CODES = {codes.REASON_CODE[r] for r in codes.SPECIAL_REASONS}
settings.register_profile("agreement", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_core_constants_match_codes():
    c = _core.constants()
    assert c["reasons"] == list(range(len(codes.REASONS)))
    assert c["kinds"] == list(range(len(codes.KINDS)))
    assert c["errors"] == list(range(len(codes.ERRORS)))
    assert c["chute_states"] == list(range(len(codes.CHUTE_STATES)))
    assert c["policies"] == list(range(len(codes.POLICIES)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_decode_agrees_with_reference(data):
    plan = data.draw(plans())
    raws = data.draw(st.lists(reads_for(plan), min_size=1, max_size=20))
    batch = EventBatch.from_reads([raws])
    core = _core.decode_reads(batch.read_offsets, batch.data, 398)
    for i, raw in enumerate(raws):
        ref = decode(raw, 398)
        got = (int(core["kind"][i]), int(core["error"][i]))
        assert got == (ref.kind, ref.error), (raw, ref)
        if not ref.valid:
            continue
        assert int(core["dest_country"][i]) == (0xFFFF if ref.dest_country is None else ref.dest_country), raw
        assert core["postcode"][i].decode() == (ref.postcode or ""), raw
        assert core["service"][i].decode() == (ref.service or ""), raw
        assert int(core["item_key"][i]) == (item_key(ref.item_id) if ref.item_id else 0), raw


def _route_both(plan, stream):
    core, ref = Router(plan), ReferenceRouter(plan)
    for events, recirc, ts, states in stream:
        for chute, state in states.items():
            core.set_chute_state(chute, state)
            ref.set_chute_state(chute, state)
        batch = EventBatch.from_reads(events, recirculations=recirc, ts_ns=ts)
        kw = dict(now_ns=2_000, deadline_ns=1_500)
        yield batch, states, core.route(batch, **kw), ref.route(batch, **kw), core


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_core_agrees_with_reference_router(data):
    plan = data.draw(plans())
    stream = data.draw(event_streams(plan))
    for batch, _, got, want in ((b, s, g, w) for b, s, g, w, _ in _route_both(plan, stream)):
        assert len(got) == len(want) == len(batch)
        for i in range(len(batch)):
            assert got.as_tuples()[i] == want.as_tuples()[i], (batch.reads(i), plan)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_routing_invariants(data):
    plan = data.draw(plans())
    stream = data.draw(event_streams(plan))
    special_chutes = set(plan.special.values())
    for batch, _, got, _, core in _route_both(plan, stream):
        # exactly one decision per event
        assert len(got.chute) == len(got.reason) == len(got.destination) == len(batch)
        for chute, reason, dest in got.as_tuples():
            code = codes.REASON_CODE[reason]
            if chute:
                # never a disabled or full chute
                assert core.chute_state(chute) == "available"
            if chute in special_chutes and reason != "sorted":
                assert plan.special[reason] == chute
            if code in SPECIAL_REASON_CODES:
                assert chute in (0, plan.special[reason])
            if reason == "sorted":
                assert chute in plan.destinations[dest].chutes
            if reason in ("recirculate", "late"):
                assert chute == 0
            if reason in ("sorted", "recirculate", "overflow"):
                assert dest >= 0
            else:
                assert dest == -1


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_core_agrees_across_block_boundaries(data):
    """The core decodes reads a block of events ahead; batches longer than a block, and events
    with more reads than a block holds, must decide exactly as the reference does."""
    plan = data.draw(plans())
    reads = reads_for(plan)
    pool = data.draw(st.lists(reads, min_size=1, max_size=30))
    n = data.draw(st.integers(33, 150))
    picks = data.draw(st.lists(st.lists(st.integers(0, len(pool) - 1), max_size=6),
                               min_size=n, max_size=n))
    events = [[pool[i] for i in p] for p in picks]
    big = data.draw(st.integers(0, n - 1))
    events[big] = [pool[i % len(pool)] for i in range(data.draw(st.integers(120, 300)))]
    batch = EventBatch.from_reads(events, recirculations=[i % 4 for i in range(n)],
                                  ts_ns=[(i * 37) % 2000 for i in range(n)])
    kw = dict(now_ns=2_000, deadline_ns=1_500)
    got = Router(plan).route(batch, **kw).as_tuples()
    want = ReferenceRouter(plan).route(batch, **kw).as_tuples()
    assert got == want
