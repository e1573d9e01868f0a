"""Scanners on a serial line (RS-232/RS-485) through pyserial, with the same presets: a
pseudo-terminal pair stands in for the cable (the test writes the scanner's bytes to the master
side, the driver opens the slave side as its serial port)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scanners.driver import ScannerDriver
from scanners.framing import load_format

from engine_harness import ROOT
from test_scanner_presets import (SICK_IN_FRAME, VENDOR_STREAMS, ScanSink, expected_events)


@pytest.fixture
def sink():
    s = ScanSink()
    yield s
    s.close()


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("preset", ["sick_clv", "keyence", "datalogic_multilabel",
                                    "cognex_dataman_basic"])
def test_serial_scanner_gives_the_same_events_as_tcp(preset, sink, pty_pair):
    master, device = pty_pair
    rows = VENDOR_STREAMS[preset]
    driver = ScannerDriver(load_format(preset), 8, sink.endpoint, serial=device, baud=9600,
                           first_parcel_id=5000, silence_timeout_s=0, linger_ms=0).start()
    try:
        assert driver.wait_connected(10)
        for raw, _, _ in rows:                  # one telegram at a time, as a serial line does
            os.write(master, raw)
            time.sleep(0.005)
        events = sink.collect(len(rows))
    finally:
        driver.stop()
    assert events == expected_events(rows)
    assert driver.counters["preset_mismatches"] == 0
    assert driver.describe_peer() == f"{device} 9600 8N1"


def test_serial_port_that_appears_later_is_opened_with_backoff(sink, pty_pair, tmp_path):
    """A USB adapter plugged in after the driver started: failures are counted, the driver
    keeps trying and reads once the device exists."""
    master, device = pty_pair
    link = tmp_path / "ttyUSB0"
    driver = ScannerDriver(load_format("keyence"), 8, sink.endpoint, serial=str(link),
                           first_parcel_id=1, silence_timeout_s=0, backoff_initial_s=0.02,
                           backoff_max_s=0.1, linger_ms=0).start()
    try:
        assert wait_for(lambda: driver.counters["connect_failures"] >= 2)
        os.symlink(device, link)
        assert driver.wait_connected(10)
        os.write(master, b"050010\r")
        events = sink.collect(1)
    finally:
        driver.stop()
    assert events == [(1, [b"050010"])]


def test_bad_serial_settings_are_refused():
    with pytest.raises(ValueError, match="parity"):
        ScannerDriver(load_format("keyence"), 1, None, serial="/dev/null", parity="X")
    with pytest.raises(ValueError, match="exactly one"):
        ScannerDriver(load_format("keyence"), 1, None, serial="/dev/null", connect="h:1")


def test_cli_serial_driver_until_sigterm(sink, pty_pair):
    master, device = pty_pair
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanners.cli", "--preset", "sick_clv", "--serial", device,
         "--baud", "38400", "--parity", "E", "--bytesize", "7", "--engine", sink.endpoint,
         "--scanner-id", "12", "--silence-timeout", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        seen: dict[str, dict] = {}
        while not {"ready", "serial port open"} <= set(seen):      # the port is open
            line = json.loads(proc.stderr.readline())
            seen[line["event"]] = line
        assert seen["ready"]["serial"] == f"{device} 38400 7E1"
        assert seen["serial port open"]["port"] == f"{device} 38400 7E1"
        os.write(master, b"".join(raw for raw, _, _ in SICK_IN_FRAME))
        events = sink.collect(len(SICK_IN_FRAME))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events == expected_events(SICK_IN_FRAME)
    assert proc.returncode == 0
    shutdown = [json.loads(line) for line in err.splitlines() if '"shutdown"' in line]
    assert shutdown[0]["events"] == len(SICK_IN_FRAME) and shutdown[0]["preset_mismatches"] == 0
