"""`python -m bench replay`: a year-scale what-if replay, from disk, beside DuckDB.

    python -m bench replay [--rows N] [--json PATH] [--quick]

1. Builds (or reuses) a synthetic history of `--rows` scans (default 100M) in the audit's own
   format and layout: Arrow IPC files (`sorter.audit.AUDIT_SCHEMA`, written by pyarrow in
   batches of `--batch-rows`) under `DIR/date=YYYY-MM-DD/decisions-HHMMSS-<seq>.arrow`, one
   file per hour of `--file-rows` rows. The events are `bench.synthetic` events for a
   synthetic plan (the "recorded" plan), decided by the compiled core with that plan (every
   chute available): a pool of `--pool` distinct events repeated with new times and ids.
2. The "new" plan is the recorded one with `--moved` of its postcode prefixes moved to
   another destination.
3. Replays the whole history with the new plan in a fresh subprocess each, the history's
   pages dropped from the page cache first (`posix_fadvise(DONTNEED)` on every file, so the
   reads come from disk):
   - `single`: one process (`sorter.replay.replay`), and the same on the first tenth of the
     days (`single_tenth`), to show the peak RSS does not grow with the history;
   - `dask`: a local Dask cluster of `--workers` (2) processes; its totals must equal the
     single process's (`dask.identical`).
   `replay_events_per_s` is events / seconds of the replay call (plan compile included; the
   cluster's start is `cluster_start_s`); `peak_rss_mb` is VmHWM of every process (client,
   workers); `bytes_read_per_event` the bytes of the columns read per event.
4. DuckDB, the peer a data team would pick, on the first `--duckdb-rows` rows (whole files)
   of the same history, also after dropping their pages: the files scanned by DuckDB through
   `pyarrow.dataset`, the reads unnested, routed by bench/peers.py's SQL (the plan's tables
   loaded beforehand) and counted by outcome and destination; the replay on the same files
   for the ratio, and the agreement of DuckDB's decisions with the core's on the events its
   SQL handles.
5. `extrapolated_1e9_s`: seconds for 1 billion events at each measured rate.

The two cores are shared with other work on this machine: `machine.loadavg` says how busy.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (pa.ipc)

from bench import QUICK_FACTOR, _count, machine_info

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"rows": 100_000_000, "file_rows": 1_000_000, "batch_rows": 262_144,
            "pool": 1_000_000, "duckdb_rows": 3_000_000, "manifest_rows": 200_000,
            "prefixes": 5_000, "chutes": 200, "workers": 2}
QUICK_SCALED = ("rows", "file_rows", "pool", "duckdb_rows", "manifest_rows")
START_NS = 1_767_225_600_000_000_000           # 2026-01-01T00:00Z
HOUR_NS = 3_600_000_000_000
GOAL_EVENTS_PER_S = 3.3e6
RSS_LIMIT_MB = 2048


def add_arguments(parser) -> None:
    g = parser.add_argument_group("replay suite")
    g.add_argument("--rows", type=_count, help="scans in the history (100M; quick 10M)")
    g.add_argument("--file-rows", type=_count, help="rows per audit file, one file per hour "
                                                    "(1M; quick 100k)")
    g.add_argument("--batch-rows", type=_count, help="rows per record batch (262144)")
    g.add_argument("--pool", type=_count, help="distinct synthetic events (1M; quick 100k)")
    g.add_argument("--duckdb-rows", type=_count, help="rows DuckDB routes (3M; quick 300k)")
    g.add_argument("--manifest-rows", type=_count, help="manifest rows of the plans (200k)")
    g.add_argument("--moved", type=float, default=0.1,
                   help="share of postcode prefixes the new plan moves (0.1)")
    g.add_argument("--workers", type=int, help="Dask workers (2)")
    g.add_argument("--dir", type=Path, default=ROOT / "bench" / "out" / "replay-history",
                   help="where the history is built (reused when it matches)")
    g.add_argument("--warm", action="store_true",
                   help="leave the history in the page cache (default: drop it before each run)")
    g.add_argument("--child", help=argparse.SUPPRESS)


def _sizes(args) -> dict:
    out = {}
    for k, v in DEFAULTS.items():
        given = getattr(args, k, None)
        if given is not None:
            out[k] = given
        elif args.quick and k in QUICK_SCALED:
            out[k] = max(1000, v // QUICK_FACTOR)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# plans and history


def plans(sizes: dict, seed: int, moved: float):
    """(recorded plan, new plan): the new one moves `moved` of the postcode prefixes."""
    from bench.synthetic import make_plan

    old = make_plan(sizes["prefixes"], sizes["chutes"], sizes["manifest_rows"], seed)
    rng = np.random.default_rng([seed, 14])
    domestic = [d.name for d in old.destinations if d.name.startswith("DOM-")]
    rules = dict(old.postcode_rules)
    keys = sorted(rules)
    for i in rng.choice(len(keys), size=int(len(keys) * moved), replace=False):
        rules[keys[i]] = domestic[int(rng.integers(len(domestic)))]
    for p in sorted(rules, key=len):        # a rule its parent prefix already implies is
        parent = next((p[:k] for k in range(len(p) - 1, 0, -1) if p[:k] in rules), None)
        if parent is not None and rules[parent] == rules[p]:    # refused by the plan check
            del rules[p]
    new = dataclasses.replace(old, version=f"{old.version}-moved{moved:g}", postcode_rules=rules,
                              source="bench.replay: recorded plan with prefixes moved")
    return old, new


def _ascii(data: np.ndarray) -> np.ndarray:
    """Synthetic damaged reads may hold bytes >= 0x80; the audit stores text: make them '?'."""
    data = data.copy()
    data[data >= 0x80] = ord("?")
    return data


def _pool_batch(old_plan, sizes: dict, seed: int) -> pa.RecordBatch:
    """The pool of recorded decisions as one audit record batch (ts and ids set per use)."""
    from bench.synthetic import make_events
    from sorter.audit import AUDIT_SCHEMA, REASON_DICTIONARY
    from sorter.core.router import Router

    n = sizes["pool"]
    ev = make_events(old_plan, n, seed)
    d = Router(old_plan).route(ev)
    values = pa.StringArray.from_buffers(len(ev.read_offsets) - 1, pa.py_buffer(ev.read_offsets),
                                         pa.py_buffer(_ascii(ev.data)))
    reads = pa.ListArray.from_arrays(pa.array(ev.event_offsets, pa.int32()), values)
    names = pa.array([x.name for x in old_plan.destinations], pa.string())
    dest = names.take(pa.array(d.destination, mask=d.destination < 0))
    reason = pa.DictionaryArray.from_arrays(pa.array(d.reason.astype(np.int8)), REASON_DICTIONARY)
    z64 = np.zeros(n, np.uint64)
    cols = {
        "ts": pa.array(np.zeros(n, np.int64)).view(AUDIT_SCHEMA.field("ts").type),
        "scanner_id": pa.array(ev.scanner_ids), "parcel_id": pa.array(z64),
        "seq": pa.array(z64), "decision_seq": pa.array(z64), "reads": reads,
        "chute": pa.array(d.chute), "reason": reason, "destination": dest,
        "plan_version": pa.array([old_plan.version] * n, pa.string()),
        "latency_ns": pa.array(np.full(n, 150_000, np.int64)),
        "recirculations": pa.array(ev.recirculations),
        "raw": pa.nulls(n, pa.binary()), "error": pa.nulls(n, pa.string()),
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in AUDIT_SCHEMA], schema=AUDIT_SCHEMA)


def build_history(directory: Path, sizes: dict, seed: int, moved: float) -> dict:
    """Write the history (or reuse one built with the same sizes and seed)."""
    import pyarrow.ipc as ipc

    from sorter.audit import AUDIT_SCHEMA

    key = {k: sizes[k] for k in ("rows", "file_rows", "batch_rows", "pool", "manifest_rows",
                                 "prefixes", "chutes")} | {"seed": seed, "format": 1}
    marker = directory / "_history.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("key") == key:
            return info | {"reused": True}
    if directory.exists():
        import shutil
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    t0 = time.perf_counter()
    old, _ = plans(sizes, seed, moved)
    pool = _pool_batch(old, sizes, seed)
    t_pool = time.perf_counter() - t0
    rows, file_rows, batch_rows = sizes["rows"], sizes["file_rows"], sizes["batch_rows"]
    ts_type = AUDIT_SCHEMA.field("ts").type
    names = AUDIT_SCHEMA.names
    i_ts, i_pid, i_seq, i_dseq = (names.index(c) for c in ("ts", "parcel_id", "seq", "decision_seq"))
    written = files = 0
    pool_pos = 0
    t0 = time.perf_counter()
    while written < rows:
        hour = files
        n_file = min(file_rows, rows - written)
        t_hour = START_NS + hour * HOUR_NS
        day = time.strftime("%Y-%m-%d", time.gmtime(t_hour / 1e9))
        hhmmss = time.strftime("%H%M%S", time.gmtime(t_hour / 1e9))
        path = directory / f"date={day}" / f"decisions-{hhmmss}-{written}.arrow"
        path.parent.mkdir(exist_ok=True)
        step = HOUR_NS // max(n_file, 1)
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, AUDIT_SCHEMA) as w:
            done = 0
            while done < n_file:
                m = min(batch_rows, n_file - done, len(pool) - pool_pos)
                b = pool.slice(pool_pos, m)
                pool_pos = (pool_pos + m) % len(pool)
                ids = np.arange(written + done, written + done + m, dtype=np.uint64)
                ts = t_hour + (np.arange(done, done + m, dtype=np.int64) * step)
                arrays = list(b.columns)
                arrays[i_ts] = pa.array(ts).view(ts_type)
                arrays[i_pid] = arrays[i_seq] = arrays[i_dseq] = pa.array(ids)
                w.write_batch(pa.RecordBatch.from_arrays(arrays, schema=AUDIT_SCHEMA))
                done += m
        written += n_file
        files += 1
    info = {"key": key, "rows": written, "files": files,
            "days": len(list(directory.glob("date=*"))),
            "bytes_on_disk": sum(p.stat().st_size for p in directory.rglob("*.arrow")),
            "pool_s": t_pool, "write_s": time.perf_counter() - t0}
    info["write_rows_per_s"] = written / info["write_s"]
    marker.write_text(json.dumps(info, indent=1))
    return info | {"reused": False}


def drop_cache(paths) -> None:
    """Evict these files' pages from the page cache (they are clean: nothing is lost), so the
    next read comes from disk. Only our own files; nothing system-wide."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _vmhwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# children: each measurement in a fresh process


def _comparable(doc: dict) -> dict:
    """The replay's JSON without the fields that describe the run rather than the result."""
    drop = {"seconds", "events_per_s", "mode", "workers", "peak_rss_mb"}
    return {k: v for k, v in doc.items() if k not in drop}


def _child_replay(opts: dict) -> dict:
    from sorter.replay import replay, summarize

    _, new = plans(opts["sizes"], opts["seed"], opts["moved"])
    load0 = os.getloadavg()[0]
    c0, t0 = os.times(), time.perf_counter()
    run = replay(new, opts["dir"], date_to=opts.get("date_to"), workers=opts.get("workers"))
    wall = time.perf_counter() - t0
    c1 = os.times()              # children: the cluster's processes, reaped when it closed
    cpu_all = (c1.user - c0.user + c1.system - c0.system + c1.children_user
               - c0.children_user + c1.children_system - c0.children_system)
    doc = summarize(run, new, audit=opts["dir"], date_to=opts.get("date_to"), compare=True)
    import hashlib
    digest = hashlib.sha256(json.dumps(_comparable(doc), sort_keys=True).encode()).hexdigest()
    rss = {"client": _vmhwm_mb()}
    if opts.get("workers"):
        rss.update({f"worker {p}": mb for p, mb in doc["peak_rss_mb"].items()})
    return {"events": doc["events"], "files": doc["files"], "seconds": run.seconds,
            "wall_s": wall, "cluster_start_s": wall - run.seconds if opts.get("workers") else 0.0,
            "replay_events_per_s": doc["events"] / run.seconds,
            "bytes_read": doc["bytes_read"], "bytes_read_per_event": doc["bytes_per_event"],
            "peak_rss_mb": rss, "digest": digest, "workers": run.workers,
            "cpu_s": cpu_all, "task_cpu_s": run.totals.cpu_s,
            "events_per_cpu_s": doc["events"] / cpu_all if cpu_all else None,
            "loadavg_1min": [load0, os.getloadavg()[0]],
            "by_reason": doc["by_reason"], "changed": doc["destination_changes"]["changed"]}


def _child_duckdb(opts: dict) -> dict:
    """DuckDB over the first files of the history: scan, unnest, route (peers' SQL), count."""
    import duckdb
    import pyarrow.dataset as ds

    from bench.peers import duckdb_compile_sql, duckdb_load, duckdb_route_sql, outcome_of
    from sorter.core.countries import alpha2_to_numeric
    from sorter.core.events import EventBatch
    from sorter.core.router import Router

    _, new = plans(opts["sizes"], opts["seed"], opts["moved"])
    files = opts["files"]
    con = duckdb.connect()
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    duckdb_load(con, new, EventBatch.from_reads([]))      # the plan's tables, no events yet
    home_dest = new.destination_ids().get(new.country_rules.get(new.home_country, ""), None)
    con.execute(duckdb_compile_sql(new.home_country, home_dest)).fetchall()
    sql = duckdb_route_sql(alpha2_to_numeric(new.home_country), home_dest)
    drop_cache(files)
    t0 = time.perf_counter()
    audit = ds.dataset(files, format="arrow")
    con.register("audit", audit)
    con.execute("CREATE OR REPLACE TABLE ev AS SELECT (row_number() OVER () - 1)::INTEGER AS "
                "event_id, reads FROM audit").fetchall()
    con.execute("CREATE OR REPLACE TABLE events AS SELECT event_id, len(reads)::INTEGER AS "
                "n_reads FROM ev").fetchall()
    con.execute("CREATE OR REPLACE TABLE reads AS SELECT (row_number() OVER () - 1)::INTEGER "
                "AS read_id, event_id, n_in_event, raw FROM (SELECT event_id, "
                "len(reads)::INTEGER AS n_in_event, unnest(reads) AS raw FROM ev)").fetchall()
    t_load = time.perf_counter() - t0
    counts = con.execute(f"SELECT outcome, dest, handled, count(*) AS n FROM ({sql}) "
                         "GROUP BY ALL").fetchall()
    seconds = time.perf_counter() - t0
    n = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    # agreement with the core on the events DuckDB's SQL handles, as in bench.peers
    per_event = con.execute(f"SELECT event_id, outcome, dest, handled FROM ({sql})").fetchnumpy()
    con.close()
    idx = np.asarray(per_event["event_id"], np.int64)
    d_out = np.full(n, -1, np.int16)
    d_dest = np.full(n, -1, np.int32)
    handled = np.zeros(n, bool)
    d_out[idx] = per_event["outcome"]
    d_dest[idx] = per_event["dest"]
    handled[idx] = per_event["handled"]
    table = audit.to_table(columns=["reads", "recirculations"])
    events = EventBatch.from_arrow(table.column("reads"),
                                   recirculations=table.column("recirculations").to_numpy())
    core = Router(new).route(events)
    c_out, c_dest = outcome_of(core.reason, core.destination)
    agree = (c_out[handled] == d_out[handled]) & (c_dest[handled] == d_dest[handled])
    return {"events": int(n), "seconds": seconds, "load_s": t_load,
            "events_per_s": n / seconds, "threads": threads,
            "handled_pct": 100.0 * handled.mean() if n else None,
            "agreement_pct": 100.0 * agree.mean() if handled.any() else None,
            "groups": len(counts), "version": duckdb.__version__, "peak_rss_mb": _vmhwm_mb()}


def _spawn(opts: dict, timeout: float = 3600) -> dict:
    cmd = [sys.executable, "-m", "bench.replay", "--child", json.dumps(opts)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"child {opts.get('mode')} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def run(args) -> dict:
    sizes = _sizes(args)
    seed, moved = args.seed, args.moved
    directory = Path(args.dir)
    result = {"machine": machine_info(), "sizes": sizes, "moved": moved,
              "note": "2 vCPU shared with other work on this machine (see machine.loadavg); "
                      "cold runs: the history's pages dropped from the page cache first"}
    result["history"] = build_history(directory, sizes, seed, moved)
    files = sorted(str(p) for p in directory.rglob("*.arrow"))
    days = sorted(p.name[5:] for p in directory.glob("date=*"))
    base = {"sizes": sizes, "seed": seed, "moved": moved, "dir": str(directory)}

    def measured(opts):
        if not args.warm:
            drop_cache(files)
        return _spawn(base | opts)

    single = measured({"mode": "replay"})
    tenth_days = days[: max(1, len(days) // 10)]
    tenth = measured({"mode": "replay", "date_to": tenth_days[-1]})
    dask = measured({"mode": "replay", "workers": sizes["workers"]})
    dask["identical"] = dask["digest"] == single["digest"]
    # DuckDB and the replay on the same first files
    first, rows = [], 0
    for f in files:
        if rows >= sizes["duckdb_rows"]:
            break
        first.append(f)
        with pa.memory_map(f) as src:
            rows += pa.ipc.open_file(src).read_all().num_rows
    duck = _spawn(base | {"mode": "duckdb", "files": first})
    subset_dir = directory.parent / (directory.name + "-duckdb-subset")
    if subset_dir.exists():
        import shutil
        shutil.rmtree(subset_dir)
    for f in first:                           # the same files, as their own audit directory
        rel = Path(f).relative_to(directory)
        (subset_dir / rel.parent).mkdir(parents=True, exist_ok=True)
        os.link(f, subset_dir / rel)
    drop_cache(first)
    same = _spawn(base | {"mode": "replay", "dir": str(subset_dir)})
    result.update(
        single=single, single_tenth=tenth, dask=dask, duckdb=duck, replay_on_duckdb_rows=same,
        replay_events_per_s={"single": single["replay_events_per_s"],
                             f"dask_{sizes['workers']}_workers": dask["replay_events_per_s"]},
        peak_rss_mb={"single": single["peak_rss_mb"], "single_tenth": tenth["peak_rss_mb"],
                     "dask": dask["peak_rss_mb"], "duckdb": duck["peak_rss_mb"]},
        bytes_read_per_event=single["bytes_read_per_event"],
        bytes_on_disk_per_event=result["history"]["bytes_on_disk"] / result["history"]["rows"],
        duckdb_events_per_s=duck["events_per_s"],
        replay_vs_duckdb=same["replay_events_per_s"] / duck["events_per_s"],
        extrapolated_1e9_s={"single": 1e9 / single["replay_events_per_s"],
                            "dask": 1e9 / dask["replay_events_per_s"],
                            "duckdb": 1e9 / duck["events_per_s"]},
    )
    # What the CPU time says, apart from the other work on the machine: one process can do
    # events_per_cpu_s on a free core; n workers at most n times the cluster's events per CPU
    # second (its client, scheduler and nannies included), if the disk keeps up.
    result["cpu_bound_events_per_s"] = {
        "single_1_free_core": single["events_per_cpu_s"],
        f"dask_{sizes['workers']}_free_cores": sizes["workers"] * dask["events_per_cpu_s"]}
    result["extrapolated_1e9_s_cpu_bound"] = {
        k: 1e9 / v for k, v in result["cpu_bound_events_per_s"].items()}
    best = max(single["replay_events_per_s"], dask["replay_events_per_s"])
    peak = max(v for r in (single, dask) for v in r["peak_rss_mb"].values() if v)
    result["goal"] = {"events_per_s": GOAL_EVENTS_PER_S, "met_rate": best >= GOAL_EVENTS_PER_S,
                      "rss_limit_mb": RSS_LIMIT_MB, "met_rss": peak <= RSS_LIMIT_MB}
    result["ok"] = bool(dask["identical"])
    return result


def _si(x) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def report(r: dict) -> str:
    h, s, d, q = r["history"], r["single"], r["dask"], r["duckdb"]
    rss = lambda m: ", ".join(f"{k} {v:.0f}" for k, v in m.items() if v)   # noqa: E731
    lines = [
        f"history: {h['rows']:,} rows in {h['files']} files over {h['days']} days, "
        f"{h['bytes_on_disk'] / 1e9:.2f} GB ({r['bytes_on_disk_per_event']:.0f} B/event on disk"
        f"{', reused' if h.get('reused') else ''})",
        f"replay, 1 process:   {_si(s['replay_events_per_s'])}events/s, {s['seconds']:.1f} s, "
        f"peak RSS MB: {rss(s['peak_rss_mb'])}; {s['bytes_read_per_event']:.1f} B read/event",
        f"replay, tenth of the days: {s and r['single_tenth']['events']:,} events, peak RSS MB: "
        f"{rss(r['single_tenth']['peak_rss_mb'])}",
        f"replay, Dask {d['workers']} workers: {_si(d['replay_events_per_s'])}events/s, "
        f"{d['seconds']:.1f} s (+{d['cluster_start_s']:.1f} s cluster start), peak RSS MB: "
        f"{rss(d['peak_rss_mb'])}; identical to 1 process: {d['identical']}",
        f"DuckDB SQL ({q['threads']} threads) on {q['events']:,} events: "
        f"{_si(q['events_per_s'])}events/s; replay on the same files "
        f"{_si(r['replay_on_duckdb_rows']['replay_events_per_s'])}events/s "
        f"({r['replay_vs_duckdb']:.1f}x); DuckDB agrees on {q['agreement_pct']:.2f}% of the "
        f"{q['handled_pct']:.1f}% it handles",
        f"CPU: 1 process {_si(s['events_per_cpu_s'])}events per CPU-second "
        f"({s['cpu_s']:.1f} CPU-s in {s['seconds']:.1f} s: the rest was other work's); Dask "
        f"{_si(d['events_per_cpu_s'])}events per CPU-second (all its processes); on free cores: "
        + ", ".join(f"{k} {_si(v)}events/s" for k, v in r["cpu_bound_events_per_s"].items()),
        "1 billion events: " + ", ".join(f"{k} {v / 60:.1f} min"
                                         for k, v in r["extrapolated_1e9_s"].items()),
        f"goal {_si(r['goal']['events_per_s'])}events/s: "
        f"{'met' if r['goal']['met_rate'] else 'NOT met'}; RSS <= {r['goal']['rss_limit_mb']} MB: "
        f"{'met' if r['goal']['met_rss'] else 'NOT met'} (2 shared vCPU, load {r['machine']['loadavg']})",
    ]
    return "\n".join(lines)


def _child_main(spec: str) -> int:
    opts = json.loads(spec)
    out = _child_duckdb(opts) if opts["mode"] == "duckdb" else _child_replay(opts)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        raise SystemExit(_child_main(sys.argv[2]))
    raise SystemExit("run as: python -m bench replay [--rows N] [--json PATH]")
