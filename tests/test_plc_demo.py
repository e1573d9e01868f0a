"""The gateway with a real engine: chute states and confirmations from each simulated protocol
PLC reach the engine and change its decisions; and `sorter demo --plc` runs the whole line
through the gateway with every parcel in the audit."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from rich.console import Console

from engine_harness import EngineProcess
from simulators.demo import run_demo
from simulators.demo_plc import PROTOCOLS, ProtocolPlc
from sorter.plan import load_plan

# a loop short enough that parcels reach their chutes within a second
LOOP = dict(speed_mps=50.0, first_chute_m=1.0, chute_spacing_m=0.1, return_m=2.0,
            capacity=100_000, failed_divert_p=0.0, empty_after_s=None)


def _diverted(plc: ProtocolPlc) -> dict[int, int]:
    return dict(plc.snapshot()["diverted"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plc_chute_states_and_confirmations_reach_the_engine(tmp_path, protocol):
    engine = EngineProcess(tmp_path)
    engine.plc.close()                      # the gateway is the only reader of decisions
    plc = ProtocolPlc(protocol, load_plan(), engine.endpoints["decisions"],
                      engine.endpoints["feedback"], seed=1, **LOOP)
    try:
        plc.start()
        engine.wait_until(lambda s: s["counters"]["chute_status_updates"] > 0)
        engine.send_scans([[b"050010"]] * 5, first_parcel=1)
        engine.wait_until(lambda s: s["counters"]["confirmations"]["sorted"] >= 5)
        first = _diverted(plc)
        assert sum(first.values()) == 5
        chute = max(first, key=first.get)
        with plc.sim.lock:                  # the PLC takes that chute out of service
            plc.sim.machine.loop.disable(chute)
        engine.wait_until(lambda s: s["chutes_unavailable"].get(str(chute),
                          s["chutes_unavailable"].get(chute)) == "disabled")
        engine.send_scans([[b"050010"]] * 5, first_parcel=101)
        engine.wait_until(lambda s: s["counters"]["confirmations"]["sorted"] >= 10)
        after = _diverted(plc)
        assert after[chute] == first[chute]             # nothing more went into it
        assert sum(after.values()) == 10
        gw = plc.gateway.snapshot()
        assert gw["decisions"] == 10 and gw["confirms"] == 10 and gw["statuses"] >= 2
    finally:
        plc.stop()
        assert engine.stop() == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_demo_through_the_gateway_accounts_for_every_parcel(tmp_path, protocol):
    console = Console(file=open(tmp_path / "out.txt", "w"), width=120)
    result = run_demo(seconds=3, rate=60, audit_dir=str(tmp_path / "audit"), live=False,
                      console=console, plc_protocol=protocol)
    assert result.engine_exit == 0
    assert result.parcels >= 150
    assert result.events == result.scans == result.audited_rows
    assert result.parcels_missing_from_audit == []
    assert result.decisions["sorted"] > result.parcels * 0.8


def test_demo_cli_has_plc_flag():
    r = subprocess.run([sys.executable, "-m", "sorter.cli", "demo", "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--plc {tcp,opcua,modbus}" in r.stdout


def test_engine_sends_decisions_with_their_decision_time(tmp_path):
    """`--decision-version 2`: every DECISION message carries when it was decided."""
    engine = EngineProcess(tmp_path, "--decision-version", "2")
    try:
        before = time.time_ns()
        engine.send_scans([[b"050010"], []], first_parcel=1)
        batches = engine.receive_decisions(2)
        after = time.time_ns()
        for b in batches:
            assert b.header.version == 2
            assert before <= b.decided_ns <= after
    finally:
        assert engine.stop() == 0


def test_engine_sends_version_1_unless_configured(tmp_path):
    """The versioning policy (docs/protocol.md 11.3): a receiver written against version 1
    keeps working until the engine is configured to send version 2."""
    engine = EngineProcess(tmp_path)
    try:
        engine.send_scans([[b"050010"]], first_parcel=1)
        (b,) = engine.receive_decisions(1)
        assert b.header.version == 1 and b.decided_ns is None
        assert b.chute.tolist() == [5]
    finally:
        assert engine.stop() == 0
