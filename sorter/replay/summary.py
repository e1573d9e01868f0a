"""A replay's totals as the planner reads them: the JSON document (docs/replay.md) and text.

Everything here is derived from `Totals` after the merge: peaks and capacity excesses are
computed on the merged hourly counts, never per partition (an hour can span two files).
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from sorter.core.codes import REASONS
from sorter.replay.totals import HOUR_NS, HourlyChutes, Totals

NONE_NAME = "(none)"        # the destination of decisions that have none (no_read, ...)
LIST_LIMIT = 50             # chute-hours over capacity listed one by one (all are counted)


def hour_iso(hour: int) -> str:
    """Hours since the epoch -> 'YYYY-MM-DDTHH:00Z'."""
    t = dt.datetime.fromtimestamp(hour * HOUR_NS / 1e9, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:00Z")


def _name(n) -> str:
    return NONE_NAME if n is None else n


def _reasons(counts: np.ndarray) -> dict:
    return {r: int(counts[i]) for i, r in enumerate(REASONS)}


def capacity_vector(width: int, capacity: int | None, chute_capacity: dict) -> np.ndarray | None:
    """Capacity per chute number (events per hour; 0 = none given), or None without any."""
    if capacity is None and not chute_capacity:
        return None
    width = max([width, *(c + 1 for c in chute_capacity)])
    cap = np.full(width, capacity or 0, np.int64)
    for chute, c in chute_capacity.items():
        cap[chute] = c
    cap[0] = 0                       # chute 0 is "no divert", not a chute
    return cap


def chute_view(hourly: HourlyChutes, cap: np.ndarray | None) -> dict:
    """Per chute (1..): events, the peak hour and its events; the sorter's peak hour; and the
    chute-hours over capacity."""
    counts = hourly.counts
    out = {"hours": int(hourly.hours), "first_hour": None, "last_hour": None,
           "no_divert": 0, "by_chute": {}, "peak_hour": None}
    if counts.size == 0:
        return out
    out["first_hour"], out["last_hour"] = hour_iso(hourly.base), hour_iso(hourly.base + hourly.hours - 1)
    out["no_divert"] = int(counts[:, 0].sum())
    totals = counts.sum(axis=0)
    peaks = counts.argmax(axis=0)
    for chute in np.flatnonzero(totals).tolist():
        if chute == 0:
            continue
        out["by_chute"][str(chute)] = {"events": int(totals[chute]),
                                       "peak_hour": hour_iso(hourly.base + int(peaks[chute])),
                                       "peak_events": int(counts[peaks[chute], chute])}
    per_hour = counts[:, 1:].sum(axis=1)
    h = int(per_hour.argmax())
    out["peak_hour"] = {"hour": hour_iso(hourly.base + h), "events": int(per_hour[h])}
    if cap is not None:
        out["over_capacity"] = over_capacity(hourly, cap)
    return out


def over_capacity(hourly: HourlyChutes, cap: np.ndarray) -> dict:
    """Chute-hours whose events exceed the chute's capacity (chutes without one are skipped)."""
    counts = hourly.counts
    w = min(counts.shape[1], len(cap))
    c = cap[:w]
    over = (counts[:, :w] > c) & (c > 0)
    hours, chutes = np.nonzero(over)
    excess = counts[hours, chutes] - c[chutes]
    order = np.lexsort((hours, chutes, -excess))
    by_chute = {}
    for ch in np.unique(chutes).tolist():
        sel = chutes == ch
        by_chute[str(ch)] = {"hours_over": int(sel.sum()), "capacity": int(cap[ch]),
                             "worst_events": int(counts[hours[sel], ch].max())}
    return {"chute_hours": int(len(hours)), "chutes": by_chute,
            "worst": [{"chute": int(chutes[k]), "hour": hour_iso(hourly.base + int(hours[k])),
                       "events": int(counts[hours[k], chutes[k]]),
                       "capacity": int(cap[chutes[k]])} for k in order[:LIST_LIMIT].tolist()]}


def summarize(run, plan, *, audit, date_from=None, date_to=None, compare=False,
              capacity: int | None = None, chute_capacity: dict | None = None,
              chute_states: dict | None = None) -> dict:
    """The replay's JSON document (keys: docs/replay.md)."""
    t: Totals = run.totals
    width = max(t.new_hourly.counts.shape[1], t.recorded_hourly.counts.shape[1], 1)
    cap = capacity_vector(width, capacity, chute_capacity or {})
    changes = t.destination_changes()
    changed = sum(n for _, _, n in changes)
    doc = {
        "plan": {"name": plan.name, "version": plan.version, "source": plan.source},
        "audit": str(audit), "from": date_from, "to": date_to,
        "files": t.files, "events": t.events, "malformed": t.malformed,
        "bytes_read": t.bytes_read,
        "bytes_per_event": t.bytes_read / t.events if t.events else None,
        "seconds": run.seconds,
        "events_per_s": t.events / run.seconds if run.seconds > 0 else None,
        "mode": run.mode, "workers": run.workers,
        "peak_rss_mb": {p: kb / 1024 for p, kb in sorted(t.peak_rss_kb.items())},
        "chute_states": {str(c): s for c, s in sorted((chute_states or {}).items())},
        "capacity": ({"default": capacity, "chutes": {str(c): n for c, n in
                                                      sorted((chute_capacity or {}).items())}}
                     if cap is not None else None),
        "by_reason": _reasons(t.new_reason),
        "by_destination": {_name(n): c for n, c in t.new_by_destination().items()},
        **chute_view(t.new_hourly, cap),
        "destination_changes": {
            "changed": changed, "unchanged": t.events - changed,
            "pairs": [{"from": _name(a), "to": _name(b), "events": n} for a, b, n in changes],
            "sample": [rec for _, rec in t.sample],
        },
    }
    if compare:
        rec = {"by_reason": _reasons(t.recorded_reason),
               "by_destination": {_name(n): c for n, c in t.recorded_by_destination().items()},
               **chute_view(t.recorded_hourly, cap)}
        doc["recorded"] = rec
        doc["compare"] = {
            "by_reason": {r: {"recorded": rec["by_reason"][r], "new": doc["by_reason"][r],
                              "change": doc["by_reason"][r] - rec["by_reason"][r]}
                          for r in REASONS},
            "by_destination": _side_by_side(rec["by_destination"], doc["by_destination"]),
            "by_chute": _side_by_side(
                {c: v["events"] for c, v in rec["by_chute"].items()},
                {c: v["events"] for c, v in doc["by_chute"].items()}),
        }
    return doc


def _side_by_side(recorded: dict, new: dict) -> dict:
    keys = sorted(set(recorded) | set(new), key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return {k: {"recorded": recorded.get(k, 0), "new": new.get(k, 0),
                "change": new.get(k, 0) - recorded.get(k, 0)} for k in keys}


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def text(doc: dict, *, top: int = 10) -> str:
    """A short human summary of the JSON document."""
    lines = [f"replay of {doc['audit']} with plan {doc['plan']['name']} "
             f"{doc['plan']['version']}: {doc['events']:,} events in {doc['files']} files, "
             f"{doc['seconds']:.2f} s ({_si(doc['events_per_s'] or 0)} events/s, {doc['mode']})"]
    cmp = doc.get("compare")
    lines.append("by reason:" + ("                 recorded        new     change" if cmp else ""))
    for r in REASONS:
        if cmp:
            c = cmp["by_reason"][r]
            if c["recorded"] or c["new"]:
                lines.append(f"  {r:<20} {c['recorded']:>12,} {c['new']:>12,} {c['change']:>+10,}")
        elif doc["by_reason"][r]:
            lines.append(f"  {r:<20} {doc['by_reason'][r]:>12,}")
    ch = doc["destination_changes"]
    lines.append(f"destination changed: {ch['changed']:,} of {doc['events']:,} events")
    for p in ch["pairs"][:top]:
        lines.append(f"  {p['from']} -> {p['to']}: {p['events']:,}")
    if doc["peak_hour"]:
        lines.append(f"peak hour: {doc['peak_hour']['hour']} with {doc['peak_hour']['events']:,} "
                     "diverted events")
    over = doc.get("over_capacity")
    if over is not None:
        lines.append(f"chute-hours over capacity: {over['chute_hours']:,} "
                     f"({len(over['chutes'])} chutes)")
        for w in over["worst"][:top]:
            lines.append(f"  chute {w['chute']} at {w['hour']}: {w['events']:,} > {w['capacity']:,}")
    return "\n".join(lines)
