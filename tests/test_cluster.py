"""The whole foundation as a user runs it: `shoal up --headless` in its own process tree."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from shoal.services.runtime.ctl_client import CtlUnavailable
from shoal.services.testing import BusListener, Cluster, wait_for


def status_json(cluster: Cluster) -> dict[str, Any] | None:
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "status", "--json", "--config", str(cluster.config_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def fresh_nodes(cluster: Cluster) -> list[dict[str, Any]]:
    status = status_json(cluster)
    if status is None:
        return []
    return [n for n in status["nodes"] if n["age_ms"] < 2000 and n["cpu_pct"] is not None]


def port_free(endpoint: str) -> bool:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def wait_up(c: Cluster) -> None:
    try:
        wait_for(lambda: len(fresh_nodes(c)) == 8, timeout_s=20)
    except AssertionError:
        raise AssertionError("cluster did not come up:\n" + c.log()[-3000:]) from None


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    with Cluster(tmp_path, nodes=8) as c:
        wait_up(c)
        yield c


@pytest.fixture
def quiet_cluster(tmp_path: Path) -> Any:
    """Nodes that send no heartbeats: heartbeats are best effort (never buffered or resent),
    so one lost with a killed relay leaves a seq hole for good. Without them every seq is a
    buffered message, and no gap means nothing buffered was lost."""
    with Cluster(tmp_path, nodes=8, sim={"heartbeat_interval_ms": 600_000}) as c:
        wait_up(c)
        yield c


def test_status_lists_every_node_with_fresh_telemetry(cluster: Cluster) -> None:
    status = status_json(cluster)
    assert status is not None
    assert sorted(n["node_id"] for n in status["nodes"]) == [f"sim-{i:03d}" for i in range(8)]
    assert status["relay"]["accepted"] > 0
    assert set(status["relay"]["rejects"]) >= {
        "malformed",
        "schema",
        "range",
        "duplicate",
        "rate_limited",
    }
    table = subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "status", "--config", str(cluster.config_path)],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert "sim-007" in table and "accepted=" in table
    # The liveness monitor's state for each node (it may still be learning at first).
    wait_for(lambda: (s := status_json(cluster)) and {n["state"] for n in s["nodes"]} == {"alive"})
    assert "liveness: alive=8" in subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "status", "--config", str(cluster.config_path)],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip


def test_killed_relay_comes_back_and_nodes_deliver_their_buffer(
    quiet_cluster: Cluster,
) -> None:
    cluster = quiet_cluster
    before = cluster.ps()
    old_pid = before["relay"]["pid"]
    bus = BusListener(cluster.config.relay.bus)
    try:
        wait_for(lambda: len({r.node_id for r in bus.pump()}) == 8, timeout_s=10)
        os.kill(old_pid, signal.SIGKILL)
        bus.pump(0.2)
    finally:
        bus.close()
    before_high: dict[str, int] = {}
    for r in bus.records:  # what the old relay published before it died
        before_high[r.node_id] = max(before_high.get(r.node_id, -1), r.seq)
    wait_for(
        lambda: cluster.snapshot() and cluster.ps()["relay"]["pid"] != old_pid,
        timeout_s=5,
        interval_s=0.01,
        ignore=(CtlUnavailable,),
    )
    # How fast it is back is measured by bench/relay_restart.py, not asserted here.

    def delivered() -> bool:
        # The new relay has every message from the first one the old relay did not
        # publish, without a hole: what was lost in flight or buffered was resent.
        s = cluster.snapshot()
        return len(s.nodes) == 8 and all(
            n.first_seq <= before_high[n.node_id] + 1 and n.gaps == 0 for n in s.nodes
        )

    wait_for(delivered, timeout_s=15, ignore=(CtlUnavailable,))
    after = cluster.ps()
    assert after["relay"]["restarts"] == before["relay"]["restarts"] + 1
    assert after["sim"]["restarts"] == before["sim"]["restarts"]  # nothing else crashed
    assert after["sim"]["pid"] == before["sim"]["pid"]
    counters = cluster.sim_counters()
    assert counters["node_dropped"] == 0


def test_ctrl_c_stops_everything_and_releases_ports(tmp_path: Path) -> None:
    with Cluster(tmp_path, nodes=4) as cluster:
        wait_for(lambda: len(fresh_nodes(cluster)) == 4, timeout_s=20)
        pids = [row["pid"] for row in cluster.ps().values()]
        assert cluster.stop() == 0
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    config = cluster.config
    for endpoint in (
        config.relay.ingest,
        config.relay.bus,
        config.relay.ctl,
        config.liveness.bus,
        config.liveness.ctl,
        config.sim.ctl,
        config.supervisor.ctl,
    ):
        assert port_free(endpoint), endpoint


def test_up_refuses_to_start_on_ports_in_use(tmp_path: Path) -> None:
    from shoal.services.runtime.config import dump_toml
    from shoal.services.testing import config_on_free_ports

    config = config_on_free_ports()
    path = tmp_path / "shoal.toml"
    path.write_text(dump_toml(config))
    host, port = config.relay.bus.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        up = subprocess.run(
            [sys.executable, "-m", "shoal.services.cli", "up", "--headless", "--config", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        relay = subprocess.run(
            [sys.executable, "-m", "shoal.services.cli", "run", "relay", "--config", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert up.returncode == 1 and "relay.bus" in up.stderr and "in use" in up.stderr
    assert (
        relay.returncode == 2 and "bind_failed" in relay.stderr and "Traceback" not in relay.stderr
    )
