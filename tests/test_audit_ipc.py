"""The audit's own Arrow IPC layout: the compiled record-batch encoder (`sorter.audit._audit`), the
file around it (prelude, footer) and the compiled engine turn (`sorter.engine._turn`).

The oracle is pyarrow: every message the encoder writes must decode to exactly the record
batch pyarrow builds from the same columns (`AuditWriter._decision_batch`, the writer's own
fallback path), and every file must open with pyarrow's file reader, `pyarrow.dataset`,
Polars and DuckDB.
"""
from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter.audit import _audit
from sorter.engine import _turn
from sorter import wire
from sorter.audit import files as audit
from sorter.audit import AUDIT_SCHEMA, AuditWriter, read_audit
from sorter.core.codes import REASONS
from sorter.core.events import Decisions, EventBatch, arrow_offsets_data
from sorter.core.router import Router

from strategies import event_streams, plans

NS = 1_000_000_000
T0 = int(dt.datetime(2026, 5, 9, 10, 0, 0, tzinfo=dt.timezone.utc).timestamp()) * NS

# reads: ASCII codes, multi-byte UTF-8, empty reads
read_bytes = st.one_of(
    st.binary(max_size=0),
    st.text("0123456789ABCDEFKZ", min_size=1, max_size=14).map(str.encode),
    st.text(min_size=1, max_size=6).map(lambda s: s.encode("utf-8")),
)
names_strategy = st.lists(st.text(max_size=12), min_size=1, max_size=6)


@st.composite
def decision_batches(draw, max_events: int = 24):
    names = draw(names_strategy)
    n = draw(st.integers(1, max_events))
    reads = [draw(st.lists(read_bytes, max_size=3)) for _ in range(n)]
    ev = EventBatch.from_reads(
        reads,
        parcel_ids=np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)),
                            np.uint64),
        scanner_ids=np.array(draw(st.lists(st.integers(0, 65535), min_size=n, max_size=n)),
                             np.uint16),
        ts_ns=np.array(draw(st.lists(st.integers(T0 - 10 * NS, T0), min_size=n, max_size=n)),
                       np.int64),
        recirculations=np.array(draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)),
                                np.uint8))
    dec = Decisions(
        chute=np.array(draw(st.lists(st.integers(0, 65535), min_size=n, max_size=n)), np.uint16),
        reason=np.array(draw(st.lists(st.integers(0, len(REASONS) - 1), min_size=n, max_size=n)),
                        np.uint8),
        destination=np.array(draw(st.lists(st.integers(-1, len(names) - 1), min_size=n,
                                           max_size=n)), np.int32))
    seq = np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), np.uint64)
    first = draw(st.integers(0, 2**63))
    version = draw(st.text(max_size=20))
    now = draw(st.integers(T0, T0 + NS))
    return ev, dec, seq, first, names, version, now


def names_array(names) -> pa.Array:
    return pa.array(names, pa.string())


def encode(encoder, ev, dec, seq, first, names, version, now) -> int:
    offsets, data = arrow_offsets_data(names_array(names))
    return encoder.encode(now, ev.scanner_ids, ev.parcel_ids, seq, first, ev.event_offsets,
                          ev.read_offsets, ev.data, dec.chute, dec.reason, dec.destination,
                          offsets, data, version.encode("utf-8"), ev.ts_ns, ev.recirculations,
                          len(REASONS))


def decode_message(message: bytes) -> pa.RecordBatch:
    """One record-batch message read as pyarrow reads a stream: after the schema and the
    reason dictionary of every audit file."""
    stream = audit._PRELUDE[8:] + message + audit._EOS
    reader = ipc.open_stream(pa.py_buffer(stream))
    batch = reader.read_next_batch()
    batch.validate(full=True)
    return batch


def reference(tmp_path, ev, dec, seq, first, names, version, now) -> pa.RecordBatch:
    """The record batch pyarrow builds from the same columns (the writer's fallback path)."""
    with AuditWriter(tmp_path / "ref", fsync_interval_s=None) as w:
        batch, _, _ = w._decision_batch(ev, seq, dec, first, names_array(names), version, now,
                                        None)
    return batch


# ------------------------------------------------------------------------------ the encoder


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=decision_batches())
def test_encoder_message_equals_pyarrows_batch(tmp_path, args):
    encoder = _audit.DecisionEncoder()
    length = encode(encoder, *args)
    message = encoder.message()
    assert length == len(message) and length % 8 == 0
    assert message[:4] == b"\xff\xff\xff\xff"
    assert int.from_bytes(message[4:8], "little") + 8 == _audit.META_LENGTH
    got = decode_message(message)
    want = reference(tmp_path, *args)
    assert got.schema.equals(AUDIT_SCHEMA, check_metadata=False)
    assert got.equals(want), (got.to_pylist()[:2], want.to_pylist()[:2])


def test_encoder_declines_reads_that_are_not_utf8():
    ev = EventBatch.from_reads([[b"RR123\xfe\xff"], [b"0500"]])
    dec = Decisions(np.ones(2, np.uint16), np.zeros(2, np.uint8), np.zeros(2, np.int32))
    encoder = _audit.DecisionEncoder()
    assert encode(encoder, ev, dec, np.zeros(2, np.uint64), 0, ["A"], "v", T0) == -1
    # a valid multi-byte sequence is not declined
    ev = EventBatch.from_reads([["Алматы".encode()], [b"\xf0\x9f\x93\xa6"]])
    assert encode(encoder, ev, dec, np.zeros(2, np.uint64), 0, ["A"], "v", T0) > 0


@pytest.mark.parametrize("bad", [b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",
                                 b"\x80", b"\xf8\x88\x80\x80\x80"])
def test_encoder_rejects_what_arrow_rejects(bad):
    """Overlong, surrogate, past U+10FFFF, truncated, lone continuation, 5-byte: declined,
    as Arrow's UTF-8 validation would refuse them."""
    ev = EventBatch.from_reads([[b"ok" + bad]])
    dec = Decisions(np.ones(1, np.uint16), np.zeros(1, np.uint8), np.zeros(1, np.int32))
    assert encode(_audit.DecisionEncoder(), ev, dec, np.zeros(1, np.uint64), 0, ["A"], "v",
                  T0) == -1
    with pytest.raises(pa.ArrowInvalid):
        pa.array([b"ok" + bad], pa.binary()).cast(pa.string())


def test_encoder_refuses_bad_columns():
    ev = EventBatch.from_reads([[b"A"], [b"B"], []])
    dec = Decisions(np.ones(3, np.uint16), np.zeros(3, np.uint8), np.array([0, 1, -1], np.int32))
    seq = np.zeros(3, np.uint64)
    enc = _audit.DecisionEncoder()
    with pytest.raises(ValueError, match="REASONS"):
        encode(enc, ev, Decisions(dec.chute, np.array([0, 9, 0], np.uint8), dec.destination),
               seq, 0, ["A", "B"], "v", T0)
    with pytest.raises(IndexError, match="destination 2"):
        encode(enc, ev, Decisions(dec.chute, dec.reason, np.array([0, 2, 0], np.int32)), seq, 0,
               ["A", "B"], "v", T0)
    with pytest.raises(TypeError):
        encode(enc, ev, Decisions(dec.chute.astype(np.int64), dec.reason, dec.destination), seq,
               0, ["A", "B"], "v", T0)
    with pytest.raises(ValueError, match="entries"):
        encode(enc, ev, dec, seq[:2], 0, ["A", "B"], "v", T0)
    broken = EventBatch.from_reads([[b"A"], [b"B"], []])
    broken.read_offsets = np.array([0, 1, 50], np.int32)
    with pytest.raises(ValueError, match="read_offsets"):
        encode(enc, broken, dec, seq, 0, ["A", "B"], "v", T0)
    broken = EventBatch.from_reads([[b"A"], [b"B"], []])
    broken.event_offsets = np.array([0, 2, 1, 2], np.int32)
    with pytest.raises(ValueError, match="event_offsets"):
        encode(enc, broken, dec, seq, 0, ["A", "B"], "v", T0)
    offsets, data = arrow_offsets_data(names_array(["A", "B"]))
    with pytest.raises(ValueError, match="name_offsets"):
        enc.encode(T0, ev.scanner_ids, ev.parcel_ids, seq, 0, ev.event_offsets,
                   ev.read_offsets, ev.data, dec.chute, dec.reason, dec.destination,
                   np.array([0, 5, 1], np.int32), data, b"v", ev.ts_ns, ev.recirculations,
                   len(REASONS))
    with pytest.raises(ValueError, match="at least one"):
        encode(enc, EventBatch.from_reads([]), Decisions(np.zeros(0, np.uint16),
               np.zeros(0, np.uint8), np.zeros(0, np.int32)), np.zeros(0, np.uint64), 0, ["A"],
               "v", T0)


# ---------------------------------------------------------------------------------- the file


def test_file_of_encoded_and_pyarrow_batches_opens_everywhere(tmp_path):
    """Encoded batches, transcoded (non-UTF-8) batches and malformed rows in one sealed file:
    pyarrow's file reader, pyarrow.dataset, Polars and DuckDB read every row, in order."""
    root = tmp_path / "audit"
    rng = np.random.default_rng(7)
    expected, seq = [], 0
    with AuditWriter(root, rotate_bytes=None, fsync_interval_s=None) as w:
        for k in range(60):
            n = int(rng.integers(1, 40))
            reads = [[b"RR%09dKZ" % (seq + i)] + ([b"\xfe0500"] if k % 7 == 3 and i == 0 else [])
                     for i in range(n)]
            ev = EventBatch.from_reads(reads, parcel_ids=np.arange(seq, seq + n, dtype=np.uint64),
                                       ts_ns=np.full(n, T0 - 5000, np.int64))
            dec = Decisions(np.full(n, 3, np.uint16), (np.arange(n) % 5).astype(np.uint8),
                            (np.arange(n) % 3 - 1).astype(np.int32))
            w.write_decisions(ev, np.arange(n, dtype=np.uint64), dec, seq, ["A", "Б"], "v1",
                              now_ns=T0 + k)
            expected += list(range(seq, seq + n))
            seq += n
            if k % 10 == 0:
                w.write_malformed(b"\x00garbage", "bad_magic: test", seq, T0 + k)
                expected.append(seq)
                seq += 1
        assert w.batches_written == 66
    (path,) = root.rglob("*.arrow")
    reader = ipc.open_file(path)
    assert reader.num_record_batches == 66
    table = reader.read_all()
    table.validate(full=True)
    assert table.column("decision_seq").to_pylist() == expected
    assert read_audit(root).equals(table)
    dataset = pads.dataset(root, format="arrow", partitioning="hive")
    assert dataset.count_rows() == len(expected)
    frame = pl.read_ipc(path)
    assert frame.height == len(expected)
    assert frame["decision_seq"].to_list() == expected
    con = duckdb.connect()
    con.register("audit_rows", dataset)
    got = con.execute("select count(*), count(destination), sum(case when reason = 'malformed' "
                      "then 1 else 0 end) from audit_rows").fetchone()
    assert got == (len(expected), int(pc_count_valid(table, "destination")), 6)
    # the transcoded reads came through the pyarrow path as latin-1
    reads = table.column("reads").to_pylist()
    assert "þ0500" in [r for rs in reads if rs for r in rs]


def pc_count_valid(table: pa.Table, name: str) -> int:
    return len(table) - table.column(name).null_count


def test_footer_lists_every_batch_and_the_schema(tmp_path):
    root = tmp_path / "audit"
    with AuditWriter(root, rotate_bytes=None, fsync_interval_s=None) as w:
        for k in range(5):
            ev = EventBatch.from_reads([[b"A"]] * (k + 1))
            dec = Decisions(np.ones(k + 1, np.uint16), np.zeros(k + 1, np.uint8),
                            np.zeros(k + 1, np.int32))
            w.write_decisions(ev, 0, dec, 10 * k, ["X"], "v", now_ns=T0)
    (path,) = root.rglob("*.arrow")
    reader = ipc.open_file(path)
    assert reader.schema.equals(AUDIT_SCHEMA, check_metadata=True)
    assert [reader.get_batch(i).num_rows for i in range(5)] == [1, 2, 3, 4, 5]
    raw = path.read_bytes()
    assert raw[:6] == b"ARROW1" and raw[-6:] == b"ARROW1"
    footer_len = int.from_bytes(raw[-10:-6], "little")
    assert raw[-10 - footer_len - 8:-10 - footer_len] == audit._EOS


# ------------------------------------------------------------------------- the compiled turn


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_turn_equals_router_wire_and_encoder(tmp_path, data):
    """EngineTurn.run decides as Router.route, returns the DECISION message wire.encode_decisions
    makes, and leaves in its encoder the message DecisionEncoder.encode makes."""
    plan = data.draw(plans())
    stream = data.draw(event_streams(plan, max_batches=3, max_events=10))
    router, reference_router = Router(plan), Router(plan)
    names = pa.array([d.name for d in plan.destinations], pa.string())
    offsets, name_data = arrow_offsets_data(names)
    turn = _turn.EngineTurn(capacity=2)             # grows
    first = 1
    for events, recirc, ts, states in stream:
        for chute, state in states.items():
            router.set_chute_state(chute, state)
            reference_router.set_chute_state(chute, state)
        if not events:
            continue
        n = len(events)
        ev = EventBatch.from_reads(events, recirculations=recirc,
                                   ts_ns=np.array(ts, np.int64),
                                   parcel_ids=np.arange(first, first + n, dtype=np.uint64))
        seq = np.arange(n, dtype=np.uint64) * 3
        now, deadline = 1_500, 1_000
        message = turn.run(router.core, ev.parcel_ids, ev.scanner_ids, ev.ts_ns,
                           ev.recirculations, ev.event_offsets, ev.read_offsets, ev.data, seq,
                           now, deadline, first, b"1", offsets, name_data, 7, 1 << 24, 1 << 20)
        want = reference_router.route(ev, now_ns=now, deadline_ns=deadline)
        chute, reason, dest = turn.decisions()
        assert chute.tolist() == want.chute.tolist()
        assert reason.tolist() == want.reason.tolist()
        assert dest.tolist() == want.destination.tolist()
        dseq = np.arange(first, first + n, dtype=np.uint64)
        assert message == wire.encode_decisions("1", ev.parcel_ids, seq, dseq, want.chute,
                                                want.reason, ev.scanner_ids, batch_seq=7,
                                                decided_ns=now)
        encoder = _audit.DecisionEncoder()
        length = encoder.encode(now, ev.scanner_ids, ev.parcel_ids, seq, first,
                                ev.event_offsets, ev.read_offsets, ev.data, want.chute,
                                want.reason, want.destination, offsets, name_data, b"1",
                                ev.ts_ns, ev.recirculations, len(REASONS))
        assert turn.audit_length == length
        if length >= 0:
            assert turn.encoder.message() == encoder.message()
        assert turn.count(now + 10, np.full(n, now - 5, np.int64))
        first += n


def test_turn_counts_until_taken():
    plan_router = Router(_one_destination_plan())
    names = pa.array(["ALMATY"], pa.string())
    offsets, name_data = arrow_offsets_data(names)
    turn = _turn.EngineTurn(count_capacity=4)
    ev = EventBatch.from_reads([[b"050012"], [], [b"050099"]],
                               ts_ns=np.array([100, 200, 300], np.int64))
    seq = np.zeros(3, np.uint64)

    def run():
        return turn.run(plan_router.core, ev.parcel_ids, ev.scanner_ids, ev.ts_ns,
                        ev.recirculations, ev.event_offsets, ev.read_offsets, ev.data, seq,
                        1_000, 0, 1, b"v", offsets, name_data, 1, 1 << 24, 1 << 20)

    run()
    assert turn.count(1_100, 900)                      # one receive time for the batch
    run()
    assert not turn.count(1_200, 950)                  # 6 > 4: take the counts first
    reason, scan_ns, engine_ns, batches = turn.take_counts()
    assert batches == 1
    assert reason.tolist() == Router(_one_destination_plan()).route(ev).reason.tolist()
    assert scan_ns.tolist() == [1_000, 900, 800]
    assert engine_ns.tolist() == [200, 200, 200]
    assert turn.count(1_200, np.array([950, 960, 970], np.int64))
    reason2, scan2, engine2, batches2 = turn.take_counts()
    assert batches2 == 1 and scan2.tolist() == [1_100, 1_000, 900]
    assert engine2.tolist() == [250, 240, 230]
    assert reason2.tolist() == reason.tolist()
    assert turn.take_counts()[3] == 0


def test_turn_refuses_inconsistent_columns():
    router = Router(_one_destination_plan())
    offsets, name_data = arrow_offsets_data(pa.array(["ALMATY"], pa.string()))
    turn = _turn.EngineTurn()
    ev = EventBatch.from_reads([[b"050012"], [b"050099"]])
    seq = np.zeros(2, np.uint64)
    args = dict(now_ns=0, deadline_ns=0, first_decision_seq=1, plan_version=b"v",
                name_offsets=offsets, name_data=name_data, batch_seq=0, max_frame=1 << 20,
                max_records=1 << 16)

    def run(**over):
        cols = dict(parcel_ids=ev.parcel_ids, scanner_ids=ev.scanner_ids, ts_ns=ev.ts_ns,
                    recirculations=ev.recirculations, event_offsets=ev.event_offsets,
                    read_offsets=ev.read_offsets, data=ev.data, seq=seq)
        cols.update(over)
        return turn.run(router.core, **cols, **args)

    assert run()
    with pytest.raises(ValueError, match="offsets"):
        run(read_offsets=np.array([0, 6, 99], np.int32))
    with pytest.raises(ValueError, match="offsets"):
        run(event_offsets=np.array([0, 2, 1], np.int32))
    with pytest.raises(ValueError, match="entries"):
        run(seq=np.zeros(3, np.uint64))
    with pytest.raises(TypeError):
        run(ts_ns=ev.ts_ns.astype(np.int32))
    with pytest.raises(ValueError, match="at least one event"):
        run(event_offsets=np.zeros(1, np.int32))
    with pytest.raises(wire.WireError):
        turn.run(router.core, ev.parcel_ids, ev.scanner_ids, ev.ts_ns, ev.recirculations,
                 ev.event_offsets, ev.read_offsets, ev.data, seq, 0, 0, 1, b"v", offsets,
                 name_data, 0, 40, 1 << 16)             # a 40-byte frame limit


def _one_destination_plan():
    from sorter.plan import Destination, Plan
    return Plan(name="t", version="v", home_country="KZ", chutes=(1, 2, 9),
                special={"no_read": 9, "invalid": 9, "conflict": 9, "unknown_destination": 9,
                         "overflow": 9},
                destinations=[Destination("ALMATY", (1, 2), "fill_first")],
                postcode_rules={"05": "ALMATY"}, country_rules={}, service_rules={},
                manifest=None, recirculation_limit=3)


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """write(2) may write less than asked (a signal, a full pipe, some file systems): every
    piece of a file, the footer's packed Blocks included, is written to the end."""
    import os
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(memoryview(data)[:7])))
    root = tmp_path / "audit"
    with AuditWriter(root, rotate_bytes=None, fsync_interval_s=None) as w:
        for k in range(3):
            w.write_malformed(b"\x00bad", "bad_magic: test", k, T0 + k)
    (path,) = root.rglob("*.arrow")
    assert ipc.open_file(path).read_all().column("decision_seq").to_pylist() == [0, 1, 2]
