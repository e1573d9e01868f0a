"""The headline figures of a run of every suite: a table for the terminal and for
bench/README.md (between `<!-- figures:start -->` and `<!-- figures:end -->`, rewritten by
`python -m bench` after a full run, or by `--update-readme`; never edited by hand).

`rows(out)` turns the combined JSON (`{"suites": {name: result}, "machine": ...}`) into rows
of {suite, figure, value, unit, text, note}; a suite that is missing or failed gives a row
saying so.
"""
from __future__ import annotations

import re
from pathlib import Path

START = "<!-- figures:start -->"
END = "<!-- figures:end -->"


def _si(x, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}" + (f" {unit}" if unit else "")
    return f"{x:.3g} {unit}".rstrip()


def _us(x) -> str:
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x / 1000:.3g} ms"
    return f"{x:.3g} us"


def _mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f} MiB"


def _row(suite, figure, value, unit, text, note="") -> dict:
    return {"suite": suite, "figure": figure, "value": value, "unit": unit, "text": text,
            "note": note}


def _core(r: dict) -> list[dict]:
    out = []
    one = (r.get("core") or {}).get("one_call") or {}
    out.append(_row("core", f"core, all {r['events']:,} events in one call",
                    r["core_events_per_s"], "events/s", _si(r["core_events_per_s"], "events/s"),
                    f"{one.get('ns_per_event', 0):.0f} ns/event; median run "
                    f"{_si(r.get('core_events_per_s_median'), 'events/s')}"))
    out.append(_row("core", f"reference router ({r['reference_events']:,} events)",
                    r["reference_events_per_s"], "events/s",
                    _si(r["reference_events_per_s"], "events/s"),
                    f"core is {r['ratio']:.0f}x faster; decisions identical: "
                    f"{'yes' if r.get('agree') else 'NO'}"))
    for size, b in sorted(((r.get("core") or {}).get("batched") or {}).items(),
                          key=lambda kv: int(kv[0])):
        k = int(size)
        out.append(_row("core", f"core, {k:,} event{'s' if k > 1 else ''} per call",
                        b["events_per_s"], "events/s", _si(b["events_per_s"], "events/s"),
                        f"{_us(b.get('us_per_call'))} per call"
                        + (f"; the first {b['events']:,} events"
                           if b.get("events") not in (None, r["events"]) else "")))
    return out


def _peers(r: dict) -> list[dict]:
    out = []
    t = r.get("throughput") or {}
    labels = [("core", "core, same run"), ("naive_route", "naive script, routing only"),
              ("naive_zmq", "naive script, one JSON message per event over ZeroMQ"),
              ("duckdb", "DuckDB SQL, default threads"), ("duckdb_1thread", "DuckDB SQL, 1 thread"),
              ("reference", "reference router, same run")]
    for key, label in labels:
        f = t.get(key)
        if not f:
            continue
        ratio = (r.get("ratios") or {}).get(key)
        note = f"{f.get('events', 0):,} events"
        if f.get("threads"):
            label = f"DuckDB SQL, {f['threads']} thread{'s' if f['threads'] > 1 else ''}"
        if ratio:
            note += f"; core is {ratio:,.0f}x faster"
        out.append(_row("peers", label, f.get("events_per_s"), "events/s",
                        _si(f.get("events_per_s"), "events/s"), note))
    d = r.get("duckdb")
    if d:
        a = d["agreement"]
        out.append(_row("peers", "DuckDB decisions equal to the core's", a["agreement_pct"], "%",
                        f"{a['agreement_pct']}%",
                        f"on the {d['handled_pct']}% of events its SQL handles"))
    a = (r.get("naive") or {}).get("agreement")
    if a:
        out.append(_row("peers", "naive script decisions equal to the core's", a["agreement_pct"],
                        "%", f"{a['agreement_pct']}%",
                        "differs on conflicts: its first read wins"))
    return out


def _engine(r: dict) -> list[dict]:
    out = []
    lat = r.get("latency") or {}
    p = r.get("params") or {}
    for system in ("engine", "relay", "proxy"):
        x = lat.get(system)
        if not x:
            continue
        out.append(_row("engine", f"{system} latency at {r['offered_per_s']:,}/s, "
                                  f"{p.get('batch', 1)} event/message",
                        x.get("p99_us"), "us",
                        " / ".join(_us(x.get(k)) for k in
                                   ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")),
                        "p50 / p90 / p99 / p99.9 / max"))
    steps = (r.get("sweep") or {}).get("steps") or []
    for system in ("engine", "relay"):
        pts = sorted([x for x in steps if x["system"] == system]
                     + ([lat[system]] if lat.get(system) else []),
                     key=lambda x: x["offered_per_s"])
        if len(pts) > 1:
            out.append(_row("engine", f"{system} p99 against offered rate, 1 event/message",
                            None, "us",
                            ", ".join(f"{_si(x['offered_per_s'])}/s: {_us(x['p99_us'])}"
                                      + ("" if x["sustained"] else " (not sustained)")
                                      for x in pts), "open loop"))
    sat = r.get("saturation") or {}
    for system, v in (sat.get("max_per_s") or {}).items():
        lb = (sat.get("lower_bound") or {}).get(system)
        out.append(_row("engine", f"{system} max sustained, {sat.get('batch')} events/message",
                        v, "events/s", _si(v, "events/s") + (" or more" if lb else ""),
                        f">= {100 * sat['criterion']['in_time_fraction_min']:g}% in time, "
                        f"p99 <= {sat['criterion']['p99_ms_max']:g} ms"))
    if r.get("p99_ratio") is not None:
        out.append(_row("engine", "engine / relay at the latency rate", r["p99_ratio"], "x",
                        f"p99 {r['p99_ratio']:.2f}x, p99.9 {r.get('p999_ratio') or 0:.2f}x",
                        "goal: <= 1.5x and <= 2x"))
    return out


def _audit(r: dict) -> list[dict]:
    from bench.audit import POLICY_LABELS

    out = []
    sizes = (r.get("params") or {}).get("sizes", [])
    for policy, by_size in (r.get("rows_per_s") or {}).items():
        text = ", ".join(f"{int(s):,}: {_si(by_size.get(str(s)))}" for s in sizes)
        top = by_size.get(str(max(sizes))) if sizes else None
        out.append(_row("audit", f"rows/s by rows per batch, {POLICY_LABELS.get(policy, policy)}",
                        top, "rows/s", text, "one Arrow record batch per turn (pyarrow)"))
    for policy, by_size in (r.get("journal_rows_per_s") or {}).items():
        text = ", ".join(f"{int(s):,}: {_si(by_size.get(str(s)))}" for s in sizes)
        top = by_size.get(str(max(sizes))) if sizes else None
        out.append(_row("audit", f"journal rows/s by events per turn, "
                                 f"{POLICY_LABELS.get(policy, policy)}",
                        top, "rows/s", text, "one record, one write(2) per turn"))
    c = r.get("compactor_rows_per_s") or {}
    if c:
        text = ", ".join(f"{int(s):,}: {_si(c.get(str(s)))}" for s in sizes)
        out.append(_row("audit", "compactor rows/s by events per turn", c.get(str(max(sizes))),
                        "rows/s", text, "journal -> Arrow file, fsync + rename"))
    b = r.get("bytes_per_decision") or {}
    for key in ("journal", "compacted", "arrow_per_turn"):
        if b.get(key):
            text = ", ".join(f"{int(s):,}: {_f(b[key].get(str(s)))}" for s in sizes)
            out.append(_row("audit", f"bytes on disk per decision, {key.replace('_', ' ')}",
                            b[key].get(str(min(sizes))) if sizes else None, "bytes", text,
                            "by events per turn"))
    return out


def _f(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _memory(r: dict) -> list[dict]:
    m = r.get("child") or {}
    n = r.get("manifest_rows", 0)
    return [
        _row("memory", f"peak RSS, {n:,}-row manifest built and compiled", r["peak_rss_bytes"],
             "bytes", _mib(r["peak_rss_bytes"]),
             f"{_mib(m.get('peak_rss_before_compile'))} after building the plan; "
             f"compile {m.get('compile_s', 0):.1f} s"),
        _row("memory", "resident after compile (live)", r.get("rss_after_compile_trimmed_bytes"),
             "bytes", _mib(r.get("rss_after_compile_trimmed_bytes")),
             f"{_mib(r.get('rss_without_arrow_manifest_bytes'))} with the Arrow table dropped"),
        _row("memory", "compiled tables", r["compiled_bytes"], "bytes",
             _mib(r["compiled_bytes"]), f"{r['compiled_bytes_per_row']:.0f} bytes per row"),
        _row("memory", "Arrow manifest table (Python side)", r["arrow_manifest_bytes"], "bytes",
             _mib(r["arrow_manifest_bytes"]), f"{r['arrow_bytes_per_row']:.0f} bytes per row"),
    ]


SUITE_ROWS = {"core": _core, "peers": _peers, "engine": _engine, "audit": _audit,
              "memory": _memory}


def rows(out: dict) -> list[dict]:
    result = []
    for name, r in (out.get("suites") or {}).items():
        fn = SUITE_ROWS.get(name)
        if fn is None:
            continue
        if not r.get("ok", True) and "traceback" in r:
            result.append(_row(name, "FAILED", None, "", r.get("error", "?"), ""))
            continue
        try:
            result.extend(fn(r))
        except (KeyError, TypeError, ValueError) as e:
            result.append(_row(name, "no figures", None, "", f"{type(e).__name__}: {e}", ""))
        if not r.get("ok", True):
            result.append(_row(name, "check failed", None, "", str(r.get("error", "?"))[:200],
                               ""))
    return result


def _header(out: dict) -> str:
    m = out.get("machine") or {}
    mins = (out.get("wall_s") or 0) / 60
    kind = "quick (smoke sizes)" if out.get("quick") else "full"
    return (f"Latest {kind} run: {out.get('started_at', '?')}, {mins:.1f} min; "
            f"{m.get('cpu_usable', m.get('cpu_count'))} vCPU ({m.get('cpu_model')}), "
            f"{(m.get('memory_total_bytes') or 0) / 2**30:.0f} GiB, {m.get('platform')}; "
            f"Python {m.get('python')}, numpy {m.get('numpy')}, pyarrow {m.get('pyarrow')}, "
            f"pyzmq {m.get('pyzmq')} (libzmq {m.get('libzmq')}), DuckDB {m.get('duckdb')}; "
            f"load average at start {', '.join(f'{x:.2f}' for x in (m.get('loadavg') or []))}.")


def markdown(out: dict) -> str:
    lines = [_header(out), "", "| suite | figure | value | notes |", "| --- | --- | --- | --- |"]
    for r in out.get("figures") or rows(out):
        cells = [r["suite"], r["figure"], r["text"], r["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def text_table(out: dict) -> str:
    figs = out.get("figures") or rows(out)
    w = max([len(r["figure"]) for r in figs] + [10])
    lines = ["", "figures:"]
    for r in figs:
        lines.append(f"  {r['suite']:<7} {r['figure']:<{w}}  {r['text']}"
                     + (f"   ({r['note']})" if r["note"] else ""))
    return "\n".join(lines)


def update_readme(path: Path, out: dict, json_path: Path | None = None) -> None:
    """Replace the block between the markers of `path` with the figures of `out`."""
    text = Path(path).read_text()
    source = (f"Generated by `python -m bench` from `{json_path}`" if json_path
              else "Generated by `python -m bench`")
    block = f"{START}\n<!-- {source}; do not edit by hand. -->\n\n{markdown(out)}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Figures\n\n" + block + "\n"
    Path(path).write_text(text)
