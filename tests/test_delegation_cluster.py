"""Delegation in a real cluster (`shoal up --headless`): an overloaded node hands tasks to
peers; a peer killed while holding them, or the delegator killed mid-flight, loses none and
commits none twice."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.testing import Cluster, wait_for

NODES = 6
HOT = "sim-001"


def call(endpoint: str, op: str, args: dict[str, Any] | None = None) -> Any:
    with CtlClient(endpoint) as client:
        return client.call(op, args or {}, timeout_s=2.0, retries=1)


def audit(cluster: Cluster) -> dict[str, int]:
    return call(cluster.config.delegator.ctl, "audit")  # type: ignore[no-any-return]


def in_flight(a: dict[str, int]) -> int:
    return a["pending"] + a["assigned"] + a["running"] + a["done"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, nodes=NODES, supervisor={"stable_after_s": 1.0}) as c:
        try:
            wait_for(lambda: len(c.snapshot().nodes) == NODES, 30, ignore=(CtlUnavailable,))
            wait_for(lambda: call(c.config.delegator.ctl, "ping"), 30, ignore=(CtlUnavailable,))
        except AssertionError:
            raise AssertionError("cluster did not come up:\n" + c.log()[-3000:]) from None
        yield c


def overload(cluster: Cluster, rate_hz: float) -> None:
    call(cluster.config.sim.ctl, "set_rate", {"rate_hz": rate_hz, "nodes": [HOT]})


def settle(cluster: Cluster) -> dict[str, int]:
    """Stop the hot spot and wait until every task the ledger took is delivered or
    dead-lettered; return the audit."""
    overload(cluster, 1.0)
    wait_for(lambda: in_flight(audit(cluster)) == 0, 60, 0.2, ignore=(CtlUnavailable,))
    return audit(cluster)


def test_a_peer_killed_while_holding_delegated_tasks_loses_none(cluster: Cluster) -> None:
    overload(cluster, 30.0)
    holder: dict[str, str] = {}

    def someone_holds_tasks() -> bool:
        latest = call(cluster.config.delegator.ctl, "tasks", {"latest": 200})["latest"]
        owners = [r["owner"] for r in latest if r["state"] == "running" and r["owner"] != HOT]
        if owners:
            holder["node"] = max(set(owners), key=owners.count)
        return bool(owners)

    wait_for(someone_holds_tasks, 30, 0.05)
    call(cluster.config.sim.ctl, "fault", {"action": "crash", "nodes": [holder["node"]]})
    wait_for(lambda: audit(cluster)["redelivered_tasks"] > 0, 20, 0.1)
    result = settle(cluster)
    assert result["committed_twice"] == 0
    assert result["dead_letter"] == 0
    assert result["delivered"] == result["total"] > 0
    # The origin got every result, each counted once.
    sim = call(cluster.config.sim.ctl, "status")["counters"]
    assert sim["tasks_completed_remote"] == result["delivered"]


def test_a_delegator_killed_mid_flight_recovers_every_task(cluster: Cluster) -> None:
    overload(cluster, 30.0)
    wait_for(lambda: audit(cluster)["running"] + audit(cluster)["assigned"] > 0, 30, 0.05)
    before = cluster.ps()["delegator"]
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(lambda: cluster.ps()["delegator"]["restarts"] == before["restarts"] + 1, 15)
    status = wait_for(
        lambda: call(cluster.config.delegator.ctl, "status"), 15, ignore=(CtlUnavailable,)
    )
    assert status["counters"]["recovered"] > 0  # it found tasks in flight in the file
    result = settle(cluster)
    assert result["committed_twice"] == 0
    assert result["delivered"] + result["dead_letter"] == result["total"] > 0
    assert result["dead_letter"] == 0
    sim = call(cluster.config.sim.ctl, "status")["counters"]
    assert sim["tasks_completed_remote"] == result["delivered"]
