"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed).

    from bench import plots
    paths = plots.draw({"core": core_result, "engine": engine_result, ...}, Path("bench/plots"))

`draw` makes one file per figure it has data for, skipping the others:

- `engine_latency.png` (engine suite): latency percentiles (p50, p90, p99, p99.9, max) against
  offered rate, engine and relay, one panel at one event per message (latency phase + sweep)
  and one at 64 events per message (saturation steps); hollow markers: rate not sustained;
- `throughput.png` (peers suite, plus the engine suite's sustained rates): events/s per
  implementation, in-process batch routing and end to end over ZeroMQ;
- `core_scaling.png` (core suite): events/s and time per call against events per call;
- `audit.png` (audit suite): journal and Arrow-per-turn rows/s against events per turn, per
  fsync policy;
- `memory.png` (memory suite): resident memory and table sizes with the big manifest.

`where` is a directory (created) unless its last part ends with '-', '_' or '.', in which case
it is a prefix of the file names (`out/run1-` -> `out/run1-throughput.png`).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

PERCENTILES = (("p50_us", "p50", "#1f77b4"), ("p90_us", "p90", "#2ca02c"),
               ("p99_us", "p99", "#ff7f0e"), ("p999_us", "p99.9", "#d62728"),
               ("max_us", "max", "#7f7f7f"))
SYSTEM_STYLE = {"engine": ("-", "o"), "relay": ("--", "s"), "proxy": (":", "^")}
DPI = 100


def _target(where: Path, name: str) -> Path:
    where = Path(where)
    if where.name.endswith(("-", "_", ".")):
        where.parent.mkdir(parents=True, exist_ok=True)
        return where.with_name(where.name + name)
    where.mkdir(parents=True, exist_ok=True)
    return where / name


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            v = x / scale
            return f"{v:.3g}{prefix}{unit}"
    return f"{x:.3g}{unit}"


_SI = FuncFormatter(lambda x, _pos: _si(x) if x > 0 else "0")


def _us(x: float) -> str:
    if x >= 1000:
        return f"{x / 1000:.3g} ms"
    return f"{x:.3g} us"


_US = FuncFormatter(lambda x, _pos: _us(x) if x > 0 else "0")


def _log_axes(ax, xs, y_formatter) -> None:
    """Log-log axes with the measured x values as ticks and no minor-tick labels."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:,}" for x in xs], fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(y_formatter)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.06, y=0.12)


def _footer(fig, result: dict) -> None:
    m = result.get("machine") or {}
    bits = [result.get("started_at", "")[:16].replace("T", " ")]
    if m:
        bits.append(f"{m.get('cpu_usable') or m.get('cpu_count')} vCPU {m.get('cpu_model') or ''}"
                    .strip())
        bits.append(f"Python {m.get('python')}")
    if (result.get("params") or {}).get("quick"):
        bits.append("--quick (smoke sizes, not for comparison)")
    fig.text(0.01, 0.005, " | ".join(b for b in bits if b), fontsize=7, color="#555555",
             ha="left", va="bottom")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# engine


def _latency_panel(ax, rows: list[dict], title: str) -> None:
    systems = sorted({r["system"] for r in rows}, key=lambda s: list(SYSTEM_STYLE).index(s)
                     if s in SYSTEM_STYLE else 9)
    for system in systems:
        mine = sorted((r for r in rows if r["system"] == system),
                      key=lambda r: r["offered_per_s"])
        ls, marker = SYSTEM_STYLE.get(system, ("-.", "d"))
        for key, _label, colour in PERCENTILES:
            pts = [(r["offered_per_s"], r[key], r.get("sustained", True)) for r in mine
                   if r.get(key)]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, color=colour, lw=1.4,
                    alpha=0.9)
            for x, y, ok in pts:
                ax.plot([x], [y], marker=marker, ms=5, color=colour,
                        mfc=colour if ok else "white", mew=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    rates = sorted({r["offered_per_s"] for r in rows})
    if rates:
        ax.set_xticks(rates)
        ax.set_xticklabels([_si(x) for x in rates], fontsize=8)
        ax.set_xlim(rates[0] / 1.4, rates[-1] * 1.4)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(_US)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("offered rate (events/s, log; the rates measured)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def engine_latency(r: dict, where: Path) -> Path | None:
    lat = r.get("latency") or {}
    batch1 = [x for x in lat.values() if x] + list((r.get("sweep") or {}).get("steps") or [])
    sat = list((r.get("saturation") or {}).get("steps") or [])
    if not batch1 and not sat:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    b1 = (r.get("params") or {}).get("batch", 1)
    _latency_panel(axes[0], batch1, f"{b1} event per message (latency phase + sweep)")
    sb = (r.get("saturation") or {}).get("batch", 64)
    _latency_panel(axes[1], sat, f"{sb} events per message (saturation steps)")
    axes[0].set_ylabel("latency: receive - intended send (log)")
    best = (r.get("saturation") or {}).get("max_per_s") or {}
    if best.get("engine"):
        axes[1].axvline(best["engine"], color="black", lw=0.8, alpha=0.5)
        axes[1].text(best["engine"] / 1.05, axes[1].get_ylim()[0] * 1.15,
                     f"engine max sustained: {_si(best['engine'])}/s ", fontsize=7,
                     va="bottom", ha="right")
    pct = [Line2D([], [], color=c, lw=2, label=lab) for _k, lab, c in PERCENTILES]
    systems = sorted({x["system"] for x in batch1 + sat})
    sysl = [Line2D([], [], color="black", ls=SYSTEM_STYLE.get(s, ("-.", "d"))[0],
                   marker=SYSTEM_STYLE.get(s, ("-.", "d"))[1], label=s) for s in systems]
    sysl.append(Line2D([], [], color="black", marker="o", mfc="white", ls="", label="not sustained"))
    axes[0].legend(handles=pct, loc="upper left", fontsize=8, title="percentile",
                   title_fontsize=8)
    axes[1].legend(handles=sysl, loc="upper left", fontsize=8, title="system",
                   title_fontsize=8)
    fig.suptitle("Engine vs bare ZeroMQ relay: open-loop latency against offered rate "
                 "(HdrHistogram, audit on)", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _footer(fig, r)
    return _save(fig, _target(where, "engine_latency.png"))


# --------------------------------------------------------------------------------------------
# throughput per implementation


def throughput(peers: dict | None, engine: dict | None, where: Path) -> Path | None:
    bars: list[tuple[str, float, str, str]] = []      # label, value, group, note
    if peers:
        t = peers.get("throughput") or {}
        labels = {
            "core": ("core (compiled), 1 call", "in process"),
            "duckdb": ("DuckDB SQL, {threads} threads", "in process"),
            "duckdb_1thread": ("DuckDB SQL, 1 thread", "in process"),
            "reference": ("reference router (Python)", "in process"),
            "naive_route": ("naive script, routing only", "in process"),
            "naive_zmq": ("naive script, JSON per event", "ZeroMQ"),
        }
        for key, (label, group) in labels.items():
            f = t.get(key)
            if f and f.get("events_per_s"):
                bars.append((label.format(threads=f.get("threads", "")), f["events_per_s"], group,
                             f"{f.get('events', 0):,} events"))
    if engine:
        sat = (engine.get("saturation") or {})
        mx = sat.get("max_per_s") or {}
        if mx.get("engine"):
            lb = (sat.get("lower_bound") or {}).get("engine")
            bars.append((f"engine, {sat.get('batch', 64)} events/message", mx["engine"],
                         "ZeroMQ", "max sustained" + (" (or more)" if lb else "")))
        tried = [x for x in ((engine.get("sweep") or {}).get("steps") or [])
                 + [(engine.get("latency") or {}).get("engine") or {}]
                 if x.get("system") == "engine"]
        sw = [x for x in tried if x.get("sustained")]
        if sw:
            best = max(x["offered_per_s"] for x in sw)
            every = len(sw) == len(tried)
            bars.append(("engine, 1 event/message", best, "ZeroMQ",
                         "highest rate tried, sustained (a lower bound)" if every
                         else "highest rate sustained"))
    if not bars:
        return None
    order = {"in process": 0, "ZeroMQ": 1}
    bars.sort(key=lambda b: (order[b[2]], -b[1]))
    colours = {"in process": "#1f77b4", "ZeroMQ": "#ff7f0e"}
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(bars) + 1.8))
    y = list(range(len(bars)))[::-1]
    ax.barh(y, [b[1] for b in bars], color=[colours[b[2]] for b in bars], height=0.6)
    ax.set_yticks(y)
    ax.set_yticklabels([b[0] for b in bars], fontsize=9)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_SI)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("events per second (log)")
    core = next((b[1] for b in bars if b[0].startswith("core")), None)
    for yi, (label, v, group, note) in zip(y, bars):
        extra = f"  {note}" if note else ""
        if core and not label.startswith("core") and group == "in process":
            extra += f"; core {core / v:,.0f}x"
        ax.text(v * 1.08, yi, f"{_si(v)}/s{extra}", va="center", fontsize=8)
    lo = min(b[1] for b in bars)
    hi = max(b[1] for b in bars)
    ax.set_xlim(lo / 3, hi * 60)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()],
              labels=["batch routing in one process (the same synthetic events)",
                      "end to end over ZeroMQ on loopback, load generator on the same 2 vCPUs\n"
                      "(engine: events for the bundled plan, engine suite)"],
              loc="lower right", fontsize=8)
    ax.set_title("Throughput per implementation, measured in one run", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _footer(fig, peers or engine or {})
    return _save(fig, _target(where, "throughput.png"))


# --------------------------------------------------------------------------------------------
# core batch-size scaling


def core_scaling(r: dict, where: Path) -> Path | None:
    batched = ((r.get("core") or {}).get("batched") or {})
    rows = sorted((int(k), v) for k, v in batched.items() if v.get("events_per_s"))
    if not rows:
        return None
    sizes = [k for k, _ in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.6))
    a.plot(sizes, [v["events_per_s"] for _, v in rows], "o-", color="#1f77b4",
           label="batches of N events")
    one = (r.get("core") or {}).get("one_call") or {}
    if one.get("events_per_s"):
        a.axhline(one["events_per_s"], color="#1f77b4", ls="--", lw=1,
                  label=f"all {r.get('events', 0):,} events in one call")
    for k, v in rows:
        a.annotate(_si(v["events_per_s"]), (k, v["events_per_s"]), textcoords="offset points",
                   xytext=(0, 7), ha="center", fontsize=8)
    _log_axes(a, sizes, _SI)
    a.set_xlabel("events per call (log)")
    a.set_ylabel("events per second (log)")
    a.set_title("Throughput by batch size", fontsize=10)
    a.grid(True, alpha=0.3)
    a.legend(fontsize=8, loc="lower right")
    us = [v.get("us_per_call", v["best_s"] * 1e6 / max(1, v.get("batches", 1))) for _, v in rows]
    b.plot(sizes, us, "o-", color="#ff7f0e", label="measured time per call")
    base = us[0] if sizes[0] == 1 else None
    if base and one.get("ns_per_event"):
        per_ev = one["ns_per_event"] / 1e3
        b.plot(sizes, [base + per_ev * k for k in sizes], ":", color="gray",
               label=f"{base:.1f} us per call + {per_ev * 1e3:.0f} ns per event")
    for k, u in zip(sizes, us):
        b.annotate(_us(u), (k, u), textcoords="offset points", xytext=(0, 7), ha="center",
                   fontsize=8)
    _log_axes(b, sizes, _US)
    b.set_xlabel("events per call (log)")
    b.set_ylabel("time per Router.route call (log)")
    b.set_title("Per-call overhead", fontsize=10)
    b.grid(True, alpha=0.3)
    b.legend(fontsize=8, loc="upper left")
    fig.suptitle("Compiled core: decode + validate + route, one thread", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _footer(fig, r)
    return _save(fig, _target(where, "core_scaling.png"))


# --------------------------------------------------------------------------------------------
# audit


def audit(r: dict, where: Path) -> Path | None:
    from bench.audit import POLICY_LABELS

    runs = r.get("runs") or []
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.8))
    colours = {"off": "#2ca02c", "1s": "#1f77b4", "every_batch": "#d62728"}
    for policy, writer in [(p, w) for p in (r.get("params") or {}).get("policies", list(colours))
                           for w in ("journal", "arrow")]:
        mine = sorted((x for x in runs if x["policy"] == policy
                       and x.get("writer", "arrow") == writer), key=lambda x: x["batch"])
        if not mine:
            continue
        xs, ys = [x["batch"] for x in mine], [x["rows_per_s"] for x in mine]
        ax.plot(xs, ys, "o-" if writer == "journal" else "s--", color=colours.get(policy),
                label=f"{'journal' if writer == 'journal' else 'Arrow per turn'}, "
                      f"{POLICY_LABELS.get(policy, policy)}")
        if policy == "1s" or writer == "arrow":     # their labels would collide
            continue
        dy = 6 if policy == "off" else -13
        for x, y in zip(xs, ys):
            ax.annotate(_si(y), (x, y), textcoords="offset points", xytext=(0, dy), ha="center",
                        fontsize=7, color=colours.get(policy))
    _log_axes(ax, sorted({x["batch"] for x in runs}), _SI)
    ax.set_xlabel("events per turn (log)")
    ax.set_ylabel("rows per second (log)")
    fs = r.get("filesystem") or {}
    ax.set_title(f"Audit journal vs one Arrow batch per turn: rows/s, fsync policies "
                 f"({fs.get('type', '?')} on {fs.get('device', '?')})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _footer(fig, r)
    return _save(fig, _target(where, "audit.png"))


# --------------------------------------------------------------------------------------------
# memory


def memory(r: dict, where: Path) -> Path | None:
    m = r.get("child")
    if not m:
        return None
    items = [
        ("RSS at start (imports)", m.get("rss_baseline"), "#bbbbbb"),
        ("Arrow manifest table (Python side)", m.get("arrow_manifest_bytes"), "#9467bd"),
        ("compiled tables (router._core.plan.nbytes)", m.get("compiled_bytes"), "#1f77b4"),
        ("RSS after compile, live (trimmed)", m.get("rss_after_compile_trimmed"), "#2ca02c"),
        ("RSS with the Arrow table dropped", m.get("rss_without_arrow_manifest"), "#17becf"),
        ("peak RSS before compile (generator)", m.get("peak_rss_before_compile"), "#ffbb78"),
        ("peak RSS (VmHWM)", m.get("peak_rss"), "#d62728"),
    ]
    items = [x for x in items if x[1]]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(items) + 1.6))
    y = list(range(len(items)))[::-1]
    ax.barh(y, [v / 2**20 for _, v, _ in items], color=[c for *_, c in items], height=0.6)
    ax.set_yticks(y)
    ax.set_yticklabels([lab for lab, _, _ in items], fontsize=9)
    for yi, (_, v, _) in zip(y, items):
        ax.text(v / 2**20 * 1.01 + 5, yi, f"{v / 2**20:,.0f} MiB", va="center", fontsize=8)
    ax.set_xlabel("MiB")
    ax.set_xlim(0, max(v for _, v, _ in items) / 2**20 * 1.2)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"Memory with a {r.get('manifest_rows', m.get('rows', 0)):,}-row manifest "
                 f"(plan built and compiled in a fresh process)", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _footer(fig, r)
    return _save(fig, _target(where, "memory.png"))


def draw(results: dict, where) -> list[Path]:
    """Every plot the results have data for; `results` maps suite name -> its result."""
    where = Path(where)
    out = []
    engine_r = results.get("engine")
    if engine_r and engine_r.get("latency") is not None:
        out.append(engine_latency(engine_r, where))
    if results.get("peers") or (engine_r and engine_r.get("saturation")):
        if results.get("peers"):
            out.append(throughput(results.get("peers"), engine_r, where))
    if results.get("core"):
        out.append(core_scaling(results["core"], where))
    if results.get("audit"):
        out.append(audit(results["audit"], where))
    if results.get("memory"):
        out.append(memory(results["memory"], where))
    return [p for p in out if p is not None]
