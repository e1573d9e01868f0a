"""`python -m bench peers`: what a user would pick instead of the engine, same events, same run.

One synthetic plan and one event stream (bench/synthetic.py, the `core` suite's defaults and
seed: the same bytes), routed in one process run by

- `core`: the compiled core (`sorter.core.router.Router`), one call over every event, best of
  `--repeats` (chute states as in the `core` suite);
- `reference`: the plain-Python `ReferenceRouter` on the first `--reference-events`;
- `naive`: a naive integrator's script (bench/naive.py): one Python dict lookup per key, per
  event. Timed twice: `naive_route` routes the first `--naive-events` events in this process
  (routing alone, reads already Python strings), `naive_zmq` sends the same events as one
  JSON message each over a real ZeroMQ PUSH -> PULL on loopback to `python -m bench.naive`
  and receives one JSON decision each (end to end: encode, transport, decode, route, encode,
  transport; closed loop, as fast as the script keeps up);
- `duckdb`: DuckDB loads the reads and the plan's tables (prefixes, manifest, countries,
  services) and routes with one SQL query: the reads classified and decoded with regexes and
  check-digit arithmetic, a longest-prefix join (`prefix = substr(postcode, 1, len)` over the
  plan's distinct prefix lengths, `arg_max(dest, len)`), a manifest join and a per-event
  aggregate for conflicts; timed with DuckDB's default threads (2 here) and with 1 thread.

The peers do less than the core, on purpose (that is what they are): neither chooses among a
destination's chutes nor knows chute states. Their decisions are compared with the core's as
outcomes (sorted with its destination, no_read, invalid, unknown_destination, conflict; the
core's recirculate and overflow count as sorted to their destination): DuckDB on the events it
handles (`duckdb.handled_pct`; label layouts it has no regex for are left out), the naive
script on every event it routes. See bench/README.md for the simplifications.
"""
from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench import QUICK_FACTOR, _count, machine_info
from bench.synthetic import (CATEGORIES, make_chute_states, make_events_labelled, make_plan,
                             take)
from sorter.core.codes import REASON_CODE, REASONS
from sorter.core.countries import alpha2_to_numeric
from sorter.core.reference import ReferenceRouter
from sorter.core.router import Router

DEFAULTS = {"events": 1_000_000, "manifest_rows": 1_000_000, "prefixes": 5_000, "chutes": 200,
            "reference_events": 20_000, "naive_events": 100_000}
QUICK_SCALED = ("events", "manifest_rows", "prefixes", "reference_events", "naive_events")

SORTED, NO_READ, INVALID = REASON_CODE["sorted"], REASON_CODE["no_read"], REASON_CODE["invalid"]
CONFLICT, UNKNOWN = REASON_CODE["conflict"], REASON_CODE["unknown_destination"]
ROUTED = (REASON_CODE["sorted"], REASON_CODE["recirculate"], REASON_CODE["overflow"])


def add_arguments(parser) -> None:
    g = parser.add_argument_group("peers suite")
    g.add_argument("--events", type=_count, help="events routed by core and DuckDB (1M)")
    g.add_argument("--manifest-rows", type=_count, help="manifest rows (1M)")
    g.add_argument("--prefixes", type=_count, help="postcode prefix rules (5000)")
    g.add_argument("--chutes", type=_count, help="chutes in the plan (200)")
    g.add_argument("--reference-events", type=_count,
                   help="events routed by the reference router (20k)")
    g.add_argument("--naive-events", type=_count,
                   help="events routed by the naive script, in process and over ZeroMQ (100k)")
    g.add_argument("--repeats", type=int, default=3,
                   help="timed repetitions of the core and DuckDB queries (best is reported)")
    g.add_argument("--no-naive-zmq", action="store_true",
                   help="skip the naive script's ZeroMQ run (no subprocess)")
    g.add_argument("--no-duckdb", action="store_true", help="skip DuckDB")
    g.add_argument("--duckdb-threads", type=int, action="append", metavar="N",
                   help="DuckDB thread counts to time (repeatable; default: DuckDB's default "
                        "(the CPU count) and 1)")


def _sizes(args) -> dict[str, int]:
    out = {}
    for key, default in DEFAULTS.items():
        value = getattr(args, key, None)
        if value is None:
            value = max(1, default // QUICK_FACTOR) if args.quick and key in QUICK_SCALED else default
        out[key] = value
    for key in ("reference_events", "naive_events"):
        out[key] = min(out[key], out["events"])
    return out


def _best_of(fn, repeats: int) -> tuple[float, list[float], object]:
    """(best seconds, every run's seconds, the last return value)."""
    runs, value = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter_ns()
        value = fn()
        runs.append((time.perf_counter_ns() - t0) / 1e9)
    return min(runs), runs, value


def outcome_of(reason: np.ndarray, destination: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The core's decisions as peer outcomes: recirculate / overflow count as sorted (to their
    destination); the destination only where sorted, else -1."""
    out = reason.astype(np.int16).copy()
    routed = np.isin(reason, ROUTED)
    out[routed] = SORTED
    return out, np.where(routed, destination, -1).astype(np.int32)


def _agreement(core_out, core_dest, peer_out, peer_dest, mask, events, plan, limit=10) -> dict:
    """Share of events (where mask) whose peer outcome and destination equal the core's."""
    idx = np.flatnonzero(mask)
    same = (core_out[idx] == peer_out[idx]) & (core_dest[idx] == peer_dest[idx])
    bad = idx[~same]
    names = [d.name for d in plan.destinations]

    def label(o, d):
        return REASONS[o] + (f" -> {names[d]}" if d >= 0 else "")

    return {
        "events": int(len(idx)),
        "agree": int(same.sum()),
        "agreement_pct": round(100.0 * same.mean(), 3) if len(idx) else None,
        "examples": [{"event": int(i), "reads": [r.decode("latin-1") for r in events.reads(int(i))],
                      "core": label(int(core_out[i]), int(core_dest[i])),
                      "peer": label(int(peer_out[i]), int(peer_dest[i]))}
                     for i in bad[:limit].tolist()],
    }


# --------------------------------------------------------------------------------------------
# naive integrator


def _reads_lists(events, n: int) -> list[list[str]]:
    ro, data, eo = events.read_offsets, events.data.tobytes(), events.event_offsets
    ro_l = ro.tolist()
    return [[data[ro_l[r]: ro_l[r + 1]].decode("latin-1") for r in range(eo[i], eo[i + 1])]
            for i in range(n)]


def _naive_outcomes(router, reads: list[list[str]]):
    out = np.empty(len(reads), np.int16)
    dest = np.empty(len(reads), np.int32)
    for i, rs in enumerate(reads):
        _, reason, d = router.decide(rs)
        out[i], dest[i] = REASON_CODE[reason], d
    return out, dest


def naive_zmq(plan_dir: Path, events, reads: list[list[str]], workdir: Path,
              timeout_s: float = 120.0) -> dict:
    """Run `python -m bench.naive` and push one JSON message per event through it."""
    import zmq

    from bench.engine import start_child

    cmd = [sys.executable, "-m", "bench.naive", "--plan-dir", str(plan_dir)]
    proc = start_child("naive", cmd, workdir / "naive.log")
    ctx = zmq.Context()
    push = pull = None
    result: dict = {"problems": []}
    try:
        ready = proc.wait_ready(120)
        result["load_s"] = ready.get("load_s")
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        for s in (push, pull):
            s.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVTIMEO, 200)
        push.connect(ready["endpoints"]["in"])
        pull.connect(ready["endpoints"]["out"])
        # probe until the path works
        started = time.monotonic()
        while True:
            push.send(json.dumps({"parcel_id": -1, "reads": [], "recirculations": 0,
                                  "ts_ns": 0}).encode())
            try:
                pull.recv()
                break
            except zmq.Again:
                if time.monotonic() - started > 30:
                    raise RuntimeError("naive script: no reply to a probe within 30 s")
        while pull.poll(100):
            pull.recv()
        n = len(reads)
        recirc = events.recirculations[:n].tolist()
        ts = events.ts_ns[:n].tolist()
        msgs = [json.dumps({"parcel_id": i, "reads": rs, "recirculations": recirc[i],
                            "ts_ns": ts[i]}).encode() for i, rs in enumerate(reads)]

        def sender():
            send = push.send
            for m in msgs:
                send(m)

        frames = []
        t0 = time.perf_counter_ns()
        th = threading.Thread(target=sender, name="naive-sender", daemon=True)
        th.start()
        deadline = time.monotonic() + timeout_s
        recv = pull.recv
        while len(frames) < n and time.monotonic() < deadline:
            try:
                frames.append(recv())
            except zmq.Again:
                continue
        t1 = time.perf_counter_ns()
        th.join(5)
        got = len(frames)
        seconds = (t1 - t0) / 1e9
        decisions = [json.loads(f) for f in frames]
        result.update({"events": n, "received": got, "seconds": seconds,
                       "events_per_s": got / seconds if seconds and got == n else None,
                       "decisions": decisions})
        if got != n:
            result["problems"].append(f"naive script: {got} of {n} decisions came back")
    finally:
        for s in (push, pull):
            if s is not None:
                s.close(0)
        ctx.term()
        if proc.proc.poll() is None:
            proc.proc.terminate()
        result["exit_code"] = proc.wait(30)
        shutdown = next((x for x in proc.lines() if x.get("event") == "shutdown"), None)
        result["shutdown"] = shutdown
        if result["exit_code"] != 0:
            result["problems"].append(f"naive script exited with {result['exit_code']}: "
                                      f"{' | '.join(proc.tail(3))}")
    return result


# --------------------------------------------------------------------------------------------
# DuckDB

# GS1 element strings (symbology identifier removed) that the SQL peer decodes: the label
# layouts of the synthetic stream. Each: (name, regex, valid, {field: group}). `valid` False:
# a layout that is a read error (AI 00 cut short). Anything else is "not handled".
GS = r"\x1d"
GS1_FORMS = (
    ("00+420", rf"^00([0-9]{{18}}){GS}?420([0-9A-Z]{{1,20}})$", True, {"sscc": 1, "pc": 2}),
    ("00+421", rf"^00([0-9]{{18}}){GS}?421([0-9]{{3}})([0-9A-Z]{{0,9}})$", True,
     {"sscc": 1, "cc": 2, "pc": 3}),
    ("420+00", rf"^420([0-9A-Z]{{1,20}}){GS}00([0-9]{{18}})$", True, {"pc": 1, "sscc": 2}),
    ("421+401", rf"^421([0-9]{{3}})([0-9A-Z]{{0,9}}){GS}401[0-9A-Z]{{1,30}}$", True,
     {"cc": 1, "pc": 2}),
    ("00", r"^00([0-9]{18})$", True, {"sscc": 1}),
    ("420", r"^420([0-9A-Z]{1,20})$", True, {"pc": 1}),
    ("00+403+420", rf"^{GS}00([0-9]{{18}})403[0-9A-Z]{{1,30}}{GS}420([0-9A-Z]{{1,20}})$", True,
     {"sscc": 1, "pc": 2}),
    ("01+10", r"^01[0-9]{14}10[0-9A-Z]{1,20}$", True, {}),
    ("420+421", rf"^420[0-9A-Z]{{1,20}}{GS}421([0-9]{{3}})([0-9A-Z]{{0,9}})$", True,
     {"cc": 1, "pc": 2}),
    ("00 cut short", r"^00[0-9]{0,17}$", False, {}),
)


def _digit(number: str, k: int, width: int) -> str:
    """Digit k (0 = leftmost) of a `width`-digit non-negative BIGINT expression."""
    return f"(({number} // {10 ** (width - 1 - k)}) % 10)"


def _s10_check_sql(raw: str) -> str:
    """The S10 check digit of `raw` (pattern already matched) is right. Digits by integer
    arithmetic on the 9-digit serial + check, which DuckDB does faster than substrings."""
    x = f"CAST(substr({raw}, 3, 9) AS BIGINT)"
    s = " + ".join(f"{_digit(x, i, 9)} * {w}" for i, w in enumerate((8, 6, 4, 2, 3, 5, 9, 7)))
    return (f"list_extract([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 5], 11 - ({s}) % 11) "
            f"= {x} % 10")


def _sscc_check_sql(sscc: str) -> str:
    """The GS1 mod-10 check digit of an 18-digit SSCC is right."""
    x = f"CAST(substr({sscc}, 1, 17) AS BIGINT)"
    s = " + ".join(f"{_digit(x, i, 17)} * {3 if i % 2 == 0 else 1}" for i in range(17))
    return f"(10 - ({s}) % 10) % 10 = CAST(substr({sscc}, 18, 1) AS INTEGER)"


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def duckdb_compile_sql(home_alpha2: str, home_dest: int | None) -> str:
    """The manifest resolved once to a destination per item id (what the core does when it
    compiles a plan): country abroad -> country rule; postcode -> longest prefix; home country
    -> its rule."""
    home = _sql_str(home_alpha2)
    hd = "NULL" if home_dest is None else str(home_dest)
    return f"""
CREATE OR REPLACE TABLE manifest_dest AS
WITH m AS (
    SELECT item_id, postcode AS pc,
           COALESCE(country, CASE WHEN postcode <> '' THEN {home} END) AS country
    FROM manifest),
lp AS (
    SELECT m.item_id, arg_max(p.dest, p.len) AS dest
    FROM m JOIN lens l ON l.len <= length(m.pc)
           JOIN prefixes p ON p.prefix = substr(m.pc, 1, l.len)
    WHERE m.country = {home} AND m.pc <> ''
    GROUP BY m.item_id)
SELECT m.item_id,
       CASE WHEN m.country IS NOT NULL AND m.country <> {home} THEN c.dest
            WHEN lp.dest IS NOT NULL THEN lp.dest
            WHEN m.country = {home} THEN {hd}
       END AS dest
FROM m LEFT JOIN countries c ON c.alpha2 = m.country
       LEFT JOIN lp ON lp.item_id = m.item_id
"""


def duckdb_route_sql(home_numeric: int, home_dest: int | None) -> str:
    """One query: every event's outcome, destination and whether the SQL handled it."""
    hd = "NULL" if home_dest is None else str(home_dest)
    form = "CASE " + " ".join(f"WHEN regexp_matches(msg, {_sql_str(p)}) THEN {i}"
                              for i, (_, p, _, _) in enumerate(GS1_FORMS)) + " END"
    valid_forms = ", ".join(str(i) for i, f in enumerate(GS1_FORMS) if f[2])

    def field(name: str) -> str:
        arms = [f"WHEN {i} THEN regexp_extract(msg, {_sql_str(p)}, {groups[name]})"
                for i, (_, p, _, groups) in enumerate(GS1_FORMS) if name in groups]
        return f"CASE form {' '.join(arms)} END" if arms else "NULL"

    reserved = "('J', 'K', 'S', 'T', 'W')"
    return f"""
WITH k AS (
    SELECT read_id, event_id, n_in_event, raw,
        CASE
            WHEN length(raw) = 0 THEN 'bad'
            WHEN prefix(raw, ']C1') THEN 'gs1'
            WHEN prefix(raw, ']d2') OR prefix(raw, ']Q3') OR prefix(raw, ']e0') THEN 'other'
            WHEN length(raw) BETWEEN 11 AND 15 AND regexp_matches(raw, '^[A-Za-z]{{2}}') THEN 's10'
            WHEN regexp_matches(raw, '^([A-Z][0-9]{{2}} ?[A-Z0-9]{{4}}|[0-9]{{6}})$') THEN 'postcode'
            WHEN regexp_matches(raw, '^[0-9\\x1d]') THEN 'gs1'
            ELSE 'bad'
        END AS kind
    FROM reads),
g AS (
    SELECT *, {form} AS form
    FROM (SELECT read_id, event_id, raw, kind,
                 CASE WHEN prefix(raw, ']C1') THEN substr(raw, 4) ELSE raw END AS msg
          FROM k WHERE kind = 'gs1')),
gf AS (
    SELECT read_id, form, {field('sscc')} AS sscc, {field('cc')} AS cc, {field('pc')} AS pc
    FROM g WHERE form IS NOT NULL),
a AS (
    SELECT k.read_id, k.event_id, k.n_in_event,
        CASE k.kind WHEN 'other' THEN FALSE WHEN 'gs1' THEN gf.form IS NOT NULL ELSE TRUE
        END AS handled,
        CASE k.kind
            WHEN 's10' THEN length(k.raw) = 13
                AND regexp_full_match(k.raw, '[A-Z]{{2}}[0-9]{{9}}[A-Z]{{2}}')
                AND substr(k.raw, 1, 1) NOT IN {reserved}
                AND {_s10_check_sql('k.raw')}
            WHEN 'postcode' THEN TRUE
            WHEN 'gs1' THEN gf.form IN ({valid_forms})
                AND (gf.sscc IS NULL OR {_sscc_check_sql('gf.sscc')})
            ELSE FALSE
        END AS valid,
        CASE WHEN k.kind = 's10' THEN COALESCE(s2.dest, s1.dest) END AS service_dest,
        CASE k.kind
            WHEN 'postcode' THEN {home_numeric}
            WHEN 'gs1' THEN CASE WHEN gf.cc IS NOT NULL THEN CAST(gf.cc AS INTEGER)
                                 WHEN gf.pc IS NOT NULL THEN {home_numeric} END
        END AS country,
        CASE k.kind WHEN 'postcode' THEN replace(k.raw, ' ', '') WHEN 'gs1' THEN gf.pc
        END AS pc,
        CASE k.kind WHEN 's10' THEN k.raw WHEN 'gs1' THEN gf.sscc END AS item_id
    FROM k LEFT JOIN gf ON gf.read_id = k.read_id
           LEFT JOIN services s2 ON k.kind = 's10' AND s2.key = substr(k.raw, 1, 2)
           LEFT JOIN services s1 ON k.kind = 's10' AND s1.key = substr(k.raw, 1, 1)),
lp AS (
    SELECT a.read_id, arg_max(p.dest, p.len) AS dest
    FROM a JOIN lens l ON l.len <= length(a.pc)
           JOIN prefixes p ON p.prefix = substr(a.pc, 1, l.len)
    WHERE a.valid AND a.service_dest IS NULL AND a.country = {home_numeric} AND a.pc <> ''
    GROUP BY a.read_id),
rd AS (
    SELECT a.event_id, a.n_in_event, a.handled, a.valid,
        a.valid AND a.service_dest IS NOT NULL AS via_service,
        CASE
            WHEN NOT a.valid THEN NULL
            WHEN a.service_dest IS NOT NULL THEN a.service_dest
            WHEN a.country IS NOT NULL AND a.country <> {home_numeric} THEN c.dest
            WHEN lp.dest IS NOT NULL THEN lp.dest
            WHEN md.item_id IS NOT NULL THEN md.dest
            WHEN a.country = {home_numeric} THEN {hd}
        END AS dest
    FROM a LEFT JOIN lp ON lp.read_id = a.read_id
           LEFT JOIN countries c ON c.numeric = a.country
           LEFT JOIN manifest_dest md ON md.item_id = a.item_id),
multi AS (
    SELECT event_id, bool_and(handled) AS handled, bool_or(valid) AS any_valid,
        min(dest) FILTER (WHERE via_service) AS smin,
        max(dest) FILTER (WHERE via_service) AS smax,
        min(dest) AS dmin, max(dest) AS dmax
    FROM rd WHERE n_in_event > 1 GROUP BY event_id)
SELECT event_id, handled,
    CASE WHEN NOT valid THEN {INVALID} WHEN dest IS NULL THEN {UNKNOWN} ELSE {SORTED}
    END AS outcome,
    COALESCE(dest, -1) AS dest
FROM rd WHERE n_in_event = 1
UNION ALL
SELECT event_id, handled,
    CASE WHEN NOT any_valid THEN {INVALID}
         WHEN smin IS NOT NULL THEN CASE WHEN smin = smax THEN {SORTED} ELSE {CONFLICT} END
         WHEN dmin IS NULL THEN {UNKNOWN}
         WHEN dmin <> dmax THEN {CONFLICT}
         ELSE {SORTED}
    END AS outcome,
    CASE WHEN NOT any_valid THEN -1
         WHEN smin IS NOT NULL THEN CASE WHEN smin = smax THEN smin ELSE -1 END
         WHEN dmin IS NOT NULL AND dmin = dmax THEN dmin
         ELSE -1
    END AS dest
FROM multi
UNION ALL
SELECT event_id, TRUE AS handled, {NO_READ} AS outcome, -1 AS dest
FROM events WHERE n_reads = 0
"""


def duckdb_load(con, plan, events) -> None:
    """Reads, events and the plan's tables as DuckDB tables (copied in, not scanned from
    Arrow at query time)."""
    n = len(events)
    eo = events.event_offsets.astype(np.int64)
    n_reads = np.diff(eo)
    ro = events.read_offsets.astype(np.int32)
    raw = pa.StringArray.from_buffers(len(ro) - 1, pa.py_buffer(ro), pa.py_buffer(events.data))
    raw.validate(full=True)                        # the synthetic reads are ASCII
    reads_t = pa.table({"read_id": pa.array(np.arange(len(raw), dtype=np.int32)),
                        "event_id": pa.array(np.repeat(np.arange(n, dtype=np.int32), n_reads)),
                        "n_in_event": pa.array(np.repeat(n_reads, n_reads).astype(np.int32)),
                        "raw": raw})
    events_t = pa.table({"event_id": pa.array(np.arange(n, dtype=np.int32)),
                         "n_reads": pa.array(n_reads.astype(np.int32))})
    ids = plan.destination_ids()
    prefixes = [(p.replace(" ", ""), ids[d]) for p, d in plan.postcode_rules.items()]
    prefixes_t = pa.table({"prefix": [p for p, _ in prefixes],
                           "dest": pa.array([d for _, d in prefixes], pa.int32()),
                           "len": pa.array([len(p) for p, _ in prefixes], pa.int32())})
    countries_t = pa.table({
        "alpha2": list(plan.country_rules),
        "numeric": pa.array([alpha2_to_numeric(c) for c in plan.country_rules], pa.int32()),
        "dest": pa.array([ids[d] for d in plan.country_rules.values()], pa.int32())})
    services_t = pa.table({"key": list(plan.service_rules),
                           "dest": pa.array([ids[d] for d in plan.service_rules.values()],
                                            pa.int32())})
    manifest_t = (plan.manifest.select(["item_id", "postcode", "country"])
                  if plan.manifest is not None else
                  pa.table({"item_id": pa.array([], pa.string()),
                            "postcode": pa.array([], pa.string()),
                            "country": pa.array([], pa.string())}))
    for name, table in (("reads", reads_t), ("events", events_t), ("prefixes", prefixes_t),
                        ("countries", countries_t), ("services", services_t),
                        ("manifest", manifest_t)):
        con.register(f"{name}_arrow", table)
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {name}_arrow").fetchall()
        con.unregister(f"{name}_arrow")
    con.execute("CREATE OR REPLACE TABLE lens AS SELECT DISTINCT len FROM prefixes").fetchall()


def duckdb_route(con, sql: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the routing query; (outcome int16, destination int32, handled bool) per event."""
    cols = con.execute(sql).fetchnumpy()
    idx = np.asarray(cols["event_id"], np.int64)
    outcome = np.full(n, -1, np.int16)
    dest = np.full(n, -1, np.int32)
    handled = np.zeros(n, bool)
    outcome[idx] = np.asarray(cols["outcome"], np.int16)
    dest[idx] = np.asarray(cols["dest"], np.int32)
    handled[idx] = np.asarray(cols["handled"], bool)
    return outcome, dest, handled


def run_duckdb(plan, events, repeats: int, thread_counts: list[int]) -> dict:
    import duckdb

    n = len(events)
    con = duckdb.connect()
    default_threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    t0 = time.perf_counter()
    duckdb_load(con, plan, events)
    load_s = time.perf_counter() - t0
    home_dest = plan.destination_ids().get(plan.country_rules.get(plan.home_country, ""), None)
    t0 = time.perf_counter()
    con.execute(duckdb_compile_sql(plan.home_country, home_dest)).fetchall()
    compile_s = time.perf_counter() - t0
    sql = duckdb_route_sql(alpha2_to_numeric(plan.home_country), home_dest)
    runs = {}
    result = None
    for threads in thread_counts:
        t = threads or default_threads
        con.execute(f"SET threads = {t}").fetchall()
        duckdb_route(con, sql, n)                   # warm-up
        best, times, result = _best_of(lambda: duckdb_route(con, sql, n), repeats)
        runs[str(t)] = {"threads": t, "best_s": best, "runs_s": times,
                        "events_per_s": n / best if best else None}
    con.close()
    return {"version": duckdb.__version__, "default_threads": default_threads,
            "load_s": load_s, "compile_s": compile_s, "runs": runs, "sql": sql,
            "result": result}


def events_digest(events) -> str:
    """A short hash of an event batch's bytes (the DuckDB subprocess checks it rebuilt the
    same events)."""
    import hashlib

    h = hashlib.sha256()
    for a in (events.event_offsets, events.read_offsets, events.data, events.recirculations):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def duckdb_subprocess(sizes: dict, seed: int, repeats: int, threads: list[int], digest: str,
                      workdir: Path, timeout_s: float = 600.0) -> tuple[dict, tuple]:
    """`run_duckdb` in a fresh process (`python -m bench.peers --duckdb-child`) that rebuilds
    the same plan and events from the sizes and seed: DuckDB's memory and threads go away
    with it, and so do the nanobind "leaked instances" lines DuckDB's Python module prints
    at interpreter exit. Returns (figures, (outcome, dest, handled))."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = workdir / "duckdb.npz"
    cmd = [sys.executable, "-m", "bench.peers", "--duckdb-child", "--out", str(out),
           "--seed", str(seed), "--repeats", str(repeats), "--events", str(sizes["events"]),
           "--manifest-rows", str(sizes["manifest_rows"]), "--prefixes", str(sizes["prefixes"]),
           "--chutes", str(sizes["chutes"])] + [x for t in threads for x in ("--threads", str(t))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(cmd, cwd=str(root), env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"DuckDB subprocess exited with {proc.returncode}: "
                           f"{proc.stderr[-1500:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    if figures.pop("events_digest") != digest:
        raise RuntimeError("the DuckDB subprocess built different events")
    with np.load(out) as z:
        arrays = (z["outcome"], z["dest"], z["handled"])
    return figures, arrays


def _duckdb_child(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.peers --duckdb-child")
    p.add_argument("--duckdb-child", action="store_true", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, action="append")
    for key in ("events", "manifest-rows", "prefixes", "chutes"):
        p.add_argument(f"--{key}", type=int, required=True)
    a = p.parse_args(argv)
    plan = make_plan(a.prefixes, a.chutes, a.manifest_rows, a.seed)
    events = make_events_labelled(plan, a.events, a.seed)[0]
    figures = run_duckdb(plan, events, a.repeats, a.threads or [0, 1])
    outcome, dest, handled = figures.pop("result")
    np.savez(a.out, outcome=outcome, dest=dest, handled=handled)
    figures["events_digest"] = events_digest(events)
    print(json.dumps(figures))
    return 0


# --------------------------------------------------------------------------------------------
# the suite


def run(args) -> dict:
    sizes = _sizes(args)
    seed, repeats = args.seed, max(1, args.repeats)
    problems: list[str] = []
    t0 = time.perf_counter()
    plan = make_plan(sizes["prefixes"], sizes["chutes"], sizes["manifest_rows"], seed)
    events, labels = make_events_labelled(plan, sizes["events"], seed)
    states = make_chute_states(plan, seed)
    build_s = time.perf_counter() - t0
    n = len(events)

    # core: one call over every event
    t0 = time.perf_counter()
    router = Router(plan)
    compile_s = time.perf_counter() - t0
    for chute, state in states.items():
        router.set_chute_state(chute, state)
    decisions = router.route(events)
    core_best, core_runs, _ = _best_of(lambda: router.route(events), repeats)
    core_out, core_dest = outcome_of(decisions.reason, decisions.destination)
    figures: dict[str, dict] = {
        "core": {"events": n, "best_s": core_best, "runs_s": core_runs,
                 "events_per_s": n / core_best, "compile_s": compile_s,
                 "what": "compiled core, one call, in process"}}

    # reference
    n_ref = sizes["reference_events"]
    ref = ReferenceRouter(plan)
    for chute, state in states.items():
        ref.set_chute_state(chute, state)
    sub = take(events, np.arange(n_ref))
    t0 = time.perf_counter_ns()
    ref.route(sub)
    ref_s = (time.perf_counter_ns() - t0) / 1e9
    figures["reference"] = {"events": n_ref, "best_s": ref_s, "events_per_s": n_ref / ref_s,
                            "what": "ReferenceRouter, in process"}

    # naive integrator
    from bench.naive import NaiveRouter, write_plan_dir

    n_naive = sizes["naive_events"]
    tmp = tempfile.TemporaryDirectory(prefix="bench-peers-")
    workdir = Path(tmp.name)
    try:
        plan_dir = write_plan_dir(plan, workdir / "plan")
        t0 = time.perf_counter()
        naive = NaiveRouter(plan_dir)
        naive_load_s = time.perf_counter() - t0
        reads = _reads_lists(events, n_naive)
        t0 = time.perf_counter_ns()
        naive_out, naive_dest = _naive_outcomes(naive, reads)
        naive_s = (time.perf_counter_ns() - t0) / 1e9
        figures["naive_route"] = {"events": n_naive, "best_s": naive_s,
                                  "events_per_s": n_naive / naive_s, "load_s": naive_load_s,
                                  "what": "naive script's routing alone, in process"}
        naive_agreement = _agreement(core_out, core_dest, naive_out, naive_dest,
                                     np.arange(n) < n_naive, events, plan)
        zmq_run = None
        if not args.no_naive_zmq:
            zmq_run = naive_zmq(plan_dir, events, reads, workdir)
            problems.extend(zmq_run.pop("problems"))
            decided = zmq_run.pop("decisions", [])
            names = [d.name for d in plan.destinations]
            mismatched = 0
            for dec in decided:
                i = dec["parcel_id"]
                d = int(naive_dest[i])
                if (REASON_CODE[dec["reason"]] != naive_out[i]
                        or dec["destination"] != (names[d] if d >= 0 else None)):
                    mismatched += 1
            zmq_run["differs_from_in_process"] = mismatched
            if mismatched:
                problems.append(f"naive script over ZeroMQ: {mismatched} decisions differ from "
                                f"the same script in process")
            figures["naive_zmq"] = {
                "events": zmq_run.get("events"), "best_s": zmq_run.get("seconds"),
                "events_per_s": zmq_run.get("events_per_s"),
                "what": "naive script, one JSON message per event over ZeroMQ, end to end"}
    finally:
        tmp.cleanup()

    # DuckDB
    duck = None
    if not args.no_duckdb:
        threads = args.duckdb_threads or [0, 1]
        with tempfile.TemporaryDirectory(prefix="bench-duckdb-") as d:
            duck, (d_out, d_dest, handled) = duckdb_subprocess(
                sizes, seed, repeats, threads, events_digest(events), Path(d))
        duck["handled"] = int(handled.sum())
        duck["handled_pct"] = round(100.0 * handled.mean(), 3)
        duck["handled_by_category"] = {
            name: round(100.0 * handled[labels == k].mean(), 1)
            for k, name in enumerate(CATEGORIES) if (labels == k).any()}
        duck["agreement"] = _agreement(core_out, core_dest, d_out, d_dest, handled, events, plan)
        duck["gs1_forms"] = [name for name, *_ in GS1_FORMS]
        if duck["agreement"]["agree"] != duck["agreement"]["events"]:
            problems.append(f"DuckDB disagrees with the core on "
                            f"{duck['agreement']['events'] - duck['agreement']['agree']} of the "
                            f"{duck['handled']} events it handles")
        for t, r in duck["runs"].items():
            key = "duckdb" if int(t) == duck["default_threads"] else f"duckdb_{t}thread"
            figures[key] = {"events": n, "best_s": r["best_s"], "runs_s": r["runs_s"],
                            "events_per_s": r["events_per_s"], "threads": int(t),
                            "what": f"DuckDB SQL, {t} thread{'s' if int(t) > 1 else ''}"}

    core_rate = figures["core"]["events_per_s"]
    result = {
        "ok": not problems,
        "core_events_per_s": core_rate,
        "reference_events_per_s": figures["reference"]["events_per_s"],
        "naive_route_events_per_s": figures["naive_route"]["events_per_s"],
        "naive_zmq_events_per_s": figures.get("naive_zmq", {}).get("events_per_s"),
        "duckdb_events_per_s": figures.get("duckdb", {}).get("events_per_s"),
        "duckdb_agreement_pct": duck["agreement"]["agreement_pct"] if duck else None,
        "duckdb_handled_pct": duck["handled_pct"] if duck else None,
        "naive_agreement_pct": naive_agreement["agreement_pct"],
        "throughput": figures,
        "ratios": {k: (core_rate / v["events_per_s"] if v.get("events_per_s") else None)
                   for k, v in figures.items() if k != "core"},
        "naive": {"agreement": naive_agreement, "zmq": zmq_run, "load_s": naive_load_s},
        "duckdb": duck,
        "events": n, "reads": len(events.read_offsets) - 1,
        "manifest_rows": plan.manifest_rows(), "prefixes": len(plan.postcode_rules),
        "machine": machine_info(),
        "params": {"seed": seed, "quick": bool(args.quick), "repeats": repeats, **sizes,
                   "build_s": round(build_s, 3),
                   "event_counts": {name: int((labels == k).sum())
                                    for k, name in enumerate(CATEGORIES)}},
        "problems": problems,
    }
    if problems:
        result["error"] = "; ".join(problems[:3])
    return result


def _si(x) -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}"
    return f"{x:.0f} "


def report(r: dict) -> str:
    p = r["params"]
    lines = [f"bench peers: seed {p['seed']}{' (quick)' if p['quick'] else ''}, {r['events']:,} "
             f"events, manifest {r['manifest_rows']:,} rows, {r['prefixes']:,} prefixes"]
    row = "  {:<14}{:>10}{:>15}{:>12}  {}"
    lines.append(row.format("peer", "events", "events/s", "core is", "what"))
    for name, f in r["throughput"].items():
        ratio = r["ratios"].get(name)
        lines.append(row.format(name, f"{f['events']:,}" if f.get("events") else "-",
                                _si(f.get("events_per_s")),
                                f"{ratio:,.1f}x" if ratio else "", f["what"]))
    d = r.get("duckdb")
    if d:
        a = d["agreement"]
        lines.append(f"  DuckDB {d['version']}: load {d['load_s']:.2f} s, manifest compile "
                     f"{d['compile_s']:.2f} s; handles {d['handled_pct']:.1f}% of events; agrees "
                     f"with the core on {a['agreement_pct']}% of those ({a['events']:,})")
    a = r["naive"]["agreement"]
    lines.append(f"  naive script agrees with the core on {a['agreement_pct']}% of "
                 f"{a['events']:,} events (first read wins, no conflicts, no chute states)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_duckdb_child(sys.argv[1:]))
