"""Hostile input costs only itself: the failures measured on a running cluster (issue 13),
each against the service that had it, in-process on free ports, driven by raw ZeroMQ."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import Heartbeat, Hello, RelaySnapshot, Reply, ServiceBeat
from shoal.services.relay.service import Relay
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import (
    BusListener,
    IngestClient,
    config_on_free_ports,
    raw_socket,
    running,
    wait_for,
)

DEEP_ARRAY = b"\x91" * 1000 + b"\x01"  # msgpack: an array in an array ... 1,000 deep
DEEP_MAP = b"\x81\xa1a" * 1000 + b"\x01"


@pytest.fixture
def relay() -> Iterator[tuple[Relay, IngestClient, BusListener]]:
    config = config_on_free_ports(runtime={"heartbeat_interval_ms": 50})
    with running(Relay(config)) as service:
        client = IngestClient(config.relay.ingest)
        bus = BusListener(config.relay.bus)
        try:
            wait_for(
                lambda: (
                    bus.pump() is not None and any(isinstance(f, ServiceBeat) for f in bus.frames)
                ),
                5,
            )
            yield service, client, bus
        finally:
            client.close()
            bus.close()


def beat(node: str, seq: int) -> Heartbeat:
    return Heartbeat(node_id=node, boot_id=1, seq=seq)


def published(bus: BusListener, node: str) -> set[int]:
    bus.pump()
    return {r.seq for r in bus.records if r.node_id == node}


def test_deeply_nested_frames_between_good_ones_lose_no_good_record(relay: Any) -> None:
    service, client, bus = relay
    for seq in range(40):
        client.send(beat("good-1", seq))
        client.send_frames([DEEP_ARRAY if seq % 2 else DEEP_MAP])
    wait_for(lambda: published(bus, "good-1") == set(range(40)), 10)
    wait_for(lambda: client.pump_acks().get(("good-1", 1), set()) >= set(range(40)), 10)
    counters = service.status_counters()
    # The decoder skips an unknown key's value without recursing (schema), or recurses and
    # stops at its depth limit (malformed): refused either way, nothing else lost.
    assert counters["reject_malformed"] + counters["reject_schema"] == 40
    assert counters.get("handler_errors", 0) == 0


def test_a_bug_met_by_one_frame_costs_that_frame_only(relay: Any) -> None:
    """Before: any exception left the receive pass, and what it had admitted was neither
    published nor acked (and the resends were then taken as duplicates)."""
    service, client, bus = relay
    admit = service._admit

    def buggy(rec: Any, *args: Any) -> bool:
        if rec.node_id == "cursed":
            raise ValueError("a bug")
        return admit(rec, *args)

    service._admit = buggy
    for seq in range(30):
        client.send(beat("good-2", seq))
        client.send(beat("cursed", seq))
    wait_for(lambda: published(bus, "good-2") == set(range(30)), 10)
    wait_for(lambda: client.pump_acks().get(("good-2", 1), set()) >= set(range(30)), 10)
    assert service.counters["frame_errors"] == 30
    assert "cursed" not in {r.node_id for r in bus.records}


@pytest.mark.parametrize("node_id", ["NODE-1", "../../etc", "a" * 40, "-x", "n\n"])
def test_a_record_under_an_impossible_id_is_refused_and_not_acked(relay: Any, node_id: str) -> None:
    service, client, bus = relay
    client.send(msgspec.msgpack.encode(msgspec.to_builtins(beat("ok-1", 0)) | {"node_id": node_id}))
    batch = {
        "v": 1,
        "kind": "batch",
        "records": [
            msgspec.to_builtins(beat("ok-1", 1)) | {"node_id": node_id},
            msgspec.to_builtins(beat("ok-1", 2)),
        ],
    }
    client.send(msgspec.msgpack.encode(batch))
    wait_for(lambda: client.pump_acks().get(("ok-1", 1)) == {2}, 10)
    acks: dict[tuple[str, int], set[int]] = {}
    for _ in range(5):  # whatever else came back
        acks |= client.pump_acks()
    assert set(acks) == {("ok-1", 1)}
    assert service.status_counters()["reject_range"] == 2


def test_ctl_requests_nested_deep_get_an_error_reply_and_the_next_is_served(relay: Any) -> None:
    service, _client, _bus = relay
    deep_args = b"\x83\xa2id\x07\xa2op\xa6status\xa4args" + b"\x81\xa1a" * 1000 + b"\x01"
    sock = raw_socket(zmq.DEALER, service.endpoints["ctl"])
    try:
        for body in (deep_args, DEEP_ARRAY, b"\x92" + DEEP_MAP * 2):
            sock.send(body)
            assert sock.poll(5000), "no reply"
            reply = msgspec.msgpack.decode(sock.recv(), type=Reply)
            assert not reply.ok and reply.error.split(":")[0] in ("malformed", "schema")
    finally:
        sock.close()
    with CtlClient(service.endpoints["ctl"]) as ctl:
        assert ctl.call("snapshot", result_type=RelaySnapshot).pub == service.pub_id


def test_repeated_errors_are_logged_once_per_interval(relay: Any, capfd: Any) -> None:
    service, client, bus = relay

    def broken(_args: dict[str, Any]) -> Any:
        raise KeyError("x")

    service.ctl_ops["broken"] = broken
    with CtlClient(service.endpoints["ctl"]) as ctl:
        for _ in range(50):
            with pytest.raises(Exception, match="internal error"):
                ctl.call("broken", retries=0)
    err = capfd.readouterr().err
    assert err.count('"handler_error"') == 1
    assert service.counters["handler_errors"] == 50


def test_the_hello_of_a_good_node_still_gets_in(relay: Any) -> None:
    service, client, bus = relay
    client.send(Hello(node_id="late-1", boot_id=3, seq=0, fw="t"))
    wait_for(lambda: client.pump_acks().get(("late-1", 3)) == {0}, 10)
    assert isinstance(codec.decode_ingest(codec.encode(beat("x", 0)))[0][0], Heartbeat)
