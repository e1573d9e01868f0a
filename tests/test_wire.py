"""The wire protocol (sorter.wire, sorter.wire._wire, docs/protocol.md).

Round trips on generated batches, every malformed class with its code and offset, fuzzing with
garbage and with mutated valid messages (only WireError or a valid decode, and a valid decode
re-encodes to the same bytes), and the page itself: its annotated hex examples and its C sketch
must reproduce what the encoder emits.

`python tests/test_wire.py --write-doc` regenerates the example blocks of docs/protocol.md.
"""
from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter.wire import _wire
from sorter.core import codes
from sorter import wire
from sorter.core.events import Decisions, EventBatch
from sorter.wire import Limits, WireError

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "protocol.md"
FUZZ = settings(max_examples=600, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------
# The examples of docs/protocol.md

TS = 1_748_779_200_000_000_000          # 2025-06-01T12:00:00Z


def doc_examples() -> dict[str, bytes]:
    scan = EventBatch.from_reads(
        [[b"RR123456785KZ", b"]C1420A15D3F7\x1d10LOT7"], []],
        parcel_ids=[12345, 12346], scanner_ids=[3, 3], ts_ns=[TS, TS + 250_000_000],
        recirculations=[0, 1])
    return {
        "scan": wire.encode_scan(scan, [1001, 1002], batch_seq=7),
        "decision": wire.encode_decisions(
            "kz-hub/2025-06-01", parcel_id=[12345, 12346], seq=[1001, 1002],
            decision_seq=[500, 501], chute=[17, 76], reason=["sorted", "no_read"],
            scanner_id=[3, 3], batch_seq=42),
        "chute_status": wire.encode_chute_status([17, 18, 40], ["full", "available", "disabled"],
                                                 batch_seq=3),
        "sort_confirm": wire.encode_sort_confirm([12345, 12346], [17, 0],
                                                 ["sorted", "failed_divert"], batch_seq=4),
        "heartbeat": wire.encode_heartbeat(batch_seq=9),
    }


def render_example(msg: bytes) -> str:
    return ("```text\n" + wire.annotate(msg) + "```\n\nThe same message as one hex string:\n\n"
            "```text\n" + msg.hex() + "\n```\n")


EXAMPLE_BLOCK = re.compile(r"(<!-- example: (\w+) -->\n)(.*?)(<!-- /example -->)", re.S)
C_BLOCK = re.compile(r"<!-- c-sketch -->\n```c\n(.*?)```", re.S)


def write_doc() -> None:
    examples = doc_examples()
    text = DOC.read_text()
    new = EXAMPLE_BLOCK.sub(lambda m: m[1] + render_example(examples[m[2]]) + m[4], text)
    DOC.write_text(new)


# ---------------------------------------------------------------------------------------------
# Helpers

def reencode(header: wire.Header, payload) -> bytes:
    """The message a decoded (header, payload) encodes back to."""
    if header.kind == wire.SCAN:
        return wire.encode_scan(payload.events, payload.seq, header.batch_seq)
    if header.kind == wire.DECISION:
        return wire.encode_decisions(payload.plan_version, payload.parcel_id, payload.seq,
                                     payload.decision_seq, payload.chute, payload.reason,
                                     payload.scanner_id, header.batch_seq)
    if header.kind == wire.CHUTE_STATUS:
        return wire.encode_chute_status(payload.chute, payload.state, header.batch_seq)
    if header.kind == wire.SORT_CONFIRM:
        return wire.encode_sort_confirm(payload.parcel_id, payload.chute, payload.outcome,
                                        header.batch_seq)
    return wire.encode_heartbeat(header.batch_seq)


DECODERS = (wire.decode_message, wire.decode_scan, wire.decode_decisions,
            wire.decode_chute_status, wire.decode_sort_confirm, wire.decode_heartbeat,
            wire.peek_header)


def decode_or_reject(buf: bytes) -> None:
    """Every decoder either rejects buf with a WireError of a known code and an offset inside
    the frame, or decodes it; a decoded message re-encodes to exactly buf."""
    for decode in DECODERS:
        try:
            decode(buf)
        except WireError as e:
            assert e.code in wire.ERROR_CODES, e
            assert e.offset is None or 0 <= e.offset <= len(buf), e
    try:
        header, payload = wire.decode_message(buf)
    except WireError:
        return
    assert header.frame_len == len(buf)
    assert reencode(header, payload) == buf


def assert_events_equal(a: EventBatch, b: EventBatch) -> None:
    assert len(a) == len(b)
    for col in ("parcel_ids", "scanner_ids", "ts_ns", "recirculations"):
        x, y = getattr(a, col), getattr(b, col)
        assert x.dtype == y.dtype and np.array_equal(x, y), col
    assert [a.reads(i) for i in range(len(a))] == [b.reads(i) for i in range(len(b))]


def with_header(buf: bytes, **fields) -> bytes:
    """buf with header fields overwritten (raw values, no checks)."""
    b = bytearray(buf)
    spots = {"magic": (0, 2), "version": (2, 1), "kind": (3, 1), "count": (4, 4),
             "body_len": (8, 4), "batch_seq": (12, 4)}
    for name, value in fields.items():
        off, size = spots[name]
        b[off: off + size] = value if isinstance(value, bytes) else value.to_bytes(size, "little")
    return bytes(b)


def patched(buf: bytes, off: int, value: bytes) -> bytes:
    return buf[:off] + value + buf[off + len(value):]


# ---------------------------------------------------------------------------------------------
# Strategies

reads = st.one_of(st.binary(max_size=24), st.binary(max_size=24), st.just(b""),
                  st.binary(min_size=1000, max_size=wire.MAX_READ_LEN))


@st.composite
def event_batches(draw, max_events: int = 20, max_reads: int = 6):
    n = draw(st.integers(0, max_events))
    evs = [draw(st.lists(reads, max_size=max_reads)) for _ in range(n)]
    ints = lambda lo, hi: st.lists(st.integers(lo, hi), min_size=n, max_size=n)  # noqa: E731
    batch = EventBatch.from_reads(
        evs, parcel_ids=draw(ints(0, 2**64 - 1)), scanner_ids=draw(ints(0, 2**16 - 1)),
        ts_ns=draw(ints(-2**63, 2**63 - 1)), recirculations=draw(ints(0, 255)))
    return batch, np.array(draw(ints(0, 2**64 - 1)), np.uint64)


@st.composite
def valid_messages(draw) -> bytes:
    kind = draw(st.sampled_from(sorted(wire.KIND_NAMES)))
    bseq = draw(st.integers(0, 2**32 - 1))
    if kind == wire.SCAN:
        batch, seq = draw(event_batches(max_events=6, max_reads=3))
        return wire.encode_scan(batch, seq, bseq)
    n = draw(st.integers(0, 6))
    col = lambda lo, hi: draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))  # noqa: E731
    if kind == wire.DECISION:
        return wire.encode_decisions(draw(st.text(max_size=20)), col(0, 2**64 - 1),
                                     col(0, 2**64 - 1), col(0, 2**64 - 1), col(0, 65535),
                                     col(0, len(codes.REASONS) - 1), col(0, 65535), bseq)
    if kind == wire.CHUTE_STATUS:
        return wire.encode_chute_status(col(1, 65535), col(0, len(codes.CHUTE_STATES) - 1), bseq)
    if kind == wire.SORT_CONFIRM:
        return wire.encode_sort_confirm(col(0, 2**64 - 1), col(0, 65535),
                                        col(0, len(wire.OUTCOMES) - 1), bseq)
    return wire.encode_heartbeat(bseq)


def mutated(draw, msg: bytes) -> bytes:
    """msg after 1 to 4 random edits: bit flips, byte sets, cuts, insertions, deletions, and
    header count / body_len overwritten."""
    buf = bytearray(msg)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "field"]))
        i = draw(st.integers(0, max(len(buf) - 1, 0)))
        if how == "flip" and buf:
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "set" and buf:
            buf[i] = draw(st.integers(0, 255))
        elif how == "cut":
            del buf[i:]
        elif how == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del buf[i: i + draw(st.integers(1, 8))]
        elif how == "field" and len(buf) >= 16:
            off = draw(st.sampled_from([4, 8]))
            value = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 64)))
            buf[off: off + 4] = value.to_bytes(4, "little")
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# Constants

def test_compiled_constants_match_the_module():
    c = _wire.constants()
    assert c["header_size"] == wire.HEADER_SIZE == 16
    assert c["scan_fixed"] == wire.SCAN_FIXED_SIZE == 28
    assert c["decision_record"] == wire.DECISION_RECORD_SIZE == 32
    assert c["chute_record"] == wire.CHUTE_STATUS_RECORD_SIZE == 4
    assert c["confirm_record"] == wire.SORT_CONFIRM_RECORD_SIZE == 16
    assert c["version"] == wire.VERSION == 1
    assert c["kinds"] == sorted(wire.KIND_NAMES) == [1, 2, 3, 4, 5]
    assert c["outcomes"] == len(wire.OUTCOMES)
    assert c["reasons"] == len(codes.REASONS)
    assert c["chute_states"] == len(codes.CHUTE_STATES)
    assert tuple(c["errors"][1:]) == wire.ERROR_CODES
    assert wire.MAGIC == b"PS"


def test_wire_error_is_a_value_error_and_pickles():
    e = WireError("truncated", 5, "x")
    assert isinstance(e, ValueError)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.code, e2.offset, e2.detail, str(e2)) == ("truncated", 5, "x", str(e))


def test_limits_are_checked():
    for bad in (dict(max_frame=15), dict(max_frame=2**31), dict(max_reads=256),
                dict(max_read_len=65536), dict(max_records=-1)):
        with pytest.raises(ValueError):
            Limits(**bad)


# ---------------------------------------------------------------------------------------------
# Round trips

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_batches(), st.integers(0, 2**32 - 1))
def test_scan_round_trip(batch_seq_pair, batch_seq):
    batch, seq = batch_seq_pair
    msg = wire.encode_scan(batch, seq, batch_seq)
    out = wire.decode_scan(msg)
    assert out.header == wire.Header(1, wire.SCAN, len(batch), len(msg) - 16, batch_seq)
    assert_events_equal(out.events, batch)
    assert out.seq.dtype == np.uint64 and np.array_equal(out.seq, seq)
    assert out.events.event_offsets.dtype == np.int32 and out.events.event_offsets[0] == 0
    assert out.events.read_offsets.dtype == np.int32 and out.events.read_offsets[0] == 0
    assert out.events.read_offsets[-1] == len(out.events.data)
    n_reads = int(batch.event_offsets[-1] - batch.event_offsets[0])
    assert len(msg) == 16 + 28 * len(batch) + 2 * n_reads + len(batch.data)
    header, payload = wire.decode_message(msg)
    assert header == out.header and isinstance(payload, wire.ScanBatch)
    assert wire.encode_scan(out.events, out.seq, batch_seq) == msg


def test_scan_round_trip_edges():
    """Empty batch, events without reads, empty reads, binary reads, and the maxima: 255 reads
    on one event, reads of exactly 1024 bytes, extreme column values."""
    big = bytes(range(256)) * 4
    cases = [
        EventBatch.from_reads([]),
        EventBatch.from_reads([[], [], []]),
        EventBatch.from_reads([[b""], [b"", b""], [b"\x00\x1d\xff"]]),
        EventBatch.from_reads([[big] * 255, [bytes(1024)]],
                              parcel_ids=[2**64 - 1, 0], scanner_ids=[65535, 0],
                              ts_ns=[-2**63, 2**63 - 1], recirculations=[255, 0]),
    ]
    for batch in cases:
        seq = np.arange(len(batch), dtype=np.uint64) + np.uint64(2**64 - 2)
        out = wire.decode_scan(wire.encode_scan(batch, seq))
        assert_events_equal(out.events, batch)
        assert np.array_equal(out.seq, seq)


def test_scan_encodes_sliced_batches():
    """Offsets need not start at 0 (a batch sliced out of a bigger one)."""
    full = EventBatch.from_reads([[b"A"], [b"BB", b"CCC"], [], [b"DDDD"]])
    eo = full.event_offsets[1:4]                # events 1 and 2
    part = EventBatch(full.parcel_ids[1:3], full.scanner_ids[1:3], full.ts_ns[1:3],
                      full.recirculations[1:3], eo, full.read_offsets, full.data)
    out = wire.decode_scan(wire.encode_scan(part, [5, 6]))
    assert [out.events.reads(i) for i in range(2)] == [[b"BB", b"CCC"], []]
    assert out.events.parcel_ids.tolist() == [1, 2]


def test_scan_decodes_from_any_buffer_and_owns_its_arrays():
    import zmq
    batch = EventBatch.from_reads([[b"RR123456785KZ"], [b"xyz", b""]])
    msg = wire.encode_scan(batch, [1, 2])
    for buf in (bytearray(msg), memoryview(msg), np.frombuffer(msg, np.uint8),
                zmq.Frame(msg)):
        assert_events_equal(wire.decode_scan(buf).events, batch)
    buf = bytearray(msg)
    out = wire.decode_scan(buf)
    buf[16:] = bytes(len(buf) - 16)             # the sender's buffer is reused
    assert_events_equal(out.events, batch)
    out.events.parcel_ids[0] = 99               # decoded columns are writable
    assert out.events.data.flags.writeable


def test_decoding_a_large_message_runs_no_python_per_event():
    """The Python-level calls made while decoding do not depend on the number of events."""
    def calls(n: int) -> int:
        batch = EventBatch.from_reads([[b"RR123456785KZ", b"]C1420A15D3F7"]] * n)
        msg = wire.encode_scan(batch, np.arange(n, dtype=np.uint64))
        seen = []
        sys.setprofile(lambda frame, event, arg: seen.append(event))
        try:
            out = wire.decode_message(msg)[1]
        finally:
            sys.setprofile(None)
        assert len(out) == n and out.events.reads(n - 1) == [b"RR123456785KZ", b"]C1420A15D3F7"]
        return len(seen)
    assert calls(10) == calls(10_000)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_decision_round_trip(data):
    n = data.draw(st.integers(0, 40))
    col = lambda hi: np.array(data.draw(st.lists(st.integers(0, hi), min_size=n, max_size=n)),  # noqa: E731
                              dtype=np.uint64 if hi == 2**64 - 1 else None)
    plan_version = data.draw(st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255))
    cols = dict(parcel_id=col(2**64 - 1), seq=col(2**64 - 1), decision_seq=col(2**64 - 1),
                chute=col(65535), reason=col(len(codes.REASONS) - 1), scanner_id=col(65535))
    bseq = data.draw(st.integers(0, 2**32 - 1))
    msg = wire.encode_decisions(plan_version, **cols, batch_seq=bseq)
    out = wire.decode_decisions(msg)
    assert out.plan_version == plan_version and len(out) == n
    assert out.header == wire.Header(1, wire.DECISION, n, len(msg) - 16, bseq)
    for name, values in cols.items():
        got = getattr(out, name)
        assert np.array_equal(got.astype(np.uint64), np.asarray(values, np.uint64)), name
    assert out.chute.dtype == np.uint16 and out.reason.dtype == np.uint8
    assert len(msg) == 16 + 1 + len(plan_version.encode()) + 32 * n


def test_decisions_for_a_routed_scan_batch():
    batch = EventBatch.from_reads([[b"A"], [], [b"B"]], parcel_ids=[7, 8, 9], scanner_ids=[1, 2, 1])
    scans = wire.decode_scan(wire.encode_scan(batch, [10, 11, 12], 1))
    decisions = Decisions(np.array([4, 0, 40], np.uint16), np.array([0, 1, 2], np.uint8),
                          np.array([0, -1, -1], np.int32))
    out = wire.decode_decisions(wire.encode_decisions_for("p1", scans, decisions, 100, 5))
    assert out.parcel_id.tolist() == [7, 8, 9] and out.seq.tolist() == [10, 11, 12]
    assert out.decision_seq.tolist() == [100, 101, 102] and out.chute.tolist() == [4, 0, 40]
    assert out.reason_names() == ["sorted", "no_read", "invalid"]
    assert out.scanner_id.tolist() == [1, 2, 1] and out.header.batch_seq == 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 2)), max_size=50),
       st.integers(0, 2**32 - 1))
def test_chute_status_round_trip(records, bseq):
    chutes, states = [r[0] for r in records], [r[1] for r in records]
    out = wire.decode_chute_status(wire.encode_chute_status(chutes, states, bseq))
    assert out.chute.tolist() == chutes and out.state.tolist() == states
    assert out.items() == [(c, codes.CHUTE_STATES[s]) for c, s in records]
    assert out.header.batch_seq == bseq


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 65535), st.integers(0, 2)),
                max_size=50), st.integers(0, 2**32 - 1))
def test_sort_confirm_round_trip(records, bseq):
    pid, chute, outcome = ([r[i] for r in records] for i in range(3))
    out = wire.decode_sort_confirm(wire.encode_sort_confirm(pid, chute, outcome, bseq))
    assert out.parcel_id.tolist() == pid and out.chute.tolist() == chute
    assert out.outcome.tolist() == outcome
    assert out.outcome_names() == [wire.OUTCOMES[o] for o in outcome]


def test_heartbeat_and_batch_seq_wrap():
    hb = wire.encode_heartbeat(2**32 + 5)
    assert hb == b"PS\x01\x05" + bytes(8) + (5).to_bytes(4, "little")
    assert wire.decode_message(hb) == (wire.Header(1, 5, 0, 0, 5), None)
    assert wire.decode_heartbeat(hb).batch_seq == 5
    assert wire.encode_heartbeat(-1)[12:] == b"\xff\xff\xff\xff"


def test_peek_header_needs_only_the_header():
    msg = doc_examples()["scan"]
    h = wire.peek_header(msg[:16])
    assert h == wire.Header(1, wire.SCAN, 2, len(msg) - 16, 7) and h.frame_len == len(msg)
    assert h.kind_name == "SCAN"
    with pytest.raises(WireError) as e:
        wire.peek_header(msg[:15])
    assert e.value.code == "truncated"


# ---------------------------------------------------------------------------------------------
# The limits, on both sides

def test_limits_are_enforced_by_encoder_and_decoder():
    batch = EventBatch.from_reads([[b"ab", b"cd", b"ef"], [b"x" * 30]])
    msg = wire.encode_scan(batch, [1, 2])
    exact = Limits(max_frame=len(msg), max_records=2, max_reads=3, max_read_len=30)
    assert wire.encode_scan(batch, [1, 2], limits=exact) == msg
    assert len(wire.decode_scan(msg, limits=exact)) == 2
    for limits, code, offset in [
        (Limits(max_frame=len(msg) - 1), "oversized", len(msg) - 1),
        (Limits(max_records=1), "too_many_records", 4),
        (Limits(max_reads=2), "too_many_reads", 16 + 27),
        (Limits(max_read_len=29), "read_too_long", 16 + 28 + 3 * 4 + 28),
    ]:
        with pytest.raises(WireError) as e:
            wire.encode_scan(batch, [1, 2], limits=limits)
        assert e.value.code == code and e.value.offset is None
        with pytest.raises(WireError) as e:
            wire.decode_scan(msg, limits=limits)
        assert (e.value.code, e.value.offset) == (code, offset)


def test_encoder_refuses_what_the_wire_cannot_carry():
    cases = [
        (lambda: wire.encode_scan(EventBatch.from_reads([[b"a"] * 256]), [0]), "too_many_reads"),
        (lambda: wire.encode_scan(EventBatch.from_reads([[bytes(1025)]]), [0]), "read_too_long"),
        (lambda: wire.encode_scan(EventBatch.from_reads([[b"a"]]), [0, 1]), "bad_record"),
        (lambda: wire.encode_scan(EventBatch.from_reads([[b"a"]]), [-1]), "bad_record"),
        (lambda: wire.encode_scan(EventBatch.from_reads([[b"a"]]), [1.5]), "bad_record"),
        (lambda: wire.encode_scan(EventBatch.from_reads([[b"a"]]), [2**64]), "bad_record"),
        (lambda: wire.encode_scan(EventBatch.from_reads([[b"a"]]), np.array([1.0])), "bad_record"),
        (lambda: wire.encode_scan(EventBatch(*[np.zeros(1, t) for t in (np.uint64, np.uint16,
                                   np.int64, np.uint8)], np.array([0, 2], np.int32),
                                   np.array([0, 1], np.int32), np.zeros(1, np.uint8)), [0]),
         "bad_record"),                                    # offsets past the reads
        (lambda: wire.encode_scan(EventBatch(*[np.zeros(1, t) for t in (np.uint64, np.uint16,
                                   np.int64, np.uint8)], np.array([0, 1], np.int32),
                                   np.array([0, 5], np.int32), np.zeros(1, np.uint8)), [0]),
         "bad_record"),                                    # read past the data
        (lambda: wire.encode_decisions("p", [1], [1], [1], [1], [9], [1]), "bad_record"),
        (lambda: wire.encode_decisions("p", [1], [1], [1], [1], ["nope"], [1]), "bad_record"),
        (lambda: wire.encode_decisions("p", [1], [1], [1], [70000], [0], [1]), "bad_record"),
        (lambda: wire.encode_decisions("é" * 128, [1], [1], [1], [1], [0], [1]), "bad_record"),
        (lambda: wire.encode_decisions("p", [1, 2], [1], [1], [1], [0], [1]), "bad_record"),
        (lambda: wire.encode_chute_status([0], [0]), "bad_record"),
        (lambda: wire.encode_chute_status([1], [3]), "bad_record"),
        (lambda: wire.encode_chute_status([1], ["broken"]), "bad_record"),
        (lambda: wire.encode_sort_confirm([1], [1], [3]), "bad_record"),
        (lambda: wire.encode_sort_confirm([[1]], [1], [0]), "bad_record"),
        (lambda: wire.encode_decisions("p", *[[1]] * 3, [1], [0], [1],
                                       limits=Limits(max_frame=49)), "oversized"),
        (lambda: wire.encode_chute_status([1, 2], [0, 0], limits=Limits(max_records=1)),
         "too_many_records"),
    ]
    for make, code in cases:
        with pytest.raises(WireError) as e:
            make()
        assert e.value.code == code, (e.value, code)


# ---------------------------------------------------------------------------------------------
# Malformed messages: every class, its code and its offset

def malformed_cases() -> list[tuple[str, bytes, str, int, Limits]]:
    ex = doc_examples()
    scan, dec, cs, sc, hb = (ex[k] for k in ("scan", "decision", "chute_status",
                                             "sort_confirm", "heartbeat"))
    d = wire.DEFAULT_LIMITS
    plv = 1 + len("kz-hub/2025-06-01")
    rec0 = 16 + plv                                     # first DECISION record
    one_read = wire.encode_scan(EventBatch.from_reads([[b"abc"]]), [1])
    return [
        ("empty frame", b"", "truncated", 0, d),
        ("one byte of magic", b"P", "truncated", 1, d),
        ("garbage", b"GET / HTTP/1.1\r\n\r\n", "bad_magic", 0, d),
        ("second magic byte", b"PX" + scan[2:], "bad_magic", 1, d),
        ("version 0", with_header(scan, version=0), "unknown_version", 2, d),
        ("version 2", with_header(scan, version=2), "unknown_version", 2, d),
        ("short frame, future version", b"PS\x02", "unknown_version", 2, d),
        ("kind 0", with_header(scan, kind=0), "unknown_kind", 3, d),
        ("kind 6", with_header(scan, kind=6), "unknown_kind", 3, d),
        ("header cut", scan[:15], "truncated", 15, d),
        ("body cut", scan[:-1], "truncated", len(scan) - 1, d),
        ("body_len beyond the frame", with_header(hb, body_len=1), "truncated", 16, d),
        ("trailing byte", scan + b"\x00", "length_mismatch", len(scan), d),
        ("two messages in one frame", hb + hb, "length_mismatch", 16, d),
        ("frame over max_frame", scan, "oversized", 64, Limits(max_frame=64)),
        ("body_len over max_frame", with_header(hb, body_len=2**32 - 1), "oversized", 8, d),
        ("count over max_records", with_header(cs, count=70_000), "too_many_records", 4, d),
        # SCAN
        ("SCAN count too big for body", with_header(scan, count=4), "length_mismatch", 4, d),
        ("SCAN count too big for the reads", with_header(scan, count=3), "length_mismatch", 44, d),
        ("SCAN count too small", with_header(scan, count=1), "length_mismatch", 16 + 28 + 2 + 13 + 2 + 20, d),
        ("SCAN n_reads too big", patched(one_read, 43, b"\x02"), "length_mismatch", 16 + 28 + 5, d),
        ("SCAN n_reads too small", patched(one_read, 43, b"\x00"), "length_mismatch", 16 + 28, d),
        ("SCAN read past the body", patched(one_read, 44, b"\x04\x00"), "length_mismatch", 44, d),
        ("SCAN read of 1025 bytes", patched(one_read, 44, (1025).to_bytes(2, "little")),
         "read_too_long", 44, d),
        ("SCAN too many reads", scan, "too_many_reads", 43, Limits(max_reads=1)),
        ("SCAN read longer than the limit", scan, "read_too_long", 59, Limits(max_read_len=19)),
        # DECISION
        ("DECISION empty body", with_header(dec, count=0, body_len=0)[:16], "length_mismatch", 8, d),
        ("DECISION plan_version past the body", patched(dec, 16, b"\xff"), "length_mismatch", 16, d),
        ("DECISION count mismatch", with_header(dec, count=1), "length_mismatch", 4, d),
        ("DECISION reason 9", patched(dec, rec0 + 26, b"\x09"), "bad_record", rec0 + 26, d),
        ("DECISION flags", patched(dec, rec0 + 32 + 27, b"\x01"), "bad_record", rec0 + 32 + 27, d),
        ("DECISION reserved", patched(dec, rec0 + 31, b"\x01"), "bad_record", rec0 + 30, d),
        ("DECISION plan_version not UTF-8", patched(dec, 17 + 3, b"\xff"), "bad_record", 20, d),
        # CHUTE_STATUS
        ("CHUTE_STATUS chute 0", patched(cs, 20, b"\x00\x00"), "bad_record", 20, d),
        ("CHUTE_STATUS state 3", patched(cs, 18, b"\x03"), "bad_record", 18, d),
        ("CHUTE_STATUS reserved", patched(cs, 27, b"\x01"), "bad_record", 27, d),
        ("CHUTE_STATUS count mismatch", with_header(cs, count=2), "length_mismatch", 4, d),
        # SORT_CONFIRM
        ("SORT_CONFIRM outcome 3", patched(sc, 26, b"\x03"), "bad_record", 26, d),
        ("SORT_CONFIRM reserved u8", patched(sc, 43, b"\x01"), "bad_record", 43, d),
        ("SORT_CONFIRM reserved u32", patched(sc, 47, b"\x01"), "bad_record", 44, d),
        ("SORT_CONFIRM count mismatch", with_header(sc, count=3), "length_mismatch", 4, d),
        # HEARTBEAT
        ("HEARTBEAT with a count", with_header(hb, count=1), "length_mismatch", 4, d),
        ("HEARTBEAT with a body", with_header(hb, body_len=1) + b"\x00", "length_mismatch", 8, d),
    ]


@pytest.mark.parametrize("name, buf, code, offset, limits", malformed_cases(),
                         ids=[c[0] for c in malformed_cases()])
def test_malformed(name, buf, code, offset, limits):
    with pytest.raises(WireError) as e:
        wire.decode_message(buf, limits=limits)
    assert (e.value.code, e.value.offset) == (code, offset), str(e.value)
    decode_or_reject(buf)


def test_every_error_code_is_exercised():
    seen = {c[2] for c in malformed_cases()} | {"unexpected_kind"}
    assert seen == set(wire.ERROR_CODES)


def test_decoding_the_wrong_kind():
    ex = doc_examples()
    for decode, wrong in [(wire.decode_scan, "decision"), (wire.decode_decisions, "scan"),
                          (wire.decode_chute_status, "sort_confirm"),
                          (wire.decode_sort_confirm, "heartbeat"),
                          (wire.decode_heartbeat, "chute_status")]:
        with pytest.raises(WireError) as e:
            decode(ex[wrong])
        assert (e.value.code, e.value.offset) == ("unexpected_kind", 3)


# ---------------------------------------------------------------------------------------------
# Fuzzing: never a crash, never a read outside the frame

@FUZZ
@given(st.binary(max_size=300))
def test_garbage_never_crashes(buf):
    decode_or_reject(buf)


@FUZZ
@given(st.integers(0, 7), st.integers(0, 40), st.integers(0, 300), st.binary(max_size=300))
def test_garbage_behind_a_plausible_header_never_crashes(kind, count, body_len, body):
    buf = b"PS\x01" + bytes([kind]) + count.to_bytes(4, "little") \
        + body_len.to_bytes(4, "little") + bytes(4) + body
    decode_or_reject(buf)


@FUZZ
@given(valid_messages(), st.data())
def test_mutated_messages_never_crash(msg, data):
    decode_or_reject(msg)
    decode_or_reject(mutated(data.draw, msg))


@FUZZ
@given(valid_messages())
def test_every_truncation_is_rejected(msg):
    for cut in range(len(msg)):
        with pytest.raises(WireError):
            wire.decode_message(msg[:cut])


# ---------------------------------------------------------------------------------------------
# Many frames at once: decode_scans against decoding each frame alone

def decode_alone(buf, limits: Limits = wire.DEFAULT_LIMITS):
    """(kind, ScanBatch or None, WireError or None): one frame of the scans socket decoded by
    the single-frame decoders, in the order of docs/protocol.md section 11: header and frame
    length, then the kind (only SCAN and HEARTBEAT belong on that socket), then the body."""
    try:
        kind = wire.peek_header(buf).kind
    except WireError as e:
        return 0, None, e
    try:
        if kind in (wire.SCAN, wire.HEARTBEAT):
            return kind, wire.decode_message(buf, limits=limits)[1], None
        wire.decode_scan(buf, limits=limits)       # checks 1-9, then unexpected_kind
    except WireError as e:
        return kind, None, e
    raise AssertionError("a frame of another kind decoded as a SCAN")


def check_decode_scans(frames, limits: Limits = wire.DEFAULT_LIMITS) -> wire.ScanBatches:
    """decode_scans(frames) is what decoding each frame alone gives, concatenated."""
    out = wire.decode_scans(frames, limits=limits)
    alone = [decode_alone(f, limits) for f in frames]
    scans = [p for _, p, _ in alone if isinstance(p, wire.ScanBatch)]
    assert out.kinds.dtype == np.uint8 and out.kinds.tolist() == [k for k, _, _ in alone]
    assert out.counts.dtype == np.int32
    assert out.counts.tolist() == [len(p) if isinstance(p, wire.ScanBatch) else 0
                                   for _, p, _ in alone]
    want_errors = [(i, e) for i, (_, _, e) in enumerate(alone) if e is not None]
    assert [i for i, _ in out.errors] == [i for i, _ in want_errors]
    for (i, got), (_, want) in zip(out.errors, want_errors):
        assert isinstance(got, WireError)
        assert (got.code, got.offset) == (want.code, want.offset), (i, got, want)
        if got.code != "unexpected_kind":                 # the same text, detail included
            assert str(got) == str(want)
    ev, n = out.events, sum(len(p) for p in scans)
    assert len(out) == len(ev) == len(out.seq) == n
    for col, dtype in (("parcel_ids", np.uint64), ("scanner_ids", np.uint16),
                       ("ts_ns", np.int64), ("recirculations", np.uint8)):
        got = getattr(ev, col)
        want = [v for p in scans for v in getattr(p.events, col).tolist()]
        assert got.dtype == dtype and got.tolist() == want, col
    assert out.seq.dtype == np.uint64 and out.seq.tolist() == [v for p in scans
                                                               for v in p.seq.tolist()]
    assert [ev.reads(k) for k in range(n)] == [p.events.reads(k) for p in scans
                                               for k in range(len(p))]
    # the layout, sized exactly: nothing behind the last read or byte
    assert ev.event_offsets.dtype == ev.read_offsets.dtype == np.int32
    assert ev.data.dtype == np.uint8
    assert ev.event_offsets.shape == (n + 1,) and ev.event_offsets[0] == 0
    assert len(ev.read_offsets) == ev.event_offsets[-1] + 1 and ev.read_offsets[0] == 0
    assert ev.read_offsets[-1] == len(ev.data)
    assert np.all(np.diff(ev.event_offsets) >= 0) and np.all(np.diff(ev.read_offsets) >= 0)
    foe = out.frame_of_event()
    assert foe.dtype == np.int32
    assert foe.tolist() == np.repeat(np.arange(len(frames)), out.counts).tolist()
    return out


def as_zmq_frame(b: bytes):
    import zmq
    return zmq.Frame(b)


def as_array(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.uint8)


BUFFERS = [bytes, bytearray, memoryview, as_zmq_frame, as_array]


@st.composite
def scan_socket_frames(draw) -> bytes:
    """What may reach the scans socket: SCANs, HEARTBEATs, other kinds, garbage, and mutated
    or truncated valid messages."""
    how = draw(st.sampled_from(["scan", "scan", "scan", "heartbeat", "other", "garbage",
                                "plausible", "mutated", "mutated", "truncated"]))
    if how == "scan":
        batch, seq = draw(event_batches(max_events=5, max_reads=3))
        return wire.encode_scan(batch, seq, draw(st.integers(0, 2**32 - 1)))
    if how == "heartbeat":
        return wire.encode_heartbeat(draw(st.integers(0, 2**32 - 1)))
    if how == "other":
        return draw(valid_messages())
    if how == "garbage":
        return draw(st.binary(max_size=80))
    if how == "plausible":
        return (b"PS\x01" + bytes([draw(st.integers(0, 7))])
                + draw(st.integers(0, 8)).to_bytes(4, "little")
                + draw(st.integers(0, 200)).to_bytes(4, "little") + bytes(4)
                + draw(st.binary(max_size=200)))
    batch, seq = draw(event_batches(max_events=4, max_reads=3))
    msg = draw(st.one_of(st.just(wire.encode_scan(batch, seq)), valid_messages()))
    if how == "truncated":
        return msg[:draw(st.integers(0, max(len(msg) - 1, 0)))]
    return mutated(draw, msg)


SOME_LIMITS = [wire.DEFAULT_LIMITS, wire.DEFAULT_LIMITS, Limits(max_reads=2),
               Limits(max_read_len=20), Limits(max_frame=200), Limits(max_records=3),
               Limits(max_frame=16)]


@FUZZ
@given(st.lists(scan_socket_frames(), max_size=12), st.sampled_from(SOME_LIMITS), st.data())
def test_decode_scans_is_each_frame_decoded_alone(frames, limits, data):
    ref = check_decode_scans(frames, limits)
    # the same frames behind other buffers (the engine passes bytes, but any buffer will do)
    wrap = data.draw(st.lists(st.sampled_from(BUFFERS), min_size=len(frames),
                              max_size=len(frames)))
    out = wire.decode_scans([w(f) for w, f in zip(wrap, frames)], limits=limits)
    assert_events_equal(out.events, ref.events)
    assert np.array_equal(out.seq, ref.seq) and np.array_equal(out.counts, ref.counts)
    assert np.array_equal(out.kinds, ref.kinds)
    assert [(i, str(e)) for i, e in out.errors] == [(i, str(e)) for i, e in ref.errors]


@pytest.mark.parametrize("name, buf, code, offset, limits", malformed_cases(),
                         ids=[c[0] for c in malformed_cases()])
def test_decode_scans_rejects_a_malformed_frame_alone(name, buf, code, offset, limits):
    good = wire.encode_scan(EventBatch.from_reads([[b"a"], []], parcel_ids=[1, 2]), [1, 2])
    out = check_decode_scans([good, buf, wire.encode_heartbeat(), good], limits)
    bad = [(e.code, e.offset) for i, e in out.errors if i == 1]
    if name.split()[0] in ("DECISION", "CHUTE_STATUS", "SORT_CONFIRM"):
        assert bad == [("unexpected_kind", 3)]     # a body that does not belong here
    else:
        assert bad == [(code, offset)]
    if limits == wire.DEFAULT_LIMITS:
        assert out.counts.tolist() == [2, 0, 0, 2] and [i for i, _ in out.errors] == [1]
        assert out.events.parcel_ids.tolist() == [1, 2, 1, 2]


def test_decode_scans_of_nothing():
    for frames in ([], (), [wire.encode_heartbeat(1), wire.encode_heartbeat(2)]):
        out = check_decode_scans(frames)
        assert len(out) == 0 and out.errors == []
        assert out.events.event_offsets.tolist() == [0]
        assert out.events.read_offsets.tolist() == [0] and len(out.events.data) == 0
        assert out.counts.tolist() == [0] * len(frames)
        assert out.kinds.tolist() == [wire.HEARTBEAT] * len(frames)
        assert out.frame_of_event().tolist() == []


def test_decode_scans_of_the_doc_example_and_its_neighbours():
    ex = doc_examples()
    frames = [ex["scan"], ex["heartbeat"], ex["decision"], b"", ex["scan"][:20], ex["scan"]]
    out = check_decode_scans(frames)
    assert out.counts.tolist() == [2, 0, 0, 0, 0, 2]
    assert out.kinds.tolist() == [1, 5, 2, 0, 1, 1]
    assert [(i, e.code, e.offset) for i, e in out.errors] == [
        (2, "unexpected_kind", 3), (3, "truncated", 0), (4, "truncated", 20)]
    assert out.frame_of_event().tolist() == [0, 0, 5, 5]
    assert out.events.reads(0) == [b"RR123456785KZ", b"]C1420A15D3F7\x1d10LOT7"]
    assert out.events.reads(3) == []
    assert out.seq.tolist() == [1001, 1002, 1001, 1002]
    assert out.events.parcel_ids.tolist() == [12345, 12346, 12345, 12346]
    assert out.events.recirculations.tolist() == [0, 1, 0, 1]
    assert out.events.event_offsets.tolist() == [0, 2, 2, 4, 4]
    # per-frame receive times spread over the events, as the engine does
    recv_ns = np.arange(len(frames), dtype=np.int64) * 1000
    assert recv_ns[out.frame_of_event()].tolist() == [0, 0, 5000, 5000]


def test_decode_scans_of_large_frames_without_the_gil():
    """Frames past the size from which the compiled passes release the GIL."""
    big = bytes(range(256)) * 4
    frames = []
    for i in range(40):
        batch = EventBatch.from_reads([[big[: 1000 + i], b"x"], [], [big[i:]] * 3],
                                      parcel_ids=[i, i + 100, i + 200])
        frames.append(wire.encode_scan(batch, [i, i, i]))
    frames[7] = frames[7][:-1]
    frames[20] = patched(frames[20], 16 + 28 + 2 + 1000 + 20 + 2 + 1 + 28 + 27, b"\x04")
    out = check_decode_scans(frames)
    assert sum(map(len, frames)) > 32768
    assert [(i, e.code) for i, e in out.errors] == [(7, "truncated"), (20, "length_mismatch")]
    assert len(out) == 38 * 3 and len(out.events.data) > 100_000


def test_decode_scans_owns_its_arrays():
    batch = EventBatch.from_reads([[b"RR123456785KZ"], [b"xyz", b""]])
    bufs = [bytearray(wire.encode_scan(batch, [1, 2])) for _ in range(3)]
    out = wire.decode_scans(bufs)
    for b in bufs:
        b[16:] = bytes(len(b) - 16)                # the receiver's buffers are reused
        b.extend(b"\x00")                          # ... and resized: no buffer left exported
    assert [out.events.reads(i) for i in range(6)] == [[b"RR123456785KZ"], [b"xyz", b""]] * 3
    for col in ("parcel_ids", "scanner_ids", "ts_ns", "recirculations", "event_offsets",
                "read_offsets", "data"):
        assert getattr(out.events, col).flags.writeable, col
        assert getattr(out.events, col).flags.owndata, col


def test_decode_scans_refuses_what_is_not_a_buffer():
    ok = wire.encode_heartbeat()
    held = bytearray(ok)
    for bad in (None, 17, "PS", [ok]):
        with pytest.raises(TypeError, match="frame 2"):
            wire.decode_scans([ok, held, bad, held])
        held.extend(b"\x00")                       # the buffer taken before was released
        del held[16:]
    with pytest.raises(BufferError, match="frame 0"):
        wire.decode_scans([memoryview(ok * 2)[::2]])
    with pytest.raises(TypeError):
        wire.decode_scans(None)


def test_decode_scans_refuses_more_than_int32_offsets_address():
    """2 GiB of reads in one call (here one 2 MiB frame 1100 times): refused up front, before
    anything is allocated."""
    big = [[bytes(1024)] * 255] * 8
    frame = wire.encode_scan(EventBatch.from_reads(big), np.zeros(8, np.uint64))
    with pytest.raises(OverflowError):
        wire.decode_scans([frame] * 1100)
    assert len(wire.decode_scans([frame] * 3)) == 24


def test_decode_scans_runs_no_python_per_frame():
    """The Python-level calls made while decoding do not depend on the number of frames."""
    msg = wire.encode_scan(EventBatch.from_reads([[b"RR123456785KZ"]]), [1])

    def calls(n: int) -> int:
        frames = [msg, wire.encode_heartbeat()] * n
        seen = []
        sys.setprofile(lambda frame, event, arg: seen.append(event))
        try:
            out = wire.decode_scans(frames)
        finally:
            sys.setprofile(None)
        assert len(out) == n and out.errors == []
        return len(seen)
    assert calls(10) == calls(10_000)


def test_frame_of_event():
    out = wire.ScanBatches(EventBatch.from_reads([]), np.zeros(0, np.uint64),
                           np.array([2, 0, 3, 1], np.int32), np.ones(4, np.uint8), [])
    assert out.frame_of_event().tolist() == [0, 0, 2, 2, 2, 3]
    assert _wire.frame_of_event([]).tolist() == []
    with pytest.raises(ValueError):
        _wire.frame_of_event(np.array([1, -1], np.int32))


# ---------------------------------------------------------------------------------------------
# The page: examples and C sketch generated from / checked against the encoder

def test_doc_examples_are_what_the_encoder_produces():
    text = DOC.read_text()
    blocks = {m[2]: m[3] for m in EXAMPLE_BLOCK.finditer(text)}
    examples = doc_examples()
    assert set(blocks) == set(examples), "docs/protocol.md lacks or adds an example block"
    for name, msg in examples.items():
        assert blocks[name] == render_example(msg), \
            f"example {name!r} drifted: run `python tests/test_wire.py --write-doc`"
        dump = blocks[name].split("```text\n")[1].split("```")[0]
        hexes = "".join(line[8:55] for line in dump.splitlines()[1:])
        assert bytes.fromhex(hexes) == msg
        assert bytes.fromhex(blocks[name].split("```text\n")[2].split("\n")[0]) == msg


def test_doc_tables_state_the_record_sizes():
    text = DOC.read_text()
    for needle in ("28 bytes", "32 bytes", "4 bytes", "16 bytes", "16 777 216"):
        assert needle in text, needle


C_MAIN = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    (void)argc;
    static uint8_t buf[4096];
    size_t n = 16, w;
    ps_read r0[2] = {{(const uint8_t *)"RR123456785KZ", 13},
                     {(const uint8_t *)"]C1420A15D3F7\x1d" "10LOT7", 20}};
    w = ps_put_scan_record(buf + n, sizeof buf - n, 12345, 1001, 1748779200000000000LL, 3, 0, r0, 2);
    if (!w) return 1;
    n += w;
    w = ps_put_scan_record(buf + n, sizeof buf - n, 12346, 1002, 1748779200250000000LL, 3, 1, NULL, 0);
    if (!w) return 1;
    n += w;
    ps_put_header(buf, PS_SCAN, 2, (uint32_t)(n - 16), 7);
    for (size_t i = 0; i < n; i++) printf("%02x", buf[i]);
    printf("\n");
    /* decode the DECISION example given as hex in argv[1] */
    static uint8_t in[4096];
    size_t len = 0;
    for (const char *h = argv[1]; h[0] && h[1]; h += 2) { unsigned v; sscanf(h, "%2x", &v); in[len++] = (uint8_t)v; }
    ps_header hd;
    int e = ps_get_header(in, len, &hd);
    printf("header %d kind %u count %u body_len %u batch_seq %u\n", e, hd.kind, hd.count, hd.body_len, hd.batch_seq);
    if (e) return 0;
    const uint8_t *p = in + 16;
    uint8_t plv = *p++;
    printf("plan %.*s\n", plv, (const char *)p);
    p += plv;
    for (uint32_t i = 0; i < hd.count; i++, p += 32) {
        ps_decision d;
        ps_get_decision(p, &d);
        printf("%llu %llu %llu %u %u %u\n", (unsigned long long)d.parcel_id, (unsigned long long)d.seq,
               (unsigned long long)d.decision_seq, d.chute, d.reason, d.scanner_id);
    }
    e = ps_get_header(in, len - 1, &hd);
    printf("cut %d\n", e);
    return 0;
}
"""


def test_doc_c_sketch_produces_the_encoder_bytes(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    sketch = C_BLOCK.search(DOC.read_text())
    assert sketch, "docs/protocol.md lacks the <!-- c-sketch --> block"
    src = tmp_path / "ps.c"
    src.write_text(sketch[1] + C_MAIN)
    exe = tmp_path / "ps"
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function",
                    "-o", str(exe), str(src)], check=True, capture_output=True)
    ex = doc_examples()
    out = subprocess.run([str(exe), ex["decision"].hex()], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert bytes.fromhex(out[0]) == ex["scan"]
    d = wire.decode_decisions(ex["decision"])
    assert out[1] == f"header 0 kind 2 count 2 body_len {d.header.body_len} batch_seq 42"
    assert out[2] == "plan kz-hub/2025-06-01"
    assert out[3:5] == [f"{p} {s} {q} {c} {r} {sc}" for p, s, q, c, r, sc in zip(
        d.parcel_id, d.seq, d.decision_seq, d.chute, d.reason, d.scanner_id)]
    assert out[5] != "cut 0"


# ---------------------------------------------------------------------------------------------
# The command line dump

def test_command_line_dump(capsys):
    msg = doc_examples()["chute_status"]
    assert wire.main([msg.hex()]) == 0
    assert capsys.readouterr().out == wire.annotate(msg)
    assert wire.main([msg.hex()[:-2]]) == 1
    assert "malformed: truncated, offset 27" in capsys.readouterr().out
    assert wire.main(["zz"]) == 2


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-doc"]:
        write_doc()
        print(f"rewrote the example blocks of {DOC}")
    else:
        print(__doc__)


# ---------------------------------------------------------------------------------------------
# frames and messages lying in one buffer (what the audit compactor reads from a journal)

def _laid_out(parts: list[bytes], gap: bytes = b"\xee") -> tuple[bytes, np.ndarray, np.ndarray]:
    """parts at odd offsets in one buffer, with junk between them."""
    buf, offsets, lengths = bytearray(gap * 3), [], []
    for part in parts:
        offsets.append(len(buf))
        lengths.append(len(part))
        buf += part + gap
    return bytes(buf), np.array(offsets, np.int64), np.array(lengths, np.int64)


@FUZZ
@given(st.lists(scan_socket_frames(), max_size=12), st.sampled_from(SOME_LIMITS))
def test_decode_scans_in_equals_decode_scans_of_the_same_frames(frames, limits):
    buf, offsets, lengths = _laid_out(frames)
    ref = wire.decode_scans(frames, limits=limits)
    out = wire.decode_scans_in(buf, offsets, lengths, limits=limits)
    assert_events_equal(out.events, ref.events)
    assert np.array_equal(out.seq, ref.seq) and np.array_equal(out.counts, ref.counts)
    assert np.array_equal(out.kinds, ref.kinds)
    assert [(i, str(e)) for i, e in out.errors] == [(i, str(e)) for i, e in ref.errors]


def test_decode_scans_in_refuses_a_frame_outside_the_buffer():
    frame = wire.encode_scan(EventBatch.from_reads([[b"a"]], parcel_ids=[1]), [1])
    for offsets, lengths in (([1], [len(frame)]), ([-1], [4]), ([0], [-1])):
        with pytest.raises(ValueError, match="frame 0"):
            wire.decode_scans_in(frame, np.array(offsets, np.int64), np.array(lengths, np.int64))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["v1", "v1", "plan-2", "é"]), st.integers(0, 5),
                          st.booleans()), max_size=8))
def test_decode_decisions_in_equals_each_message_decoded_alone(spec):
    messages = []
    for k, (version, n, timed) in enumerate(spec):
        cols = [np.arange(n, dtype=np.uint64) + 10 * k, np.arange(n, dtype=np.uint64) + 1,
                np.arange(n, dtype=np.uint64) + 100 * k, np.arange(n, dtype=np.uint16),
                np.arange(n, dtype=np.uint8) % len(codes.REASONS), np.full(n, k, np.uint16)]
        messages.append(wire.encode_decisions(version, *cols, batch_seq=k,
                                              **({"decided_ns": 5 * k} if timed else {})))
    buf, offsets, lengths = _laid_out(messages)
    out = wire.decode_decisions_in(buf, offsets, lengths)
    alone = [wire.decode_decisions(m) for m in messages]
    cat = lambda name, dt: (np.concatenate([getattr(a, name) for a in alone])  # noqa: E731
                            if alone else np.zeros(0, dt))
    for name, dt in (("parcel_id", np.uint64), ("seq", np.uint64), ("decision_seq", np.uint64),
                     ("chute", np.uint16), ("reason", np.uint8), ("scanner_id", np.uint16)):
        assert np.array_equal(getattr(out, name), cat(name, dt)), name
        assert getattr(out, name).dtype == dt
    assert out.counts.tolist() == [len(a) for a in alone]
    assert [out.versions[i] for i in out.version_of.tolist()] == [a.plan_version for a in alone]
    assert len(set(out.versions)) == len(out.versions)


def test_decode_decisions_in_names_the_message_that_does_not_decode():
    good = wire.encode_decisions("v", [1], [1], [1], [1], [0], [1])
    bad = bytearray(good)
    bad[wire.HEADER_SIZE + 2 + 26] = 250        # the reason of record 0 (plan version "v")
    for message, code in ((bytes(bad), "bad_record"), (wire.encode_heartbeat(), "unexpected_kind"),
                          (good[:-1], "truncated")):
        buf, offsets, lengths = _laid_out([good, message])
        with pytest.raises(WireError, match="message 1") as e:
            wire.decode_decisions_in(buf, offsets, lengths)
        assert e.value.code == code
