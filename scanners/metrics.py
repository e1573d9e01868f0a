"""The driver's counters for Prometheus (`sorter scanner --metrics HOST:PORT`), so that a
preset mismatch or a silent scanner shows on the same dashboards as the engine.

Every counter of `ScannerDriver.snapshot()` is a Prometheus counter
`sorter_scanner_<name>_total{scanner_id, preset}`: `sorter_scanner_preset_mismatches_total`,
`sorter_scanner_mismatch_untrimmed_code_total`, `sorter_scanner_events_total`...
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily

__all__ = ["DriverCollector", "serve_metrics"]


class DriverCollector:
    """Reads the driver's counters at scrape time (no per-event cost)."""

    def __init__(self, driver):
        self.driver = driver

    def collect(self):
        labels = [str(self.driver.scanner_id), self.driver.fmt.name]
        for name, value in self.driver.snapshot().items():
            family = CounterMetricFamily(f"sorter_scanner_{name}",
                                         f"scanner driver counter {name} (docs/scanners.md)",
                                         labels=["scanner_id", "preset"])
            family.add_metric(labels, value)
            yield family


def serve_metrics(driver, address: str):
    """Serve /metrics on HOST:PORT (port 0: any free port). Returns (server, url); call
    server.shutdown() and server.server_close() to stop."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry()
    registry.register(DriverCollector(driver))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server, f"http://{host or '127.0.0.1'}:{server.server_port}/metrics"
