"""`python -m bench memory`: what a 10M-row manifest costs in memory.

A fresh subprocess (so that nothing else this harness allocated counts) builds a synthetic
plan (5,000 prefixes, 200 chutes) with a `--rows` manifest (10M; quick 1M) by
`bench.synthetic.make_plan` (vectorised), compiles it as the engine does (`Router(plan)`), routes
a few thousand events to show the tables work, and reports, in bytes:

- `peak_rss`: the process's peak resident set at the end (VmHWM from /proc/self/status; also
  `ru_maxrss` from `resource.getrusage`, which on Linux is carried across exec and so can
  show the parent's RSS when the parent was bigger: the harness's own, after the other
  suites): the figure to size a machine by. `peak_rss_before_compile` is the same after the
  plan was built, so the generator's own peak can be told from the compile's;
- `rss_baseline` (after imports), `rss_after_plan`, `rss_after_compile` (VmRSS from
  /proc/self/status, with both the Arrow manifest and the compiled tables), then
  `rss_after_compile_trimmed` (after Arrow's pool and glibc's `malloc_trim(0)` hand freed
  memory back: what is live) and `rss_without_arrow_manifest` (the plan's Arrow table dropped too, trimmed: what
  the compiled tables alone keep);
- `compiled_bytes`: `router._core.plan.nbytes`, every compiled table (the manifest hash table
  dominates), and `compiled_manifest_keys`;
- `arrow_manifest_bytes`: the plan's Python-side manifest (`pyarrow.Table.nbytes`: item_id,
  postcode, country strings), which the compiled tables do not need after compiling.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import _count, machine_info

DEFAULT_ROWS = 10_000_000
QUICK_ROWS = 1_000_000
ROOT = Path(__file__).resolve().parents[1]


def add_arguments(parser) -> None:
    g = parser.add_argument_group("memory suite")
    g.add_argument("--rows", type=_count, help="manifest rows (10M; quick 1M)")
    g.add_argument("--prefixes", type=_count, default=5000, help="postcode prefixes (5000)")
    g.add_argument("--chutes", type=_count, default=200, help="chutes (200)")
    g.add_argument("--timeout", type=float, default=300.0,
                   help="seconds the subprocess may take (300)")


def _rss() -> int | None:
    """Current resident set size in bytes (Linux)."""
    return _status("VmRSS")


def _trim() -> bool:
    """Give freed heap memory back to the OS (glibc `malloc_trim`), so that RSS shows what is
    live rather than what the allocator kept."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _maxrss() -> int:
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024   # KiB on Linux


def _peak() -> int:
    """Peak resident set of this process image: VmHWM (Linux), else ru_maxrss.

    Not ru_maxrss first: Linux carries it across exec (the kernel keeps the larger of the
    old image's high-water mark and the new one's), so a subprocess started by a big parent
    reports the parent's RSS. VmHWM belongs to the new address space only."""
    hwm = _status("VmHWM")
    return hwm if hwm is not None else _maxrss()


def child(rows: int, prefixes: int, chutes: int, seed: int) -> dict:
    """Runs in the subprocess: build, compile, measure."""
    import gc

    import numpy as np
    import pyarrow as pa

    from bench.synthetic import make_events, make_plan
    from sorter.core.router import Router

    out: dict = {"rows": rows, "rss_baseline": _rss(), "peak_rss_baseline": _peak()}
    t0 = time.perf_counter()
    plan = make_plan(prefixes, chutes, rows, seed)
    out["plan_build_s"] = time.perf_counter() - t0
    gc.collect()
    out["rss_after_plan"] = _rss()
    out["peak_rss_before_compile"] = _peak()
    out["arrow_manifest_bytes"] = int(plan.manifest.nbytes)
    out["arrow_allocated_bytes"] = int(pa.total_allocated_bytes())
    events = make_events(plan, 20_000, seed)              # drawn from the manifest

    t0 = time.perf_counter()
    router = Router(plan)
    out["compile_s"] = time.perf_counter() - t0
    compiled = router._core.plan
    out["compiled_bytes"] = int(compiled.nbytes)
    out["compiled_manifest_keys"] = int(compiled.manifest_rows)
    gc.collect()
    out["rss_after_compile"] = _rss()
    out["peak_rss_after_compile"] = _peak()
    pa.default_memory_pool().release_unused()
    out["malloc_trim"] = _trim()
    out["rss_after_compile_trimmed"] = _rss()
    out["arrow_allocated_bytes_after_compile"] = int(pa.total_allocated_bytes())

    decisions = router.route(events)
    out["routed_events"] = len(events)
    out["sorted_share"] = float(np.mean(decisions.reason == 0))

    router.plan.manifest = None                           # the compiled tables stay
    del plan, events
    gc.collect()
    pa.default_memory_pool().release_unused()
    _trim()
    out["rss_without_arrow_manifest"] = _rss()
    # VmHWM lags the per-thread RSS counters a little: never report a peak below a reading
    out["peak_rss"] = max([_peak()] + [v for k, v in out.items()
                                      if k.startswith(("rss_", "peak_rss")) and v])
    out["ru_maxrss"] = _maxrss()
    out["memory_pool"] = pa.default_memory_pool().backend_name
    return out


def run(args) -> dict:
    rows = args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    cmd = [sys.executable, "-m", "bench.memory", "--child", "--rows", str(rows),
           "--prefixes", str(args.prefixes), "--chutes", str(args.chutes), "--seed",
           str(args.seed)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    wall = time.perf_counter() - t0
    result: dict = {"ok": proc.returncode == 0, "command": cmd, "subprocess_s": round(wall, 3)}
    if proc.returncode != 0:
        result["error"] = f"subprocess exited with {proc.returncode}: {proc.stderr[-2000:]}"
        return result
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update({
        "manifest_rows": rows,
        "peak_rss_bytes": m["peak_rss"],
        "compiled_bytes": m["compiled_bytes"],
        "arrow_manifest_bytes": m["arrow_manifest_bytes"],
        "rss_after_compile_bytes": m["rss_after_compile"],
        "rss_after_compile_trimmed_bytes": m["rss_after_compile_trimmed"],
        "rss_without_arrow_manifest_bytes": m["rss_without_arrow_manifest"],
        "compiled_bytes_per_row": m["compiled_bytes"] / rows if rows else None,
        "arrow_bytes_per_row": m["arrow_manifest_bytes"] / rows if rows else None,
        "child": m,
        "machine": machine_info(),
        "params": {"seed": args.seed, "quick": bool(args.quick), "rows": rows,
                   "prefixes": args.prefixes, "chutes": args.chutes},
    })
    if m.get("sorted_share", 0) <= 0:
        result.update(ok=False, error="the compiled plan sorted nothing")
    return result


def _mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f} MiB"


def report(r: dict) -> str:
    if "child" not in r:
        return f"bench memory: {r.get('error')}"
    m = r["child"]
    return "\n".join([
        f"bench memory: {r['manifest_rows']:,}-row manifest{' (quick)' if r['params']['quick'] else ''}"
        f"; plan built in {m['plan_build_s']:.1f} s, compiled in {m['compile_s']:.1f} s",
        f"  peak RSS {_mib(r['peak_rss_bytes'])} (after building the plan: "
        f"{_mib(m['peak_rss_before_compile'])}); RSS after compile "
        f"{_mib(m['rss_after_compile'])} ({_mib(m['rss_after_compile_trimmed'])} after "
        f"malloc_trim), without the Arrow manifest "
        f"{_mib(m['rss_without_arrow_manifest'])}, at start {_mib(m['rss_baseline'])}",
        f"  compiled tables {_mib(r['compiled_bytes'])} ({r['compiled_bytes_per_row']:.0f} B/row, "
        f"{m['compiled_manifest_keys']:,} keys); Arrow manifest {_mib(r['arrow_manifest_bytes'])} "
        f"({r['arrow_bytes_per_row']:.0f} B/row)",
    ])


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory",
                                description="the subprocess of `python -m bench memory`")
    p.add_argument("--child", action="store_true", required=True)
    p.add_argument("--rows", type=_count, required=True)
    p.add_argument("--prefixes", type=_count, default=5000)
    p.add_argument("--chutes", type=_count, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(json.dumps(child(a.rows, a.prefixes, a.chutes, a.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
