"""Smoke tests of the `peers`, `audit` and `memory` suites, the run of every suite, its
figures table, README update and plots (bench/): tiny sizes, no timing assertions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # bench/ is a top-level package of the checkout
    sys.path.insert(0, str(ROOT))

import bench  # noqa: E402
from bench import _selected_suite, main  # noqa: E402
from bench.naive import NaiveRouter, write_plan_dir  # noqa: E402
from bench.synthetic import make_plan  # noqa: E402

PEERS_TINY = ["--events", "20000", "--manifest-rows", "5000", "--prefixes", "300", "--chutes",
              "60", "--reference-events", "2000", "--naive-events", "3000", "--repeats", "1",
              "--seed", "2"]


@pytest.fixture(scope="module")
def peers_result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "peers.json"
    assert main(["peers", "--json", str(out), *PEERS_TINY]) == 0
    return json.loads(out.read_text())


def test_peers_suite_measures_every_peer_on_the_same_events(peers_result):
    r = peers_result
    assert r["suite"] == "peers" and r["ok"] is True and r["problems"] == []
    for key in ("core_events_per_s", "reference_events_per_s", "naive_route_events_per_s",
                "naive_zmq_events_per_s", "duckdb_events_per_s"):
        assert r[key] > 0, key
    t = r["throughput"]
    assert set(t) >= {"core", "reference", "naive_route", "naive_zmq", "duckdb",
                      "duckdb_1thread"}
    assert t["core"]["events"] == 20000 and t["duckdb"]["events"] == 20000
    assert t["naive_zmq"]["events"] == 3000 and t["reference"]["events"] == 2000
    z = r["naive"]["zmq"]
    assert z["received"] == 3000 and z["exit_code"] == 0 and z["differs_from_in_process"] == 0
    assert z["shutdown"]["messages"] >= 3000
    for key in ("duckdb", "pyzmq", "libzmq", "cpu_count", "python"):
        assert key in r["machine"], key


def test_duckdb_agrees_with_the_core_on_what_it_handles(peers_result):
    d = peers_result["duckdb"]
    assert d["handled_pct"] > 95                      # every layout of the synthetic stream
    assert d["agreement"]["agreement_pct"] == 100.0 and d["agreement"]["examples"] == []
    assert d["runs"]["1"]["threads"] == 1 and d["load_s"] >= 0 and d["compile_s"] >= 0
    assert "arg_max(p.dest, p.len)" in d["sql"]       # longest prefix by a join


def test_naive_script_mostly_agrees_and_differs_only_on_conflicts(peers_result):
    a = peers_result["naive"]["agreement"]
    assert a["agreement_pct"] > 95
    for ex in a["examples"]:
        assert ex["core"] == "conflict" and len(ex["reads"]) == 2, ex


def test_naive_router_routes_the_usual_labels(tmp_path):
    plan = make_plan(n_prefixes=200, n_chutes=40, manifest_rows=500, seed=4)
    naive = NaiveRouter(write_plan_dir(plan, tmp_path))
    assert naive.decide([])[1] == "no_read"
    assert naive.decide(["NOREAD"])[1] == "invalid"
    assert naive.decide(["RR473124828GB"])[1] == "invalid"          # wrong check digit
    ems = naive.decide(["EE473124829GB"])
    assert ems[1] == "sorted" and naive.names[ems[2]] == "EMS"
    prefix, dest = next((p, d) for p, d in plan.postcode_rules.items() if p.isdigit())
    code = (prefix + "000000")[:6]
    ids = plan.destination_ids()
    longest = max((p for p in plan.postcode_rules if code.startswith(p)), key=len)
    chute, reason, d = naive.decide([code])
    assert reason == "sorted" and d == ids[plan.postcode_rules[longest]]
    assert chute == plan.destinations[d].chutes[0]
    assert naive.decide(["]C1420" + code])[2] == d


def test_audit_suite_counts_rows_back(tmp_path):
    out = tmp_path / "audit.json"
    assert main(["audit", "--json", str(out), "--batch", "1", "--batch", "256", "--seconds",
                 "0.05", "--pool", "2000", "--dir", str(tmp_path / "scratch")]) == 0
    r = json.loads(out.read_text())
    assert r["ok"] is True and r["params"]["policies"] == ["off", "1s", "every_batch"]
    assert len(r["runs"]) == 12                          # journal and Arrow per turn
    assert {x["writer"] for x in r["runs"]} == {"journal", "arrow"}
    assert set(r["journal_rows_per_s"]["1s"]) == {"1", "256"}
    assert all(v > 0 for v in r["compactor_rows_per_s"].values())
    assert 0 < r["bytes_per_decision"]["journal"]["256"] < r["bytes_per_decision"]["arrow_per_turn"]["1"]
    for row in r["runs"]:
        assert row["rows"] > 0 and row["rows_read_back"] == row["rows"]
        assert row["rows_per_s"] > 0 and row["bytes_per_row"] > 0
    every = [x for x in r["runs"] if x["policy"] == "every_batch"]
    assert all(x["fsyncs"] >= x["calls"] for x in every)
    assert set(r["rows_per_s"]["off"]) == {"1", "256"}
    assert not any((tmp_path / "scratch").iterdir())                 # cleaned up


def test_memory_suite_reports_peak_and_table_sizes(tmp_path):
    out = tmp_path / "memory.json"
    assert main(["memory", "--json", str(out), "--rows", "50000", "--prefixes", "300",
                 "--chutes", "60"]) == 0
    r = json.loads(out.read_text())
    assert r["ok"] is True and r["manifest_rows"] == 50000
    c = r["child"]
    assert c["compiled_manifest_keys"] == 50000 and c["sorted_share"] > 0.5
    assert r["compiled_bytes"] > 50000 * 8 and r["arrow_manifest_bytes"] > 50000 * 13
    assert r["peak_rss_bytes"] >= c["rss_after_compile"] >= c["rss_baseline"] > 0
    assert c["peak_rss"] >= c["peak_rss_before_compile"]


def test_suite_is_found_among_options():
    assert _selected_suite([]) is None
    assert _selected_suite(["--quick", "--json", "x.json", "--plot", "p/"]) is None
    assert _selected_suite(["--json", "x.json", "core"]) == "core"
    assert _selected_suite(["engine", "--json", "x.json"]) == "engine"
    assert list(bench.SUITES) == ["core", "peers", "engine", "audit", "memory", "replay", "plc"]


def test_every_suite_run_writes_figures_plots_and_readme(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\nintro\n\n<!-- figures:start -->\nold\n<!-- figures:end -->\n\nrest\n")
    monkeypatch.setattr(bench, "README", readme)
    monkeypatch.setattr(bench, "PLOTS_DIR", tmp_path / "plots")
    out = tmp_path / "all.json"
    assert main(["--quick", "--suites", "audit,memory", "--json", str(out), "--plot",
                 str(tmp_path / "p" / "run-"), "--update-readme"]) == 0
    r = json.loads(out.read_text())
    assert r["suite"] == "all" and r["ok"] is True and r["quick"] is True
    assert list(r["suites"]) == ["audit", "memory"] and r["machine"]["cpu_count"]
    assert {f["suite"] for f in r["figures"]} == {"audit", "memory"}
    assert sorted(Path(p).name for p in r["plots"]) == ["audit.png", "memory.png",
                                                       "run-audit.png", "run-memory.png"]
    for p in r["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = readme.read_text()
    assert "old" not in text and text.startswith("# B\n\nintro") and text.endswith("rest\n")
    assert "| audit | rows/s by rows per batch, fsync off |" in text
    assert "quick (smoke sizes)" in text
    printed = capsys.readouterr().out
    assert "figures:" in printed and "== bench memory ==" in printed
    # the table and plots again from the JSON alone
    (tmp_path / "again").mkdir()
    assert main(["--from", str(out), "--plot", str(tmp_path / "again"), "--no-readme"]) == 0
    assert sorted(x.name for x in (tmp_path / "again").iterdir()) == ["audit.png", "memory.png"]


def test_plots_and_figures_of_core_and_peers(tmp_path, peers_result):
    from bench import figures, plots

    core = {"events": 100, "core_events_per_s": 1e6, "core_events_per_s_median": 9e5,
            "reference_events_per_s": 1e4, "reference_events": 100, "ratio": 100.0,
            "agree": True,
            "core": {"one_call": {"events_per_s": 1e6, "ns_per_event": 1000.0},
                     "batched": {str(k): {"events_per_s": 1e6 * k / (k + 4), "best_s": 0.01,
                                          "batches": 100 // k or 1, "events": 100,
                                          "us_per_call": 4 + k}
                                 for k in (1, 16, 64)}}}
    out = {"suites": {"core": core, "peers": peers_result}}
    rows = figures.rows(out)
    assert any(r["figure"] == "core, 16 events per call" for r in rows)
    assert any(r["figure"].startswith("DuckDB decisions") and r["text"] == "100.0%"
               for r in rows)
    paths = plots.draw(out["suites"], tmp_path)
    assert sorted(p.name for p in paths) == ["core_scaling.png", "throughput.png"]
    assert np.all([p.stat().st_size > 10_000 for p in paths])
