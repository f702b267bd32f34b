"""A service's view of the cluster: snapshot, then bus updates, re-synced after a restart."""

from __future__ import annotations

from typing import Any

from shoal.protocol.messages import Telemetry
from shoal.services.relay.service import Relay
from shoal.services.relay.view import RelayView
from shoal.services.runtime.config import relay_links
from shoal.services.runtime.service import Service
from shoal.services.testing import IngestClient, config_on_free_ports, running, wait_for


def tel(node: str, seq: int, cpu: float = 1.0) -> Telemetry:
    return Telemetry(
        node_id=node,
        boot_id=1,
        seq=seq,
        cpu_pct=cpu,
        queue_depth=0,
        queue_capacity=4,
        load_factor=0.1,
    )


class Console(Service):
    name = "console"

    def setup(self) -> None:
        self.view = RelayView(self, relay_links(self.config))


def cpu(view: RelayView, node: str) -> Any:
    n = view.nodes.get(node)
    return n.telemetry.cpu_pct if n and n.telemetry else None


def test_a_late_joiner_sees_the_whole_cluster_then_follows_updates() -> None:
    config = config_on_free_ports()
    with running(Relay(config)) as relay:
        client = IngestClient(config.relay.ingest)
        try:
            for i in range(20):
                client.send(tel(f"n{i:02d}", 0, cpu=float(i)))
            wait_for(lambda: len(relay.nodes) == 20, 5)
            with running(Console(config)) as console:
                view = console.view
                wait_for(lambda: view.synced and len(view.nodes) == 20, 5)
                assert cpu(view, "n07") == 7.0
                assert 0 <= view.age_ms("n07") < 5000
                client.send(tel("n07", 1, cpu=70.0))
                wait_for(lambda: cpu(view, "n07") == 70.0, 5)
                assert view.nodes["n07"].last_seq == 1
        finally:
            client.close()


def test_a_relay_restart_makes_the_view_resync() -> None:
    config = config_on_free_ports()
    with running(Console(config)) as console:
        view = console.view
        client = IngestClient(config.relay.ingest)
        try:
            with running(Relay(config)):
                client.send(tel("a", 0))
                wait_for(lambda: view.synced and "a" in view.nodes, 10)
                first_pub = view.relay_pub
            with running(Relay(config)):
                client.send(tel("b", 0))
                wait_for(
                    lambda: view.synced and view.relay_pub != first_pub and "b" in view.nodes, 10
                )
                assert "a" not in view.nodes  # the new relay has not heard from it yet
        finally:
            client.close()


def test_a_heartbeat_ahead_of_the_view_reveals_lost_records_and_resyncs() -> None:
    from shoal.protocol.messages import NodeRecords, RelaySnapshot, ServiceBeat

    console = Console(config_on_free_ports())
    try:
        console.setup()  # sockets and handlers, no loop: the view is driven by hand
        view = console.view
        shard = view.shards[0]  # the Clone pattern's state of the one relay
        shard._apply_snapshot(RelaySnapshot(pub=9, pseq=4, nodes=[], counters={}, rejects={}))
        assert view.synced
        beat = ServiceBeat(
            pub=9, pseq=1, service="relay", pid=1, uptime_s=1.0, interval_ms=500, pseqs={"rec": 4}
        )
        shard._on_frame(b"svc", beat)
        assert view.synced  # nothing missed: the snapshot covers rec 1..4
        shard._on_frame(b"rec", NodeRecords(pub=9, pseq=5, records=[tel("a", 0)]))
        assert "a" in view.nodes and shard.pseq == 5
        resyncs = view.resyncs
        shard._on_frame(
            b"svc",
            ServiceBeat(
                pub=9,
                pseq=2,
                service="relay",
                pid=1,
                uptime_s=2.0,
                interval_ms=500,
                pseqs={"rec": 6},
            ),
        )
        assert not view.synced and view.resyncs == resyncs + 1  # rec 6 never came
        shard._apply_snapshot(RelaySnapshot(pub=9, pseq=6, nodes=[], counters={}, rejects={}))
        shard._on_frame(b"rec", NodeRecords(pub=9, pseq=8, records=[tel("b", 0)]))
        assert not view.synced  # 7 is missing: another snapshot
    finally:
        console.sockets.close_all()
        console.ctx.term()
