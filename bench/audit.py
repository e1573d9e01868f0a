"""`python -m bench audit`: the audit's hot-path cost, side by side in one run: the journal
(`sorter.audit.journal`, what the engine pays per turn) and an Arrow writer that writes one
record batch per turn (pyarrow's IPC file writer over `decision_batch`, what a per-turn Arrow
audit costs), by batch size and fsync policy; then the compactor's rows/s and the bytes on
disk per decision (journal and compacted file).

Journal: each call builds the turn's record (`decisions_parts`, as the engine: the SCAN frame, the DECISION
message, the destinations; header with CRC32C) and appends it with one write(2), as the
engine does. Arrow writer: each call builds a record batch from the turn's columns and writes
it (`RecordBatchFileWriter.write_batch`) to a `pyarrow.OSFile`. fsync policies: off, every 1 s
(the engine's default: a thread syncs, writes do not wait) and after every call. Inputs are
built before the clock: synthetic events (bench/synthetic.py) routed by the compiled core, cut
into batches of each size (a pool of distinct batches, cycled through), encoded as SCAN and
DECISION messages. Each (writer, policy, size) runs in a fresh directory for `--seconds` or
`--max-rows` rows; the rows are then read back (the run fails if they differ): the compactor
turns the journal of the 1 s runs into Arrow files (`compactor_rows_per_s`).

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

DEFAULT_SIZES = (1, 16, 256, 4096)
POLICIES = {"off": None, "1s": 1.0, "every_batch": 0.0}     # fsync_interval_s
POLICY_LABELS = {"off": "fsync off", "1s": "fsync every 1 s (engine default)",
                 "every_batch": "fsync after every batch"}
DEFAULTS = {"seconds": 1.0, "max_rows": 3_000_000, "pool": 65_536, "distinct_batches": 2048}
QUICK = {"seconds": 0.15, "max_rows": 300_000}


def add_arguments(parser) -> None:
    g = parser.add_argument_group("audit suite")
    g.add_argument("--batch", type=_count, action="append", metavar="N",
                   help="rows (events) per turn (repeatable; default 1, 16, 256, 4096)")
    g.add_argument("--policy", action="append", choices=sorted(POLICIES),
                   help="fsync policies (repeatable; default all: off, 1s, every_batch)")
    g.add_argument("--seconds", type=float,
                   help=f"time per (policy, size) ({DEFAULTS['seconds']}; quick "
                        f"{QUICK['seconds']})")
    g.add_argument("--max-rows", type=_count,
                   help="rows per (policy, size) at most (3M; quick 300k)")
    g.add_argument("--pool", type=_count, help="distinct events the batches are cut from (64k)")
    g.add_argument("--dir", type=Path, help="where the temporary audit directories go")


def _batches(pool, decisions, names, size: int, distinct: int) -> list[tuple]:
    """Up to `distinct` turns of `size` events: (events, seq, decisions, destination names,
    SCAN frame, DECISION message)."""
    import pyarrow as pa

    from sorter import wire

    n = len(pool)
    table = pa.array(names + [None], pa.string())
    out = []
    for k in range(min(distinct, max(1, n // size))):
        idx = (np.arange(size) + k * size) % n
        ev = take(pool, idx)
        dest = np.ascontiguousarray(decisions.destination[idx], np.int32)
        dec = type(decisions)(decisions.chute[idx], decisions.reason[idx], dest)
        seq = np.arange(size, dtype=np.uint64)
        frame = wire.encode_scan(ev, seq)
        message = wire.encode_decisions("bench-audit", ev.parcel_ids, seq,
                                        np.arange(1, size + 1, dtype=np.uint64), dec.chute,
                                        dec.reason, ev.scanner_ids)
        dest_names = table.take(pa.array(np.where(dest < 0, len(names), dest)))
        out.append((ev, seq, dec, dest_names, frame, message))
    return out


def _count_rows(directory: Path) -> tuple[int, int, int]:
    """(rows, files, bytes) of the Arrow files under `directory`."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    rows = files = size = 0
    for path in sorted(directory.rglob("*.arrow")):
        files += 1
        size += path.stat().st_size
        with pa.memory_map(str(path)) as f:
            r = ipc.open_file(f)
            rows += sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
    return rows, files, size


class _ArrowPerTurn:
    """One Arrow record batch per turn, written by pyarrow's IPC file writer: the reference
    the journal is compared with. fsync as the journal's policies."""

    def __init__(self, directory: Path, fsync_interval_s):
        import threading

        import pyarrow as pa
        import pyarrow.ipc as ipc

        from sorter.audit import AUDIT_SCHEMA

        self.sink = pa.OSFile(str(directory / "turns.arrow"), "wb")
        self.writer = ipc.new_file(self.sink, AUDIT_SCHEMA)
        self.fd = __import__("os").open(directory / "turns.arrow", __import__("os").O_RDONLY)
        self.policy = fsync_interval_s
        self.fsyncs = 0
        self._stop = threading.Event()
        self._thread = None
        if fsync_interval_s:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self):
        import os
        while not self._stop.wait(self.policy):
            os.fsync(self.fd)
            self.fsyncs += 1

    def write(self, turn, now_ns: int) -> int:
        import os

        import pyarrow as pa

        from sorter.audit.files import decision_batch

        ev, seq, dec, dest_names, _, _ = turn
        n = len(seq)
        batch = decision_batch(ev, seq, np.arange(1, n + 1, dtype=np.uint64), dec.chute,
                               dec.reason, dest_names, pa.array(["bench-audit"] * n),
                               np.full(n, now_ns, np.int64))
        self.writer.write_batch(batch)
        if self.policy == 0:
            os.fsync(self.fd)
            self.fsyncs += 1
        return n

    def close(self):
        import os
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.writer.close()
        self.sink.close()
        os.close(self.fd)


class _Journal:
    def __init__(self, directory: Path, fsync_interval_s):
        from sorter.audit import journal

        self.journal = journal
        self.w = journal.JournalWriter(directory, fsync_interval_s=fsync_interval_s,
                                       seal_after_s=None)
        self.w.set_plan(time.time_ns(), "bench-audit", [])

    @property
    def fsyncs(self):
        return self.w.fsyncs

    def write(self, turn, now_ns: int) -> int:
        _, seq, dec, _, frame, message = turn
        self.w.append(self.journal.decisions_parts(now_ns, [frame], message, dec.destination))
        return len(seq)

    def close(self):
        self.w.close()


def measure(batches, kind: str, policy: str, seconds: float, max_rows: int, root: Path,
            names) -> dict:
    directory = Path(tempfile.mkdtemp(prefix=f"audit-{kind}-{policy}-", dir=root))
    size = len(batches[0][1])
    writer = (_Journal if kind == "journal" else _ArrowPerTurn)(directory, POLICIES[policy])
    compact = {}
    try:
        rows = calls = 0
        k, nb = 0, len(batches)
        limit_ns = int(seconds * 1e9)
        clock = time.time_ns
        t0 = time.perf_counter_ns()
        elapsed = 0
        while elapsed < limit_ns and rows < max_rows:
            rows += writer.write(batches[k], clock())
            calls += 1
            k = k + 1 if k + 1 < nb else 0
            elapsed = time.perf_counter_ns() - t0
        t1 = time.perf_counter_ns()
        writer.close()
        close_ns = time.perf_counter_ns() - t1
        fsyncs = writer.fsyncs
        if kind == "journal":
            from sorter.audit import journal
            from sorter.audit.compactor import Compactor

            journal_bytes = sum(len(r.records) and r.end for r in map(
                journal.read_segment, journal.segments(directory)))
            t2 = time.perf_counter_ns()
            Compactor(directory).run_once()
            compact_s = (time.perf_counter_ns() - t2) / 1e9
            compact = {"journal_bytes": journal_bytes,
                       "journal_bytes_per_row": journal_bytes / rows if rows else None,
                       "compact_s": compact_s,
                       "compactor_rows_per_s": rows / compact_s if compact_s else None}
        back, files, nbytes = _count_rows(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    s = elapsed / 1e9
    return {"writer": kind, "policy": policy, "batch": size, "rows": rows, "calls": calls,
            "seconds": s, "rows_per_s": rows / s if s else None,
            "us_per_call": elapsed / 1e3 / calls, "close_ms": close_ns / 1e6, "fsyncs": fsyncs,
            "files": files, "bytes": nbytes, "bytes_per_row": nbytes / rows if rows else None,
            "rows_read_back": back, **compact}


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
            batches = _batches(pool, decisions, names, size, distinct)
            for policy in policies:
                for kind in ("journal", "arrow"):
                    row = measure(batches, kind, policy, seconds, max_rows, scratch, names)
                    if row["rows_read_back"] != row["rows"]:
                        problems.append(f"{kind} {policy} x {size}: wrote {row['rows']} rows, "
                                        f"read back {row['rows_read_back']}")
                    rows_out.append(row)
            del batches
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def table(kind, key="rows_per_s"):
        return {p: {str(r["batch"]): r[key] for r in rows_out
                    if r["policy"] == p and r["writer"] == kind} for p in policies}

    journal_1s = [r for r in rows_out if r["writer"] == "journal" and r["policy"] == "1s"]
    result = {
        "ok": not problems,
        "rows_per_s": table("arrow"),               # the Arrow writer, one batch per turn
        "journal_rows_per_s": table("journal"),
        "compactor_rows_per_s": {str(r["batch"]): r["compactor_rows_per_s"] for r in journal_1s},
        "bytes_per_decision": {
            "journal": {str(r["batch"]): r["journal_bytes_per_row"] for r in journal_1s},
            "compacted": {str(r["batch"]): r["bytes_per_row"] for r in journal_1s},
            "arrow_per_turn": {str(r["batch"]): r["bytes_per_row"] for r in rows_out
                               if r["writer"] == "arrow" and r["policy"] == "1s"}},
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
    lines = [f"bench audit: journal vs one Arrow batch per turn, {p['seconds']} s or "
             f"{p['max_rows']:,} rows per cell{' (quick)' if p['quick'] else ''}; "
             f"{fs.get('type', '?')} on {fs.get('device', '?')}"]
    head = "  {:<44}" + "{:>12}" * len(p["sizes"])
    lines.append(head.format("rows/s by events per turn", *[f"{s:,}" for s in p["sizes"]]))
    for policy in p["policies"]:
        for key, label in (("journal_rows_per_s", "journal"), ("rows_per_s", "Arrow per turn")):
            vals = [r[key][policy].get(str(s)) for s in p["sizes"]]
            lines.append(head.format(f"{label}, {POLICY_LABELS[policy]}", *[_si(v) for v in vals]))
    c = r.get("compactor_rows_per_s") or {}
    if c:
        lines.append(head.format("compactor (journal of the 1 s runs)",
                                 *[_si(c.get(str(s))) for s in p["sizes"]]))
    b = r.get("bytes_per_decision") or {}
    for key, label in (("journal", "bytes/decision: journal"),
                       ("compacted", "bytes/decision: compacted file"),
                       ("arrow_per_turn", "bytes/decision: Arrow per turn")):
        if b.get(key):
            lines.append(head.format(label, *[_f1(b[key].get(str(s))) for s in p["sizes"]]))
    lines.append(f"  every row read back: {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)


def _f1(x) -> str:
    return "-" if x is None else f"{x:,.0f}"
