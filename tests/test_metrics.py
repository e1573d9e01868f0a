"""Batch-filled histograms: counts land in the right buckets and quantiles stay inside them."""
import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from sorter.engine.metrics import BatchHistogram, EngineMetrics


def test_histogram_buckets_and_quantiles():
    h = BatchHistogram("x_seconds", "doc")
    values = np.array([40_000, 90_000, 150_000, 150_000, 3_000_000, 20_000_000_000], np.int64)
    h.observe_ns(values)
    assert h.counts.sum() == len(values)
    assert h.counts[0] == 1 and h.counts[-1] == 1          # <= 50 us, and beyond 10 s
    p50 = h.quantile_s(0.5)
    assert 1e-4 <= p50 <= 2e-4                               # the 150 us bucket
    assert h.quantile_s(1.0) == 20.0                         # the raw maximum
    assert BatchHistogram("y", "d").quantile_s(0.5) is None


def test_engine_metrics_export_as_prometheus_text():
    m = EngineMetrics()
    m.decisions_by_reason[0] += 3
    m.scan_to_decision.observe_ns(np.array([100_000, 200_000]))
    registry = CollectorRegistry()
    registry.register(m)
    text = generate_latest(registry).decode()
    assert 'sorter_decisions_total{reason="sorted"} 3.0' in text
    assert 'sorter_scan_to_decision_seconds_count 2.0' in text
    assert 'sorter_scan_to_decision_seconds_bucket{le="0.0002"} 2.0' in text


def test_malformed_messages_are_malformed_decisions():
    """A malformed message is audited as one `malformed` record: the reason's counter says so."""
    m = EngineMetrics()
    m.decisions_by_reason[0] += 2
    m.malformed = 5
    assert m.snapshot()["decisions"]["malformed"] == 5
    assert m.snapshot()["decisions"]["sorted"] == 2
    registry = CollectorRegistry()
    registry.register(m)
    text = generate_latest(registry).decode()
    assert 'sorter_decisions_total{reason="malformed"} 5.0' in text
    assert "sorter_malformed_messages_total 5.0" in text
    assert int(m.decisions_by_reason.sum()) == 2             # the routed counts stay apart
