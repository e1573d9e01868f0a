"""Every bundled preset against telegram streams written by hand from the vendors' manuals (not
made by `format_telegram` from the presets), through a real TCP connection, the real driver and
a real ZeroMQ socket standing in for the engine's scans socket; and the two cases of issue 15
(SICK terminator inside the frame, Cognex basic output) through a real engine.
"""
from __future__ import annotations

import socket
import time
from collections import Counter

import numpy as np
import pytest
import zmq

from scanners.driver import ScannerDriver
from scanners.framing import load_format, preset_names
from sorter import wire
from sorter.core.codes import REASONS
from sorter.core.reference import ReferenceRouter
from sorter.plan import load_plan

from engine_harness import EngineProcess

GS = b"\x1d"
SSCC_420 = b"]C100048708380056253313" + GS + b"420050040"

# (telegram bytes as the scanner sends them, index or None, reads)
SICK_IN_FRAME = [
    (b"\x020145;RR473124829GB\r\n\x03", 145, [b"RR473124829GB"]),
    (b"\x020146;]C100048708380056253313;050010\r\n\x03", 146,
     [b"]C100048708380056253313", b"050010"]),
    (b"\x020147;NoRead\r\n\x03", 147, []),
    (b"\x020148;A05K8X7;NoRead\r\n\x03", 148, [b"A05K8X7"]),
    (b"\x020149;" + SSCC_420 + b"\r\n\x03", 149, [SSCC_420]),
]
SICK_AFTER_ETX = [
    (b"\x020245;RR473124829GB\x03\r\n", 245, [b"RR473124829GB"]),
    (b"\x020246;NoRead\x03\r\n", 246, []),
    (b"\x020247;EE123456785CN;A05K8X7\x03\r\n", 247, [b"EE123456785CN", b"A05K8X7"]),
    (b"\x020248;050010;NoRead\x03\r\n", 248, [b"050010"]),
]
SICK_NO_TERMINATOR = [
    (b"\x020345;RR473124829GB\x03", 345, [b"RR473124829GB"]),
    (b"\x020346;NoRead\x03", 346, []),
]
COGNEX_BASIC = [
    (b"RR473124829GB\r\n", None, [b"RR473124829GB"]),
    (b"EE123456785CN,A05K8X7\r\n", None, [b"EE123456785CN", b"A05K8X7"]),
    (b"NoRead\r\n", None, []),
    (SSCC_420 + b"\r\n", None, [SSCC_420]),
    (b"050010\r\n", None, [b"050010"]),
]
COGNEX_FORMATTED = [
    (b"1017,RR473124829GB\r\n", 1017, [b"RR473124829GB"]),
    (b"1018,NoRead\r\n", 1018, []),
    (b"1019,EE123456785CN,A05K8X7\r\n", 1019, [b"EE123456785CN", b"A05K8X7"]),
]


def fixed(index: bytes, gate: bytes, count: bytes, *codes: bytes) -> bytes:
    slots = [c.ljust(48) for c in codes] + [b" " * 48] * (3 - len(codes))
    return b"\x02RD" + index + gate + count + b"".join(slots) + b"\x03"


VENDOR_STREAMS: dict[str, list[tuple[bytes, int | None, list[bytes]]]] = {
    "sick_clv": SICK_IN_FRAME + SICK_AFTER_ETX + SICK_NO_TERMINATOR,
    "sick_clv_crlf_in_frame": SICK_IN_FRAME,
    "sick_clv_crlf_after_etx": SICK_AFTER_ETX,
    "sick_lector_gate": [
        (b"\x020145;0;1;312;C128:13:RR473124829GB\r\n\x03", 145, [b"RR473124829GB"]),
        (b"\x020146;2;0;298;NoRead\r\n\x03", 146, []),
        (b"\x020147;0;2;305;C128:6:050010,GS1:33:" + SSCC_420 + b"\x03", 147,
         [b"050010", SSCC_420]),
        (b"\x020148;1;1;300;C128:13:RR473124828GB\x03\r\n", 148, [b"RR473124828GB"]),
        (b"\x020149;NoRead\r\n\x03", 149, []),
    ],
    "datalogic_multilabel": [
        (b"\x02RR473124829GB,050010,A05K8X7\r\n", None,
         [b"RR473124829GB", b"050010", b"A05K8X7"]),
        (b"\x02???????\r\n", None, []),
        (b"\x02RR473124829GB,?,A05K8X7\r\n", None, [b"RR473124829GB", b"A05K8X7"]),
        (b"\x02" + SSCC_420 + b"\r\n", None, [SSCC_420]),
    ],
    "keyence": [
        (b"RR473124829GB\r", None, [b"RR473124829GB"]),
        (b"ERROR\r", None, []),
        (b"050010,Z01 P3K4\r\n", None, [b"050010", b"Z01 P3K4"]),
        (b"A05K8X7\r", None, [b"A05K8X7"]),
    ],
    "keyence_stx_etx": [
        (b"\x02RR473124829GB\x03", None, [b"RR473124829GB"]),
        (b"\x02ERROR\x03", None, []),
        (b"\x02050010,A05K8X7\x03\r\n", None, [b"050010", b"A05K8X7"]),
    ],
    "cognex_dataman_basic": COGNEX_BASIC,
    "cognex_dataman_formatted": COGNEX_FORMATTED,
    "cognex_dataman": COGNEX_FORMATTED,
    "generic_fixed": [
        (fixed(b"0000000145", b"00312", b"02", b"RR473124829GB", b"050010"), 145,
         [b"RR473124829GB", b"050010"]),
        (fixed(b"0000000146", b"00312", b"00", b"NOREAD"), 146, []),
        (fixed(b"0000000147", b"00312", b"01", b"?", b"A05K8X7"), 147, [b"A05K8X7"]),
    ],
}


class ScanSink:
    """A real ZeroMQ PULL socket where the engine's scans socket would be: the SCAN events a
    driver sends, decoded by the wire codec."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 100)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def collect(self, n: int, timeout_s: float = 10.0) -> list[tuple[int, list[bytes]]]:
        """(parcel id, reads) of the next n events, then a short wait for any extra one."""
        out: list[tuple[int, list[bytes]]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(out) >= n:
                deadline = min(deadline, time.monotonic() + 0.3)
            try:
                scan = wire.decode_scan(self.sock.recv())
            except zmq.Again:
                if len(out) >= n:
                    break
                continue
            ev = scan.events
            out += [(int(ev.parcel_ids[i]), ev.reads(i)) for i in range(len(ev))]
        return out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def sink():
    s = ScanSink()
    yield s
    s.close()


class TcpScanner:
    """A scanner that is a TCP server (as SICK and Cognex readers are by default)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10)
        self.address = self.server.getsockname()[:2]
        self.conn: socket.socket | None = None

    def accept(self) -> None:
        self.conn, _ = self.server.accept()

    def send_chopped(self, data: bytes, rng: np.random.Generator) -> None:
        """The bytes cut at random points, a pause between pieces so that reads really split."""
        cuts = sorted(set(int(c) for c in rng.integers(0, len(data), size=max(1, len(data) // 20))))
        for a, b in zip([0, *cuts], [*cuts, len(data)]):
            if b > a:
                self.conn.sendall(data[a:b])
                time.sleep(0.002)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def run_stream(preset: str, data: bytes, sink: ScanSink, n_events: int, *, first_own: int = 5000,
               rng_seed: int = 0, fmt=None) -> tuple[list, ScannerDriver]:
    fmt = fmt or load_format(preset)
    scanner = TcpScanner()
    driver = ScannerDriver(fmt, 7, sink.endpoint, connect=scanner.address,
                           first_parcel_id=first_own, silence_timeout_s=0,
                           backoff_initial_s=0.05, linger_ms=0).start()
    try:
        scanner.accept()
        scanner.send_chopped(data, np.random.default_rng(rng_seed))
        events = sink.collect(n_events)
    finally:
        driver.stop()
        scanner.close()
    return events, driver


def expected_events(rows, first_own: int = 5000) -> list[tuple[int, list[bytes]]]:
    out, own = [], first_own
    for _, index, reads in rows:
        if index is None:
            index, own = own, own + 1
        out.append((index, reads))
    return out


def test_every_bundled_preset_has_a_vendor_stream():
    assert set(VENDOR_STREAMS) == set(preset_names())


@pytest.mark.parametrize("preset", sorted(VENDOR_STREAMS))
def test_vendor_stream_gives_the_right_reads_and_no_reads(preset, sink):
    rows = VENDOR_STREAMS[preset]
    data = b"".join(raw for raw, _, _ in rows) * 2          # twice: the second run of indexes
    rows = rows * 2                                         # repeats (the engine's concern)
    events, driver = run_stream(preset, data, sink, len(rows), rng_seed=len(preset))
    assert events == expected_events(rows)
    c = driver.snapshot()
    assert c["telegrams"] == len(rows)
    assert c["no_reads"] == sum(1 for _, _, reads in rows if not reads)
    assert c["preset_mismatches"] == 0, {k: v for k, v in c.items() if k.startswith("mismatch")}
    for kind in ("garbage", "unparseable", "oversized", "unterminated", "truncated"):
        assert c[kind] == 0, kind


# ---------------------------------------------------------------------------------------------
# The issue's two cases, decided by a real engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = EngineProcess(tmp_path_factory.mktemp("scanner-presets-engine"))
    yield e
    assert e.stop() == 0


def decisions_for(engine: EngineProcess, scanner_id: int, n: int, timeout_s: float = 20.0):
    got: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    engine.plc.setsockopt(zmq.RCVTIMEO, 100)
    try:
        while len(got) < n and time.monotonic() < deadline:
            try:
                header, payload = wire.decode_message(engine.plc.recv())
            except zmq.Again:
                continue
            if header.kind != wire.DECISION:
                continue
            for pid, reason, sid in zip(payload.parcel_id.tolist(), payload.reason_names(),
                                        payload.scanner_id.tolist()):
                if sid == scanner_id:
                    got[pid] = reason
    finally:
        engine.plc.setsockopt(zmq.RCVTIMEO, 10_000)
    return got


@pytest.mark.parametrize("preset, rows, sid", [
    ("sick_clv", SICK_IN_FRAME, 141),
    ("cognex_dataman_basic", COGNEX_BASIC, 142),
])
def test_issue_cases_are_decided_as_the_reads_say(engine, preset, rows, sid):
    """SICK with CR LF inside the frame on sick_clv, and Cognex basic output on its preset: each
    parcel's decision is the reference router's decision for the telegram's real reads (the
    issue saw `invalid` for SICK no-reads and lost first codes on Cognex)."""
    fmt = load_format(preset)
    scanner = TcpScanner()
    driver = ScannerDriver(fmt, sid, engine.endpoints["scans"], connect=scanner.address,
                           first_parcel_id=70_000, silence_timeout_s=0, linger_ms=0).start()
    try:
        scanner.accept()
        scanner.conn.sendall(b"".join(raw for raw, _, _ in rows))
        got = decisions_for(engine, sid, len(rows))
    finally:
        driver.stop()
        scanner.close()
    reference = ReferenceRouter(load_plan())
    expected = {pid: REASONS[reference.decide(reads)[1]]
                for pid, reads in expected_events(rows, 70_000)}
    assert got == expected
    assert Counter(got.values())["no_read"] == sum(1 for _, _, r in rows if not r)
    assert driver.counters["preset_mismatches"] == 0
