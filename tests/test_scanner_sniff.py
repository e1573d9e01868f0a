"""`sorter scanner --sniff`: a live scanner's telegrams with no engine, over TCP (both connection
modes) and a serial line (a pseudo-terminal pair); with a preset, and proposing one without."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zmq

from scanners.driver import ScannerDriver
from scanners.framing import FrameSplitter, load_format, parse_frame
from scanners.sniff import PresetTrial, Sniffer

from engine_harness import ROOT
from test_scanner_presets import (COGNEX_BASIC, SICK_AFTER_ETX, SICK_IN_FRAME, VENDOR_STREAMS,
                                  TcpScanner, expected_events)
from test_scanners import telegram_streams

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def sniff(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scanners.cli", "--sniff", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=ENV)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return out, err


def blocks(out: str) -> list[dict[str, str]]:
    """The per-telegram blocks of sniff output: {"raw": ..., "parsed": ..., "SCAN": ...,
    "MISMATCH": ...} for each numbered telegram."""
    found: list[dict[str, str]] = []
    for line in out.splitlines():
        m = re.match(r"^(\[\d+\])?\s+(raw|parsed|SCAN|MISMATCH)\s+(.*)$", line)
        if not m:
            continue
        if m.group(1):
            found.append({})
        if found:
            found[-1].setdefault(m.group(2), m.group(3).strip())
    return found


# ---------------------------------------------------------------------------------------------
# Sans I/O: what the sniffer prints and proposes


@pytest.mark.parametrize("preset", sorted(VENDOR_STREAMS))
def test_proposal_parses_every_vendor_stream_as_its_preset_does(preset):
    rows = VENDOR_STREAMS[preset]
    sniffer = Sniffer()
    sniffer.feed(b"".join(raw for raw, _, _ in rows))
    sniffer.close()
    best = sniffer.proposal()
    assert best is not None and best.mismatched == 0 and best.anomalies == 0
    frames = [raw[len(best.fmt.start): raw.rindex(best.fmt.stop)] for raw, _, _ in rows]
    assert [parse_frame(best.fmt, f).reads for f in frames] == [r for _, _, r in rows]


@pytest.mark.parametrize("rows, proposed", [
    (SICK_IN_FRAME, "sick_clv_crlf_in_frame"),
    (SICK_AFTER_ETX, "sick_clv_crlf_after_etx"),
    (SICK_IN_FRAME + SICK_AFTER_ETX, "sick_clv"),
    (COGNEX_BASIC, "cognex_dataman_basic"),
    (VENDOR_STREAMS["cognex_dataman_formatted"], "cognex_dataman_formatted"),
    (VENDOR_STREAMS["keyence"], "keyence"),
    (VENDOR_STREAMS["keyence_stx_etx"], "keyence_stx_etx"),
    (VENDOR_STREAMS["datalogic_multilabel"], "datalogic_multilabel"),
    (VENDOR_STREAMS["sick_lector_gate"], "sick_lector_gate"),
    (VENDOR_STREAMS["generic_fixed"], "generic_fixed"),
])
def test_proposal_names_the_vendor_setting(rows, proposed):
    sniffer = Sniffer()
    lines = sniffer.feed(b"".join(raw for raw, _, _ in rows)) + sniffer.close()
    assert sniffer.proposal().fmt.name == proposed
    summary = sniffer.summary()
    assert f"== proposed preset: {proposed}" in summary
    assert any(line.startswith("== closest bundled preset so far:") for line in lines)


def test_nothing_fits():
    sniffer = Sniffer()
    sniffer.feed(b"\x01\x01\x01 binary \x00\x00\xff" * 4)
    sniffer.close()
    assert sniffer.proposal() is None
    assert "no bundled preset fits" in sniffer.summary()[-1]


def test_lines_for_a_preset_show_raw_parse_scan_and_mismatch():
    sniffer = Sniffer(load_format("sick_clv_crlf_after_etx"), scanner_id=4)
    out = "\n".join(sniffer.feed(b"".join(raw for raw, _, _ in SICK_IN_FRAME) + b"\x00junk"))
    got = blocks(out)
    assert got[0] == {"raw": "<STX>0145;RR473124829GB<CR><LF><ETX>",
                      "parsed": "index 0145; codes RR473124829GB",
                      "SCAN": "parcel_id 145 (telegram index), scanner 4, reads RR473124829GB",
                      "MISMATCH": "untrimmed_code: code RR473124829GB<CR><LF> has whitespace or "
                                  "control characters at its ends (stripped)"}
    assert got[2]["parsed"] == "index 0147; no read"
    assert got[2]["SCAN"].endswith("reads none (no read)")
    assert got[2]["MISMATCH"].startswith("no_read_extra_bytes")
    assert len(got) == len(SICK_IN_FRAME)
    tail = "\n".join(sniffer.close())
    assert "garbage" in tail and "<NUL>junk" in tail and "none (not a parcel)" in tail
    assert "mismatch untrimmed_code: 3" in "\n".join(sniffer.summary())


# ---------------------------------------------------------------------------------------------
# The command, on real links


def test_sniff_tcp_connect_with_a_preset():
    scanner = TcpScanner()
    proc = sniff("--connect", f"127.0.0.1:{scanner.address[1]}", "--preset", "sick_clv",
                 "--telegrams", str(len(SICK_IN_FRAME)))
    try:
        scanner.accept()
        scanner.conn.sendall(b"".join(raw for raw, _, _ in SICK_IN_FRAME))
        out, _ = finish(proc)
    finally:
        scanner.close()
    assert out.splitlines()[0].startswith("== sniffing connect 127.0.0.1:")
    got = blocks(out)
    assert [b["raw"] for b in got] == [
        "<STX>0145;RR473124829GB<CR><LF><ETX>",
        "<STX>0146;]C100048708380056253313;050010<CR><LF><ETX>",
        "<STX>0147;NoRead<CR><LF><ETX>", "<STX>0148;A05K8X7;NoRead<CR><LF><ETX>",
        "<STX>0149;]C100048708380056253313<GS>420050040<CR><LF><ETX>"]
    scans = [b["SCAN"] for b in got]
    for scan, (pid, reads) in zip(scans, expected_events(SICK_IN_FRAME)):
        assert scan.startswith(f"parcel_id {pid} (telegram index), scanner 1, reads ")
        assert scan.endswith("none (no read)") == (not reads)
    assert not any("MISMATCH" in b for b in got)
    assert "== sick_clv: 5 telegram(s), 5 clean, 0 with mismatches, 0 anomalies" in out


def test_sniff_tcp_listen_without_a_preset_proposes_one():
    proc = sniff("--listen", "127.0.0.1:0", "--telegrams", str(len(COGNEX_BASIC)))
    try:
        head = proc.stdout.readline()
        m = re.match(r"== sniffing listen 127\.0\.0\.1:(\d+) \(no preset", head)
        assert m, head
        with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=10) as conn:
            conn.sendall(b"".join(raw for raw, _, _ in COGNEX_BASIC))
            out, _ = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "== closest bundled preset so far: cognex_dataman_basic" in out
    assert "== proposed preset: cognex_dataman_basic" in out
    got = blocks(out)
    assert [b["raw"] for b in got][:3] == ["RR473124829GB<CR><LF>",
                                           "EE123456785CN,A05K8X7<CR><LF>", "NoRead<CR><LF>"]
    assert got[1]["SCAN"] == ("parcel_id 2 (driver's counter), scanner 1, reads EE123456785CN"
                              "  A05K8X7")


def test_sniff_on_a_pseudo_terminal():
    master, slave = os.openpty()
    try:
        proc = sniff("--serial", os.ttyname(slave), "--baud", "19200", "--preset", "keyence",
                     "--telegrams", "3")
        try:
            head = proc.stdout.readline()
            assert head.startswith(f"== sniffing serial {os.ttyname(slave)} 19200 8N1"), head
            connected = proc.stdout.readline()
            assert connected.startswith("== connected:"), connected
            os.write(master, b"RR473124829GB\rERROR\r050010,Z01 P3K4\r\n")
            out, _ = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        os.close(master)
        os.close(slave)
    got = blocks(out)
    assert [b["raw"] for b in got] == ["RR473124829GB<CR>", "ERROR<CR>", "050010,Z01 P3K4<CR>"]
    assert [b["SCAN"] for b in got] == [
        "parcel_id 1 (driver's counter), scanner 1, reads RR473124829GB",
        "parcel_id 2 (driver's counter), scanner 1, reads none (no read)",
        "parcel_id 3 (driver's counter), scanner 1, reads 050010  Z01 P3K4"]


def test_sniff_usage_errors():
    r = subprocess.run([sys.executable, "-m", "scanners.cli", "--sniff"], capture_output=True,
                       text=True, cwd=ROOT, env=ENV, timeout=30)
    assert r.returncode == 2 and "--connect" in r.stderr
    r = subprocess.run([sys.executable, "-m", "scanners.cli", "--preset", "keyence", "--connect",
                        "127.0.0.1:9", "--telegrams", "3"], capture_output=True, text=True,
                       cwd=ROOT, env=ENV, timeout=30)
    assert r.returncode == 2 and "--sniff" in r.stderr


def test_the_documented_sniff_example_is_what_sniff_prints():
    """docs/scanners.md, "When reads look wrong": the first example, telegram lines and summary,
    is the output for those bytes (the address lines aside)."""
    text = (ROOT / "docs" / "scanners.md").read_text()
    section = text[text.index("## When reads look wrong"):]
    example = section[section.index("```\n") + 4:]
    example = example[:example.index("```")].splitlines()
    command = example[0]
    assert command.startswith("$ sorter scanner --sniff") and "--preset sick_clv_crlf_after_etx" in command
    documented = [line for line in example[1:] if not line.startswith(("== sniffing", "== connected",
                                                                       "== disconnected"))]
    sniffer = Sniffer(load_format("sick_clv_crlf_after_etx"))
    printed = sniffer.feed(b"\x020145;RR473124829GB\r\n\x03\x020146;NoRead\r\n\x03")
    printed += sniffer.summary()
    assert printed == documented


@pytest.mark.parametrize("preset", ["sick_clv", "sick_lector_gate", "keyence",
                                    "cognex_dataman_basic", "generic_fixed"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sniff_shows_the_events_the_driver_sends(preset, data):
    """What --sniff prints as SCAN is what the driver would send: the same parcel ids and
    reads, event for event, on any stream (telegrams, garbage, over-long and cut frames)."""
    fmt = load_format(preset)
    stream = data.draw(telegram_streams(fmt))
    driver = ScannerDriver(fmt, 5, "tcp://127.0.0.1:1", connect="127.0.0.1:9",
                           context=zmq.Context.instance(), first_parcel_id=100)
    sent: list[tuple[int, list[bytes]]] = []
    driver._publish = lambda reads, pids, recirc, ts: sent.extend(zip(pids, reads))
    splitter = FrameSplitter(fmt)
    driver._handle(splitter.feed(stream), 0)
    driver._handle(splitter.close(), 0)
    trial = PresetTrial(fmt, 5, 100)
    reports = trial.feed(stream) + trial.close()
    shown = [(r.parcel_id, r.reads) for r in reports if r.is_event]
    assert shown == sent
    mismatched = sum(1 for r in reports if r.mismatches)
    assert mismatched == driver.counters["preset_mismatches"]
