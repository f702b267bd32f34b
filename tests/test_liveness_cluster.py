"""The liveness monitor in a real cluster: `shoal up --headless`, faults through the sim.

crash -> dead, reboot -> rebooted, goodbye -> left, a dead node returns -> alive, the
relay SIGKILLed -> nobody dead; a late subscriber re-syncs from the snapshot.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.protocol import codec
from shoal.protocol.messages import MemberEvent, Membership
from shoal.services.liveness.view import MembershipView
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable
from shoal.services.runtime.service import Service
from shoal.services.testing import BusListener, Cluster, running, wait_for

NODES = 6


class Events:
    """Every membership event published since the listener connected."""

    def __init__(self, cluster: Cluster) -> None:
        topics = (codec.TOPIC_MEMBERSHIP, codec.TOPIC_SERVICE_BEAT)
        self.bus = BusListener(cluster.config.liveness.bus, topics=topics)
        # Connected once the monitor's own heartbeat arrives (no slow-joiner loss after).
        wait_for(lambda: self.bus.pump(0.05) is not None and self.bus.frames, 10)

    def all(self) -> list[MemberEvent]:
        self.bus.pump(0.05)
        return [e for f in self.bus.frames if isinstance(f, Membership) for e in f.events]

    def of(self, node: str, kind: str) -> list[MemberEvent]:
        return [e for e in self.all() if e.node_id == node and e.event == kind]


def members(cluster: Cluster) -> dict[str, Any]:
    with CtlClient(cluster.config.liveness.ctl) as lv:
        snap = lv.call("members", timeout_s=1.0, retries=0)
    return {m["node_id"]: m for m in snap["members"]}


def fault(cluster: Cluster, action: str, *nodes: str) -> Any:
    with CtlClient(cluster.config.sim.ctl) as sim:
        return sim.call("fault", {"action": action, "nodes": list(nodes)}, timeout_s=2.0)


def all_alive(cluster: Cluster) -> bool:
    m = members(cluster)
    return len(m) == NODES and all(v["state"] == "alive" for v in m.values())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, nodes=NODES, sim={"tick_ms": 20}) as c:
        try:
            wait_for(lambda: all_alive(c), timeout_s=30, ignore=(CtlUnavailable,))
        except AssertionError:
            raise AssertionError("cluster did not come up:\n" + c.log()[-3000:]) from None
        yield c


def test_crash_dead_return_reboot_and_goodbye_left(cluster: Cluster) -> None:
    events = Events(cluster)
    try:
        fault(cluster, "crash", "sim-001")
        wait_for(lambda: events.of("sim-001", "dead"), timeout_s=10)
        assert events.of("sim-001", "suspect")  # suspect came first
        assert members(cluster)["sim-001"]["state"] == "dead"

        fault(cluster, "resume", "sim-001")  # it boots again: a new boot_id
        rebooted = wait_for(lambda: events.of("sim-001", "rebooted"), timeout_s=10)
        assert rebooted[0].prev == "dead" and (rebooted[0].downtime_ms or 0) > 1000

        fault(cluster, "hang", "sim-002")
        wait_for(lambda: events.of("sim-002", "dead"), timeout_s=10)
        fault(cluster, "resume", "sim-002")  # the same boot speaks again
        back = wait_for(lambda: events.of("sim-002", "alive"), timeout_s=10)
        assert back[0].prev == "dead" and not events.of("sim-002", "rebooted")

        fault(cluster, "leave", "sim-003")
        left = wait_for(lambda: events.of("sim-003", "left"), timeout_s=5)
        assert "leave" in left[0].reason

        dead = {e.node_id for e in events.all() if e.event == "dead"}
        assert dead == {"sim-001", "sim-002"}  # nobody else was ever declared dead
    finally:
        events.bus.close()


def test_a_killed_relay_marks_no_node_dead(cluster: Cluster) -> None:
    events = Events(cluster)
    try:
        before = cluster.ps()["relay"]
        os.kill(before["pid"], signal.SIGKILL)
        wait_for(lambda: cluster.ps()["relay"]["restarts"] == before["restarts"] + 1, 10)
        wait_for(lambda: all_alive(cluster), timeout_s=15, ignore=(CtlUnavailable,))
        # Well past every dead threshold after the relay's return: still nobody dead.
        wait_for(lambda: cluster.ps()["relay"]["uptime_s"] > 3.0, 10)
        assert [e for e in events.all() if e.event == "dead"] == []
        assert all_alive(cluster)
    finally:
        events.bus.close()


class Watcher(Service):
    name = "watcher"
    key_name = "reader"

    def setup(self) -> None:
        self.view = MembershipView(self, self.config.liveness)


def test_a_late_subscriber_resyncs_from_the_snapshot_and_follows(cluster: Cluster) -> None:
    fault(cluster, "leave", "sim-004")
    wait_for(lambda: members(cluster)["sim-004"]["state"] == "left", 5)
    with running(Watcher(cluster.config)) as watcher:
        view = watcher.view
        wait_for(lambda: view.synced and len(view.members) == NODES, 10)
        assert view.state("sim-004") == "left" and view.state("sim-000") == "alive"
        assert view.healthy
        fault(cluster, "crash", "sim-005")
        wait_for(lambda: view.state("sim-005") == "dead", 10)


def test_queries_with_unknown_ids_or_bad_args_get_an_error_reply(cluster: Cluster) -> None:
    with CtlClient(cluster.config.liveness.ctl) as lv:
        with pytest.raises(CtlFailed, match="unknown node 'ghost'"):
            lv.call("member", {"node_id": "ghost"}, timeout_s=1.0)
        with pytest.raises(CtlFailed, match="bad arguments"):
            lv.call("member", {"id": 3}, timeout_s=1.0)
        with pytest.raises(CtlFailed, match="unknown op"):
            lv.call("explode", timeout_s=1.0)
        assert lv.call("member", {"node_id": "sim-000"}, timeout_s=1.0)["state"] == "alive"
        assert lv.call("status", timeout_s=1.0)["counters"]["alive"] == NODES
