"""`python -m bench plc` runs and writes, per protocol, the figures the issue names."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_plc_quick_writes_every_figure(tmp_path):
    out = tmp_path / "plc.json"
    r = subprocess.run([sys.executable, "-m", "bench", "plc", "--quick", "--protocols",
                        "tcp,modbus", "--json", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert out.exists(), r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["suite"] == "plc"
    for p in ("tcp", "modbus"):
        x = result["protocols"][p]
        for key in ("decisions_per_s", "added_p50_us", "added_p99_us", "direct_p99_us",
                    "via_gateway_p99_us", "gateway_cpu_us_per_decision"):
            assert isinstance(x[key], (int, float)), key
        assert x["decisions"] > 0 and x["decisions_per_s"] > 0
        assert x["latency_samples"] > 0 and x["stale_dropped"] == 0
    assert "decisions/s" in r.stdout
