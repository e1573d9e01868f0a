"""Engine counters and latency histograms, exported for Prometheus.

Histograms are filled per batch with numpy (one searchsorted + bincount per batch), not per
event: prometheus_client's observe() costs about a microsecond, too much at line rate. A custom
collector exposes the bucket counts as ordinary Prometheus histograms.
"""
from __future__ import annotations

import threading

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from sorter.core.codes import (CHUTE_AVAILABLE, CHUTE_FULL, CHUTE_STATES, MAX_CHUTE, REASON_CODE,
                               REASONS)

MALFORMED = REASON_CODE["malformed"]

# Bucket upper bounds in seconds: 50 us .. 10 s.
LATENCY_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5,
                   1.0, 2.0, 5.0, 10.0)


class BatchHistogram:
    """A histogram filled from a numpy array of nanosecond values at a time."""

    def __init__(self, name: str, doc: str, buckets=LATENCY_BUCKETS):
        self.name, self.doc = name, doc
        self.bounds_s = np.array(buckets, float)
        self._bounds_ns = (self.bounds_s * 1e9).astype(np.int64)
        self.counts = np.zeros(len(buckets) + 1, np.int64)     # last: +Inf
        self.sum_s = 0.0
        self.raw_max_ns = 0

    def observe_ns(self, values_ns: np.ndarray) -> None:
        if len(values_ns) == 0:
            return
        idx = np.searchsorted(self._bounds_ns, values_ns, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.sum_s += float(values_ns.sum()) / 1e9
        self.raw_max_ns = max(self.raw_max_ns, int(values_ns.max()))

    def quantile_s(self, q: float) -> float | None:
        """Quantile q, interpolated linearly inside its bucket (for status and dashboards;
        Prometheus computes its own from the buckets)."""
        total = int(self.counts.sum())
        if total == 0:
            return None
        cum = np.cumsum(self.counts)
        rank = q * total
        i = int(np.searchsorted(cum, rank, side="left"))
        if i >= len(self.bounds_s):
            return self.raw_max_ns / 1e9
        lo = float(self.bounds_s[i - 1]) if i > 0 else 0.0
        hi = min(float(self.bounds_s[i]), self.raw_max_ns / 1e9)
        below = float(cum[i - 1]) if i > 0 else 0.0
        inside = float(self.counts[i])
        return lo + (hi - lo) * (rank - below) / inside if inside else hi

    def family(self) -> HistogramMetricFamily:
        cum = np.cumsum(self.counts)
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds_s, cum[:-1])]
        buckets.append(("+Inf", int(cum[-1])))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum_s)


def chute_table(plan) -> list[tuple[int, str | None, tuple[str, ...]]]:
    """Every chute of `plan` in plan order: (chute, destination names joined by " / " or None
    for a spare or special chute, the special reasons it takes). Kept per plan object: the
    status reply and every scrape ask for it."""
    cached = _CHUTE_TABLES.get(id(plan))
    if cached is not None and cached[0] is plan:
        return cached[1]
    serves: dict[int, list[str]] = {}
    for d in plan.destinations:
        for c in d.chutes:
            serves.setdefault(c, []).append(d.name)
    special: dict[int, list[str]] = {}
    for reason, c in plan.special.items():
        special.setdefault(c, []).append(reason)
    table = [(int(c), " / ".join(serves[c]) if c in serves else None, tuple(special.get(c, ())))
             for c in plan.chutes]
    _CHUTE_TABLES.clear()                  # one plan runs at a time
    _CHUTE_TABLES[id(plan)] = (plan, table)
    return table


_CHUTE_TABLES: dict[int, tuple[object, list]] = {}


class ChuteCounts:
    """Decisions per chute number, counted at the metrics fold from the chutes of the folded
    events (one bincount per fold, nothing per event), and where each chute was last emptied.

    "Emptied" is the PLC reporting a chute `full` and later `available` again (the bag or
    cage was changed): the states are compared at each fold, and a chute found emptied counts
    from the decisions before that fold's events (while it was full it got none)."""

    def __init__(self):
        self.decisions = np.zeros(MAX_CHUTE + 1, np.int64)
        self.at_emptied = np.zeros(MAX_CHUTE + 1, np.int64)
        self.states = np.zeros(MAX_CHUTE + 1, np.uint8)

    def fold(self, chutes: np.ndarray, states: np.ndarray) -> None:
        changed = np.flatnonzero(self.states != states)      # one pass; usually none
        if len(changed):
            emptied = changed[(self.states[changed] == CHUTE_FULL)
                              & (states[changed] == CHUTE_AVAILABLE)]
            self.at_emptied[emptied] = self.decisions[emptied]
        self.states = states
        if len(chutes):
            counts = np.bincount(chutes)
            self.decisions[:len(counts)] += counts

    def since_emptied(self, chute: int) -> int:
        return int(self.decisions[chute] - self.at_emptied[chute])


class EngineMetrics:
    """Everything the engine counts. Updated by the engine's one thread (routed batches are
    folded in every 100 ms, off the hot path); the Prometheus HTTP thread reads under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.decisions_by_reason = np.zeros(len(REASONS), np.int64)
        self.events = 0
        self.messages = 0
        self.batches = 0
        self.malformed = 0
        self.malformed_by_error: dict[str, int] = {}
        self.decisions_undelivered = 0         # PLC side absent or slow: audited, not sent
        self.feedback_messages = 0
        self.chute_status_updates = 0
        self.confirmations: dict[str, int] = {"sorted": 0, "failed_divert": 0, "lost": 0}
        self.plan_loads = 0
        self.plan_load_failures = 0
        self.scan_to_decision = BatchHistogram(
            "sorter_scan_to_decision_seconds", "Scan time to decision sent, per event")
        self.engine_latency = BatchHistogram(
            "sorter_engine_latency_seconds", "Message received to decision sent, per event")
        self.chutes = ChuteCounts()

    def by_reason(self) -> np.ndarray:
        """Decisions by reason, `malformed` included: a malformed message is audited as one
        `malformed` record, which the router never sees, so it is added here."""
        counts = self.decisions_by_reason.copy()
        counts[MALFORMED] += self.malformed
        return counts

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "events": self.events, "messages": self.messages, "batches": self.batches,
                "decisions": {r: int(n) for r, n in zip(REASONS, self.by_reason())},
                "malformed": self.malformed, "malformed_by_error": dict(self.malformed_by_error),
                "decisions_undelivered": self.decisions_undelivered,
                "feedback_messages": self.feedback_messages,
                "chute_status_updates": self.chute_status_updates,
                "confirmations": dict(self.confirmations),
                "plan_loads": self.plan_loads, "plan_load_failures": self.plan_load_failures,
                "scan_to_decision_p50_s": self.scan_to_decision.quantile_s(0.5),
                "scan_to_decision_p99_s": self.scan_to_decision.quantile_s(0.99),
            }

    # prometheus_client collector protocol
    def collect(self):
        with self.lock:
            c = CounterMetricFamily("sorter_decisions", "Decisions by reason", labels=["reason"])
            for r, n in zip(REASONS, self.by_reason()):
                c.add_metric([r], int(n))
            yield c
            for name, doc, value in (
                    ("sorter_events", "Scan events received", self.events),
                    ("sorter_messages", "Scan messages received", self.messages),
                    ("sorter_batches", "Core batches routed", self.batches),
                    ("sorter_malformed_messages", "Malformed messages, audited", self.malformed),
                    ("sorter_decisions_undelivered", "Decisions audited but not sent (PLC side "
                     "absent or slow)", self.decisions_undelivered),
                    ("sorter_feedback_messages", "PLC feedback messages", self.feedback_messages),
                    ("sorter_plan_loads", "Plans loaded", self.plan_loads),
                    ("sorter_plan_load_failures", "Plans refused", self.plan_load_failures)):
                yield CounterMetricFamily(name, doc, value=value)
            conf = CounterMetricFamily("sorter_sort_confirmations", "PLC sort confirmations",
                                       labels=["outcome"])
            for outcome, n in self.confirmations.items():
                conf.add_metric([outcome], n)
            yield conf
            yield self.scan_to_decision.family()
            yield self.engine_latency.family()


class GaugeCollector:
    """Gauges read from callables at scrape time (plan version, chutes unavailable)."""

    def __init__(self, gauges: dict[str, tuple[str, callable]]):
        self.gauges = gauges

    def collect(self):
        for name, (doc, fn) in self.gauges.items():
            yield GaugeMetricFamily(name, doc, value=fn())


class ChuteCollector:
    """Per-chute series for every chute of the running plan (`plan()` is called at scrape
    time): `sorter_chute_state{chute, destination}` (0 available, 1 disabled, 2 full, the
    index in codes.CHUTE_STATES), `sorter_chute_decisions_total{chute}` and
    `sorter_chute_decisions_since_emptied{chute}`, read from `metrics.chutes` under its lock."""

    def __init__(self, metrics: EngineMetrics, plan: callable):
        self.metrics, self.plan = metrics, plan

    def collect(self):
        table = chute_table(self.plan())
        state = GaugeMetricFamily(
            "sorter_chute_state", "Chute state: 0 available, 1 disabled, 2 full "
            f"({', '.join(CHUTE_STATES)})", labels=["chute", "destination"])
        decisions = CounterMetricFamily("sorter_chute_decisions",
                                        "Decisions that sent a parcel to this chute",
                                        labels=["chute"])
        since = GaugeMetricFamily("sorter_chute_decisions_since_emptied",
                                  "Decisions to this chute since the PLC last reported it "
                                  "emptied (full, then available)", labels=["chute"])
        counts = self.metrics.chutes
        with self.metrics.lock:
            for chute, destination, special in table:
                label = str(chute)
                dest = destination or ("special: " + ", ".join(special) if special else "spare")
                state.add_metric([label, dest], int(counts.states[chute]))
                decisions.add_metric([label], int(counts.decisions[chute]))
                since.add_metric([label], counts.since_emptied(chute))
        yield state
        yield decisions
        yield since
