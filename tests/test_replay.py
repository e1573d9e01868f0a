"""`sorter replay`: the audit's recorded scans routed with a new plan, counted.

Oracle: the same scans routed one event at a time through `Router` (a fresh router per audit
file, the chute states given), counted by plain Python. Histories are real Arrow IPC files in
the audit's layout, written by pyarrow with `AUDIT_SCHEMA`; Dask runs on a real local cluster
on 127.0.0.1; the engine test records a history with a real engine subprocess.
"""
from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import plans, reads_for
from sorter.audit import AUDIT_SCHEMA, REASON_DICTIONARY
from sorter.cli import main
from sorter.core.codes import CHUTE_STATES, MALFORMED, REASONS
from sorter.core.events import EventBatch
from sorter.core.router import Router
from sorter.replay import AuditSourceError, list_parts, replay, summarize
from sorter.replay.summary import NONE_NAME

HOUR_NS = 3_600_000_000_000
DAY0_NS = 1_767_225_600_000_000_000          # 2026-01-01T00:00Z


def as_text(read: bytes) -> str:
    """A read as the audit stores it (docs/audit.md): UTF-8 as is, else its latin-1 text."""
    try:
        return read.decode("utf-8")
    except UnicodeDecodeError:
        return read.decode("latin-1")


def audit_batch(rows: list[dict]) -> pa.RecordBatch:
    """Audit rows -> one record batch of AUDIT_SCHEMA. A row: ts, reads (list of str, None for
    malformed), recirculations, reason, destination, chute, parcel_id."""
    n = len(rows)
    bad = [r["reason"] == "malformed" for r in rows]
    cols = {
        "ts": pa.array([r["ts"] for r in rows], pa.int64()).view(AUDIT_SCHEMA.field("ts").type),
        "scanner_id": pa.array([None if b else 1 for b in bad], pa.uint16()),
        "parcel_id": pa.array([None if b else r["parcel_id"] for r, b in zip(rows, bad)],
                              pa.uint64()),
        "seq": pa.array([None if b else i for i, b in enumerate(bad)], pa.uint64()),
        "decision_seq": pa.array(range(n), pa.uint64()),
        "reads": pa.array([r["reads"] for r in rows], pa.list_(pa.string())),
        "chute": pa.array([r["chute"] for r in rows], pa.uint16()),
        "reason": pa.DictionaryArray.from_arrays(
            pa.array([REASONS.index(r["reason"]) for r in rows], pa.int8()), REASON_DICTIONARY),
        "destination": pa.array([r["destination"] for r in rows], pa.string()),
        "plan_version": pa.array(["old"] * n, pa.string()),
        "latency_ns": pa.array([None if b else 1000 for b in bad], pa.int64()),
        "recirculations": pa.array([r["recirculations"] for r in rows], pa.uint8()),
        "raw": pa.array([b"\x00bad" if b else None for b in bad], pa.binary()),
        "error": pa.array(["bad magic" if b else None for b in bad], pa.string()),
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in AUDIT_SCHEMA], schema=AUDIT_SCHEMA)


def write_file(audit: Path, date: str, name: str, rows: list[dict], batch_rows: int = 0,
               extra_column: bool = False) -> Path:
    """One sealed audit file, written by pyarrow (several record batches when batch_rows)."""
    path = audit / f"date={date}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = audit_batch(rows)
    schema = AUDIT_SCHEMA
    if extra_column:                 # a column a later writer might add: ignored by replay
        schema = schema.append(pa.field("station", pa.string()))
        batch = pa.RecordBatch.from_arrays(
            list(batch.columns) + [pa.array(["hub"] * len(rows))], schema=schema)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as w:
        step = batch_rows or max(len(rows), 1)
        for i in range(0, max(len(rows), 1), step):
            w.write_batch(batch.slice(i, step))
    return path


def recorded_rows(reads: list[list[bytes]], recirc: list[int], ts: list[int],
                  recorded: list[tuple], malformed: set[int]) -> list[dict]:
    rows = []
    for i, (rs, rc, t, (chute, reason, dest)) in enumerate(zip(reads, recirc, ts, recorded)):
        if i in malformed:
            rows.append({"ts": t, "reads": None, "recirculations": None, "reason": "malformed",
                         "destination": None, "chute": None, "parcel_id": None})
        else:
            rows.append({"ts": t, "reads": [as_text(r) for r in rs], "recirculations": rc,
                         "reason": reason, "destination": dest, "chute": chute,
                         "parcel_id": 1000 + i})
    return rows


def oracle(plan, files: list[list[dict]], states: dict) -> dict:
    """Each file's rows routed one by one through a fresh Router, counted in Python."""
    by_reason, by_dest, by_chute_hour = collections.Counter(), collections.Counter(), \
        collections.Counter()
    pairs, rec_reason = collections.Counter(), collections.Counter()
    for rows in files:
        router = Router(plan)
        for chute, state in states.items():
            router.set_chute_state(chute, state)
        for r in rows:
            rec_reason[r["reason"]] += 1
            if r["reason"] == "malformed":
                chute, reason, dest = 0, "malformed", None
            else:
                batch = EventBatch.from_reads([[x.encode("utf-8") for x in r["reads"]]],
                                              recirculations=[r["recirculations"]],
                                              ts_ns=[r["ts"]])
                d = router.route(batch)
                chute, reason = int(d.chute[0]), REASONS[d.reason[0]]
                dest = router.destination_name(int(d.destination[0]))
            by_reason[reason] += 1
            by_dest[dest if dest is not None else NONE_NAME] += 1
            by_chute_hour[(r["ts"] // HOUR_NS, chute)] += 1
            pairs[(r["destination"] or NONE_NAME, dest or NONE_NAME)] += 1
    return {"by_reason": by_reason, "by_destination": by_dest, "chute_hour": by_chute_hour,
            "pairs": pairs, "recorded_reason": rec_reason}


def old_decisions(n: int, draw_names: list, data) -> list[tuple]:
    """Recorded (chute, reason, destination) per event: another plan's, or none at all."""
    return [data.draw(st.tuples(st.integers(0, 50), st.sampled_from(REASONS[:7]),
                                st.sampled_from(draw_names)), label="recorded")
            for _ in range(n)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), data=st.data())
def test_replay_equals_routing_each_scan_through_router(plan, data):
    states = data.draw(st.dictionaries(st.sampled_from(sorted(plan.chutes)),
                                       st.sampled_from(CHUTE_STATES), max_size=4), label="states")
    reads = reads_for(plan)
    old_names = [d.name for d in plan.destinations] + ["OLD_ONLY", None]
    n_files = data.draw(st.integers(1, 4), label="files")
    files, layout = [], []
    hour = 0
    for f in range(n_files):
        n = data.draw(st.integers(0, 25), label="events")
        ev = [data.draw(st.lists(reads, max_size=3), label="reads") for _ in range(n)]
        rc = [data.draw(st.integers(0, 5), label="recirc") for _ in range(n)]
        hour += data.draw(st.integers(0, 30), label="hours later")
        ts = sorted(DAY0_NS + hour * HOUR_NS + data.draw(st.integers(0, 3 * HOUR_NS), label="t")
                    for _ in range(n))
        bad = set(data.draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=2), label="bad")) \
            if n else set()
        files.append(recorded_rows(ev, rc, ts, old_decisions(n, old_names, data), bad))
        layout.append(data.draw(st.integers(0, 4), label="batch rows"))
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp)
        for f, rows in enumerate(files):
            date = "2026-01-%02d" % (1 + f)          # one file per day: file order = day order
            write_file(audit, date, f"decisions-000000-{f}.arrow", rows, layout[f],
                       extra_column=f % 2 == 1)
        run = replay(plan, audit, chute_states=states, sample_size=5)
        doc = summarize(run, plan, audit=audit, compare=True, chute_states=states)
    want = oracle(plan, files, states)
    events = sum(len(r) for r in files)
    assert doc["events"] == events and doc["files"] == n_files
    assert doc["by_reason"] == {r: want["by_reason"][r] for r in REASONS}
    assert doc["by_destination"] == {k: v for k, v in want["by_destination"].items() if v}
    assert doc["recorded"]["by_reason"] == {r: want["recorded_reason"][r] for r in REASONS}
    got_pairs = {(p["from"], p["to"]): p["events"] for p in doc["destination_changes"]["pairs"]}
    assert got_pairs == {k: v for k, v in want["pairs"].items() if k[0] != k[1]}
    assert doc["destination_changes"]["changed"] == sum(got_pairs.values())
    # per chute: events, and the peak hour's events
    per_chute = collections.Counter()
    for (h, c), n in want["chute_hour"].items():
        per_chute[c] += n
    assert {int(c): v["events"] for c, v in doc["by_chute"].items()} == \
        {c: n for c, n in per_chute.items() if c}
    for c, v in doc["by_chute"].items():
        assert v["peak_events"] == max(n for (h, ch), n in want["chute_hour"].items()
                                       if ch == int(c))
    assert doc["no_divert"] == per_chute[0]
    hourly = run.totals.new_hourly
    got = {(hourly.base + h, c): int(n) for h, c in zip(*np.nonzero(hourly.counts))
           for n in [hourly.counts[h, c]]}
    assert got == {k: v for k, v in want["chute_hour"].items() if v}
    # the sample: changed rows only, in file order
    for s in doc["destination_changes"]["sample"]:
        assert (s["recorded"]["destination"] or NONE_NAME) != (s["new"]["destination"] or NONE_NAME)
    assert len(doc["destination_changes"]["sample"]) == min(5, doc["destination_changes"]["changed"])


# ---------------------------------------------------------------------------------------------
# a synthetic history over several days, for Dask, pruning, the CLI and the report


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """(plan, new plan, audit dir, rows per date): 3 days, 2 files a day, small batches in
    one file, a malformed row in another; recorded decisions by the old plan."""
    from bench.replay import plans as bench_plans
    sizes = {"prefixes": 300, "chutes": 40, "manifest_rows": 2000}
    old, new = bench_plans(sizes, 0, 0.3)
    from bench.synthetic import make_events
    ev = make_events(old, 6000, 3)
    d = Router(old).route(ev)
    audit = tmp_path_factory.mktemp("history") / "audit"
    per_date = collections.Counter()
    for k in range(6):
        lo, hi = k * 1000, (k + 1) * 1000
        date = "2026-01-%02d" % (1 + k // 2)
        rows = []
        for i in range(lo, hi):
            ts = DAY0_NS + (k // 2) * 24 * HOUR_NS + (k % 2) * 12 * HOUR_NS + (i - lo) * 7_000_000_000
            rows.append({"ts": ts, "reads": [as_text(r) for r in ev.reads(i)],
                         "recirculations": int(ev.recirculations[i]),
                         "reason": REASONS[d.reason[i]],
                         "destination": old.destinations[d.destination[i]].name
                         if d.destination[i] >= 0 else None,
                         "chute": int(d.chute[i]), "parcel_id": i})
        if k == 3:
            rows[10] = {"ts": rows[10]["ts"], "reads": None, "recirculations": None,
                        "reason": "malformed", "destination": None, "chute": None,
                        "parcel_id": None}
        write_file(audit, date, f"decisions-{(k % 2) * 12:02d}0000-{lo}.arrow", rows,
                   batch_rows=7 if k == 1 else 256)
        per_date[date] += len(rows)
    return old, new, audit, per_date


def _result_only(doc: dict) -> dict:
    return {k: v for k, v in doc.items()
            if k not in ("seconds", "events_per_s", "mode", "workers", "peak_rss_mb")}


def test_dask_local_cluster_of_two_workers_equals_the_single_process(history, tmp_path):
    from dask.distributed import Client, LocalCluster

    _, new, audit, _ = history
    single = summarize(replay(new, audit, sample_size=8), new, audit=audit, compare=True,
                       capacity=50)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        # as `--scheduler ADDRESS` does: connect to a running cluster
        run = replay(new, audit, sample_size=8, scheduler=cluster.scheduler_address)
        assert run.workers == 2 and run.mode == cluster.scheduler_address
        on_dask = summarize(run, new, audit=audit, compare=True, capacity=50)
        assert len(on_dask["peak_rss_mb"]) == 2          # the two worker processes did the work
        with Client(cluster) as client:                  # an already connected client
            again = summarize(replay(new, audit, sample_size=8, client=client), new,
                              audit=audit, compare=True, capacity=50)
    assert _result_only(again) == _result_only(single)
    assert _result_only(on_dask) == _result_only(single)
    assert single["events"] == 6000 and single["malformed"] == 1
    assert single["destination_changes"]["changed"] > 0


def test_cli_workers_starts_and_stops_a_local_cluster_with_the_same_result(history, tmp_path,
                                                                        monkeypatch, capsys):
    old, new, audit, _ = history
    plan_path = _plan_toml(tmp_path, old)
    out1, out2 = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["replay", "--plan", str(plan_path), "--audit", str(audit), "--compare",
                 "--json", str(out1)]) == 0
    assert main(["replay", "--plan", str(plan_path), "--audit", str(audit), "--compare",
                 "--json", str(out2), "--workers", "2"]) == 0
    one, two = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert two["workers"] == 2 and one["workers"] == 1
    assert _result_only(one) == _result_only(two)
    # replayed with the plan that recorded them: nothing changes
    assert one["destination_changes"]["changed"] == 0
    assert one["compare"]["by_reason"]["sorted"]["change"] == 0
    assert one["by_destination"] == one["recorded"]["by_destination"]


def _plan_toml(tmp_path: Path, plan) -> Path:
    """A plan built in code, as a TOML file + prefix CSV + manifest that load_plan reads."""
    import csv

    def chutes(cs):
        return "[" + ", ".join(str(c) for c in cs) + "]"
    lines = ["[plan]", f'name = "{plan.name}"', f'version = "{plan.version}"',
             f'home_country = "{plan.home_country}"',
             f"recirculation_limit = {plan.recirculation_limit}",
             f"chutes = {chutes(plan.chutes)}", "", "[special]"]
    lines += [f"{r} = {c}" for r, c in plan.special.items()]
    for d in plan.destinations:
        lines += ["", f"[destinations.{d.name}]", f"chutes = {chutes(d.chutes)}",
                  f'policy = "{d.policy}"']
    lines += ["", "[rules.country]"] + [f'{k} = "{v}"' for k, v in plan.country_rules.items()]
    lines += ["", "[rules.service]"] + [f'{k} = "{v}"' for k, v in plan.service_rules.items()]
    lines += ["", "[files]", 'postcode_prefixes = "prefixes.csv"']
    if plan.manifest is not None:
        import pyarrow.parquet as pq
        pq.write_table(plan.manifest, tmp_path / "manifest.parquet")
        lines.append('manifest = "manifest.parquet"')
    with open(tmp_path / "prefixes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prefix", "destination"])
        w.writerows(plan.postcode_rules.items())
    path = tmp_path / "plan.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# date pruning


def test_date_pruning_reads_only_the_partitions_asked_for(history, tmp_path, capsys):
    _, new, audit, per_date = history
    pruned = tmp_path / "audit"
    import shutil
    shutil.copytree(audit, pruned)
    # a damaged file in a day outside the range: never opened when that day is pruned
    junk = pruned / "date=2026-01-01" / "decisions-230000-99999.arrow"
    junk.write_bytes(b"ARROW1\x00\x00 not an arrow file")
    parts = list_parts(pruned, "2026-01-02", "2026-01-02")
    assert [Path(p.path).parent.name for p in parts] == ["date=2026-01-02"] * 2
    run = replay(new, pruned, date_from="2026-01-02", date_to="2026-01-02")
    assert run.totals.events == per_date["2026-01-02"]
    assert all("date=2026-01-02" in f for f in run.totals.files_read)
    hours = run.totals.new_hourly
    first = (DAY0_NS + 24 * HOUR_NS) // HOUR_NS
    assert hours.base >= first and hours.base + hours.hours <= first + 24
    # open-ended ranges
    assert replay(new, pruned, date_from="2026-01-03").totals.events == per_date["2026-01-03"]
    assert [Path(p.path).parent.name for p in list_parts(pruned, None, "2026-01-02")] == \
        ["date=2026-01-01"] * 3 + ["date=2026-01-02"] * 2
    # the damaged file is met, and named, when its day is asked for
    with pytest.raises(AuditSourceError, match="decisions-230000-99999.arrow"):
        replay(new, pruned, date_to="2026-01-01")
    assert main(["replay", "--plan", str(_plan_toml(tmp_path, new)), "--audit", str(pruned),
                 "--from", "2026-01-01", "--to", "2026-01-01"]) == 1
    assert "decisions-230000-99999.arrow" in capsys.readouterr().err
    # an empty range replays nothing
    assert replay(new, pruned, date_from="2027-01-01").totals.events == 0


def test_bad_arguments_are_named(history, tmp_path, capsys):
    _, new, audit, _ = history
    plan = str(_plan_toml(tmp_path, new))
    assert main(["replay", "--plan", plan, "--audit", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["replay", "--plan", plan, "--audit", str(audit), "--from", "2026-13-01"]) == 1
    assert "--from '2026-13-01'" in capsys.readouterr().err
    assert main(["replay", "--plan", plan, "--audit", str(audit), "--from", "2026-01-03",
                 "--to", "2026-01-01"]) == 1
    assert "after" in capsys.readouterr().err
    assert main(["replay", "--plan", plan, "--workers", "2", "--scheduler", "tcp://x:1"]) == 2
    assert main(["replay", "--plan", plan, "--chute-state", "5=broken"]) == 2
    assert "CHUTE=STATE" in capsys.readouterr().err
    assert main(["replay", "--plan", str(tmp_path / "missing.toml"),
                 "--audit", str(audit)]) == 1


# ---------------------------------------------------------------------------------------------
# capacity, --compare and the report


def test_json_capacity_compare_and_report(history, tmp_path, capsys):
    _, new, audit, _ = history
    plan = str(_plan_toml(tmp_path, new))
    out, report = tmp_path / "r.json", tmp_path / "report"
    assert main(["replay", "--plan", plan, "--audit", str(audit), "--compare", "--json",
                 str(out), "--report", str(report), "--capacity", "40",
                 "--chute-capacity", "3=5", "--chute-state", "1=full"]) == 0
    text = capsys.readouterr().out
    assert "by reason:" in text and "recorded" in text and "report.md" in text
    doc = json.loads(out.read_text())
    run = replay(new, audit, chute_states={1: "full"})
    counts = run.totals.new_hourly.counts
    cap = np.full(counts.shape[1], 40)
    cap[3], cap[0] = 5, 1 << 62
    over = counts > cap
    assert doc["over_capacity"]["chute_hours"] == int(over.sum())
    assert {int(c) for c in doc["over_capacity"]["chutes"]} == set(np.nonzero(over)[1].tolist())
    worst = doc["over_capacity"]["worst"]
    excess = [w["events"] - w["capacity"] for w in worst]
    assert excess == sorted(excess, reverse=True)
    assert doc["capacity"] == {"default": 40, "chutes": {"3": 5}}
    assert doc["chute_states"] == {"1": "full"}
    assert "1" not in doc["by_chute"]                  # held full: never chosen
    # --compare: recorded beside new, the changes add up
    for r, c in doc["compare"]["by_reason"].items():
        assert c["new"] - c["recorded"] == c["change"]
        assert c["recorded"] == doc["recorded"]["by_reason"][r]
    assert sum(v["recorded"] for v in doc["compare"]["by_destination"].values()) == doc["events"]
    assert doc["peak_hour"]["events"] == int(counts[:, 1:].sum(axis=1).max())
    # the report: a page and the PNGs it shows
    page = (report / "report.md").read_text()
    for png in ("reasons.png", "destinations.png", "hourly.png", "chute_peaks.png",
                "changes.png"):
        assert f"]({png})" in page
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{doc['destination_changes']['changed']:,} of {doc['events']:,}" in page
    assert "1 full" in page


# ---------------------------------------------------------------------------------------------
# a history the engine recorded


def _sample_reads() -> list[list[bytes]]:
    from sorter.plan import DEFAULT_PLAN
    out = []
    for line in (DEFAULT_PLAN.parent / "sample_scans.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        out.append([r.replace("<GS>", "\x1d").encode() for r in line.split("\t")[1:] if r])
    return out


def test_engine_history_replays_to_the_decisions_it_recorded(tmp_path, capsys):
    """Same plan, same chute states (5 and 6 full from the start: ALMATY_CITY recirculates,
    then overflows by the recorded recirculation count): every count agrees, by reason, by
    destination and by chute, and no parcel changes destination."""
    from engine_harness import EngineProcess
    from sorter.plan import DEFAULT_PLAN, load_plan

    engine = EngineProcess(tmp_path)
    try:
        for chute in (5, 6):
            assert engine.control("set_chute", chute=chute, state="full")["ok"]
        reads = _sample_reads()
        rng = np.random.default_rng(14)
        sent = 0
        for k in range(12):                         # batches of every sample, shuffled
            batch = [reads[i] for i in rng.permutation(len(reads))]
            recirc = rng.integers(0, 5, size=len(batch)).astype(np.uint8)
            engine.send_scans(batch, first_parcel=sent, recirculations=recirc)
            sent += len(batch)
        got = engine.receive_decisions(sent)
        assert sum(len(b) for b in got) == sent
        engine.scanner.send(b"\x00garbage")        # a malformed message: audited, not routed
        engine.wait_until(lambda s: s["counters"]["malformed"] == 1)
    finally:
        assert engine.stop() == 0
    audit = engine.audit_dir
    out = tmp_path / "replay.json"
    assert main(["replay", "--plan", str(DEFAULT_PLAN), "--audit", str(audit), "--compare",
                 "--chute-state", "5=full", "--chute-state", "6=full", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["events"] == sent + 1 and doc["malformed"] == 1
    assert doc["by_reason"]["recirculate"] > 0 and doc["by_reason"]["overflow"] > 0
    assert doc["by_reason"]["sorted"] > 0 and doc["by_reason"]["no_read"] > 0
    assert doc["by_reason"] == doc["recorded"]["by_reason"]
    assert doc["by_destination"] == doc["recorded"]["by_destination"]
    assert all(c["change"] == 0 for c in doc["compare"]["by_chute"].values())
    assert doc["destination_changes"]["changed"] == 0
    assert {"1", "2", "3", "4"} <= set(doc["by_chute"])          # round robin over ASTANA
    # a different chute state is a different outcome, and the replay says so
    assert main(["replay", "--plan", str(DEFAULT_PLAN), "--audit", str(audit), "--compare",
                 "--json", str(out)]) == 0
    free = json.loads(out.read_text())
    assert free["by_reason"]["recirculate"] == free["by_reason"]["overflow"] == 0
    assert free["compare"]["by_reason"]["sorted"]["change"] == \
        doc["by_reason"]["recirculate"] + doc["by_reason"]["overflow"]
    assert load_plan(DEFAULT_PLAN).version == doc["plan"]["version"]


def test_without_dask_workers_fail_with_the_install_hint_and_one_process_still_runs(
        history, tmp_path, monkeypatch, capsys):
    import sys
    _, new, audit, _ = history
    plan = str(_plan_toml(tmp_path, new))
    monkeypatch.setitem(sys.modules, "dask.distributed", None)     # import fails as if absent
    assert main(["replay", "--plan", plan, "--audit", str(audit), "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'sorter[replay]'" in err
    assert main(["replay", "--plan", plan, "--audit", str(audit), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 6000
