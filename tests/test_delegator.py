"""The delegator's protocol edge, in-process with a raw DEALER as the node: offers are taken
into the ledger before the answer, and bad results are refused with a reason and counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from shoal.protocol import codec
from shoal.protocol.tasks import DelegatorMessage, Offer, Result, ResultAck, Taken, Task
from shoal.services.delegator.ledger import Ledger
from shoal.services.delegator.placement import Peer
from shoal.services.delegator.service import Delegator
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import config_on_free_ports, running, wait_for

_decode = msgspec.msgpack.Decoder(DelegatorMessage).decode


class Node:
    """A raw DEALER speaking the task protocol."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, msg: Any) -> None:
        self.sock.send(msg if isinstance(msg, bytes) else codec.encode(msg))

    def recv(self, timeout_s: float = 5.0) -> Any:
        assert self.sock.poll(int(timeout_s * 1000)), "no answer from the delegator"
        return _decode(self.sock.recv())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def task(n: int, origin: str = "n1") -> Task:
    return Task(task_id=f"{origin}.1.{n}", kind="sha256", cost_ms=10, arg=1, origin=origin)


def audit(delegator: Delegator) -> dict[str, int]:
    """Through ctl: the ledger belongs to the delegator's thread."""
    with CtlClient(delegator.config.delegator.ctl) as ctl:
        return ctl.call("audit", timeout_s=2.0)  # type: ignore[no-any-return]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Delegator, Node]]:
    path = tmp_path / "ledger.db"
    # A task already assigned to n9 when the delegator starts (it recovers it).
    ledger = Ledger(path)
    ledger.offer("n8", [task(1, origin="n8")], 0.0)
    ledger.assign("n8.1.1", "n9", 0.0)
    ledger.commit()
    ledger.close()
    config = config_on_free_ports(delegator={"ledger": str(path)})
    delegator = Delegator(config)
    # No relay or monitor here: one peer with room, so offers are taken (and stay pending:
    # it has no route, so nothing is assigned to it).
    delegator._peers = lambda: [Peer("n7", 5.0)]  # type: ignore[method-assign]
    with running(delegator):
        node = Node(config.delegator.tasks)
        try:
            yield delegator, node
        finally:
            node.close()


def test_an_offer_is_in_the_ledger_before_it_is_taken(env: tuple[Delegator, Node]) -> None:
    delegator, node = env
    node.send(Offer(node_id="n1", boot_id=1, msg_id=7, tasks=[task(1), task(2)]))
    answer = node.recv()
    assert isinstance(answer, Taken) and answer.msg_id == 7
    assert answer.taken == ["n1.1.1", "n1.1.2"]
    a = audit(delegator)
    assert a["pending"] + a["assigned"] == 2 + 1  # (placed at once on the one peer)
    node.send(Offer(node_id="n1", boot_id=1, msg_id=7, tasks=[task(1), task(2)]))  # a resend
    assert node.recv().taken == ["n1.1.1", "n1.1.2"]
    assert audit(delegator)["total"] == 3  # the two, and the one assigned to n9


def test_tasks_of_another_origin_are_refused(env: tuple[Delegator, Node]) -> None:
    _, node = env
    node.send(Offer(node_id="n1", boot_id=1, msg_id=1, tasks=[task(1, origin="n2")]))
    answer = node.recv()
    assert answer.taken == [] and answer.refused[0][0] == "n2.1.1"


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (dict(task_id="nope.1.1", epoch=1), "unknown_task"),
        (dict(task_id="n1.1.1", epoch=2), "stale_epoch"),  # not the live epoch
        (dict(task_id="n1.1.1", epoch=1), "wrong_node"),  # placed on n7, not n3
    ],
)
def test_bad_results_are_refused_with_a_reason_and_counted(
    env: tuple[Delegator, Node], result: dict[str, Any], status: str
) -> None:
    delegator, node = env
    node.send(Offer(node_id="n1", boot_id=1, msg_id=1, tasks=[task(1)]))
    node.recv()
    node.send(Result(node_id="n3", boot_id=1, ok=True, output="x", **result))
    answer = node.recv()
    assert isinstance(answer, ResultAck) and answer.status == status
    assert audit(delegator)["done"] == 0
    with CtlClient(delegator.config.delegator.ctl) as ctl:
        assert ctl.call("status", timeout_s=2.0)["counters"][f"result_{status}"] == 1


def test_a_result_from_the_wrong_node_is_refused(env: tuple[Delegator, Node]) -> None:
    delegator, node = env
    node.send(Result(node_id="n3", boot_id=1, task_id="n8.1.1", epoch=1, ok=True))
    assert node.recv().status == "wrong_node"
    node.send(Result(node_id="n9", boot_id=1, task_id="n8.1.1", epoch=2, ok=True))
    assert node.recv().status == "stale_epoch"
    assert audit(delegator)["done"] == 0


def test_malformed_frames_are_counted_and_the_delegator_keeps_serving(
    env: tuple[Delegator, Node],
) -> None:
    delegator, node = env
    node.send(b"\xc1")  # a byte msgpack never uses
    node.send(codec.encode({"kind": "offer", "v": 1, "node_id": "n1"}))  # fields missing
    node.sock.send_multipart([b"a", b"b"])  # three frames at the ROUTER

    def counted() -> bool:
        with CtlClient(delegator.config.delegator.ctl) as ctl:
            c = ctl.call("status", timeout_s=2.0)["counters"]
        return c.get("reject_malformed", 0) >= 2 and c.get("reject_schema", 0) >= 1

    wait_for(counted, 5)
    node.send(Offer(node_id="n1", boot_id=1, msg_id=2, tasks=[task(5)]))
    assert node.recv().taken == ["n1.1.5"]


def test_an_offer_nobody_could_run_is_refused_and_stays_with_its_origin(
    env: tuple[Delegator, Node],
) -> None:
    delegator, node = env
    delegator._peers = lambda: []  # type: ignore[method-assign]
    node.send(Offer(node_id="n1", boot_id=1, msg_id=3, tasks=[task(9)]))
    answer = node.recv()
    assert answer.taken == [] and answer.refused == [("n1.1.9", "no peer has room")]
    assert audit(delegator)["total"] == 1  # only the task assigned to n9 before the start
