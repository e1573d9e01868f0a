"""A preset that does not fit the scanner is loud: every sign of a mismatch (untrimmed code,
non-numeric index, no-read string with extra bytes, field count, missing terminator) is a
counted anomaly and a WARNING log line (the first ten, then every 1000th), in the driver's
counters and its `shutdown` line; `strip_codes` decides whether the stray bytes reach the
engine."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from scanners.driver import COUNTER_NAMES, ScannerDriver, should_log
from scanners.framing import (EDGE_BYTES, MISMATCH_KINDS, PRESET_DIR, Anomaly, Frame, FrameSplitter,
                              PresetError, format_telegram, load_format, parse_frame)

from engine_harness import ROOT
from test_scanner_presets import (COGNEX_BASIC, SICK_IN_FRAME, ScanSink, TcpScanner,
                                  expected_events, run_stream)


@pytest.fixture
def sink():
    s = ScanSink()
    yield s
    s.close()


@pytest.fixture
def driver_log(caplog):
    """The driver's log records (propagation switched on for the test, in case another test
    set the scanner loggers up for JSON on stderr, which stops it)."""
    loggers = [logging.getLogger("scanners"), logging.getLogger("scanners.driver")]
    old = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.propagate = True
    with caplog.at_level(logging.INFO, logger="scanners.driver"):
        yield caplog
    for lg, value in zip(loggers, old):
        lg.propagate = value


def mismatch_records(caplog) -> list[dict]:
    return [r.fields for r in caplog.records
            if r.getMessage() == "telegram does not match the preset"
            and r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------------------------
# Parsing: each sign, with what still goes out


@pytest.mark.parametrize("preset, body, kinds, index, reads, no_read", [
    # SICK terminator inside the frame on the preset that expects it after the ETX
    ("sick_clv_crlf_after_etx", b"0145;RR473124829GB\r\n", {"untrimmed_code"}, "0145",
     [b"RR473124829GB"], False),
    ("sick_clv_crlf_after_etx", b"0147;NoRead\r\n", {"no_read_extra_bytes"}, "0147", [], True),
    ("sick_clv_crlf_after_etx", b"0148;A05K8X7;NoRead\r\n", {"no_read_extra_bytes"}, "0148",
     [b"A05K8X7"], False),
    ("sick_clv_crlf_after_etx", b"0149; 050010", {"untrimmed_code"}, "0149", [b"050010"], False),
    ("sick_clv_crlf_after_etx", b"0150;NoRead01", {"no_read_extra_bytes"}, "0150", [], True),
    ("sick_clv_crlf_after_etx", b"T150;050010", {"non_numeric_index"}, "T150", [b"050010"],
     False),
    # SICK without the terminator on the strict in-frame preset
    ("sick_clv_crlf_in_frame", b"0145;RR473124829GB", {"terminator_missing"}, "0145",
     [b"RR473124829GB"], False),
    # Cognex basic output on the formatted preset (index expected first)
    ("cognex_dataman", b"RR473124829GB", {"non_numeric_index", "field_count"},
     "RR473124829GB", [], False),
    ("cognex_dataman", b"EE123456785CN,A05K8X7", {"non_numeric_index"}, "EE123456785CN",
     [b"A05K8X7"], False),
    ("cognex_dataman", b"NoRead", {"non_numeric_index"}, None, [], True),
    ("cognex_dataman", b"050010", {"field_count"}, "050010", [], False),
    # a control character at a code's end, on a format without index
    ("keyence", b"RR473124829GB\x03", {"untrimmed_code"}, None, [b"RR473124829GB"], False),
    ("datalogic_multilabel", b"RR473124829GB, ?", {"no_read_extra_bytes"}, None,
     [b"RR473124829GB"], False),
])
def test_each_sign_of_a_mismatch(preset, body, kinds, index, reads, no_read):
    t = parse_frame(load_format(preset), body)
    assert {k for k, _ in t.mismatches} == kinds
    assert all(detail for _, detail in t.mismatches)
    assert (t.index, t.reads, t.no_read) == (index, reads, no_read)


def test_field_count_that_cannot_be_parsed_is_unparseable_and_a_mismatch():
    fmt = load_format("sick_lector_gate")
    a = parse_frame(fmt, b"0145;0;312;C128:13:RR473124829GB")    # the count field left out
    assert isinstance(a, Anomaly) and a.kind == "unparseable" and a.mismatch == "field_count"
    b = parse_frame(load_format("datalogic_multilabel"), b"A,B")
    assert not b.mismatches                                     # any number of codes is right


def test_a_fitting_preset_shows_no_mismatch():
    for preset, body in [("sick_clv", b"0145;RR473124829GB\r\n"), ("sick_clv", b"0146;NoRead"),
                         ("sick_clv_crlf_in_frame", b"0147;NoRead\r\n"),
                         ("cognex_dataman_basic", b"RR473124829GB"),
                         ("keyence", b"050010,Z01 P3K4")]:
        assert not parse_frame(load_format(preset), body).mismatches, (preset, body)


def test_strip_codes_off_forwards_the_bytes_and_still_counts(tmp_path):
    path = tmp_path / "sick_no_strip.toml"
    path.write_text((PRESET_DIR / "sick_clv_crlf_after_etx.toml").read_text().replace(
        'no_read = ["NoRead"]', 'no_read = ["NoRead"]\nstrip_codes = false'))
    fmt = load_format(path)
    assert fmt.strip_codes is False and load_format("sick_clv").strip_codes is True
    t = parse_frame(fmt, b"0145;RR473124829GB\r\n")
    assert t.reads == [b"RR473124829GB\r\n"]
    assert [k for k, _ in t.mismatches] == ["untrimmed_code"]
    t = parse_frame(fmt, b"0147;NoRead\r\n")                      # a no read all the same
    assert t.no_read and [k for k, _ in t.mismatches] == ["no_read_extra_bytes"]


def test_preset_keys_are_checked(tmp_path):
    base = (PRESET_DIR / "sick_clv.toml").read_text()
    for old, new, message in [
        ('terminator = "<CR><LF>"', 'terminator = "<CR><ETX>"', "contains the stop"),
        ('terminator = "<CR><LF>"', 'terminator = "<CR>;"', "contains a separator"),
        ('terminator = "<CR><LF>"', 'terminator_required = true', "needs a terminator"),
        ('no_read = ["NoRead"]', 'no_read = ["NoRead"]\nstrip_codes = "yes"', "true or false"),
    ]:
        path = tmp_path / "p.toml"
        path.write_text(base.replace(old, new))
        with pytest.raises(PresetError, match=message):
            load_format(path)


def test_format_telegram_writes_the_terminator_and_refuses_untrimmed_codes():
    fmt = load_format("sick_clv_crlf_in_frame")
    assert format_telegram(fmt, 145, [b"RR473124829GB"]) == b"\x02145;RR473124829GB\r\n\x03"
    with pytest.raises(ValueError, match="ends"):
        format_telegram(fmt, 145, [b"RR473124829GB "])


# ---------------------------------------------------------------------------------------------
# The driver: counters, WARNING lines, the rate of them


def test_sick_default_output_on_the_after_etx_preset_is_loud(sink, driver_log):
    rows = SICK_IN_FRAME
    events, driver = run_stream("sick_clv_crlf_after_etx", b"".join(r for r, _, _ in rows),
                                sink, len(rows))
    assert events == expected_events(rows)                      # stripped: reads still right
    c = driver.snapshot()
    assert c["mismatch_untrimmed_code"] == 3 and c["mismatch_no_read_extra_bytes"] == 2
    assert c["preset_mismatches"] == 5
    logged = mismatch_records(driver_log)
    assert sorted(r["mismatch"] for r in logged) == ["no_read_extra_bytes"] * 2 + \
        ["untrimmed_code"] * 3
    first = next(r for r in logged if r["mismatch"] == "untrimmed_code")
    assert first["preset"] == "sick_clv_crlf_after_etx" and first["index"] == "0145"
    assert first["telegram"] == "0145;RR473124829GB<CR><LF>"
    assert "--sniff" in first["check"]


def test_cognex_basic_output_on_the_formatted_preset_is_loud(sink, driver_log):
    rows = COGNEX_BASIC
    events, driver = run_stream("cognex_dataman", b"".join(r for r, _, _ in rows), sink,
                                len(rows))
    # what the issue saw: first codes taken as the index; now every one is counted and logged
    assert [reads for _, reads in events] == [[], [b"A05K8X7"], [], [], []]
    c = driver.snapshot()
    assert c["mismatch_non_numeric_index"] == 4       # RR..., EE..., NoRead (no index), ]C1...
    assert c["mismatch_field_count"] == 3             # single codes: nothing where codes go
    assert c["preset_mismatches"] == 5
    kinds = {r["mismatch"] for r in mismatch_records(driver_log)}
    assert kinds == {"non_numeric_index", "field_count"}


def test_unparseable_field_count_counts_through_the_driver(sink):
    data = b"\x020145;0;312;C128:13:RR473124829GB\x03\x020146;0;1;300;C128:6:050010\x03"
    events, driver = run_stream("sick_lector_gate", data, sink, 2)
    assert events == [(145, []), (146, [b"050010"])]              # index salvaged: no-read event
    c = driver.snapshot()
    assert c["unparseable"] == 1 and c["mismatch_field_count"] == 1
    assert c["preset_mismatches"] == 1


def test_warnings_are_rate_limited_and_counts_are_exact(driver_log):
    """2500 mismatched telegrams: every one counted, WARNING lines for the first ten and the
    1000th and 2000th of each kind."""
    fmt = load_format("sick_clv_crlf_in_frame")
    driver = ScannerDriver(fmt, 9, "tcp://127.0.0.1:1", connect="127.0.0.1:9",
                           context=zmq.Context.instance(), linger_ms=0)
    driver._publish = lambda *args: None
    splitter = FrameSplitter(fmt)
    chunk = b"".join(b"\x02%d;RR473124829GB\x03" % i for i in range(1, 501))
    for _ in range(5):
        driver._handle(splitter.feed(chunk), 0)
    assert driver.counters["mismatch_terminator_missing"] == 2500
    assert driver.counters["preset_mismatches"] == 2500
    counts = [r["count"] for r in mismatch_records(driver_log)]
    assert counts == [*range(1, 11), 1000, 2000]
    assert [n for n in range(1, 2501) if should_log(n)] == counts
    driver.stop()


def test_mismatch_counters_are_named_for_every_kind():
    for kind in MISMATCH_KINDS:
        assert f"mismatch_{kind}" in COUNTER_NAMES
    assert "preset_mismatches" in COUNTER_NAMES


def test_shutdown_line_carries_the_mismatch_counts(sink):
    scanner = TcpScanner()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanners.cli", "--preset", "cognex_dataman", "--connect",
         f"127.0.0.1:{scanner.address[1]}", "--engine", sink.endpoint, "--scanner-id", "31",
         "--silence-timeout", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        scanner.accept()
        scanner.conn.sendall(b"".join(r for r, _, _ in COGNEX_BASIC))
        assert len(sink.collect(len(COGNEX_BASIC))) == len(COGNEX_BASIC)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        scanner.close()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (shutdown,) = [e for e in lines if e["event"] == "shutdown"]
    assert shutdown["preset_mismatches"] == 5
    assert shutdown["mismatch_non_numeric_index"] == 4 and shutdown["mismatch_field_count"] == 3
    warned = [e for e in lines if e["event"] == "telegram does not match the preset"]
    assert len(warned) == 7 and all(e["level"] == "warning" for e in warned)


def test_mismatch_counts_are_served_as_prometheus_metrics(sink):
    """`--metrics`: the driver's counters on /metrics, read with prometheus_client's parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    scanner = TcpScanner()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanners.cli", "--preset", "sick_clv_crlf_after_etx", "--connect",
         f"127.0.0.1:{scanner.address[1]}", "--engine", sink.endpoint, "--scanner-id", "32",
         "--silence-timeout", "0", "--metrics", "127.0.0.1:0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        ready = json.loads(proc.stderr.readline())
        while ready["event"] != "ready":
            ready = json.loads(proc.stderr.readline())
        scanner.accept()
        scanner.conn.sendall(b"".join(r for r, _, _ in SICK_IN_FRAME))
        assert len(sink.collect(len(SICK_IN_FRAME))) == len(SICK_IN_FRAME)
        with urllib.request.urlopen(ready["metrics"], timeout=10) as response:
            text = response.read().decode()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        scanner.close()
    samples = {(s.name, s.labels.get("preset")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    key = "sick_clv_crlf_after_etx"
    assert samples[("sorter_scanner_preset_mismatches_total", key)] == 5
    assert samples[("sorter_scanner_mismatch_untrimmed_code_total", key)] == 3
    assert samples[("sorter_scanner_mismatch_no_read_extra_bytes_total", key)] == 2
    assert samples[("sorter_scanner_events_total", key)] == 5
    assert proc.returncode == 0


@given(code=st.binary(min_size=1, max_size=30).map(
           lambda b: bytes(b"ABCKLRZ0123456789 ]\x1d"[x % 19] for x in b)).filter(
           lambda c: c.strip(EDGE_BYTES) == c),
       before=st.binary(max_size=3).map(lambda b: bytes(EDGE_BYTES[x % 33] for x in b)),
       after=st.binary(max_size=3).map(lambda b: bytes(EDGE_BYTES[x % 33] for x in b)))
def test_stray_bytes_at_a_codes_ends_are_stripped_and_counted(code, before, after):
    """Any whitespace or control bytes around any code: the read is the code, and there is an
    untrimmed_code mismatch exactly when there were such bytes."""
    fmt = load_format("cognex_dataman_basic")
    t = parse_frame(fmt, before + code + after)
    assert t.reads == [code]
    assert [k for k, _ in t.mismatches] == (["untrimmed_code"] if before or after else [])
