"""What the page shows, computed from the engine's `status` replies: rates, read rate, reason
mix, latency, alarms and the chute wall. No I/O: `LineView.update(status, now)` is fed every
reply (None when the engine did not answer) and returns the page's model as plain JSON data.

Rates and alarms need history, so a view keeps the last replies' counters. Each alarm is taken
from the engine's own field when the reply has it, and derived from counters otherwise
(docs/dashboard.md, "Alarms").
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Mapping

from sorter.core.codes import REASONS

UNREADABLE = ("no_read", "invalid")

# name, title on the page
ALARMS = (
    ("engine_unreachable", "engine unreachable"),
    ("audit_unavailable", "audit unavailable"),
    ("plc_link_down", "PLC link down"),
    ("scanner_silent", "scanner silent"),
    ("decisions_undelivered", "decisions undelivered"),
)


def chute_label(chute: Mapping) -> str:
    """The destination line of a tile: the destination, the special reasons, or "spare"."""
    if chute.get("destination"):
        return str(chute["destination"])
    if chute.get("special"):
        return "special: " + ", ".join(chute["special"])
    return "spare"


class LineView:
    """Turns successive status replies into the page's model (see the module docstring).

    rate_window_s: scans/s and decisions/s are averaged over this; mix_window_s: the read
    rate and the reason shares; scanner_silent_s / plc_silent_s: no scan message / no PLC
    feedback (the PLC side's heartbeat included) for this long raises the alarm;
    undelivered_window_s: the undelivered alarm stays up this long after the count last grew."""

    def __init__(self, *, rate_window_s: float = 2.0, mix_window_s: float = 10.0,
                 scanner_silent_s: float = 5.0, plc_silent_s: float = 3.0,
                 undelivered_window_s: float = 5.0):
        self.rate_window_s, self.mix_window_s = rate_window_s, mix_window_s
        self.scanner_silent_s, self.plc_silent_s = scanner_silent_s, plc_silent_s
        self.undelivered_window_s = undelivered_window_s
        self._samples: deque[tuple[float, dict]] = deque()    # (now, counters)
        self._moved: dict[str, float] = {}                   # counter -> when it last grew
        self._last: dict[str, int] = {}
        self._uptime0: float | None = None

    def update(self, status: dict | None, now: float,
               fill: Mapping[int, float] | None = None) -> dict:
        """The page model for `status` (None: the engine did not answer) at time `now` (s).
        `fill`: fill level 0..1 by chute from another source than the engine (the demo's
        PLC simulator); a `fill` in the engine's own chute entries wins."""
        if status is None:
            return {"t": now, "engine": "unreachable", "line": None,
                    "alarms": self._alarms(None, now), "chutes": None}
        counters = status.get("counters", {})
        if self._samples and counters.get("events", 0) < self._samples[-1][1].get("events", 0):
            self._samples.clear()                 # the engine restarted: counters start over
            self._moved.clear()
            self._last.clear()
        self._samples.append((now, counters))
        while self._samples and now - self._samples[0][0] > max(self.rate_window_s,
                                                                self.mix_window_s) + 0.5:
            self._samples.popleft()
        for name in ("messages", "feedback_messages", "decisions_undelivered"):
            value = int(counters.get(name, 0))
            if name not in self._last:
                # first reply: silences count from now; undelivered has not grown yet
                self._moved[name] = -float("inf") if name == "decisions_undelivered" else now
            elif value > self._last[name]:
                self._moved[name] = now
            self._last[name] = value
        plan = status.get("plan", {})
        decisions = counters.get("decisions", {})
        window = self._window(self.mix_window_s, now)
        mix = {r: int(window[1].get("decisions", {}).get(r, 0))
               - int(window[0].get("decisions", {}).get(r, 0)) for r in REASONS} if window \
            else {r: int(decisions.get(r, 0)) for r in REASONS}
        decided = sum(mix.values())
        unreadable = sum(mix[r] for r in UNREADABLE)
        p50, p99 = counters.get("scan_to_decision_p50_s"), counters.get("scan_to_decision_p99_s")
        line = {
            "scans_per_s": self._rate("messages", now),
            "decisions_per_s": self._rate("events", now),
            "read_rate": (1 - unreadable / decided) if decided else None,
            "reasons": {r: int(decisions.get(r, 0)) for r in REASONS},
            "reasons_recent": mix,
            "p50_ms": p50 * 1000 if p50 is not None else None,
            "p99_ms": p99 * 1000 if p99 is not None else None,
            "plan_name": plan.get("name"), "plan_version": plan.get("version"),
            "decision_seq": status.get("decision_seq"), "uptime_s": status.get("uptime_s"),
            "events": int(counters.get("events", 0)),
            "decisions_undelivered": int(counters.get("decisions_undelivered", 0)),
        }
        return {"t": now, "engine": "up", "line": line, "alarms": self._alarms(status, now),
                "chutes": self._chutes(status, fill or {})}

    def _window(self, seconds: float, now: float) -> tuple[dict, dict] | None:
        """(oldest counters within `seconds`, newest counters), or None with a single sample."""
        if len(self._samples) < 2:
            return None
        first = next((c for t, c in self._samples if now - t <= seconds + 1e-9),
                     self._samples[-1][1])
        if first is self._samples[-1][1]:
            first = self._samples[-2][1]
        return first, self._samples[-1][1]

    def _rate(self, counter: str, now: float) -> float | None:
        inside = [(t, c) for t, c in self._samples if now - t <= self.rate_window_s + 1e-9]
        if len(inside) < 2:
            inside = list(self._samples)[-2:]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return max(0.0, (int(c1.get(counter, 0)) - int(c0.get(counter, 0))) / (t1 - t0))

    def _alarms(self, status: dict | None, now: float) -> list[dict]:
        """Every alarm with `active`, a text, and where it came from (`source`)."""
        out = []
        for name, title in ALARMS:
            active, text, source = self._alarm(name, status, now)
            out.append({"name": name, "title": title, "active": bool(active), "text": text,
                        "source": source})
        return out

    def _alarm(self, name: str, status: dict | None, now: float) -> tuple[bool, str, str]:
        if name == "engine_unreachable":
            return status is None, ("no reply from the control socket" if status is None
                                    else "engine answers"), "control socket"
        if status is None:
            return False, "unknown (engine unreachable)", "-"
        counters = status.get("counters", {})
        if name == "audit_unavailable":
            if "audit_unavailable" not in status:
                return False, "audit: not reported by this engine", \
                    "status.audit_unavailable (absent)"
            active = bool(status["audit_unavailable"])
            return active, ("decisions cannot be journalled" if active else "audit writing"), \
                "status.audit_unavailable"
        if name == "plc_link_down":
            if "plc_link_up" in status:
                active = not status["plc_link_up"]
                return active, ("the PLC link is down" if active else "PLC link up"), \
                    "status.plc_link_up"
            return self._silence("feedback_messages", now, self.plc_silent_s,
                                 "no PLC feedback (not even a heartbeat)", "PLC link: feedback arriving",
                                 "counters.feedback_messages")
        if name == "scanner_silent":
            if "scanners_silent" in status:
                silent = list(status["scanners_silent"] or [])
                return bool(silent), (f"silent: scanner {', '.join(map(str, silent))}" if silent
                                      else "every scanner heard"), "status.scanners_silent"
            return self._silence("messages", now, self.scanner_silent_s,
                                 "no scan message", "scanners: scans arriving", "counters.messages")
        if name == "decisions_undelivered":
            n = int(counters.get("decisions_undelivered", 0))
            since = now - self._moved.get("decisions_undelivered", -float("inf"))
            active = since <= self.undelivered_window_s
            return active, (f"{n} decisions not delivered to the PLC side" if active
                            else f"decisions delivered ({n} undelivered in all)"), \
                "counters.decisions_undelivered"
        raise ValueError(name)

    def _silence(self, counter: str, now: float, limit_s: float, bad: str, good: str,
                 source: str) -> tuple[bool, str, str]:
        quiet = now - self._moved.get(counter, now)
        if quiet > limit_s:
            return True, f"{bad} for {quiet:.0f} s", source
        return False, good, source

    @staticmethod
    def _chutes(status: dict, fill: Mapping[int, float]) -> list[dict] | None:
        chutes = status.get("chutes")
        if chutes is None:
            return None
        out = []
        for c in chutes:
            level = c.get("fill", fill.get(c["chute"]))
            out.append({"chute": c["chute"], "label": chute_label(c), "state": c["state"],
                        "since_emptied": c.get("since_emptied", 0),
                        "decisions": c.get("decisions", 0),
                        "fill": None if level is None else round(min(1.0, max(0.0, level)), 3)})
        return out


FillSource = Callable[[], Mapping[int, float]]
