"""The demo: the whole line on loopback, and its audit accounts for every simulated parcel."""
import json
import signal
import subprocess
import sys
import time

from rich.console import Console

from sorter.audit import read_audit
from simulators.demo import run_demo


def test_demo_runs_and_the_audit_accounts_for_every_parcel(tmp_path):
    console = Console(file=open(tmp_path / "out.txt", "w"), width=120)
    result = run_demo(seconds=3, rate=120, audit_dir=str(tmp_path / "audit"), live=False,
                      console=console)
    assert result.engine_exit == 0
    assert result.parcels >= 300
    assert result.events == result.scans == result.audited_rows
    assert result.parcels_missing_from_audit == []
    assert result.decisions["sorted"] > result.parcels * 0.8
    table = read_audit(tmp_path / "audit")
    assert set(table.column("parcel_id").to_pylist()) >= set(range(1, result.parcels + 1))
    assert 0.9 < result.read_rate <= 1.0


def test_ctrl_c_stops_everything_cleanly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sorter.cli", "demo", "--seconds", "120",
                             "--rate", "50", "--no-live", "--audit-dir", str(tmp_path / "audit"),
                             "--json", str(tmp_path / "summary.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        lines.append(line)
        if "parcels" in line and " s " in line and not line.startswith("engine up"):
            break
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + out.decode()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and summary["engine_exit"] == 0
    assert summary["parcels"] > 0 and summary["parcels_missing_from_audit"] == []


def _children_with(text: str) -> list[int]:
    """Pids of live processes whose command line mentions `text`."""
    import os
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_bad_arguments_are_refused_before_anything_starts(tmp_path):
    import pytest
    for args in (["--rate", "0"], ["--seconds", "-1"], ["--rate", "nan"], ["--seconds", "inf"]):
        out = subprocess.run([sys.executable, "-m", "sorter.cli", "demo", "--no-live",
                              "--audit-dir", str(tmp_path / "audit"), *args],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert args[0] in out.stderr and "above 0" in out.stderr
        assert not (tmp_path / "audit").exists()          # no engine was started
    with pytest.raises(ValueError, match="--rate"):
        run_demo(seconds=1, rate=0, audit_dir=str(tmp_path / "audit"), live=False)
    assert not (tmp_path / "audit").exists() and _children_with(str(tmp_path)) == []


def test_a_part_failing_to_start_leaves_no_engine_behind(tmp_path):
    import pytest
    audit = tmp_path / "audit"
    with pytest.raises(TypeError):         # the simulators refuse this seed after the engine is up
        run_demo(seconds=1, rate=10, seed=[1], audit_dir=str(audit), live=False)
    assert (tmp_path / "audit-engine.log").exists()       # the engine had started (its log
                                                          # sits beside the audit directory)
    assert _children_with(str(audit)) == []
    # and a demo in the same directory runs (no engine holds its audit or ports)
    console = Console(file=open(tmp_path / "out.txt", "w"), width=120)
    result = run_demo(seconds=1, rate=20, audit_dir=str(audit), live=False, console=console)
    assert result.engine_exit == 0
