"""Prometheus metrics of a running cluster: every service's /metrics parses with
prometheus_client's own parser, and carries a per-node gauge for every node of the fleet."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shoal.services.relay.service import Relay
from shoal.services.runtime.ctl_client import CtlUnavailable
from shoal.services.testing import Cluster, config_on_free_ports, running, wait_for

NODES = 4


def scrape(listen: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def per_node(families: dict[str, Any], name: str) -> dict[str, float]:
    return {s.labels["node"]: s.value for s in families[name].samples}


def test_every_service_serves_its_counters_and_per_node_gauges(tmp_path: Path) -> None:
    with Cluster(tmp_path, nodes=NODES) as cluster:
        m = cluster.config.metrics
        wait_for(lambda: len(cluster.snapshot().nodes) == NODES, 30, ignore=(CtlUnavailable,))
        nodes = {f"sim-{i:03d}" for i in range(NODES)}

        def relay_has_telemetry() -> dict[str, Any] | None:
            fams = scrape(m.relay)
            return fams if set(per_node(fams, "shoal_node_cpu_pct")) == nodes else None

        relay = wait_for(relay_has_telemetry, 30, 0.2, ignore=(OSError,))
        assert set(per_node(relay, "shoal_node_last_seen_seconds")) == nodes
        assert relay["shoal_relay_accepted"].samples[0].value > 0
        assert relay["shoal_service_up"].samples[0].labels == {"service": "relay"}

        liveness = wait_for(lambda: scrape(m.liveness), 30, 0.2, ignore=(OSError,))
        states = {s.labels["node"]: s.labels["state"] for s in liveness["shoal_node_state"].samples}
        assert states == dict.fromkeys(nodes, "alive")
        assert "shoal_detection_latency_seconds" in liveness

        delegator = wait_for(lambda: scrape(m.delegator), 30, 0.2, ignore=(OSError,))
        assert "shoal_handoff_latency_seconds" in delegator
        assert "shoal_delegator_assigning" in delegator
        sim = wait_for(lambda: scrape(m.sim), 30, 0.2, ignore=(OSError,))
        assert sim["shoal_service_up"].samples[0].labels == {"service": "sim"}
        broker = wait_for(lambda: scrape(m.broker), 30, 0.2, ignore=(OSError,))
        assert broker["shoal_broker_refused_bad_password"].samples[0].value == 0
        assert "shoal_broker_denied_publish" in broker


def test_a_scrape_reads_the_loops_state_on_the_loop() -> None:
    """The HTTP thread never reads state the loop is changing: the figures are built on the
    loop's own thread (Service.in_loop)."""
    config = config_on_free_ports()
    with running(Relay(config)) as relay:
        threads: list[threading.Thread] = []

        def spy() -> list[Any]:
            threads.append(threading.current_thread())
            return []

        relay.extra_metrics = spy  # type: ignore[method-assign]
        fams = scrape(config.metrics.relay)
        assert "shoal_relay_nodes" in fams
        assert threads == [relay._loop_thread]
        assert relay.endpoints["metrics"] == f"http://{config.metrics.relay}/metrics"
