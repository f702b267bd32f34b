"""Prometheus metrics: every service's counters and gauges over HTTP, in the text format.

Each service (relay, liveness, delegator, sim, shim, boards) serves ``/metrics`` at its key of
``[metrics]`` (``""``: none), with prometheus-client's HTTP server on a thread of its own.
What a scrape reads is built on the service's loop (``Service.in_loop``), never by the HTTP
thread from state the loop is changing, and only when somebody scrapes: an unscraped service
pays nothing. Names: ``shoal_<service>_<counter>`` for every status counter (what ``shoal
status`` shows), ``shoal_service_up``, ``shoal_service_uptime_seconds``, ``shoal_loop_lag_ms``,
plus what a service adds (per-node gauges, latency histograms). docs/protocol.md §12.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import split_host_port

# A scrape waits this long for the loop; a loop stalled longer answers no metrics (the
# scrape fails, which is what a monitoring system should see).
SCRAPE_TIMEOUT_S = 2.0
_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")

# Buckets for the latency histograms, seconds: detection sits near 1-2 s, hand-offs at ms.
DETECTION_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0)
HANDOFF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def metric_name(*parts: str) -> str:
    return _NAME_RE.sub("_", "_".join(("shoal", *parts)))


def counter_families(service: str, counters: dict[str, int]) -> list[Metric]:
    """Every status counter as a gauge (some are levels, e.g. ``nodes``; the rest only grow)."""
    out: list[Metric] = []
    for key, value in sorted(counters.items()):
        family = GaugeMetricFamily(metric_name(service, key), f"{service} status counter {key}")
        family.add_metric([], value)
        out.append(family)
    return out


def node_gauge(name: str, doc: str, values: Iterable[tuple[str, float | None]]) -> Metric:
    """A per-node gauge (label ``node``); nodes without a value are left out."""
    family = GaugeMetricFamily(metric_name("node", name), doc, labels=["node"])
    for node, value in values:
        if value is not None:
            family.add_metric([node], value)
    return family


class _LoopCollector(Collector):
    """Asks the service's loop for the families at each scrape."""

    def __init__(self, build: Callable[[], list[Metric]], in_loop: Callable[..., Any]) -> None:
        self.build = build
        self.in_loop = in_loop

    def collect(self) -> Iterable[Metric]:
        return self.in_loop(self.build, SCRAPE_TIMEOUT_S)  # type: ignore[no-any-return]


class MetricsEndpoint:
    """One service's registry, its histograms, and the HTTP server once started."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.address = ""  # host:port once serving
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(metric_name(name), doc, buckets=buckets, registry=self.registry)

    def serve(
        self, listen: str, build: Callable[[], list[Metric]], in_loop: Callable[..., Any]
    ) -> None:
        host, port = split_host_port(listen, 0)
        self.registry.register(_LoopCollector(build, in_loop))
        self._server, self._thread = start_http_server(port, host or "127.0.0.1", self.registry)
        bound = self._server.server_address
        self.address = f"{bound[0]}:{bound[1]}"

    def close(self) -> None:
        """Stop serving, without waiting: the server's loop notices a shutdown only at its
        next 0.5 s poll, and a service's stop must not take that long (every test stops
        several services)."""
        server, self._server = self._server, None
        if server is not None:

            def stop() -> None:
                server.shutdown()
                server.server_close()

            threading.Thread(target=stop, name="metrics-stop", daemon=True).start()
