"""The delegator's protocol edge, in-process with a raw DEALER as the node: offers are taken
into the ledger before the answer, and bad results are refused with a reason and counted;
its ctl queries are bounded (args and replies), it prunes its ledger, and a file that cannot
be a ledger stops it with a ConfigError; `shoal tasks` pages on."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from click.testing import CliRunner

from shoal.protocol import codec, limits
from shoal.protocol.tasks import DelegatorMessage, Offer, Result, ResultAck, Taken, Task
from shoal.services.cli.tasks import tasks as tasks_command
from shoal.services.delegator import ctl_ops
from shoal.services.delegator.ledger import Event, Ledger, TaskRow
from shoal.services.delegator.placement import Peer
from shoal.services.delegator.service import Delegator
from shoal.services.runtime.config import ConfigError, dump_toml
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed
from shoal.services.runtime.sockets import Sockets
from shoal.services.testing import GATEWAY_KEY, config_on_free_ports, running, wait_for

_decode = msgspec.msgpack.Decoder(DelegatorMessage).decode


class Node:
    """A raw DEALER speaking the task protocol."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sockets = Sockets(self.ctx)
        self.sock = self.sockets.connect(zmq.DEALER, endpoint, key=GATEWAY_KEY)

    def send(self, msg: Any) -> None:
        self.sock.send(msg if isinstance(msg, bytes) else codec.encode(msg))

    def recv(self, timeout_s: float = 5.0) -> Any:
        assert self.sock.poll(int(timeout_s * 1000)), "no answer from the delegator"
        return _decode(self.sock.recv())

    def close(self) -> None:
        self.sockets.close_all()
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


# --- ctl queries: bounded args, bounded replies ----------------------------------------------


@contextlib.contextmanager
def delegator_on(path: Path, **delegator: Any) -> Iterator[Delegator]:
    """A delegator over the ledger at path, with no peers (nothing is placed)."""
    config = config_on_free_ports(delegator={"ledger": str(path), **delegator})
    d = Delegator(config)
    d._peers = lambda: []  # type: ignore[method-assign]
    with running(d):
        yield d


def big_ledger(path: Path, n: int, now: float = 0.0) -> None:
    """n delivered tasks, every text field at its limit in 4-byte characters."""
    wide = "\U0001f600"
    with Ledger(path) as led:
        for start in range(0, n, 32):
            batch = [
                Task(task_id=f"n1.1.{i}", kind="sha256", cost_ms=1, payload=wide * 256, origin="n1")
                for i in range(start, min(start + 32, n))
            ]
            led.offer("n1", batch, now)
            for t in batch:
                epoch = led.assign(t.task_id, "n2", now)
                led.result(t.task_id, epoch, "n2", True, wide * 128, wide * 64, now)
                led.delivered(t.task_id, "n1", now)
            led.commit()


def ctl_call(delegator: Delegator, op: str, args: dict[str, Any]) -> Any:
    with CtlClient(delegator.config.delegator.ctl) as ctl:
        return ctl.call(op, args, timeout_s=5.0)


@pytest.mark.parametrize(
    ("op", "args", "detail"),
    [
        ("tasks", {"latest": -1}, "Expected `int` >= 0 - at `$.latest`"),
        ("tasks", {"latest": 2**63}, "Expected `int` <= 1000 - at `$.latest`"),
        ("tasks", {"latest": 1001}, "Expected `int` <= 1000"),
        ("tasks", {"before": [-1.0, 1]}, "at `$.before[0]`"),
        ("tasks", {"before": [1.0, 2**63]}, "at `$.before[1]`"),
        ("tasks", {"before": "x"}, "Expected `array | null`"),
        ("task", {"task_id": "x" * 65}, "length <= 64"),
        ("task", {"task_id": "n1.1.1", "history": -1}, "at `$.history`"),
        ("task", {"task_id": "n1.1.1", "history": 2**63}, "Expected `int` <= 500"),
        ("revoked", {"node_id": "n1", "since": -1}, "at `$.since`"),
        ("revoked", {"node_id": "n1", "since": float("nan")}, "at `$.since`"),
        ("revoked", {"node_id": "n1", "since": 2**63}, "at `$.since`"),
        ("revoked", {"node_id": "n" * 33}, "length <= 32"),
        ("drain", {"node_id": ""}, "length >= 1"),
        ("audit", {"latest": 1}, "unknown field `latest`"),
        ("owned", {"x": 1}, "unknown field `x`"),
    ],
)
def test_every_query_refuses_bad_args_by_name_never_an_internal_error(
    env: tuple[Delegator, Node], op: str, args: dict[str, Any], detail: str
) -> None:
    delegator, _ = env
    with pytest.raises(CtlFailed) as err:
        ctl_call(delegator, op, args)
    assert str(err.value).startswith("bad arguments: ") and detail in str(err.value)
    assert ctl_call(delegator, "status", {})["counters"].get("handler_errors", 0) == 0


def test_tasks_pages_stay_far_below_a_mebibyte_and_page_on_to_every_task(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    big_ledger(path, 400)  # ~2 KB a row: 800 KB in all
    with delegator_on(path) as delegator:
        seen: list[str] = []
        sizes = []
        before = None
        while True:
            args: dict[str, Any] = {"latest": 1000} | ({"before": before} if before else {})
            reply = ctl_call(delegator, "tasks", args)
            sizes.append(len(codec.encode(reply)))
            seen += [row["task_id"] for row in reply["latest"]]
            before = reply["next"]
            if before is None:
                break
    assert len(sizes) >= 2 and max(sizes) < 600 * 1024
    assert len(seen) == len(set(seen)) == 400


def test_a_task_query_holds_its_last_events_and_says_how_many(
    env: tuple[Delegator, Node],
) -> None:
    delegator, _ = env
    reply = ctl_call(delegator, "task", {"task_id": "n8.1.1", "history": 1})
    assert [e["to_state"] for e in reply["history"]] == ["assigned"]
    assert reply["history_total"] == 2
    assert len(ctl_call(delegator, "task", {"task_id": "n8.1.1"})["history"]) == 2


def test_the_worst_task_query_fits_well_under_a_reply() -> None:
    """Every text at the protocol's limit (limits.py) in 4-byte characters; the longest
    reason the ledger writes is "declined by <node>: <the peer's reason>"."""
    wide = "\U0001f600"
    node = wide * limits.NODE_ID_MAX_LEN
    said = wide * limits.REASON_MAX_LEN
    row = TaskRow(
        task_id=wide * limits.TASK_ID_MAX_LEN, kind="compute", cost_ms=limits.TASK_COST_MAX_MS,
        arg=limits.TASK_ARG_MAX, payload=wide * limits.TASK_PAYLOAD_MAX_LEN, origin=node,
        created_ms=2**63 - 1, state="dead_letter", owner=node, epoch=limits.SEQ_MAX,
        assigned_at=1e11, lease_until=1e11, redeliveries=100, declines=limits.SEQ_MAX,
        ok=False, output=wide * limits.TASK_OUTPUT_MAX_LEN, error=said,
        reason=f"declined by {node}: {said}", created_at=1e11, updated_at=1e11,
    )  # fmt: skip
    event = Event(
        at=1e11, task_id=row.task_id, from_state="assigned", to_state="dead_letter",
        epoch=limits.SEQ_MAX, node=node, detail=f"declined: {said}",
    )  # fmt: skip
    reply = {"task": row, "history": [event] * ctl_ops.MAX_HISTORY, "history_total": 2**53}
    assert len(codec.encode(reply)) < 512 * 1024
    assert len(codec.encode(row)) * 100 < ctl_ops.PAGE_BYTES  # a page holds many rows


def test_drain_keeps_a_bounded_set(
    env: tuple[Delegator, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    delegator, _ = env
    monkeypatch.setattr(ctl_ops, "MAX_DRAINED", 2)
    ctl_call(delegator, "drain", {"node_id": "n1"})
    ctl_call(delegator, "drain", {"node_id": "n2"})
    ctl_call(delegator, "drain", {"node_id": "n2"})  # again: no new entry
    with pytest.raises(CtlFailed, match="2 nodes are drained already"):
        ctl_call(delegator, "drain", {"node_id": "n3"})
    assert ctl_call(delegator, "drain", {"node_id": "n1", "drain": False})["all"] == ["n2"]
    assert ctl_call(delegator, "drained", {}) == {"drained": ["n2"]}
    with pytest.raises(CtlFailed, match="bad arguments"):
        ctl_call(delegator, "drained", {"node_id": "n2"})


# --- pruning -------------------------------------------------------------------------------


def test_the_delegator_prunes_final_tasks_keeps_open_ones_and_refuses_a_late_result(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    then = time.time() - 60
    with Ledger(path, max_redeliveries=0) as led:
        led.offer("n1", [task(i) for i in range(6)], then)
        for i in range(3):  # delivered
            epoch = led.assign(f"n1.1.{i}", "n2", then)
            led.result(f"n1.1.{i}", epoch, "n2", True, "x", "", then)
            led.delivered(f"n1.1.{i}", "n1", then)
        led.assign("n1.1.3", "n3", then)
        led.owner_lost("n3", then, "dead")  # dead-lettered
        epoch = led.assign("n1.1.4", "n2", then)
        led.result("n1.1.4", epoch, "n2", True, "x", "", then)  # done, not delivered
        led.commit()  # n1.1.5 stays pending
    with delegator_on(path, ledger_retention_s=30.0) as delegator:
        counters = wait_for(
            lambda: (
                (c := ctl_call(delegator, "status", {})["counters"])["ledger_pruned"] == 4 and c
            ),
            10,
        )
        assert (counters["ledger_rows"], counters["ledger_tombstones"]) == (2, 4)
        assert counters["ledger_bytes"] > 0
        a = audit(delegator)
        assert (a["total"], a["done"], a["pending"]) == (2, 1, 1)
        assert (a["pruned_delivered"], a["pruned_dead_letter"]) == (3, 1)
        with pytest.raises(CtlFailed, match=r"task 'n1.1.0' was pruned \(delivered\)"):
            ctl_call(delegator, "task", {"task_id": "n1.1.0"})
        node = Node(delegator.config.delegator.tasks)
        try:  # a late resend of a pruned task's result: acknowledged, never committed again
            node.send(Result(node_id="n2", boot_id=1, task_id="n1.1.0", epoch=1, ok=True))
            assert node.recv().status == "duplicate"
        finally:
            node.close()
        a = audit(delegator)
        assert (a["total"], a["committed_twice"]) == (2, 0)


# --- the ledger file -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "garbage", "another_database", "missing_dir"])
def test_an_unusable_ledger_file_stops_the_delegator_with_one_config_error_line(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "ledger.db"
    if kind == "directory":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 1000)
    elif kind == "another_database":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE photos (x)")
        db.commit()
        db.close()
    else:
        path = tmp_path / "gone" / "ledger.db"
    delegator = Delegator(config_on_free_ports(delegator={"ledger": str(path)}))
    with pytest.raises(ConfigError) as err:
        delegator.run(install_signals=False)
    message = str(err.value)
    assert message.startswith(f"delegator.ledger '{path}': ") and "\n" not in message


# --- shoal tasks ---------------------------------------------------------------------------


def test_shoal_tasks_pages_on_past_one_reply(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    big_ledger(path, 400)
    with delegator_on(path) as delegator:
        config_file = tmp_path / "shoal.toml"
        config_file.write_text(dump_toml(delegator.config))
        run = CliRunner().invoke(
            tasks_command, ["--config", str(config_file), "--json", "--limit", "350"]
        )
        assert run.exit_code == 0, run.output
        shown = json.loads(run.output)
        assert len({row["task_id"] for row in shown["latest"]}) == 350
        assert shown["counts"]["delivered"] == 400 and shown["next"] is not None
        run = CliRunner().invoke(tasks_command, ["--config", str(config_file), "--latest", "3"])
        assert run.exit_code == 0, run.output
        assert len(run.output.splitlines()) == 1 + 1 + 3  # counts, header, rows
