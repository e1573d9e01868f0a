"""`sorter replay --report DIR`: the replay's result as PNG plots (matplotlib) and report.md.

The page is Markdown with the PNGs beside it, so it reads in any viewer and in the repository
browser. It says the same as the JSON document (docs/replay.md), drawn from it and from the
merged hourly counts.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from sorter.core.codes import REASONS
from sorter.replay.summary import NONE_NAME
from sorter.replay.totals import HOUR_NS, Totals

TOP = 25


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _bars(plt, path: Path, title: str, labels: list[str], series: dict[str, list[int]],
          horizontal: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(10, max(3.5, 0.28 * len(labels) + 1.5) if horizontal else 4.5))
    k = len(series)
    width = 0.8 / max(k, 1)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        pos = x + (i - (k - 1) / 2) * width
        if horizontal:
            ax.barh(pos, values, height=width, label=name)
        else:
            ax.bar(pos, values, width=width, label=name)
    if horizontal:
        ax.set_yticks(x, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("events")
    else:
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("events")
    if k > 1:
        ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _hour_times(base: int, n: int) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp((base + h) * HOUR_NS / 1e9, dt.timezone.utc)
            for h in range(n)]


def write_report(doc: dict, totals: Totals, out: Path) -> Path:
    """Write the plots and report.md into `out`; returns the page's path."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    compare = "compare" in doc
    md = [f"# Replay: plan {doc['plan']['name']} {doc['plan']['version']}", "",
          f"Audit `{doc['audit']}`, dates {doc['from'] or 'first'} to {doc['to'] or 'last'}: "
          f"{doc['events']:,} recorded events in {doc['files']} files "
          f"({doc['malformed']:,} malformed messages among them), replayed in "
          f"{doc['seconds']:.2f} s ({doc['mode']}, {doc['workers']} worker(s)).", ""]
    states = doc["chute_states"]
    md += [("Chute states held for the whole replay: "
            + ", ".join(f"{c} {s}" for c, s in states.items()) + "; every other chute available.")
           if states else "Every chute available for the whole replay (the audit does not "
                          "record chute states).", ""]

    # reasons
    series = {"new plan": [doc["by_reason"][r] for r in REASONS]}
    if compare:
        series = {"recorded": [doc["recorded"]["by_reason"][r] for r in REASONS], **series}
    _bars(plt, out / "reasons.png", "Decisions by reason", list(REASONS), series)
    md += ["## Decisions by reason", "", "![decisions by reason](reasons.png)", ""]
    if compare:
        md += ["| reason | recorded | new | change |", "| --- | ---: | ---: | ---: |"]
        md += [f"| {r} | {c['recorded']:,} | {c['new']:,} | {c['change']:+,} |"
               for r, c in doc["compare"]["by_reason"].items()]
    else:
        md += ["| reason | events |", "| --- | ---: |"]
        md += [f"| {r} | {n:,} |" for r, n in doc["by_reason"].items()]
    md.append("")

    # destinations
    if compare:
        rows = sorted(doc["compare"]["by_destination"].items(),
                      key=lambda kv: -max(kv[1]["recorded"], kv[1]["new"]))[:TOP]
        labels = [k for k, _ in rows]
        series = {"recorded": [v["recorded"] for _, v in rows],
                  "new plan": [v["new"] for _, v in rows]}
    else:
        rows = sorted(doc["by_destination"].items(), key=lambda kv: -kv[1])[:TOP]
        labels = [k for k, _ in rows]
        series = {"new plan": [v for _, v in rows]}
    _bars(plt, out / "destinations.png", f"Decisions by destination (top {TOP})", labels,
          series, horizontal=True)
    md += ["## Decisions by destination", "", "![decisions by destination](destinations.png)",
           ""]

    # hourly volume and peak
    hourly = totals.new_hourly
    if hourly.hours:
        fig, ax = plt.subplots(figsize=(10, 4))
        times = _hour_times(hourly.base, hourly.hours)
        mark = "." if hourly.hours < 60 else None      # a few hours: show each one
        ax.plot(times, hourly.counts[:, 1:].sum(axis=1), label="new plan", lw=1, marker=mark)
        rec = totals.recorded_hourly
        if compare and rec.hours:
            ax.plot(_hour_times(rec.base, rec.hours), rec.counts[:, 1:].sum(axis=1),
                    label="recorded", lw=1, alpha=0.7, marker=mark)
            ax.legend()
        ax.set_ylim(bottom=0)
        ax.set_ylabel("diverted events per hour")
        ax.set_title(f"Diverted events per hour; peak {doc['peak_hour']['hour']}: "
                     f"{doc['peak_hour']['events']:,}")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out / "hourly.png", dpi=100)
        plt.close(fig)
        md += ["## Volume by hour", "", f"Peak hour of the new plan: {doc['peak_hour']['hour']} "
               f"with {doc['peak_hour']['events']:,} diverted events.", "",
               "![events per hour](hourly.png)", ""]

        # per chute peak-hour volume against capacity
        chutes = sorted(doc["by_chute"], key=int)
        peaks = [doc["by_chute"][c]["peak_events"] for c in chutes]
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.bar(np.arange(len(chutes)), peaks, width=0.9)
        step = max(1, len(chutes) // 40)
        ax.set_xticks(np.arange(len(chutes))[::step], chutes[::step], fontsize=7, rotation=90)
        if doc["capacity"] and doc["capacity"]["default"]:
            ax.axhline(doc["capacity"]["default"], color="red", lw=1, label="capacity")
            ax.legend()
        ax.set_xlabel("chute")
        ax.set_ylabel("events in its peak hour")
        ax.set_title("Each chute's busiest hour with the new plan")
        fig.tight_layout()
        fig.savefig(out / "chute_peaks.png", dpi=100)
        plt.close(fig)
        md += ["## Chutes at their peak hour", "", "![chute peak hours](chute_peaks.png)", ""]
        top = sorted(doc["by_chute"].items(), key=lambda kv: -kv[1]["peak_events"])[:TOP]
        md += ["| chute | events | peak hour | events in the peak hour |",
               "| ---: | ---: | --- | ---: |"]
        md += [f"| {c} | {v['events']:,} | {v['peak_hour']} | {v['peak_events']:,} |"
               for c, v in top]
        md.append("")

    over = doc.get("over_capacity")
    if over is not None:
        md += ["## Over capacity", "", f"{over['chute_hours']:,} chute-hours over capacity, on "
               f"{len(over['chutes'])} chutes.", ""]
        if over["worst"]:
            md += ["| chute | hour | events | capacity |", "| ---: | --- | ---: | ---: |"]
            md += [f"| {w['chute']} | {w['hour']} | {w['events']:,} | {w['capacity']:,} |"
                   for w in over["worst"]]
            md.append("")

    # destination changes
    ch = doc["destination_changes"]
    pairs = ch["pairs"][:TOP]
    if pairs:
        _bars(plt, out / "changes.png", f"Destination changes, recorded -> new (top {TOP})",
              [f"{p['from']} -> {p['to']}" for p in pairs],
              {"events": [p["events"] for p in pairs]}, horizontal=True)
    md += ["## Destination changes", "",
           f"{ch['changed']:,} of {doc['events']:,} events change destination "
           f"({NONE_NAME}: no destination, e.g. no_read).", ""]
    if pairs:
        md += ["![destination changes](changes.png)", "",
               "| recorded | new | events |", "| --- | --- | ---: |"]
        md += [f"| {p['from']} | {p['to']} | {p['events']:,} |" for p in pairs]
        md.append("")
    if ch["sample"]:
        md += ["Sample of changed parcels:", "",
               "| parcel | reads | recorded | new |", "| --- | --- | --- | --- |"]
        for s in ch["sample"]:
            r, n = s["recorded"], s["new"]
            reads = " ".join(f"`{x}`" for x in (s["reads"] or [])) or "(none)"
            md.append(f"| {s.get('parcel_id', '')} | {reads} | {r['destination']} chute "
                      f"{r['chute']} ({r['reason']}) | {n['destination']} chute {n['chute']} "
                      f"({n['reason']}) |")
        md.append("")
    page = out / "report.md"
    page.write_text("\n".join(md))
    return page
