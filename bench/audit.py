"""`python -m bench audit`: Arrow audit rows/s for the engine's schema, by batch size, fsync
off, at the engine's default interval (1 s: the writer's thread fsyncs, writes do not wait)
and after every batch (inside each `write_decisions` call).

What is timed is `sorter.audit.AuditWriter.write_decisions`, the call the engine makes for
every batch it routes: the Arrow arrays are built from the batch's numpy columns (reads as
list<string> sharing the batch's buffers, the reason dictionary, destination names), one
record batch is written straight to the OS, and fsync runs per the policy. Inputs are built
before the clock: synthetic events (bench/synthetic.py) routed by the compiled core, cut into
compact batches of each size (a pool of distinct batches, cycled through). Each (policy, size)
writes into a fresh writer in a fresh directory for `--seconds` or `--max-rows` rows,
whichever comes first; the writer is then closed (footer, fsync, rename: `close_ms`, not in
the rate) and the rows are counted back from the sealed files (the run fails if they differ).

The directory is a temporary one under `--dir` (default: the system's temporary directory,
on this VM the same disk as the checkout; a tmpfs would make fsync free).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import QUICK_FACTOR, _count, machine_info
from bench.synthetic import make_events, make_plan, take
from sorter.core.router import Router

DEFAULT_SIZES = (1, 16, 256, 4096, 65_536)
POLICIES = {"off": None, "1s": 1.0, "every_batch": 0.0}     # fsync_interval_s
POLICY_LABELS = {"off": "fsync off", "1s": "fsync every 1 s (engine default)",
                 "every_batch": "fsync after every batch"}
DEFAULTS = {"seconds": 1.0, "max_rows": 3_000_000, "pool": 65_536, "distinct_batches": 2048}
QUICK = {"seconds": 0.15, "max_rows": 300_000}


def add_arguments(parser) -> None:
    g = parser.add_argument_group("audit suite")
    g.add_argument("--batch", type=_count, action="append", metavar="N",
                   help="rows per write_decisions call (repeatable; default 1, 16, 256, "
                        "4096, 65536)")
    g.add_argument("--policy", action="append", choices=sorted(POLICIES),
                   help="fsync policies (repeatable; default all: off, 1s, every_batch)")
    g.add_argument("--seconds", type=float,
                   help=f"time per (policy, size) ({DEFAULTS['seconds']}; quick "
                        f"{QUICK['seconds']})")
    g.add_argument("--max-rows", type=_count,
                   help="rows per (policy, size) at most (3M; quick 300k)")
    g.add_argument("--pool", type=_count, help="distinct events the batches are cut from (64k)")
    g.add_argument("--dir", type=Path, help="where the temporary audit directories go")


def _batches(pool, decisions, size: int, distinct: int) -> list[tuple]:
    """Up to `distinct` compact (events, decisions, seq) batches of `size` events."""
    n = len(pool)
    out = []
    for k in range(min(distinct, max(1, n // size))):
        idx = (np.arange(size) + k * size) % n
        ev = take(pool, idx)
        dec = type(decisions)(decisions.chute[idx], decisions.reason[idx],
                              decisions.destination[idx])
        out.append((ev, dec, np.arange(size, dtype=np.uint64)))
    return out


def _count_rows(directory: Path) -> tuple[int, int, int]:
    """(rows, files, bytes) of the sealed audit files under `directory`."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from sorter.audit import audit_files

    rows = files = size = 0
    for path in audit_files(directory):
        files += 1
        size += path.stat().st_size
        with pa.memory_map(str(path)) as f:
            r = ipc.open_file(f)
            rows += sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
    return rows, files, size


def measure(batches, names, policy: str, seconds: float, max_rows: int, root: Path) -> dict:
    from sorter.audit import AuditWriter

    directory = Path(tempfile.mkdtemp(prefix=f"audit-{policy}-", dir=root))
    size = len(batches[0][0])
    writer = AuditWriter(directory, fsync_interval_s=POLICIES[policy])
    try:
        write = writer.write_decisions
        rows = calls = 0
        k, nb = 0, len(batches)
        limit_ns = int(seconds * 1e9)
        t0 = time.perf_counter_ns()
        elapsed = 0
        while elapsed < limit_ns and rows < max_rows:
            ev, dec, seq = batches[k]
            rows += write(ev, seq, dec, rows, names, "bench-audit")
            calls += 1
            k = k + 1 if k + 1 < nb else 0
            elapsed = time.perf_counter_ns() - t0
        t1 = time.perf_counter_ns()
        writer.close()
        close_ns = time.perf_counter_ns() - t1
        fsyncs = writer.fsyncs
        back, files, nbytes = _count_rows(directory)
    finally:
        writer.close()
        shutil.rmtree(directory, ignore_errors=True)
    s = elapsed / 1e9
    return {"policy": policy, "batch": size, "rows": rows, "calls": calls, "seconds": s,
            "rows_per_s": rows / s if s else None, "us_per_call": elapsed / 1e3 / calls,
            "close_ms": close_ns / 1e6, "fsyncs": fsyncs, "files": files, "bytes": nbytes,
            "bytes_per_row": nbytes / rows if rows else None, "rows_read_back": back}


def run(args) -> dict:
    quick = bool(args.quick)
    seconds = args.seconds if args.seconds is not None else (QUICK if quick else DEFAULTS)["seconds"]
    max_rows = args.max_rows or (QUICK if quick else DEFAULTS)["max_rows"]
    pool_n = args.pool or (DEFAULTS["pool"] // QUICK_FACTOR if quick else DEFAULTS["pool"])
    sizes = list(args.batch or DEFAULT_SIZES)
    policies = list(dict.fromkeys(args.policy or POLICIES))
    distinct = DEFAULTS["distinct_batches"] // (QUICK_FACTOR if quick else 1)

    t0 = time.perf_counter()
    plan = make_plan(500, 60, 20_000, args.seed)
    pool = make_events(plan, pool_n, args.seed)
    router = Router(plan)
    decisions = router.route(pool)
    names = [d.name for d in plan.destinations]
    build_s = time.perf_counter() - t0

    root = Path(args.dir) if args.dir else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=root))
    rows_out: list[dict] = []
    problems: list[str] = []
    try:
        for size in sizes:
            batches = _batches(pool, decisions, size, distinct)
            for policy in policies:
                row = measure(batches, names, policy, seconds, max_rows, scratch)
                if row["rows_read_back"] != row["rows"]:
                    problems.append(f"{policy} x {size}: wrote {row['rows']} rows, read back "
                                    f"{row['rows_read_back']}")
                rows_out.append(row)
            del batches
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    table = {p: {str(r["batch"]): r["rows_per_s"] for r in rows_out if r["policy"] == p}
             for p in policies}
    result = {
        "ok": not problems,
        "rows_per_s": table,
        "runs": rows_out,
        "schema": "sorter.audit.AUDIT_SCHEMA (14 columns)",
        "filesystem": _filesystem(scratch.parent),
        "machine": machine_info(),
        "params": {"seed": args.seed, "quick": quick, "sizes": sizes, "policies": policies,
                   "policy_fsync_interval_s": {p: POLICIES[p] for p in policies},
                   "seconds": seconds, "max_rows": max_rows, "pool": pool_n,
                   "distinct_batches": distinct, "build_s": round(build_s, 3)},
        "problems": problems,
    }
    if problems:
        result["error"] = "; ".join(problems[:3])
    return result


def _filesystem(path: Path) -> dict | None:
    """Device and type of the filesystem holding `path` (from /proc/mounts)."""
    try:
        path = path.resolve()
        best = None
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if str(path).startswith(mnt.rstrip("/") + "/") or str(path) == mnt:
                    if best is None or len(mnt) > len(best["mount"]):
                        best = {"device": dev, "mount": mnt, "type": fstype}
        return best
    except OSError:
        return None


def _si(x) -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.2f} {prefix}"
    return f"{x:.0f}"


def report(r: dict) -> str:
    p = r["params"]
    fs = r.get("filesystem") or {}
    lines = [f"bench audit: AuditWriter.write_decisions, {p['seconds']} s or {p['max_rows']:,} "
             f"rows per cell{' (quick)' if p['quick'] else ''}; {fs.get('type', '?')} on "
             f"{fs.get('device', '?')}"]
    head = "  {:<34}" + "{:>12}" * len(p["sizes"])
    lines.append(head.format("rows/s by rows per batch", *[f"{s:,}" for s in p["sizes"]]))
    for policy in p["policies"]:
        vals = [r["rows_per_s"][policy].get(str(s)) for s in p["sizes"]]
        lines.append(head.format(POLICY_LABELS[policy], *[_si(v) for v in vals]))
    big = [x for x in r["runs"] if x["batch"] == max(p["sizes"])]
    if big and big[0].get("bytes_per_row"):
        lines.append(f"  {big[0]['bytes_per_row']:.0f} bytes per row on disk at "
                     f"{max(p['sizes']):,} rows per batch; every row read back: "
                     f"{'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
