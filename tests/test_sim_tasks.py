"""The simulated fleet's task delegation, in-process: without a delegator, and against a
scripted one that checks every frame against protocol/tasks.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from shoal.protocol import codec
from shoal.protocol.tasks import (
    Assign,
    AssignReply,
    Completed,
    CompletedAck,
    NodeTaskMessage,
    Offer,
    Renew,
    Result,
    ResultAck,
    Taken,
)
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.sim.fleet import Fleet
from shoal.services.testing import config_on_free_ports, raw_socket, running, wait_for


def test_without_a_delegator_an_overloaded_node_runs_everything_locally() -> None:
    config = config_on_free_ports(sim={"nodes": 3})
    with running(Fleet(config)) as fleet, CtlClient(config.sim.ctl) as sim:
        sim.call("set_rate", {"rate_hz": 20.0, "nodes": ["sim-001"]})  # twice its capacity
        hot = fleet.nodes["sim-001"]
        wait_for(lambda: hot.engine.stats["given_back"] > 0, timeout_s=10)
        assert hot.delegation.detector.overloaded and hot.delegation.degraded
        wait_for(lambda: fleet.status_counters()["tasks_done_local"] > 20, timeout_s=5)
        counters = fleet.status_counters()
        assert counters["tasks_taken"] == 0 and counters["task_send_failed"] > 0
        assert counters["tasks_overloaded"] >= 1
    for node in fleet.nodes.values():
        assert node.engine.unaccounted() == 0  # every task done, queued or shed: none lost
        assert node.engine.counts()[1] == 0  # nothing held: offers failed at once


class FakeDelegator:
    """A ROUTER at delegator.tasks that decodes every frame strictly (NodeTaskMessage)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = raw_socket(zmq.ROUTER, endpoint, bind=True)
        self.decoder = msgspec.msgpack.Decoder(NodeTaskMessage)
        self.identity = b""
        self.got: list[Any] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: Any) -> None:
        self.sock.send_multipart([self.identity, codec.encode(msg)])

    def wait(self, match: Callable[[Any], bool], timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.sock.poll(50):
                continue
            identity, body = self.sock.recv_multipart()
            msg = self.decoder.decode(body)  # raises on anything off the protocol
            self.identity = identity
            self.got.append(msg)
            if match(msg):
                return msg
        raise AssertionError("no matching message from the fleet")


def test_the_fleet_offers_runs_assigned_tasks_and_acknowledges_completions() -> None:
    config = config_on_free_ports(sim={"nodes": 2, "arrival_rate_hz": 0.0})
    fake = FakeDelegator(config.delegator.tasks)
    try:
        with running(Fleet(config)) as fleet, CtlClient(config.sim.ctl) as sim:
            origin, peer = fleet.nodes["sim-000"], fleet.nodes["sim-001"]
            fake.wait(lambda m: isinstance(m, Renew) and m.node_id == "sim-001")
            sim.call("set_rate", {"rate_hz": 30.0, "nodes": ["sim-000"]})
            offer = fake.wait(lambda m: isinstance(m, Offer))
            assert offer.node_id == "sim-000" and offer.boot_id == origin.core.boot_id
            assert all(t.origin == "sim-000" for t in offer.tasks)
            ids = [t.task_id for t in offer.tasks]
            fake.send(Taken(node_id="sim-000", msg_id=offer.msg_id, taken=ids))
            wait_for(lambda: origin.engine.stats["taken"] == len(ids), timeout_s=5)

            # Place the first task on the peer; it accepts, runs it, and reports.
            task = offer.tasks[0]
            fake.send(Assign(node_id="sim-001", task=task, epoch=1, lease_ms=3000))
            reply = fake.wait(lambda m: isinstance(m, AssignReply))
            assert reply.node_id == "sim-001" and reply.accepted and reply.epoch == 1
            result = fake.wait(lambda m: isinstance(m, Result))
            assert result.task_id == task.task_id and result.ok and result.epoch == 1
            fake.send(
                ResultAck(node_id="sim-001", task_id=task.task_id, epoch=1, status="committed")
            )
            wait_for(lambda: peer.engine.stats["results_acked"] == 1, timeout_s=5)
            assert peer.engine.stats["executed_delegated"] == 1

            # Back to the origin: acknowledged, counted once however often it comes.
            done = Completed(node_id="sim-000", task_id=task.task_id, ok=True, output=result.output)
            fake.send(done)
            fake.send(done)
            ack = fake.wait(lambda m: isinstance(m, CompletedAck))
            assert ack.task_id == task.task_id and ack.node_id == "sim-000"
            fake.wait(lambda m: isinstance(m, CompletedAck))
            assert origin.engine.stats["completed_remote"] == 1

            # Frames off the protocol, or for nobody here, are counted and dropped.
            fake.sock.send_multipart([fake.identity, b"\xc1 not msgpack"])
            fake.send(Completed(node_id="sim-999", task_id="x", ok=True))
            wait_for(
                lambda: (
                    fleet.counters["task_bad_frames"] == 1
                    and fleet.counters["task_unknown_node"] == 1
                ),
                timeout_s=5,
            )
            assert fleet.counters["task_frames_in"] >= 5
        for node in fleet.nodes.values():
            assert node.engine.unaccounted() == 0
    finally:
        fake.close()
