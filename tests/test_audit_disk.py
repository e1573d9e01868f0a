"""The engine when the audit cannot be written: disk full on a small tmpfs (mounted by the
test, which needs root), decisions withheld (write-before-send), `audit_unavailable` in
status, one log line per state change, and recovery by itself when space returns."""
import os
import shutil
import subprocess
import urllib.request

import pytest

from sorter.audit import read_audit
from sorter.audit.query import verify

from engine_harness import EngineProcess, flatten


def _mount_tmpfs(path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return proc.returncode == 0


def _fill(path) -> None:
    """Take every free byte of the filesystem at path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 512):
            try:
                while os.write(fd, b"\xaa" * size) == size:
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "3m"):
        pytest.skip("needs root to mount a small tmpfs (disk-full test)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_withholds_decisions_reports_and_recovers(tmp_path, small_disk):
    config = tmp_path / "engine.toml"
    config.write_text("[audit]\nsegment_mb = 0.25\ncompact_s = 3600\n")
    engine = EngineProcess(tmp_path, "--config", str(config), "--audit-dir", str(small_disk / "audit"))
    engine.audit_dir = small_disk / "audit"
    filler = small_disk / "filler"
    try:
        engine.send_scans([[b"050010"]] * 8, first_parcel=0)
        got = flatten(engine.receive_decisions(8))["decision_seq"].tolist()
        assert got == list(range(1, 9))
        _fill(filler)
        # the open segment has room (preallocated); once full, the next one cannot be made
        parcel = 100
        for _ in range(400):
            engine.send_scans([[b"050010", b"RR473124829GB"]] * 64, first_parcel=parcel)
            parcel += 64
            if engine.control("status")["audit_unavailable"]:
                break
        status = engine.wait_until(lambda s: s["audit_unavailable"])
        # what was journaled was sent; then nothing more: decisions are withheld, numbered
        # only when journaled, so the numbering has no gap
        engine.plc.setsockopt(__import__("zmq").RCVTIMEO, 1000)
        received = list(got)
        try:
            while True:
                received += flatten(engine.receive_decisions(1))["decision_seq"].tolist()
        except Exception:
            pass
        assert received == list(range(1, len(received) + 1))
        engine.send_scans([[b"050010"]] * 5, first_parcel=10**6)
        status = engine.wait_until(lambda s: s["decisions_withheld"] >= 5 + status["decisions_withheld"])
        assert status["decision_seq"] == received[-1]
        text = urllib.request.urlopen(engine.endpoints["metrics"], timeout=10).read().decode()
        assert "sorter_audit_unavailable 1.0" in text
        assert engine.control("status")["ok"]                 # the engine is still serving
        # space returns: within about a second the engine resumes by itself
        filler.unlink()
        engine.wait_until(lambda s: not s["audit_unavailable"], timeout_s=10)
        engine.send_scans([[b"050010"]], first_parcel=2 * 10**6)
        after = flatten(engine.receive_decisions(1))["decision_seq"].tolist()
        assert after == [received[-1] + 1]
        assert engine.stop() == 0
    finally:
        engine.kill()
    events = [e["event"] for e in engine.log]
    assert events.count("audit unavailable: decisions withheld until the journal can be written") == 1
    assert events.count("audit available again: decisions resume") == 1
    table = read_audit(small_disk / "audit")
    seqs = sorted(table.column("decision_seq").to_pylist())
    assert seqs == list(range(1, received[-1] + 2))
    assert verify(small_disk / "audit") == []
