"""Bus subscribers tell frames lost from a publisher restart."""

from __future__ import annotations

from typing import Any

from shoal.protocol import codec
from shoal.protocol.messages import NodeRecords, Telemetry
from shoal.services.relay.service import Relay
from shoal.services.runtime.service import Service
from shoal.services.runtime.subscriber import BusSubscriber, SequenceTracker
from shoal.services.testing import IngestClient, config_on_free_ports, running, wait_for


def test_consecutive_frames_have_no_gap() -> None:
    t = SequenceTracker()
    assert [t.observe(7, s) for s in range(1, 6)] == [0] * 5
    assert t.gaps == 0 and t.restarts == 0


def test_a_jump_under_one_publisher_is_a_gap() -> None:
    t = SequenceTracker()
    t.observe(7, 1)
    assert t.observe(7, 5) == 3
    assert t.gaps == 3


def test_a_new_publisher_instance_is_a_restart_not_a_gap() -> None:
    t = SequenceTracker()
    t.observe(7, 100)
    assert t.observe(8, 1) == 0
    assert t.restarts == 1 and t.gaps == 0


class Watcher(Service):
    name = "watcher"
    key_name = "reader"

    def setup(self) -> None:
        self.records: list[Any] = []
        self.sub = BusSubscriber(self, self.config.relay.bus, on_frame=self.seen)

    def seen(self, _topic: bytes, frame: Any) -> None:
        if isinstance(frame, NodeRecords):
            self.records.extend(frame.records)


def test_subscriber_sees_records_and_counts_a_relay_restart() -> None:
    config = config_on_free_ports(runtime={"heartbeat_interval_ms": 30})
    with running(Watcher(config)) as watcher:
        with running(Relay(config)):
            wait_for(lambda: watcher.sub.frames() > 0, 5)
            client = IngestClient(config.relay.ingest)
            try:
                client.send(
                    Telemetry(
                        node_id="a",
                        boot_id=1,
                        seq=0,
                        cpu_pct=1,
                        queue_depth=0,
                        queue_capacity=1,
                        load_factor=0,
                    )
                )
                wait_for(lambda: len(watcher.records) == 1, 5)
            finally:
                client.close()
        with running(Relay(config)):
            wait_for(lambda: watcher.sub.restarts() == 1, 5)
        assert watcher.sub.gaps() == 0


class RecordsOnly(Watcher):
    def setup(self) -> None:
        self.records = []
        self.sub = BusSubscriber(
            self, self.config.relay.bus, topics=(codec.TOPIC_NODE_RECORDS,), on_frame=self.seen
        )


def test_a_subscriber_of_one_topic_sees_no_false_gaps_between_heartbeats() -> None:
    config = config_on_free_ports(runtime={"heartbeat_interval_ms": 10})
    with running(Relay(config)) as relay, running(RecordsOnly(config)) as watcher:
        client = IngestClient(config.relay.ingest)
        try:
            wait_for(
                lambda: relay.counters["ctl_requests"] >= 0 and watcher.sub.sock is not None, 5
            )
            seq = 0

            def one_more() -> bool:
                nonlocal seq
                client.send(
                    Telemetry(
                        node_id="a",
                        boot_id=1,
                        seq=seq,
                        cpu_pct=1,
                        queue_depth=0,
                        queue_capacity=1,
                        load_factor=0,
                    )
                )
                seq += 1
                return len(watcher.records) >= 20

            wait_for(one_more, timeout_s=10, interval_s=0.015)  # beats interleave with records
        finally:
            client.close()
        assert watcher.sub.gaps() == 0
        assert set(watcher.sub.sequences) == {codec.TOPIC_NODE_RECORDS}


def test_a_heartbeat_reveals_frames_lost_on_another_topic() -> None:
    from shoal.protocol.messages import ServiceBeat

    config = config_on_free_ports()
    watcher = Watcher(config)
    try:
        watcher.setup()
        sub = watcher.sub
        tracker = sub.sequences.setdefault(codec.TOPIC_NODE_RECORDS, SequenceTracker())
        tracker.observe(5, 1)
        sub._behind(
            ServiceBeat(
                pub=5, pseq=1, service="relay", pid=1, uptime_s=1, interval_ms=500, pseqs={"rec": 3}
            )
        )
        assert tracker.gaps == 2 and tracker.last_pseq == 3
    finally:
        watcher.sockets.close_all()
        watcher.ctx.term()
