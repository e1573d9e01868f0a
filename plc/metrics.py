"""The gateway's counters as Prometheus metrics (`sorter plc --metrics HOST:PORT`): every
number of the gateway's `snapshot()` as `sorter_plc_<name>`, read when scraped. `link_up` and
`waiting` are gauges, the rest counters (`..._total`)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["GatewayCollector", "serve_metrics"]

GAUGES = {"link_up": "1 while the link to the PLC is up", "waiting":
          "decisions queued or unacknowledged in the gateway"}


class GatewayCollector:
    def __init__(self, gateway):
        self.gateway = gateway

    def collect(self):
        snap = self.gateway.snapshot()
        for name, value in snap.items():
            if isinstance(value, bool):
                value = int(value)
            if not isinstance(value, (int, float)):
                continue
            if name in GAUGES:
                yield GaugeMetricFamily(f"sorter_plc_{name}", GAUGES[name], value=value)
            else:
                yield CounterMetricFamily(f"sorter_plc_{name}", f"PLC gateway: {name}",
                                          value=value)


def serve_metrics(gateway, address: str):
    """Serve the gateway's metrics over HTTP at HOST:PORT (port 0: any); returns the server
    (its `server_port`, `shutdown()`)."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(gateway))
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server
