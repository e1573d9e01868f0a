"""Scanner telegram drivers: presets, framing, parsing, and the driver against a real engine.

The end-to-end tests run a real TCP server playing each preset's telegrams (split frames,
coalesced frames, garbage, over-long frames, a disconnect mid-telegram and the reconnect,
no-read strings) into a real `ScannerDriver` and a real engine subprocess, and check that every
parcel gets exactly one decision.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scanners import framing
from scanners.cli import add_parser, cmd_scanner
from scanners.driver import OWN_ID_BASE, ScannerDriver, parse_hostport
from scanners.framing import (Anomaly, Frame, FrameSplitter, PresetError, Telegram,
                              TelegramFormat, decode_escapes, encode_escapes, format_telegram,
                              load_format, parse_frame, preset_names, salvage_index)
from simulators.tunnel import TcpTelegramOutput
from sorter import wire
from sorter.core.codes import REASONS
from sorter.plan import load_plan
from sorter.core.reference import ReferenceRouter

from engine_harness import ROOT, EngineProcess

PRESETS = preset_names()
FORMATS = {name: load_format(name) for name in PRESETS}
PLAN = load_plan()


def feed_all(fmt: TelegramFormat, data: bytes, cuts=()) -> list:
    """Frames and anomalies of `data` fed in pieces cut at `cuts`, then closed."""
    splitter = FrameSplitter(fmt)
    out, start = [], 0
    for cut in [*sorted(cuts), len(data)]:
        out += splitter.feed(data[start:cut])
        start = cut
    return out + splitter.close()


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def parse_all(fmt: TelegramFormat, items: list) -> list:
    return [parse_frame(fmt, i) if isinstance(i, Frame) else i for i in items]


# ---------------------------------------------------------------------------------------------
# Presets


def test_bundled_presets_load():
    assert {"sick_clv", "sick_lector_gate", "datalogic_multilabel", "keyence",
            "cognex_dataman", "generic_fixed"} <= set(PRESETS)
    for name, fmt in FORMATS.items():
        assert fmt.name == name
        assert fmt.stop and fmt.description
    assert FORMATS["sick_clv"].describe() == "<STX>index;code;code...[<CR><LF>]<ETX>[<CR><LF>]"
    assert FORMATS["sick_clv_crlf_in_frame"].describe() == "<STX>index;code;code...<CR><LF><ETX>"
    assert FORMATS["datalogic_multilabel"].stop == b"\r\n"
    assert not FORMATS["keyence"].start and FORMATS["keyence"].no_read == (b"ERROR",)


def test_preset_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text((framing.PRESET_DIR / "keyence.toml").read_text().replace('"ERROR"', '"NG"'))
    fmt = load_format(str(path))
    assert fmt.no_read == (b"NG",) and fmt.source == str(path)


@pytest.mark.parametrize("text, message", [
    ('[telegram]\nfields = ["codes"]\n', "stop sequence is required"),
    ('[framing]\nstop = "<ETX>"\n[telegram]\nfields = ["index"]\n', "no `code` or `codes`"),
    ('[framing]\nstop = "<ETX>"\n[telegram]\nfields = ["codes", "frobnicate"]\n', "unknown field"),
    ('[framing]\nstop = "<ETX>"\nstrat = "<STX>"\n[telegram]\nfields = ["codes"]\n', "unknown key"),
    ('[framing]\nstop = "<ETX>"\n[telegram]\nfields = ["index", "index", "codes"]\n',
     "more than once"),
    ('[framing]\nstop = "<ETX>"\nstart = "<ETX>"\n[telegram]\nfields = ["codes"]\n', "must differ"),
    ('[framing]\nstop = "<ETX>"\n[telegram]\nlayout = "fixed"\n'
     'fields = [{name = "index"}, {name = "codes"}]\n', "width on every field"),
    ('[framing]\nstop = ";"\n[telegram]\nfields = ["codes"]\n', "contains the field_separator"),
    ('[framing]\nstop = "<ETX>"\n[telegram]\nfields = ["codes"]\ncode_fields = ["type"]\n',
     "exactly once"),
    ('[framing]\nstop = "<ETX>"\n[telegram]\nfields = ["codes"]\nno_read = 3\n', "list of non-empty"),
    ('nonsense = 1\n', "unknown section"),
    ('[framing\n', "not valid TOML"),
])
def test_bad_presets_are_refused_with_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PresetError, match=re.escape(message)):
        load_format(path)


def test_unknown_preset_name_lists_the_bundled_ones():
    with pytest.raises(PresetError, match="sick_clv"):
        load_format("no_such_scanner")


@given(st.binary(max_size=40))
def test_escapes_round_trip(data):
    assert decode_escapes(encode_escapes(data)) == data


def test_escape_tokens():
    assert decode_escapes("<STX>a<GS>b<CR><LF><x7F><ETX>") == b"\x02a\x1db\r\n\x7f\x03"
    assert decode_escapes("<notatoken> <X>") == b"<notatoken> <X>"
    assert encode_escapes(b"\x02A;\x1d\x03\xff") == "<STX>A;<GS><ETX><xFF>"


# ---------------------------------------------------------------------------------------------
# The documented examples (docs/scanners.md) parse as documented


def documented_examples() -> list[tuple[str, str, str | None, list[bytes] | None]]:
    text = (ROOT / "docs" / "scanners.md").read_text()
    rows, preset = [], None
    for line in text.splitlines():
        m = re.match(r"### (\w+)\s*$", line)
        if m:
            preset = m.group(1) if m.group(1) in PRESETS else None
            continue
        m = re.match(r"\| `(.+)` \| (`[^`]*`|-) \| (.+) \|\s*$", line)
        if preset and m:
            index = None if m.group(2) == "-" else m.group(2).strip("`")
            cell = m.group(3).strip()
            reads = [] if cell == "no read" else [decode_escapes(c) for c in re.findall(r"`([^`]+)`", cell)]
            rows.append((preset, m.group(1), index, reads))
    return rows


def test_every_preset_has_documented_examples():
    documented = Counter(row[0] for row in documented_examples())
    assert set(documented) == set(PRESETS)
    assert all(n >= 3 for n in documented.values()), documented


@pytest.mark.parametrize("preset, telegram, index, reads", documented_examples(),
                         ids=lambda v: v if isinstance(v, str) and len(v) < 24 else None)
def test_documented_example_parses_as_documented(preset, telegram, index, reads):
    fmt = FORMATS[preset]
    items = parse_all(fmt, feed_all(fmt, decode_escapes(telegram)))
    assert len(items) == 1 and isinstance(items[0], Telegram), items
    assert items[0].index == index
    assert items[0].reads == reads
    assert items[0].no_read == (reads == [])


# ---------------------------------------------------------------------------------------------
# Framing


SICK = FORMATS["sick_clv"]
KEYENCE = FORMATS["keyence"]
DATALOGIC = FORMATS["datalogic_multilabel"]


def test_split_frames_byte_by_byte():
    data = b"\x020145;RR473124829GB\x03\x020146;NoRead\x03"
    items = feed_all(SICK, data, cuts=range(1, len(data)))
    assert items == [Frame(b"0145;RR473124829GB"), Frame(b"0146;NoRead")]


def test_several_frames_in_one_read_and_garbage_between():
    data = b"\r\n\x02001;A\x03junk\x02002;B\x03\r\n\x00\xff\x02003;C\x03"
    splitter = FrameSplitter(SICK)
    assert splitter.feed(data) == [
        Frame(b"001;A"), Anomaly("garbage", b"junk", "4 bytes between frames"),
        Frame(b"002;B"), Anomaly("garbage", b"\r\n\x00\xff", "4 bytes between frames"),
        Frame(b"003;C")]
    assert splitter.close() == []


def test_garbage_run_reported_in_max_frame_pieces():
    fmt = TelegramFormat(name="t", start=b"\x02", stop=b"\x03", fields=(framing.Field("codes"),),
                         max_frame=16)
    items = feed_all(fmt, b"x" * 40 + b"\x02A\x03")
    assert [(i.kind, len(i.data)) for i in items[:-1]] == [("garbage", 16), ("garbage", 16),
                                                            ("garbage", 8)]
    assert items[-1] == Frame(b"A")


def test_oversized_frame_resyncs_at_next_start():
    fmt = SICK
    big = b"\x020300;" + b"A" * fmt.max_frame + b"\x03"
    items = feed_all(fmt, b"\x02001;X\x03" + big + b"tail\x02002;Y\x03")
    assert items[0] == Frame(b"001;X")
    assert items[1].kind == "oversized" and items[1].is_parcel
    assert len(items[1].data) == fmt.max_frame - 1 and items[1].data.startswith(b"0300;AAA")
    assert items[2] == Frame(b"002;Y")          # "tail" belonged to the oversized frame
    assert salvage_index(fmt, items[1].data) == "0300"


def test_oversized_without_stop_is_reported_before_the_stop_arrives():
    splitter = FrameSplitter(SICK)
    out = splitter.feed(b"\x02" + b"A" * (SICK.max_frame + 5))
    assert [a.kind for a in out] == ["oversized"]
    assert splitter.buffered < 8                # memory stays bounded while skipping
    assert splitter.feed(b"AAAA\x03\x02001;Z\x03") == [Frame(b"001;Z")]


def test_start_inside_a_frame_ends_it_unterminated():
    items = feed_all(SICK, b"\x020150;RR47\x020151;050010\x03")
    assert items == [Anomaly("unterminated", b"0150;RR47", "a new start came before the stop"),
                     Frame(b"0151;050010")]
    assert salvage_index(SICK, items[0].data) == "0150"


def test_close_inside_a_frame_is_truncated():
    splitter = FrameSplitter(SICK)
    assert splitter.feed(b"\x020160;0500") == []
    assert splitter.in_frame
    (a,) = splitter.close()
    assert a.kind == "truncated" and a.is_parcel and a.data == b"0160;0500"
    assert salvage_index(SICK, a.data) == "0160"
    assert salvage_index(SICK, b"016") is None          # the index may still be incomplete


def test_stop_only_format_with_crlf_and_blank_lines():
    items = feed_all(KEYENCE, b"RR473124829GB\r\n\r\nERROR\r\n050010\r", cuts=[14, 15, 17])
    assert items == [Frame(b"RR473124829GB"), Anomaly("empty", b"", "empty frame"),
                     Frame(b"ERROR"), Frame(b"050010")]


def test_stop_split_across_reads():
    data = b"\x02A,B\r\n\x02C\r\n"
    for cut in range(len(data) + 1):
        assert feed_all(DATALOGIC, data, cuts=[cut]) == [Frame(b"A,B"), Frame(b"C")]


def test_ignore_between_bytes_are_not_garbage():
    assert feed_all(SICK, b"\x02001;A\x03\r\n\r\n\x02002;B\x03\r\n") == [Frame(b"001;A"),
                                                                      Frame(b"002;B")]


# ---------------------------------------------------------------------------------------------
# Parsing


def test_sick_lector_fields_and_warnings():
    fmt = FORMATS["sick_lector_gate"]
    t = parse_frame(fmt, b"0145;1;2;312;C128:13:RR473124829GB,C128:5:050010")
    assert t.index == "0145" and t.status == "1" and t.count == 2 and t.gate_ms == 312
    assert t.reads == [b"RR473124829GB", b"050010"] and t.types == ["C128", "C128"]
    assert t.warnings == ("length_mismatch",)
    t = parse_frame(fmt, b"0146;0;3;9x;C128:6:050010")
    assert set(t.warnings) == {"count_mismatch", "bad_gate_time"} and t.gate_ms is None
    t = parse_frame(fmt, b"0147;2;1;300;C128:6:050010")
    assert t.no_read and t.reads == []                       # status 2: no read, whatever follows
    assert isinstance(parse_frame(fmt, b"0148;0;1;300;RR473124829GB"), Anomaly)   # slot shape


def test_partial_no_reads_are_dropped_and_counted():
    t = parse_frame(DATALOGIC, b"?,RR473124829GB,?")
    assert t.reads == [b"RR473124829GB"] and t.partial == 2 and not t.no_read
    t = parse_frame(DATALOGIC, b"?,?")
    assert t.reads == [] and t.partial == 2
    t = parse_frame(SICK, b"0150;NoRead;050010")
    assert t.reads == [b"050010"] and t.partial == 1


def test_fixed_layout():
    fmt = FORMATS["generic_fixed"]
    assert isinstance(parse_frame(fmt, b"RD0000000145"), Anomaly)            # too short
    assert parse_frame(fmt, b"XX" + b"0" * 17 + b" " * 105).kind == "unparseable"  # header
    body = format_telegram(fmt, 7, [b"A05K8X7"], gate_ms=12, framed=False)
    assert isinstance(parse_frame(fmt, body + b"x"), Anomaly)               # trailing bytes
    t = parse_frame(fmt, body)
    assert t.index == "0000000007" and t.gate_ms == 12 and t.reads == [b"A05K8X7"]
    with pytest.raises(ValueError):
        format_telegram(fmt, 1, [b"A", b"B", b"C", b"D"])                    # three slots
    with pytest.raises(ValueError):
        format_telegram(fmt, 10**11, [b"A"])                                 # index too wide


def test_heartbeat_frames():
    fmt = TelegramFormat(name="hb", start=b"\x02", stop=b"\x03", heartbeat=b"HB",
                         fields=(framing.Field("index"), framing.Field("codes")))
    assert parse_frame(fmt, b"HB").heartbeat


def test_format_refuses_codes_that_cannot_travel():
    with pytest.raises(ValueError, match="separator"):
        format_telegram(SICK, 1, [b"A;B"])
    with pytest.raises(ValueError, match="no read"):
        format_telegram(SICK, 1, [b"NoRead"])


# ---------------------------------------------------------------------------------------------
# Properties: chopping does not matter; format and parse are inverse

CUSTOM = [
    TelegramFormat(name="multi_start", start=b"##", stop=b"\r\n", header=b"T1",
                   fields=(framing.Field("index"), framing.Field("codes")), field_separator=b"|",
                   code_separator=b"|", no_read=(b"NONE",), max_frame=64),
    TelegramFormat(name="long_stop", start=b"\x02\x02", stop=b"\x03\x04\x05",
                   fields=(framing.Field("index"), framing.Field("count"), framing.Field("codes")),
                   field_separator=b";", code_separator=b",", no_read=(b"NR",),
                   partial_no_read=(b"?",), max_frame=48, ignore_between=b"\r\n"),
]
ALL_FORMATS = list(FORMATS.values()) + CUSTOM


def codes_for(fmt: TelegramFormat):
    """Codes that can travel in this format (no separators, not a no-read string)."""
    forbidden = set(fmt.field_separator + fmt.code_separator + fmt.start + fmt.stop
                    + fmt.code_field_separator + fmt.pad)
    alphabet = [c for c in b"ABCDEFGHKLMNPRXZ0123456789 ]\x1d" if c not in forbidden]
    return st.binary(min_size=1, max_size=20).map(
        lambda b: bytes(alphabet[x % len(alphabet)] for x in b)).filter(
        lambda c: c not in fmt.no_read and c not in fmt.partial_no_read
        and c.strip(framing.EDGE_BYTES) == c)     # stripped by strip_codes: not a round trip


@st.composite
def telegram_streams(draw, fmt: TelegramFormat) -> bytes:
    codes = codes_for(fmt)
    slots = 3 if "code" in fmt.names else 4
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["telegram", "telegram", "telegram", "garbage",
                                     "oversized", "cut", "stops"]))
        if kind == "telegram":
            reads = draw(st.lists(st.one_of(codes, st.none()), max_size=slots))
            if fmt.layout == "fixed":
                reads = [r[:30] if r else r for r in reads]
            index = str(draw(st.integers(0, 99999))) if fmt.has_index else None
            try:
                parts.append(format_telegram(fmt, index, reads, gate_ms=draw(st.integers(0, 999))))
            except ValueError:
                pass
        elif kind == "garbage":
            parts.append(draw(st.binary(max_size=30)))
        elif kind == "oversized":
            parts.append(fmt.start + b"1;" + b"A" * draw(st.integers(fmt.max_frame - 8,
                                                                      fmt.max_frame + 8)) + fmt.stop)
        elif kind == "cut":
            parts.append(fmt.start + draw(st.binary(max_size=12)))
        else:
            parts.append(fmt.stop * draw(st.integers(1, 3)))
    return b"".join(parts)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=lambda f: f.name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parsed_events_do_not_depend_on_how_the_bytes_were_chopped(fmt, data):
    stream = data.draw(telegram_streams(fmt))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    whole = parse_all(fmt, feed_all(fmt, stream))
    chopped = parse_all(fmt, feed_all(fmt, stream, cuts))
    assert chopped == whole
    bytewise = parse_all(fmt, feed_all(fmt, stream, range(len(stream))))
    assert bytewise == whole


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=lambda f: f.name)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_format_then_parse_is_identity(fmt, data):
    codes = codes_for(fmt)
    slots = 3 if "code" in fmt.names else 5
    reads = data.draw(st.lists(st.one_of(codes, st.none()), max_size=slots))
    if fmt.layout == "fixed":
        reads = [r[:35] if r else r for r in reads]
    index = str(data.draw(st.integers(0, 10**9))) if fmt.has_index else None
    gate = data.draw(st.integers(0, 9999))
    try:
        raw = format_telegram(fmt, index, reads, gate_ms=gate)
    except ValueError:
        assume(False)             # longer than the format's max_frame
    (item,) = parse_all(fmt, feed_all(fmt, raw))
    assert isinstance(item, Telegram), item
    good = [r for r in reads if r is not None]
    assert item.reads == good
    assert item.no_read == (not good and bool(fmt.no_read or fmt.no_read_status))
    if good and fmt.partial_no_read:
        assert item.partial == len(reads) - len(good)
    if index is not None:
        assert int(item.index) == int(index)
    if "gate_time" in fmt.names:
        assert item.gate_ms == gate
    assert not item.warnings


@pytest.mark.parametrize("preset", ["sick_clv", "keyence", "generic_fixed"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_driver_events_do_not_depend_on_how_the_bytes_were_chopped(preset, data):
    """The same through the driver's own path (frames, anomalies, parcel ids, no-read events),
    without sockets: only the number of messages may differ."""
    fmt = FORMATS[preset]
    stream = data.draw(telegram_streams(fmt))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))

    def events(pieces: list[bytes]) -> list[tuple[int, list[bytes]]]:
        driver = ScannerDriver(fmt, 5, "tcp://127.0.0.1:1", connect="127.0.0.1:9",
                               context=zmq.Context.instance())
        out: list[tuple[int, list[bytes]]] = []
        driver._publish = lambda reads, pids, recirc, ts: out.extend(zip(pids, reads))
        splitter = FrameSplitter(fmt)
        for piece in pieces:
            driver._handle(splitter.feed(piece), 0)
        driver._handle(splitter.close(), 0)
        return out

    bounds = [0, *cuts, len(stream)]
    assert events([stream[a:b] for a, b in zip(bounds, bounds[1:])]) == events([stream])


def test_driver_cannot_listen_on_a_taken_address():
    taken = socket.create_server(("127.0.0.1", 0))
    driver = ScannerDriver(SICK, 1, "tcp://127.0.0.1:1", listen=taken.getsockname(), linger_ms=0)
    try:
        with pytest.raises(OSError):
            driver.start()
    finally:
        driver.stop()
        taken.close()


# ---------------------------------------------------------------------------------------------
# The driver against a real engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = EngineProcess(tmp_path_factory.mktemp("scanners-engine"))
    yield e
    assert e.stop() == 0


def collect_decisions(engine: EngineProcess, scanner_id: int, parcel_ids: set[int],
                      timeout_s: float = 20.0) -> list[tuple[int, str, int]]:
    """(parcel id, reason, seq) of every decision for `scanner_id` until all of `parcel_ids`
    were decided, then a short quiet period to catch duplicates."""
    got: list[tuple[int, str, int]] = []
    deadline = time.monotonic() + timeout_s
    quiet_until = None
    engine.plc.setsockopt(zmq.RCVTIMEO, 100)
    try:
        while time.monotonic() < deadline:
            if quiet_until is None and parcel_ids <= {g[0] for g in got}:
                quiet_until = time.monotonic() + 0.3
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
            try:
                header, payload = wire.decode_message(engine.plc.recv())
            except zmq.Again:
                continue
            if header.kind != wire.DECISION:
                continue
            for pid, reason, sid, seq in zip(payload.parcel_id.tolist(), payload.reason_names(),
                                             payload.scanner_id.tolist(), payload.seq.tolist()):
                if sid == scanner_id:
                    got.append((pid, reason, seq))
    finally:
        engine.plc.setsockopt(zmq.RCVTIMEO, 10_000)
    return got


def chop(data: bytes, rng: np.random.Generator) -> list[bytes]:
    pieces, i = [], 0
    while i < len(data):
        n = int(rng.integers(1, 4))
        pieces.append(data[i:i + n])
        i += n
    return pieces


class Script:
    """A recorded-style telegram stream for one preset, and what the engine must decide."""

    CODES = [b"RR473124829GB", b"050010", b"A05K8X7", b"Z01 P3K4", b"EE123456785CN",
             b"]C100048708380056253313", b"]C1421643101000", b"LX551208808RU",
             b"]C100048700000000123452\x1d420050040", b"CP111111115DE"]

    def __init__(self, fmt: TelegramFormat, first_index: int, first_own: int):
        self.fmt = fmt
        self.next_index = first_index
        self.next_own = first_own
        self.expected: list[tuple[int, list[bytes]]] = []     # (parcel id, reads) in order
        self.rng = np.random.default_rng(first_index)

    def _pid(self, index: int | None) -> int:
        if index is not None and self.fmt.has_index:
            return index
        pid, self.next_own = self.next_own, self.next_own + 1
        return pid

    def telegram(self, reads: list[bytes | None]) -> bytes:
        index = self.next_index
        self.next_index += 1
        self.expected.append((self._pid(index), [r for r in reads if r is not None]))
        return format_telegram(self.fmt, index if self.fmt.has_index else None, reads,
                               gate_ms=250)

    def random_telegram(self) -> bytes:
        n = int(self.rng.integers(0, 3))
        reads = [self.CODES[int(i)] for i in self.rng.integers(0, len(self.CODES), n)]
        if reads and (self.fmt.partial_no_read or self.fmt.no_read) and self.rng.random() < 0.3:
            reads.insert(int(self.rng.integers(0, len(reads) + 1)), None)   # a local no read
        if "code" in self.fmt.names:
            reads = reads[:3]
        return self.telegram(reads)

    def anomaly_parcel(self, index: int | None) -> None:
        """A parcel that reaches the engine as a no-read event (index salvaged or not)."""
        self.expected.append((self._pid(index), []))

    def oversized(self) -> bytes:
        index = self.next_index
        self.next_index += 1
        body = format_telegram(self.fmt, index if self.fmt.has_index else None,
                               [b"A" * 20], framed=False)
        self.anomaly_parcel(index)        # its first bytes hold the index: it is salvaged
        return self.fmt.start + body + b"A" * self.fmt.max_frame + self.fmt.stop

    def cut(self) -> bytes:
        """The first part of a telegram, as sent before the scanner's connection drops."""
        telegram = self.random_telegram()
        body = telegram[len(self.fmt.start): len(telegram) - len(self.fmt.stop)]
        part = body[:min(30, len(body) - 1)]
        pid, _ = self.expected[-1]
        if self.fmt.has_index and salvage_index(self.fmt, part) is None:
            pid = self._pid(None)
        self.expected[-1] = (pid, [])         # truncated: a no-read event
        return self.fmt.start + part


@pytest.mark.parametrize("preset", PRESETS)
def test_driver_end_to_end_every_parcel_decided_once(engine, preset):
    fmt = FORMATS[preset]
    sid = 100 + PRESETS.index(preset)
    script = Script(fmt, first_index=1000 * (sid - 99), first_own=50_000 * (sid - 99))
    scanner = TcpTelegramOutput(fmt, wait_for_peer_s=10)          # a real TCP server
    driver = ScannerDriver(fmt, sid, engine.endpoints["scans"], connect=scanner.address,
                           first_parcel_id=script.next_own, backoff_initial_s=0.05,
                           silence_timeout_s=10).start()
    framed = bool(fmt.start)
    try:
        # coalesced: several telegrams in one write
        assert scanner.send_raw(b"".join(script.random_telegram() for _ in range(6)))
        # no-read telegrams
        assert scanner.send_raw(script.telegram([]) + script.telegram([]))
        # split frames: 1 to 3 bytes per write, with pauses so that reads really split
        for piece in chop(b"".join(script.random_telegram() for _ in range(4)), script.rng):
            assert scanner.send_raw(piece)
            time.sleep(0.0005)
        # garbage between frames (with a start character only: otherwise it is a frame), and
        # blank lines between frames
        if framed:
            assert scanner.send_raw(b"\x00\xffNOISE" + script.random_telegram() + b"??junk??"
                                    + script.random_telegram())
        elif fmt.empty_frame == "skip":
            assert scanner.send_raw(fmt.stop + script.random_telegram() + fmt.stop * 2)
        # an over-long frame, then a normal one
        assert scanner.send_raw(script.oversized() + script.random_telegram())
        time.sleep(0.2)
        # the scanner disconnects in the middle of a telegram; the driver reconnects
        assert scanner.send_raw(script.cut())
        time.sleep(0.2)
        scanner.disconnect()
        assert scanner.wait_for_peer(10), "the driver did not reconnect"
        assert scanner.send_raw(b"".join(script.random_telegram() for _ in range(5)))

        ids = {pid for pid, _ in script.expected}
        decisions = collect_decisions(engine, sid, ids)
    finally:
        driver.stop()
        scanner.close()

    by_pid = Counter(pid for pid, _, _ in decisions)
    assert set(by_pid) == ids, (sorted(ids - set(by_pid)), sorted(set(by_pid) - ids))
    assert all(n == 1 for n in by_pid.values()), [p for p, n in by_pid.items() if n > 1]
    assert len(decisions) == len(script.expected)
    seqs = [seq for _, _, seq in decisions]
    assert sorted(seqs) == list(range(1, len(decisions) + 1))     # seq: 1, 2, 3... no gaps
    reference = ReferenceRouter(PLAN)
    reasons = {pid: reason for pid, reason, _ in decisions}
    for pid, reads in script.expected:
        expected_reason = REASONS[reference.decide(reads)[1]]
        assert reasons[pid] == expected_reason, (pid, reads)

    c = driver.counters
    assert c["events"] == len(script.expected)
    assert c["oversized"] == 1
    assert c["truncated"] == 1
    assert c["anomaly_events"] == 2
    assert c["connections"] == 2 and c["disconnects"] >= 2
    assert c["garbage"] == (2 if framed else 0)
    assert c["no_reads"] == sum(1 for _, r in script.expected if not r)
    assert c["messages"] < c["events"]                            # coalesced telegrams batched
    assert c["undelivered_events"] == 0 and c["unparseable"] == 0


def test_driver_listens_and_a_new_connection_replaces_the_old(engine):
    fmt = FORMATS["datalogic_multilabel"]
    driver = ScannerDriver(fmt, 120, engine.endpoints["scans"], listen=("127.0.0.1", 0),
                           first_parcel_id=900_001, silence_timeout_s=0).start()
    try:
        first = TcpTelegramOutput(fmt, *driver.address, listen=False)
        assert first.send_raw(format_telegram(fmt, None, [b"050010"]))
        assert [p for p, _, _ in collect_decisions(engine, 120, {900_001})] == [900_001]
        second = TcpTelegramOutput(fmt, *driver.address, listen=False)
        assert second.send_raw(format_telegram(fmt, None, [b"A05K8X7", None]))
        decisions = collect_decisions(engine, 120, {900_002})
        first.close()
        second.close()
    finally:
        driver.stop()
    assert [(p, r) for p, r, _ in decisions] == [(900_002, "sorted")]
    assert driver.counters["replaced_connections"] == 1
    assert driver.counters["partial_no_reads"] == 1


def test_silent_scanner_is_detected_and_the_driver_reconnects():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    driver = ScannerDriver(SICK, 121, "tcp://127.0.0.1:1", connect=server.getsockname(),
                           silence_timeout_s=0.3, backoff_initial_s=0.05, linger_ms=0).start()
    try:
        a, _ = server.accept()                 # connected, then never says anything
        b, _ = server.accept()                 # the driver gave up on the silent one
        assert wait_for(lambda: driver.counters["connections"] >= 2)
        assert driver.counters["silence_timeouts"] >= 1
        a.close()
        b.close()
    finally:
        driver.stop()
        server.close()


def test_reconnects_with_backoff_until_the_scanner_is_up():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                              # nothing listens there now
    driver = ScannerDriver(SICK, 122, "tcp://127.0.0.1:1", connect=("127.0.0.1", port),
                           backoff_initial_s=0.02, backoff_max_s=0.1, linger_ms=0,
                           silence_timeout_s=0).start()
    try:
        assert wait_for(lambda: driver.counters["connect_failures"] >= 3)
        server = socket.create_server(("127.0.0.1", port))
        server.settimeout(5)
        conn, _ = server.accept()
        assert driver.wait_connected(5)
        conn.close()
        server.close()
    finally:
        driver.stop()


def test_backoff_grows_with_jitter_and_is_capped():
    driver = ScannerDriver(SICK, 1, "tcp://127.0.0.1:1", connect="127.0.0.1:9",
                           backoff_initial_s=0.1, backoff_max_s=1.0, seed=3)
    delays = [driver._backoff(a) for a in range(8)]
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2 and 0.2 <= delays[2] <= 0.4
    assert all(0.5 <= d <= 1.0 for d in delays[4:])
    driver.stop()


def test_engine_away_is_counted_not_silent():
    fmt = KEYENCE
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    driver = ScannerDriver(fmt, 123, "tcp://127.0.0.1:1", connect=server.getsockname(),
                           sndhwm=1, send_timeout_ms=50, linger_ms=0, silence_timeout_s=0).start()
    try:
        conn, _ = server.accept()
        for _ in range(6):
            conn.sendall(b"050010\r")
            time.sleep(0.1)
        assert wait_for(lambda: driver.counters["events"] + driver.counters["undelivered_events"] == 6)
        assert driver.counters["undelivered_events"] >= 1
        conn.close()
    finally:
        driver.stop()
        server.close()


def test_own_ids_when_the_index_is_not_numeric(engine):
    fmt = FORMATS["cognex_dataman"]
    server = TcpTelegramOutput(fmt)
    driver = ScannerDriver(fmt, 124, engine.endpoints["scans"], connect=server.address,
                           silence_timeout_s=0).start()
    try:
        assert server.send_raw(b"TRAY-7,050010\r\n,A05K8X7\r\n31,Z01P3K4\r\n")
        first_own = OWN_ID_BASE | (124 << 40) | 1
        decisions = collect_decisions(engine, 124, {first_own, first_own + 1, 31})
    finally:
        driver.stop()
        server.close()
    assert sorted(p for p, _, _ in decisions) == [31, first_own, first_own + 1]
    assert driver.counters["own_ids"] == 2


def test_parse_hostport():
    assert parse_hostport("127.0.0.1:2111") == ("127.0.0.1", 2111)
    assert parse_hostport("[::1]:23") == ("::1", 23)
    for bad in ("2111", "host:", ":80", "h:99999"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


# ---------------------------------------------------------------------------------------------
# The command


def test_add_parser_registers_the_scanner_command():
    import argparse
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["scanner", "--preset", "keyence", "--connect", "127.0.0.1:23",
                              "--scanner-id", "4"])
    assert args.func is cmd_scanner and args.scanner_id == 4 and args.engine.endswith(":5555")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scanners.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_usage_and_preset_errors():
    listed = run_cli("--list-presets")
    assert listed.returncode == 0 and all(name in listed.stdout for name in PRESETS)
    assert run_cli("--preset", "keyence").returncode == 2
    assert run_cli("--preset", "keyence", "--connect", "nohost").returncode == 2
    bad = run_cli("--preset", "no_such_scanner", "--connect", "127.0.0.1:9")
    assert bad.returncode == 1 and "sick_clv" in bad.stderr


def test_cli_runs_a_driver_until_sigterm(engine):
    fmt = KEYENCE
    scanner = TcpTelegramOutput(fmt, wait_for_peer_s=20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanners.cli", "--preset", "keyence", "--connect",
         f"127.0.0.1:{scanner.address[1]}", "--engine", engine.endpoints["scans"],
         "--scanner-id", "125", "--first-parcel-id", "700001"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert scanner.send_raw(b"050010\rERROR\rRR473124829GB\r")
        decisions = collect_decisions(engine, 125, {700001, 700002, 700003})
        assert sorted((p, r) for p, r, _ in decisions) == [
            (700001, "sorted"), (700002, "no_read"), (700003, "unknown_destination")]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        scanner.close()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    shutdown = [entry for entry in lines if entry["event"] == "shutdown"]
    assert shutdown and shutdown[0]["events"] == 3 and shutdown[0]["no_reads"] == 1
