"""`python -m bench core`: decode + validate + route throughput of the compiled core.

Builds a synthetic plan (5,000 prefixes, 200 chutes, 1M-row manifest) and 1M synthetic events
once (bench/synthetic.py), compiles the plan, then

1. routes the first `--reference-events` events through a fresh compiled `Router` and through
   `ReferenceRouter` (same plan, same chute states) and checks that chute, reason and
   destination agree event by event (the run fails if not); the reference run is timed;
2. routes all events through the core in one call, `--repeats` times after one warm-up call
   (best and median), and again in batches of 1, 16, 256, 4,096 and 65,536 events per call
   (`--batch`), to show the per-call overhead (at most `--max-calls` calls per size: the
   small sizes route the first events only);
3. profiles: `sorter.core._core.decode_reads` alone over every read, and the core per event
   category (S10, GS1, bare postcode, ...).

Only the routing calls are timed (`time.perf_counter_ns`); plan, events and sub-batches are
built before. Routing is single-threaded: one call runs on one core.
"""
from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

import numpy as np

from bench import QUICK_FACTOR, _count, machine_info
from bench.synthetic import (CATEGORIES, CATEGORY_WEIGHTS, make_chute_states,
                             make_events_labelled, make_plan, take)
from sorter.core import _core
from sorter.core.codes import REASONS
from sorter.core.countries import alpha2_to_numeric
from sorter.core.events import EventBatch
from sorter.core.reference import ReferenceRouter
from sorter.core.router import Router

DEFAULTS = {"events": 1_000_000, "manifest_rows": 1_000_000, "prefixes": 5_000, "chutes": 200,
            "reference_events": 100_000}
QUICK_SCALED = ("events", "manifest_rows", "prefixes", "reference_events")
DEFAULT_BATCHES = (1, 16, 256, 4096, 65_536)
MAX_CALLS = 50_000                     # per batch size (quick: a tenth)
GOALS = {"core_events_per_s": 5_000_000, "ratio": 20}
AIMS = {"core_events_per_s": 10_000_000, "ratio": 30}


def add_arguments(parser) -> None:
    g = parser.add_argument_group("core suite")
    g.add_argument("--events", type=_count, help="events routed by the core (default 1M)")
    g.add_argument("--manifest-rows", type=_count, help="manifest rows (default 1M)")
    g.add_argument("--prefixes", type=_count, help="postcode prefix rules (default 5000)")
    g.add_argument("--chutes", type=_count, help="chutes in the plan (default 200)")
    g.add_argument("--reference-events", type=_count,
                   help="events routed by the reference and cross-checked (default 100k)")
    g.add_argument("--repeats", type=int, default=5,
                   help="timed repetitions of each core measurement (default 5)")
    g.add_argument("--batch", type=_count, action="append", metavar="N",
                   help="also route in batches of N events (repeatable; default 1, 16, 256, "
                        "4096 and 65536)")
    g.add_argument("--max-calls", type=_count,
                   help=f"at most this many calls per batch size ({MAX_CALLS:,}; quick "
                        f"{MAX_CALLS // QUICK_FACTOR:,}): small batches route the first "
                        f"events only")
    g.add_argument("--no-profile", action="store_true",
                   help="skip the decode-only and per-category measurements")


def _sizes(args) -> dict[str, int]:
    sizes = {}
    for key, default in DEFAULTS.items():
        value = getattr(args, key)
        if value is None:
            value = max(1, default // QUICK_FACTOR) if args.quick and key in QUICK_SCALED else default
        sizes[key] = value
    sizes["reference_events"] = min(sizes["reference_events"], sizes["events"])
    return sizes


def _timed(fn, repeats: int) -> list[int]:
    """ns per call of fn(), `repeats` times."""
    out = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
    return out


def _rate(n: int, times_ns: list[int]) -> dict:
    best, median = min(times_ns), statistics.median(times_ns)
    return {
        "events_per_s": n / best * 1e9 if best else None,
        "events_per_s_median": n / median * 1e9 if median else None,
        "best_s": best / 1e9, "median_s": median / 1e9,
        "ns_per_event": best / n if n else None,
        "runs_s": [t / 1e9 for t in times_ns],
    }


def _reason_counts(reason: np.ndarray) -> dict[str, int]:
    counts = np.bincount(reason, minlength=len(REASONS))
    return {name: int(counts[i]) for i, name in enumerate(REASONS)}


def _core_build() -> dict:
    so = Path(_core.__file__)
    pyx = so.with_name("_core.pyx")
    out = {"module": so.name,
           "module_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(so.stat().st_mtime))}
    if pyx.exists():
        out["pyx_sha256"] = hashlib.sha256(pyx.read_bytes()).hexdigest()[:16]
        out["pyx_newer_than_module"] = pyx.stat().st_mtime > so.stat().st_mtime
    return out


def _compare(batch, core, ref, plan, limit: int = 20) -> tuple[int, list[dict]]:
    bad = np.flatnonzero((core.chute != ref.chute) | (core.reason != ref.reason)
                         | (core.destination != ref.destination))
    details = []
    for i in bad[:limit].tolist():
        details.append({
            "event": i,
            "reads": [r.decode("latin-1") for r in batch.reads(i)],
            "recirculations": int(batch.recirculations[i]),
            "core": [int(core.chute[i]), REASONS[core.reason[i]],
                     _dest_name(plan, int(core.destination[i]))],
            "reference": [int(ref.chute[i]), REASONS[ref.reason[i]],
                          _dest_name(plan, int(ref.destination[i]))],
        })
    return len(bad), details


def _dest_name(plan, d: int):
    return plan.destinations[d].name if 0 <= d < len(plan.destinations) else d


def _slices(batch, size: int, limit: int | None = None) -> list[EventBatch]:
    """The first `limit` events (default all) as consecutive batches of `size` events, built
    before the clock: views of the columns and of the reads' offsets, event offsets rebased
    (a small copy each), the data buffer shared. The core reads only its batch's reads, so a
    call costs what routing a message of that many events costs."""
    n = len(batch) if limit is None else min(len(batch), limit)
    eo = batch.event_offsets
    out = []
    for s in range(0, n, size):
        e = min(s + size, n)
        r0, r1 = int(eo[s]), int(eo[e])
        out.append(EventBatch(
            parcel_ids=batch.parcel_ids[s:e], scanner_ids=batch.scanner_ids[s:e],
            ts_ns=batch.ts_ns[s:e], recirculations=batch.recirculations[s:e],
            event_offsets=eo[s:e + 1] - eo[s], read_offsets=batch.read_offsets[r0:r1 + 1],
            data=batch.data))
    return out


def run(args) -> dict:
    sizes = _sizes(args)
    seed, repeats = args.seed, max(1, args.repeats)
    batch_sizes = list(args.batch or DEFAULT_BATCHES)

    t0 = time.perf_counter_ns()
    plan = make_plan(sizes["prefixes"], sizes["chutes"], sizes["manifest_rows"], seed)
    plan_build_s = (time.perf_counter_ns() - t0) / 1e9
    t0 = time.perf_counter_ns()
    events, labels = make_events_labelled(plan, sizes["events"], seed)
    events_build_s = (time.perf_counter_ns() - t0) / 1e9
    states = make_chute_states(plan, seed)

    t0 = time.perf_counter_ns()
    router = Router(plan)
    compile_s = (time.perf_counter_ns() - t0) / 1e9
    compiled = router._core.plan
    for chute, state in states.items():
        router.set_chute_state(chute, state)

    # 1. Cross-check on the subsample with fresh round-robin positions on both sides, and time
    #    the reference.
    n_ref = sizes["reference_events"]
    ref_batch = take(events, np.arange(n_ref))
    core_on_ref = router.route(ref_batch)
    t0 = time.perf_counter_ns()
    reference = ReferenceRouter(plan)
    reference_setup_s = (time.perf_counter_ns() - t0) / 1e9
    for chute, state in states.items():
        reference.set_chute_state(chute, state)
    t0 = time.perf_counter_ns()
    ref_decisions = reference.route(ref_batch)
    reference_ns = time.perf_counter_ns() - t0
    n_bad, mismatches = _compare(ref_batch, core_on_ref, ref_decisions, plan)
    reference_rate = n_ref / reference_ns * 1e9 if reference_ns else None

    # 2. The core over every event: one warm-up call (its reasons are reported), then timed.
    n = len(events)
    decisions = router.route(events)
    full = _rate(n, _timed(lambda: router.route(events), repeats))
    batched = {}
    max_calls = args.max_calls or (max(1, MAX_CALLS // QUICK_FACTOR) if args.quick else MAX_CALLS)
    for size in batch_sizes:
        parts = _slices(events, size, size * max_calls)
        n_part = sum(len(x) for x in parts)

        def route_all(parts=parts):
            route = router.route
            for part in parts:
                route(part)

        route_all()
        r = _rate(n_part, _timed(route_all, repeats))
        batched[str(size)] = {"batch": size, "batches": len(parts), "events": n_part,
                              "us_per_call": r["best_s"] * 1e6 / len(parts), **r}
        del parts

    # 3. Where the time goes.
    profile = None
    if not args.no_profile:
        home = alpha2_to_numeric(plan.home_country)
        n_reads = len(events.read_offsets) - 1
        _core.decode_reads(events.read_offsets, events.data, home)
        decode = _rate(n_reads, _timed(
            lambda: _core.decode_reads(events.read_offsets, events.data, home), repeats))
        decode = {"reads": n_reads, "reads_per_s": decode.pop("events_per_s"),
                  "ns_per_read": decode.pop("ns_per_event"), **decode}
        decode.pop("events_per_s_median", None)
        by_category = {}
        for k, name in enumerate(CATEGORIES):
            idx = np.flatnonzero(labels == k)
            if not len(idx):
                continue
            part = take(events, idx)
            router.route(part)
            r = _rate(len(idx), _timed(lambda part=part: router.route(part), repeats))
            by_category[name] = {"events": len(idx), "events_per_s": r["events_per_s"],
                                 "ns_per_event": r["ns_per_event"]}
        profile = {"decode_reads_only": decode, "by_category": by_category}

    core_rate = full["events_per_s"]
    ratio = core_rate / reference_rate if core_rate and reference_rate else None
    result = {
        "ok": n_bad == 0,
        "core_events_per_s": core_rate,
        "reference_events_per_s": reference_rate,
        "ratio": ratio,
        "core_events_per_s_median": full["events_per_s_median"],
        "ratio_median": (full["events_per_s_median"] / reference_rate
                         if full["events_per_s_median"] and reference_rate else None),
        "events": n,
        "reads": len(events.read_offsets) - 1,
        "event_bytes": int(len(events.data)),
        "reference_events": n_ref,
        "manifest_rows": plan.manifest_rows(),
        "manifest_table_rows": int(compiled.manifest_rows),
        "manifest_bytes": int(compiled.nbytes),
        "prefixes": len(plan.postcode_rules),
        "chutes": len(plan.chutes),
        "destinations": len(plan.destinations),
        "compile_s": compile_s,
        "plan_build_s": plan_build_s,
        "events_build_s": events_build_s,
        "reference_setup_s": reference_setup_s,
        "reference_s": reference_ns / 1e9,
        "agree": n_bad == 0,
        "disagreements": n_bad,
        "mismatches": mismatches,
        "reason_counts": _reason_counts(decisions.reason),
        "reference_reason_counts": _reason_counts(ref_decisions.reason),
        "core": {"one_call": full, "batched": batched},
        "profile": profile,
        "goals": {
            "min": GOALS, "aim": AIMS,
            "met": {"core_events_per_s": bool(core_rate and core_rate >= GOALS["core_events_per_s"]),
                    "ratio": bool(ratio and ratio >= GOALS["ratio"])},
        },
        "machine": machine_info(),
        "core_build": _core_build(),
        "params": {
            "seed": seed, "quick": bool(args.quick), "repeats": repeats,
            "batch_sizes": batch_sizes, "max_calls": max_calls, **sizes,
            "event_mix": dict(zip(CATEGORIES, CATEGORY_WEIGHTS)),
            "event_counts": {name: int((labels == k).sum()) for k, name in enumerate(CATEGORIES)},
            "chute_states": {s: sum(1 for v in states.values() if v == s)
                             for s in ("full", "disabled")},
            "deadline_ns": 0,
            "threads": 1,
        },
    }
    if n_bad:
        result["error"] = (f"core and reference disagree on {n_bad} of {n_ref} events; "
                           f"first: {mismatches[0]}")
    return result


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.1f} {unit}"


def report(r: dict) -> str:
    p = r["params"]
    one = r["core"]["one_call"]
    n_all = r["events"]
    row = "  {:<30}{:>10}{:>10}{:>14}{:>10}"
    lines = [
        f"bench core: seed {p['seed']}{' (quick)' if p['quick'] else ''}, {r['events']:,} events "
        f"({r['reads']:,} reads), manifest {r['manifest_rows']:,} rows, {r['prefixes']:,} "
        f"prefixes, {r['chutes']} chutes, {r['destinations']} destinations",
        f"  build: plan {r['plan_build_s']:.2f} s, events {r['events_build_s']:.2f} s; compile "
        f"{r['compile_s']:.3f} s, compiled tables {r['manifest_bytes'] / 2**20:.1f} MiB "
        f"({r['manifest_table_rows']:,} manifest keys)",
        row.format("measurement", "best ms", "median ms", "events/s", "ns/event"),
        row.format("core, 1 call", f"{one['best_s'] * 1e3:.1f}", f"{one['median_s'] * 1e3:.1f}",
                   _si(one["events_per_s"]), f"{one['ns_per_event']:.1f}"),
    ]
    for size, b in r["core"]["batched"].items():
        label = f"core, {int(size):,}/call" + (f" ({b['events']:,} ev)" if b.get("events", n_all)
                                                 != n_all else "")
        lines.append(row.format(label, f"{b['best_s'] * 1e3:.1f}",
                                f"{b['median_s'] * 1e3:.1f}", _si(b["events_per_s"]),
                                f"{b['ns_per_event']:.1f}")
                     + (f"  {b['us_per_call']:.1f} us/call" if "us_per_call" in b else ""))
    ref_rate = r["reference_events_per_s"]
    lines.append(row.format(f"reference, {r['reference_events']:,} events",
                            f"{r['reference_s'] * 1e3:.0f}", "", _si(ref_rate),
                            f"{1e9 / ref_rate:.0f}" if ref_rate else "-"))
    if r["ratio"]:
        met = r["goals"]["met"]
        lines.append(
            f"  ratio core/reference {r['ratio']:.1f}x (median {r['ratio_median']:.1f}x); goals: "
            f">= 5M events/s {'met' if met['core_events_per_s'] else 'MISSED'}, "
            f">= 20x {'met' if met['ratio'] else 'MISSED'}")
    prof = r.get("profile")
    if prof:
        d = prof["decode_reads_only"]
        lines.append(f"  profile: decode_reads alone {_si(d['reads_per_s'], 'reads/s')} "
                     f"({d['ns_per_read']:.1f} ns/read, incl. filling its output columns)")
        lines.append("  core ns/event by category: " + ", ".join(
            f"{k} {v['ns_per_event']:.0f}" for k, v in prof["by_category"].items()))
    total = sum(r["reason_counts"].values()) or 1
    lines.append("  reasons: " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                           for k, v in r["reason_counts"].items() if v))
    verdict = "yes" if r["agree"] else f"NO, {r['disagreements']} differ"
    lines.append(f"  core and reference agree on {r['reference_events']:,} events: {verdict}")
    return "\n".join(lines)
