"""Bounded tables: one connection cannot fill the relay's node table, phantoms are
forgotten soon, and a reply larger than a frame comes in chunks (issue 13)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq

from shoal.protocol.messages import Heartbeat, Hello, RelaySnapshot, Reply
from shoal.services.relay.service import Relay
from shoal.services.runtime.chunks import CTL_CHUNK_BYTES
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed
from shoal.services.testing import (
    IngestClient,
    config_on_free_ports,
    raw_socket,
    running,
    wait_for,
)


def batch(node_ids: list[str], seq: int, kind: type[Any] = Heartbeat) -> bytes:
    records = [msgspec.to_builtins(kind(node_id=n, boot_id=1, seq=seq)) for n in node_ids]
    return msgspec.msgpack.encode({"v": 1, "kind": "batch", "records": records})


def send_all(client: IngestClient, node_ids: list[str], seq: int) -> None:
    for start in range(0, len(node_ids), 256):
        client.send_frames([batch(node_ids[start : start + 256], seq)])


def acked_ids(client: IngestClient, seq: int) -> set[str]:
    return {node for (node, _boot), seqs in client.pump_acks().items() if seq in seqs}


@pytest.fixture
def relay(request: pytest.FixtureRequest) -> Iterator[Relay]:
    config = config_on_free_ports(relay=getattr(request, "param", {}))
    with running(Relay(config)) as service:
        yield service


@pytest.mark.parametrize("relay", [{"new_ids_per_conn": 100}], indirect=True)
def test_one_connection_brings_in_only_so_many_unconfirmed_ids(relay: Relay) -> None:
    """Before: 10,240 made-up ids from one connection filled the table in under a second."""
    hostile, honest = (
        IngestClient(relay.endpoints["ingest"]),
        IngestClient(relay.endpoints["ingest"]),
    )
    try:
        ghosts = [f"ghost-{i}" for i in range(1000)]
        send_all(hostile, ghosts, 0)
        wait_for(lambda: relay.status_counters()["reject_too_many_new_ids"] == 900, 10)
        assert relay.status_counters()["nodes"] == 100
        # Another connection is not held back by the first one's ghosts.
        honest.send(Hello(node_id="real-1", boot_id=1, seq=0, fw="t"))
        wait_for(lambda: "real-1" in acked_ids(honest, 0), 10)
        # Confirmed ids (a second message) free the connection's allowance.
        fleet = [f"fleet-{i}" for i in range(250)]
        gateway = IngestClient(relay.endpoints["ingest"])
        try:
            got: set[str] = set()
            for _attempt in range(6):  # the gateway resends what was not acked, as nodes do
                todo = [n for n in fleet if n not in got]
                send_all(gateway, todo, 0)
                wait_for(lambda: acked_ids(gateway, 0), 10)
                now_in = {n for n in fleet if n in relay.nodes}
                send_all(gateway, sorted(now_in - got), 1)  # their second message
                got |= now_in
                if got == set(fleet):
                    break
            assert got == set(fleet)
        finally:
            gateway.close()
    finally:
        hostile.close()
        honest.close()


@pytest.mark.parametrize("relay", [{"phantom_after_s": 0.5}], indirect=True)
def test_phantoms_are_forgotten_fast_and_talking_nodes_are_kept(relay: Relay) -> None:
    client = IngestClient(relay.endpoints["ingest"])
    try:
        send_all(client, [f"ghost-{i}" for i in range(300)], 0)
        send_all(client, ["real-1", "real-2"], 0)
        send_all(client, ["real-1", "real-2"], 1)
        wait_for(lambda: relay.status_counters()["nodes"] == 302, 10)
        wait_for(lambda: relay.counters["phantoms_forgotten"] == 300, 10)
        assert set(relay.nodes) == {"real-1", "real-2"}
        assert relay.unconfirmed == {}  # the connection's allowance is whole again
    finally:
        client.close()


def test_a_result_larger_than_a_frame_comes_in_chunks_and_frames_stay_small(relay: Relay) -> None:
    big = list(range(400_000))  # ~1.9 MB of msgpack
    relay.ctl_ops["big"] = lambda _args: big
    with CtlClient(relay.endpoints["ctl"]) as ctl:
        assert ctl.call("big", result_type=list[int]) == big
        with pytest.raises(CtlFailed, match="expired or unknown"):
            ctl.call("chunk", {"blob": 12345, "offset": 0})
        with pytest.raises(CtlFailed, match="bad arguments"):
            ctl.call("chunk", {"blob": -1, "offset": 0})
    sock = raw_socket(zmq.DEALER, relay.endpoints["ctl"])
    try:
        sock.send(msgspec.msgpack.encode({"kind": "req", "id": 5, "op": "big", "args": {}}))
        assert sock.poll(5000)
        frame = sock.recv()
        reply = msgspec.msgpack.decode(frame, type=Reply)
        assert reply.ok and reply.size > 4 * CTL_CHUNK_BYTES and reply.blob
        assert len(frame) < CTL_CHUNK_BYTES + 64
    finally:
        sock.close()
    assert relay.counters["ctl_chunked"] == 2


def test_a_snapshot_of_10000_nodes_passes_the_clients_frame_limit() -> None:
    """Before: at ~2,000 nodes the snapshot outgrew the clients' 1 MiB MAXMSGSIZE, and
    `shoal status`, the console and a restarted delegator got no reply."""
    config = config_on_free_ports(relay={"new_ids_per_conn": 10_000})
    with running(Relay(config)) as relay:
        client = IngestClient(config.relay.ingest)
        try:
            ids = [f"n-{i:05d}" for i in range(10_000)]
            for seq in (0, 1):
                send_all(client, ids, seq)
            wait_for(lambda: len(relay.nodes) == 10_000, 30)
            with CtlClient(config.relay.ctl) as ctl:
                snap = ctl.call("snapshot", result_type=RelaySnapshot, timeout_s=5)
            assert [n.node_id for n in snap.nodes] == ids
        finally:
            client.close()
