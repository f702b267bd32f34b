"""The relay, in-process on free ports, driven by raw ZeroMQ clients."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from shoal.protocol import codec, limits
from shoal.protocol.messages import (
    Batch,
    Goodbye,
    Heartbeat,
    Hello,
    NodeRecords,
    RelaySnapshot,
    ServiceBeat,
    ServiceStatus,
    Telemetry,
)
from shoal.services.relay.service import Relay
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed
from shoal.services.testing import (
    BusListener,
    IngestClient,
    config_on_free_ports,
    running,
    wait_for,
)


def tel(node: str, seq: int, boot: int = 1, **kw: Any) -> Telemetry:
    values = {"cpu_pct": 10.0, "queue_depth": 1, "queue_capacity": 8, "load_factor": 0.2, **kw}
    return Telemetry(node_id=node, boot_id=boot, seq=seq, **values)


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Relay, IngestClient, BusListener, CtlClient]]:
    relay_overrides = getattr(request, "param", {})
    config = config_on_free_ports(runtime={"heartbeat_interval_ms": 50}, relay=relay_overrides)
    with running(Relay(config)) as relay:
        client = IngestClient(config.relay.ingest)
        bus = BusListener(config.relay.bus)
        ctl = CtlClient(config.relay.ctl)
        try:
            # Past the slow-joiner window: the subscriber has seen a frame of the relay.
            wait_for(lambda: bus.pump() is not None and seen_beat(bus), timeout_s=5)
            yield relay, client, bus, ctl
        finally:
            client.close()
            bus.close()
            ctl.close()


def seen_beat(bus: BusListener) -> bool:
    return any(isinstance(f, ServiceBeat) for f in bus.frames)


def snapshot(ctl: CtlClient) -> RelaySnapshot:
    return ctl.call("snapshot", result_type=RelaySnapshot)


def test_valid_messages_are_republished_in_order_and_acked(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    client.send(Hello(node_id="n1", boot_id=5, seq=0, fw="t"))
    for seq in range(1, 20):
        client.send(tel("n1", seq, boot=5))
    wait_for(lambda: len(bus.pump()) >= 20, timeout_s=5)
    assert [r.seq for r in bus.records] == list(range(20))
    assert wait_for(lambda: client.pump_acks().get(("n1", 5)) == set(range(20)), timeout_s=5)
    snap = snapshot(ctl)
    [node] = snap.nodes
    assert node.node_id == "n1" and node.last_seq == 19 and node.gaps == 0
    assert node.telemetry is not None and node.telemetry.seq == 19
    assert node.hello is not None and node.hello.fw == "t"


def test_duplicates_are_counted_acked_and_not_republished(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    for _ in range(3):
        for seq in range(5):
            client.send(tel("n1", seq))
    client.send(tel("n1", 5))
    wait_for(lambda: any(r.seq == 5 for r in bus.pump()), timeout_s=5)
    assert sorted(r.seq for r in bus.records) == list(range(6))
    snap = snapshot(ctl)
    assert snap.rejects["duplicate"] == 10
    assert snap.nodes[0].duplicates == 10
    assert wait_for(lambda: client.pump_acks().get(("n1", 1)) == set(range(6)), timeout_s=5)


def test_sequence_gaps_are_counted_and_late_arrivals_fill_them(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    for seq in (0, 1, 5, 6):
        client.send(tel("n1", seq))
    wait_for(lambda: snapshot(ctl).nodes and snapshot(ctl).nodes[0].last_seq == 6, timeout_s=5)
    assert snapshot(ctl).nodes[0].gaps == 3
    client.send(tel("n1", 3))
    wait_for(lambda: snapshot(ctl).nodes[0].gaps == 2, timeout_s=5)
    assert snapshot(ctl).counters["gaps"] == 2


def test_acks_are_selective_a_lost_message_is_not_covered(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    for seq in (0, 1, 2, 4, 5):  # 3 lost in flight
        client.send(tel("n1", seq))
    assert wait_for(lambda: client.pump_acks().get(("n1", 1)) == {0, 1, 2, 4, 5}, timeout_s=5)
    client.send(tel("n1", 3))  # the node's resend
    assert wait_for(lambda: client.pump_acks().get(("n1", 1)) == set(range(6)), timeout_s=5)


def test_an_invalid_record_that_names_its_sender_is_acked_so_it_is_not_resent(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    bad = {**msgspec.to_builtins(tel("n1", 0)), "cpu_pct": 180.0}
    client.send(msgspec.msgpack.encode(bad))
    batch = {
        "v": 1,
        "kind": "batch",
        "records": [msgspec.to_builtins(tel("n1", 1)), {**bad, "seq": 2}],
    }
    client.send(msgspec.msgpack.encode(batch))
    assert wait_for(lambda: client.pump_acks().get(("n1", 1)) == {0, 1, 2}, timeout_s=5)
    assert snapshot(ctl).rejects["range"] == 2


def test_messages_of_a_replaced_boot_are_stale(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    client.send(tel("n1", 10, boot=1))
    client.send(tel("n1", 0, boot=2))  # rebooted
    client.send(tel("n1", 11, boot=1))  # late message of the old boot
    wait_for(lambda: snapshot(ctl).rejects["stale"] == 1, timeout_s=5)
    node = snapshot(ctl).nodes[0]
    assert node.boot_id == 2 and node.boots == 2


@pytest.mark.parametrize("cluster", [{"dedup_window": 16}], indirect=True)
def test_replay_older_than_the_window_is_stale(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    for seq in range(40):
        client.send(tel("n1", seq))
    client.send(tel("n1", 3))
    wait_for(lambda: snapshot(ctl).rejects["stale"] == 1, timeout_s=5)
    assert snapshot(ctl).rejects["duplicate"] == 0


def test_garbage_is_counted_by_reason_and_valid_nodes_keep_flowing(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    good = tel("good", 0)
    bad_frames: list[tuple[bytes, str]] = [
        (b"\xc1\xc1\xc1", "malformed"),
        (codec.encode(good)[:-7], "malformed"),
        (msgspec.msgpack.encode({"kind": "telemetry", "node_id": "x"}), "schema"),
        (msgspec.msgpack.encode({"kind": "warp", "node_id": "x"}), "schema"),
        (msgspec.msgpack.encode({**msgspec.to_builtins(tel("x", 0)), "v": 9}), "version"),
        (msgspec.msgpack.encode({**msgspec.to_builtins(tel("x", 0)), "cpu_pct": 250}), "range"),
        (
            msgspec.msgpack.encode({**msgspec.to_builtins(tel("x", 0)), "node_id": "../etc"}),
            "range",
        ),
        (b"\x00" * (limits.MAX_FRAME_BYTES + 10), "oversize"),
    ]
    for frame, _ in bad_frames:
        client.send(frame)
    client.send_frames([b"two", b"frames"])  # one message must be one frame
    client.send(good)
    wait_for(lambda: any(r.node_id == "good" for r in bus.pump()), timeout_s=5)
    snap = snapshot(ctl)
    expected: dict[str, int] = {}
    for _, reason in bad_frames:
        expected[reason] = expected.get(reason, 0) + 1
    expected["malformed"] += 1
    for reason, count in expected.items():
        assert snap.rejects[reason] == count, reason
    assert [n.node_id for n in snap.nodes] == ["good"]


@pytest.mark.parametrize("cluster", [{"rate_per_node_hz": 50.0, "rate_burst": 100}], indirect=True)
def test_a_node_flooding_at_100x_its_rate_is_limited_and_others_lose_nothing(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    others = [f"calm-{i}" for i in range(5)]
    flood_seq = 0
    for round_ in range(10):
        for node in others:
            client.send(tel(node, round_))
        batch = [tel("flood", flood_seq + i) for i in range(250)]
        flood_seq += len(batch)
        client.send(Batch(records=batch))  # type: ignore[arg-type]
    wait_for(
        lambda: (
            sum(n.node_id.startswith("calm") and n.last_seq == 9 for n in snapshot(ctl).nodes) == 5
        ),
        timeout_s=5,
    )
    wait_for(
        lambda: snapshot(ctl).counters["accepted"] + snapshot(ctl).rejects["rate_limited"] == 2550,
        timeout_s=5,
    )
    snap = snapshot(ctl)
    by_id = {n.node_id: n for n in snap.nodes}
    for node in others:
        assert by_id[node].msgs == 10 and by_id[node].rejects == 0
    assert snap.rejects["rate_limited"] >= 2500 - 100 - 50 * 5  # burst + refill in a few seconds
    assert by_id["flood"].msgs <= 100 + 50 * 5


@pytest.mark.parametrize("cluster", [{"max_nodes": 3}], indirect=True)
def test_node_table_is_bounded(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    for i in range(5):
        client.send(tel(f"n{i}", 0))
    wait_for(lambda: snapshot(ctl).rejects["too_many_nodes"] == 2, timeout_s=5)
    assert len(snapshot(ctl).nodes) == 3


def test_goodbye_marks_node_left_and_any_message_brings_it_back(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    client.send(tel("n1", 0))
    client.send(Goodbye(node_id="n1", boot_id=1, seq=1, reason="shutdown"))
    wait_for(lambda: snapshot(ctl).nodes and snapshot(ctl).nodes[0].left, timeout_s=5)
    client.send(Heartbeat(node_id="n1", boot_id=1, seq=2))
    wait_for(lambda: not snapshot(ctl).nodes[0].left, timeout_s=5)


def test_snapshot_lets_a_late_subscriber_see_the_whole_cluster(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    for i in range(20):
        client.send(tel(f"n{i:02d}", 0, cpu_pct=float(i)))
    wait_for(lambda: len(snapshot(ctl).nodes) == 20, timeout_s=5)
    snap = snapshot(ctl)
    assert [n.telemetry.cpu_pct for n in snap.nodes if n.telemetry] == [float(i) for i in range(20)]
    # Clone pattern: frames numbered after the snapshot's pseq are the updates to apply.
    client.send(tel("n00", 1))

    def update_after_snapshot() -> bool:
        bus.pump()
        return any(isinstance(f, NodeRecords) and f.pseq > snap.pseq for f in bus.frames)

    wait_for(update_after_snapshot, timeout_s=5)


def test_control_socket_answers_bad_requests_with_errors(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    with pytest.raises(CtlFailed, match="unknown op 'explode'"):
        ctl.call("explode")
    status = ctl.call("status", result_type=ServiceStatus)
    assert status.service == "relay" and status.counters["ctl_unknown_op"] == 1
    raw = IngestClient(relay.endpoints["ctl"], key="console")
    try:
        raw.sock.send(b"\xc1 not a request")
        reply = codec.decode_reply(raw.sock.recv() if raw.sock.poll(2000) else b"")
        assert not reply.ok and reply.error.startswith("malformed")
    finally:
        raw.close()
    assert ctl.call("ping")["service"] == "relay"


def test_ack_frames_decode_as_the_protocol_ack(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    client.send(tel("n1", 0))
    assert client.sock.poll(5000)
    ack = codec.decode_ack(client.sock.recv())  # typed decode: the wire form matches Ack
    assert [(e.node_id, e.boot_id, e.first, e.last) for e in ack.acks] == [("n1", 1, 0, 0)]


def test_a_frame_beyond_the_socket_limit_costs_only_its_sender(cluster: Any) -> None:
    relay, client, bus, ctl = cluster
    hostile = IngestClient(relay.endpoints["ingest"])
    try:
        hostile.send(b"\x00" * (2 * 1024 * 1024))  # libzmq drops this peer (MAXMSGSIZE)
        client.send(tel("calm", 0))
        wait_for(lambda: any(r.node_id == "calm" for r in bus.pump()), timeout_s=5)
    finally:
        hostile.close()
    assert ctl.call("ping")["service"] == "relay"


# --- which connection owns a node id ----------------------------------------------------------


def acked(client: IngestClient, node: str, seq: int, boot: int = 1) -> bool:
    return seq in client.pump_acks().get((node, boot), set())


def n1_records(bus: BusListener) -> list[tuple[str, int, int]]:
    return [(type(r).__name__, r.boot_id, r.seq) for r in bus.pump() if r.node_id == "n1"]


@pytest.mark.parametrize("cluster", [{"rebind_after_ms": 60_000}], indirect=True)
def test_a_connection_speaking_for_another_connections_node_is_refused_and_counted(
    cluster: Any,
) -> None:
    relay, a, bus, ctl = cluster
    b = IngestClient(relay.endpoints["ingest"])
    try:
        a.send(tel("n1", 0))
        assert wait_for(lambda: acked(a, "n1", 0), timeout_s=5)
        b.send(Heartbeat(node_id="n1", boot_id=1, seq=1))
        b.send(Heartbeat(node_id="n1", boot_id=9, seq=0))  # nor may it replace the boot
        wait_for(lambda: snapshot(ctl).rejects["impersonation"] == 2, timeout_s=5)
        # Not acked: b's own node is acked in the pass after, and n1 never is.
        b.send(tel("b1", 0))
        assert wait_for(lambda: acked(b, "b1", 0), timeout_s=5)
        assert ("n1", 1) not in b.acks and ("n1", 9) not in b.acks
        # The owner keeps being accepted; nothing of b's for n1 was published.
        a.send(tel("n1", 1))
        assert wait_for(lambda: acked(a, "n1", 1), timeout_s=5)
        wait_for(lambda: len(n1_records(bus)) >= 2, timeout_s=5)
        assert n1_records(bus) == [("Telemetry", 1, 0), ("Telemetry", 1, 1)]
        snap = snapshot(ctl)
        n1 = next(n for n in snap.nodes if n.node_id == "n1")
        assert (n1.boot_id, n1.boots, n1.msgs, n1.rejects) == (1, 1, 2, 2)
        assert snap.counters["reject_impersonation"] == 2
        assert snap.counters.get("rebinds", 0) == 0
    finally:
        b.close()


@pytest.mark.parametrize("cluster", [{"rebind_after_ms": 60_000}], indirect=True)
def test_a_node_id_moves_to_a_new_connection_once_its_owner_disconnects(cluster: Any) -> None:
    relay, _, bus, ctl = cluster
    a = IngestClient(relay.endpoints["ingest"])
    b = IngestClient(relay.endpoints["ingest"])
    try:
        a.send(tel("n1", 0))
        assert wait_for(lambda: acked(a, "n1", 0), timeout_s=5)
        b.send(tel("n1", 1))
        wait_for(lambda: snapshot(ctl).rejects["impersonation"] == 1, timeout_s=5)
        a.close()  # the node's old connection closes (a gateway restarting, say)

        def b_gets_through() -> bool:
            b.send(tel("n1", 1))  # the node resends what was not acked, as a node does
            return acked(b, "n1", 1)

        # Well before rebind_after_ms: the disconnect released n1.
        assert wait_for(b_gets_through, timeout_s=5)
        wait_for(lambda: len(n1_records(bus)) >= 2, timeout_s=5)
        assert n1_records(bus) == [("Telemetry", 1, 0), ("Telemetry", 1, 1)]
        assert snapshot(ctl).counters["rebinds"] == 1
        assert list(relay.conn_nodes.values()) == [{"n1"}]  # a's entry went with it
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("cluster", [{"rebind_after_ms": 300}], indirect=True)
def test_a_node_id_silent_for_rebind_after_ms_can_be_taken_over(cluster: Any) -> None:
    relay, a, bus, ctl = cluster
    b = IngestClient(relay.endpoints["ingest"])
    try:
        started = time.monotonic()
        a.send(tel("n1", 0))
        assert wait_for(lambda: acked(a, "n1", 0), timeout_s=5)

        def b_gets_through() -> bool:
            b.send(Heartbeat(node_id="n1", boot_id=1, seq=1))
            return acked(b, "n1", 1)

        # a stays connected but silent (its link died without the relay noticing).
        assert wait_for(b_gets_through, timeout_s=5)
        assert time.monotonic() - started >= 0.3
        assert snapshot(ctl).counters["rebinds"] == 1
        # Now b owns n1, and a is the one refused.
        refused = snapshot(ctl).rejects["impersonation"]
        a.send(tel("n1", 2))
        b.send(Heartbeat(node_id="n1", boot_id=1, seq=3))
        assert wait_for(lambda: acked(b, "n1", 3), timeout_s=5)
        wait_for(lambda: snapshot(ctl).rejects["impersonation"] == refused + 1, timeout_s=5)
        assert [seq for _, _, seq in n1_records(bus)] == [0, 1, 3]
    finally:
        b.close()


def test_a_gateway_carries_many_node_ids_on_one_connection(cluster: Any) -> None:
    relay, gw_a, bus, ctl = cluster
    gw_b = IngestClient(relay.endpoints["ingest"])
    try:
        for seq in range(3):
            gw_a.send(Batch(records=[tel(f"a-{i}", seq) for i in range(10)]))  # type: ignore[arg-type]
            gw_b.send(Batch(records=[tel(f"b-{i}", seq) for i in range(10)]))  # type: ignore[arg-type]
        for gw, prefix in ((gw_a, "a"), (gw_b, "b")):
            assert wait_for(
                lambda gw=gw, prefix=prefix: all(
                    gw.pump_acks().get((f"{prefix}-{i}", 1)) == {0, 1, 2} for i in range(10)
                ),
                timeout_s=5,
            )
        wait_for(lambda: len(bus.pump()) >= 60, timeout_s=5)
        assert len(bus.records) == 60
        # One of a's nodes spoken for by b, inside a batch: refused alone.
        gw_b.send(Batch(records=[tel("b-0", 3), tel("a-5", 3), tel("b-1", 3)]))  # type: ignore[arg-type]
        assert wait_for(lambda: acked(gw_b, "b-0", 3) and acked(gw_b, "b-1", 3), timeout_s=5)
        snap = snapshot(ctl)
        assert snap.rejects["impersonation"] == 1
        assert ("a-5", 1) not in gw_b.acks
        assert {n.node_id: n.msgs for n in snap.nodes} == {
            **{f"a-{i}": 3 for i in range(10)},
            **{f"b-{i}": 4 if i < 2 else 3 for i in range(10)},
        }
    finally:
        gw_b.close()


@pytest.mark.parametrize("cluster", [{"rebind_after_ms": 60_000}], indirect=True)
def test_a_disconnect_releases_only_the_node_ids_of_the_closed_connection(cluster: Any) -> None:
    # Connections come and go and their descriptors are reused: a disconnect must still
    # release exactly what the closed connection owned.
    relay, _, bus, ctl = cluster
    clients: list[IngestClient] = []

    def connect() -> IngestClient:
        clients.append(IngestClient(relay.endpoints["ingest"]))
        return clients[-1]

    def gets_through(client: IngestClient, node: str) -> Callable[[], bool]:
        def attempt() -> bool:
            client.send(tel(node, 0))  # resent until acked, as a node does
            return acked(client, node, 0)

        return attempt

    try:
        a, b = connect(), connect()
        for client, node in ((a, "a1"), (b, "b1")):
            assert wait_for(gets_through(client, node), timeout_s=5)
        a.close()
        wait_for(lambda: len(relay.conn_nodes) == 1, timeout_s=5)  # a's disconnect seen
        c = connect()  # on a's old descriptor, most likely
        assert wait_for(gets_through(c, "c1"), timeout_s=5)
        d = connect()
        assert wait_for(gets_through(d, "a1"), timeout_s=5)
        c.close()
        assert wait_for(gets_through(d, "c1"), timeout_s=5)
        refused = snapshot(ctl).rejects["impersonation"]
        d.send(tel("b1", 1))  # b is still connected: b1 is still b's
        b.send(tel("b1", 1))
        assert wait_for(lambda: acked(b, "b1", 1), timeout_s=5)
        wait_for(lambda: snapshot(ctl).rejects["impersonation"] == refused + 1, timeout_s=5)
        assert sorted(map(sorted, relay.conn_nodes.values())) == [["a1", "c1"], ["b1"]]
        assert snapshot(ctl).counters["rebinds"] == 2
    finally:
        for client in clients:
            client.close()
