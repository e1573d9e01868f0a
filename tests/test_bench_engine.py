"""Smoke tests of `python -m bench engine` (bench/engine.py, bench/relay.py): a tiny open-loop
run through the engine subprocess and both relays, checked for completeness and correctness.
No timing assertions: latencies and rates on a shared VM are whatever they are."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # bench/ is a top-level package of the checkout
    sys.path.insert(0, str(ROOT))

from bench.engine import (ID_SHIFT, Link, _cpu_s, _renumber, analyse,  # noqa: E402
                          build_schedule, cost_model, patch_times)
from bench.synthetic import make_events  # noqa: E402
from sorter import wire  # noqa: E402
from sorter.plan import load_plan  # noqa: E402

TINY = ["--rate", "2000", "--duration", "0.5", "--warmup", "0.2", "--sat-rates", "4000,8000",
        "--sat-batch", "16", "--sat-duration", "0.4", "--sat-warmup", "0.1", "--refine", "0",
        "--pool", "2000", "--grace", "0.5", "--no-cost-model", "--relay-kind", "zmq-proxy",
        "--sweep-rates", "3000", "--sweep-duration", "0.3", "--sweep-warmup", "0.1",
        "--seed", "3"]
KEYS = ("offered_per_s", "e2e_p50_us", "e2e_p99_us", "e2e_p999_us", "relay_p50_us",
        "relay_p99_us", "relay_p999_us", "max_sustained_per_s", "relay_max_per_s",
        "proxy_p50_us", "proxy_p99_us", "proxy_p999_us", "proxy_max_per_s")


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "engine.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "engine", "--json", str(out), *TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.exists(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_run_succeeds_and_writes_the_promised_keys(engine_run):
    proc, r = engine_run
    assert proc.returncode == 0, (proc.stderr[-3000:], r.get("problems"))
    assert r["suite"] == "engine" and r["ok"] is True and r["problems"] == []
    for key in KEYS:
        assert key in r, key
    assert r["offered_per_s"] == 2000
    for key in KEYS[1:]:
        assert r[key] is not None and r[key] >= 0, key
    for key in ("latency", "saturation", "delivery", "engine", "relays", "goals", "machine",
                "params"):
        assert key in r, key
    for key in ("python", "platform", "cpu_count", "numpy", "pyarrow"):
        assert key in r["machine"], key
    assert r["params"]["systems"] == ["engine", "relay", "proxy"]
    assert "bench engine" in proc.stdout
    if sys.platform == "linux":                 # CPU per event of every system, side by side
        for row in r["latency"].values():
            assert row["cpu_s"] > 0 and row["cpu_us_per_event"] == pytest.approx(
                row["cpu_s"] * 1e6 / row["events"], rel=0.01)
        assert "CPU per event in the latency phase" in proc.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_cpu_seconds_of_a_process():
    before = _cpu_s(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert _cpu_s(os.getpid()) >= before + 0.03
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert _cpu_s(child.pid) is None                  # gone: no figure rather than a wrong one


def test_every_offered_event_came_back_exactly_once(engine_run):
    _, r = engine_run
    # latency phase: 2000/s for 0.7 s, one event per message; saturation: two rates, 16/message
    steps = r["saturation"]["steps"]
    for system in ("engine", "relay", "proxy"):
        lat = r["latency"][system]
        assert lat["events"] == 1400 and lat["messages"] == 1400
        assert lat["received"] == lat["events"] and lat["missing"] == 0
        assert lat["duplicates"] == 0 and lat["unknown"] == 0
        assert lat["measured_events"] == 1000
        mine = [x for x in steps if x["system"] == system]
        assert mine and mine[0]["offered_per_s"] == 4000 and mine[0]["batch"] == 16
        for x in mine:
            assert x["received"] == x["events"] and x["missing"] == 0 and x["duplicates"] == 0
        swept = [x for x in r["sweep"]["steps"] if x["system"] == system]
        assert [(x["offered_per_s"], x["batch"], x["events"]) for x in swept] == [(3000, 1, 1200)]
        assert swept[0]["received"] == 1200 and swept[0]["p999_us"] is not None
        d = r["delivery"][system]
        assert d["events"] > 0 and d["received"] == d["events"] and d["missing"] == 0
        assert d["runs"] == 1 + len(mine) + len(swept)


def test_engine_decided_audited_and_exited_cleanly(engine_run):
    _, r = engine_run
    e = r["engine"]
    assert e["exit_code"] == 0 and e["stop_reply"]["ok"] is True
    sent = r["delivery"]["engine"]["events"]
    c = e["counters"]
    assert c["events"] >= sent and c["malformed"] == 0 and c["decisions_undelivered"] == 0
    assert sum(c["decisions"].values()) == c["events"]
    assert e["audit"]["rows"] == c["events"]            # write-before-send: every decision
    assert sum(r["latency"]["engine"]["reason_counts"].values()) == 1400
    for name in ("relay", "proxy"):
        assert r["relays"][name]["exit_code"] == 0
    shutdown = r["relays"]["relay"]["shutdown"]
    assert shutdown["messages"] >= r["delivery"]["relay"]["runs"]


def test_prebuilt_frames_carry_their_due_times_ids_and_sequence():
    pool = make_events(load_plan(), 500, 1)
    s = build_schedule(pool, rate=10_000, batch=7, seconds=0.2, warmup=0.1, run=0)
    assert s.n_events == 2996 and s.messages == 428          # 3000 rounded down to 7s
    assert s.warmup_events == 1001                            # messages due before 0.1 s
    _renumber(s, 5)
    t0 = 1_800_000_000_000_000_000
    frames = patch_times(s, t0)
    assert len(frames) == s.messages
    due = s.due_ns(t0)
    got = 0
    for k, frame in enumerate(frames):
        scan = wire.decode_scan(frame)
        n = len(scan)
        assert scan.header.batch_seq == k and n == (7 if k < s.messages - 1 else s.n_events - got)
        idx = np.arange(got, got + n)
        assert (scan.events.parcel_ids == (np.uint64(5) << np.uint64(ID_SHIFT)) + idx.astype(
            np.uint64)).all()
        assert (scan.seq == idx.astype(np.uint64)).all()
        assert (scan.events.ts_ns == due[idx]).all() and len(set(due[idx].tolist())) == 1
        for j in (0, n - 1):                                  # the pool's reads, unchanged
            assert scan.events.reads(j) == pool.reads(int(s.pool_index[got + j]))
        got += n
    assert got == s.n_events


class _FakeReceiver:
    def __init__(self, frames, times):
        self.frames, self.times = frames, times


def test_analysis_catches_lost_duplicated_and_altered_frames():
    pool = make_events(load_plan(), 300, 4)
    s = _renumber(build_schedule(pool, rate=1000, batch=4, seconds=0.1, warmup=0.02, run=0), 9)
    t0 = 1_800_000_000_000_000_000
    msgs = patch_times(s, t0)
    due_msg = (t0 + s.due_off_ns).tolist()
    params = {"grace": 1.0, "sustain_fraction": 0.999, "sustain_p99_ms": 50.0,
              "drain_timeout": 60.0}
    link = Link("relay", wire.SCAN, None, None)
    reason = np.zeros(len(pool), np.uint8)

    def run(frames):
        times = [due_msg[0] + 250_000 + 1000 * i for i in range(len(frames))]
        return analyse(link, s, t0, msgs, due_msg, _FakeReceiver(frames, times),
                       due_msg[-1] + 10**9, 0.0, 100.0, params, reason)

    clean = run(list(msgs) + [wire.encode_heartbeat()])
    assert clean["received"] == s.n_events and clean["missing"] == 0 and clean["problems"] == []
    assert clean["heartbeats"] == 1 and clean["p50_us"] is not None and clean["sustained"]

    altered = bytearray(msgs[3])
    altered[-1] ^= 0x01                                   # a byte of the last read changed
    broken = run(msgs[:1] + msgs[2:] + [msgs[5], bytes(altered)])
    assert broken["missing"] == 4                         # message 1 never came back
    assert broken["duplicates"] == 8                      # messages 3 (twice) and 5
    assert any("differ from the frames sent" in x for x in broken["problems"])
    assert any("more than once" in x for x in broken["problems"])
    assert not broken["sustained"]


def test_cost_model_measures_every_stage(tmp_path):
    pool = make_events(load_plan(), 200, 2)
    cm = cost_model(pool, tmp_path, sizes=(1, 8), msg_events=(1,), repeats=2)
    assert [(x["events"], x["messages"]) for x in cm["rows"]] == [(1, 1), (8, 8)]
    for row in cm["rows"]:
        for key in ("total", "drain", "decode_scan", "turn", "audit", "send", "other"):
            assert row[key] is not None, key
        assert row["total"] > 0 and row["audit"] > 0 and row["turn"] > 0
        assert row["total"] >= row["turn"] + row["audit"] + row["send"]
    assert "per_message_us" in cm and len(cm["audit_fsync_us"]) == 3


def test_engine_figures_and_latency_plot(engine_run, tmp_path):
    from bench import figures, plots

    _, r = engine_run
    rows = figures.rows({"suites": {"engine": r}})
    names = [x["figure"] for x in rows]
    assert "engine latency at 2,000/s, 1 event/message" in names
    assert "engine p99 against offered rate, 1 event/message" in names
    assert any(n.startswith("engine max sustained") for n in names)
    paths = plots.draw({"engine": r}, tmp_path / "e-")
    assert [p.name for p in paths] == ["e-engine_latency.png"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
