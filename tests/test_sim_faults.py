"""Fault injection inside the simulated fleet: a real relay and fleet in-process, watched on
the relay's bus. Absence is checked against progress, never a fixed sleep: a faulted node
must stay silent while a healthy one sends several more records."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.protocol.messages import Goodbye, Hello
from shoal.services.ctl_client import CtlClient, CtlFailed
from shoal.services.relay import Relay
from shoal.services.sim import Fleet
from shoal.services.testing import BusListener, config_on_free_ports, running, wait_for


class Watch:
    """The relay's bus records, each stamped with the fleet's clock when it arrived here."""

    def __init__(self, endpoint: str, fleet: Fleet) -> None:
        self.bus = BusListener(endpoint, (b"rec|",))
        self.fleet = fleet
        self.seen: list[tuple[int, Any]] = []  # (sim ms at arrival, record)

    def pump(self) -> list[tuple[int, Any]]:
        before = len(self.bus.records)
        self.bus.pump(0.02)
        now = self.fleet.now_ms()
        self.seen.extend((now, r) for r in self.bus.records[before:])
        return self.seen

    def of(self, node_id: str, created_after: int = -1) -> list[Any]:
        """Records of a node created (by the node's clock, ts_ms) after a sim time."""
        self.pump()
        return [r for _, r in self.seen if r.node_id == node_id and r.ts_ms > created_after]

    def progress(self, node_id: str, since: int, count: int = 5) -> None:
        """Wait until a healthy node sent `count` records created after `since`."""
        wait_for(lambda: len(self.of(node_id, since)) >= count, timeout_s=5)

    def close(self) -> None:
        self.bus.close()


Env = tuple[Fleet, Relay, CtlClient, Watch]


@pytest.fixture
def env() -> Iterator[Env]:
    config = config_on_free_ports(
        sim={
            "nodes": 3,
            "tick_ms": 10,
            "heartbeat_interval_ms": 50,
            "telemetry_interval_ms": 200,
            "ack_timeout_ms": 300,
            "backoff_min_ms": 20,
            "backoff_max_ms": 100,
        },
    )
    with running(Relay(config)) as relay, running(Fleet(config)) as fleet:
        watch = Watch(config.relay.bus, fleet)
        sim = CtlClient(config.sim.ctl)
        try:
            wait_for(lambda: {r.node_id for _, r in watch.pump()} == set(fleet.nodes), 5)
            yield fleet, relay, sim, watch
        finally:
            sim.close()
            watch.close()


def fault(sim: CtlClient, fleet: Fleet, args: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Apply a fault; return the reply and a sim time at or after it took effect."""
    reply: dict[str, Any] = sim.call("fault", args)
    return reply, fleet.now_ms()


def nodes(sim: CtlClient) -> dict[str, Any]:
    result: dict[str, Any] = sim.call("nodes")
    return result


def test_crash_stops_a_node_and_resume_boots_it_again_with_a_hello(env: Env) -> None:
    fleet, _relay, sim, watch = env
    old_boot = nodes(sim)["sim-001"]["boot_id"]
    before = time.monotonic()
    reply, crashed = fault(sim, fleet, {"action": "crash", "nodes": ["sim-001"]})
    assert reply["nodes"] == ["sim-001"]
    assert before <= reply["applied_at"] <= time.monotonic()  # the same CLOCK_MONOTONIC
    watch.progress("sim-000", crashed)
    assert watch.of("sim-001", crashed) == []
    state = nodes(sim)["sim-001"]
    assert state["fault"] == "crashed" and state["boot_id"] == old_boot
    counters = sim.call("status")["counters"]
    assert counters["nodes_stopped"] == 1 and counters["faults_applied"] == 1

    _, resumed = fault(sim, fleet, {"action": "resume", "nodes": ["sim-001"]})
    wait_for(lambda: any(r.boot_id != old_boot for r in watch.of("sim-001", resumed)), 5)
    new_boot = [r for r in watch.of("sim-001") if r.boot_id != old_boot]
    assert isinstance(new_boot[0], Hello) and new_boot[0].seq == 0
    state = nodes(sim)["sim-001"]
    assert state["fault"] is None and state["boot_id"] == new_boot[0].boot_id
    assert sim.call("status")["counters"]["nodes_stopped"] == 0


def test_hang_then_resume_keeps_the_boot_and_seqs_continue(env: Env) -> None:
    fleet, relay, sim, watch = env
    _, hung = fault(sim, fleet, {"action": "hang", "nodes": ["sim-002"]})
    seq_at_hang = nodes(sim)["sim-002"]["seq"]
    watch.progress("sim-000", hung)
    assert watch.of("sim-002", hung) == []
    state = nodes(sim)["sim-002"]
    assert state["fault"] == "hung" and state["seq"] == seq_at_hang  # nothing made, nothing sent
    boot = state["boot_id"]

    _, resumed = fault(sim, fleet, {"action": "resume", "nodes": ["sim-002"]})
    wait_for(lambda: len(watch.of("sim-002", resumed)) >= 3, 5)
    after = watch.of("sim-002", resumed)
    assert {r.boot_id for r in after} == {boot}
    assert min(r.seq for r in after) >= seq_at_hang  # the same numbering carries on
    assert nodes(sim)["sim-002"]["fault"] is None
    assert relay.nodes["sim-002"].boots == 1


def test_reboot_starts_a_new_boot_at_once(env: Env) -> None:
    fleet, _relay, sim, watch = env
    old_boot = nodes(sim)["sim-000"]["boot_id"]
    _, rebooted = fault(sim, fleet, {"action": "reboot", "nodes": ["sim-000"]})
    wait_for(lambda: any(r.boot_id != old_boot for r in watch.of("sim-000", rebooted - 1)), 5)
    first = next(r for r in watch.of("sim-000") if r.boot_id != old_boot)
    assert isinstance(first, Hello) and first.seq == 0
    state = nodes(sim)["sim-000"]
    assert state["fault"] is None and state["boot_id"] == first.boot_id


def test_leave_sends_a_goodbye_then_the_node_is_silent(env: Env) -> None:
    fleet, relay, sim, watch = env
    _, left = fault(sim, fleet, {"action": "leave", "nodes": ["sim-001"]})
    wait_for(lambda: any(isinstance(r, Goodbye) for r in watch.of("sim-001")), 5)
    bye = next(r for r in watch.of("sim-001") if isinstance(r, Goodbye))
    assert bye.reason == "leave"
    wait_for(lambda: relay.nodes["sim-001"].left, 5)
    watch.progress("sim-000", left)
    assert watch.of("sim-001", left) == []
    assert nodes(sim)["sim-001"]["fault"] == "left"


def test_link_dropping_everything_silences_a_node_and_heal_restores_it(env: Env) -> None:
    fleet, _relay, sim, watch = env
    _, cut = fault(sim, fleet, {"action": "link", "nodes": ["sim-000"], "drop": 1.0})
    assert nodes(sim)["sim-000"]["link"] == {"drop": 1.0, "delay_ms": 0, "jitter_ms": 0}
    watch.progress("sim-001", cut)
    assert watch.of("sim-000", cut) == []
    assert nodes(sim)["sim-000"]["fault"] is None  # the node itself runs on
    assert sim.call("status")["counters"]["link_dropped"] > 0

    _, healed = fault(sim, fleet, {"action": "heal"})  # every node
    wait_for(lambda: len(watch.of("sim-000", healed)) >= 3, 5)
    assert nodes(sim)["sim-000"]["link"] is None


def test_a_lossy_link_drops_messages_and_acks_and_the_ring_makes_up_for_it(env: Env) -> None:
    fleet, _relay, sim, watch = env
    fault(sim, fleet, {"action": "link", "nodes": ["sim-000"], "drop": 0.3})

    def both_ways() -> bool:
        counters = sim.call("status")["counters"]
        return counters["link_dropped"] >= 5 and counters["link_acks_dropped"] >= 5

    wait_for(both_ways, 10)
    _, healed = fault(sim, fleet, {"action": "heal", "nodes": ["sim-000"]})
    # Everything buffered was delivered and acked in the end: the ring empties.
    watch.progress("sim-000", healed)
    wait_for(lambda: nodes(sim)["sim-000"]["buffered"] <= 1, 5)
    assert nodes(sim)["sim-000"]["resent"] > 0


def test_timed_faults_undo_themselves(env: Env) -> None:
    fleet, _relay, sim, watch = env
    old_boot = nodes(sim)["sim-001"]["boot_id"]
    fault(sim, fleet, {"action": "crash", "nodes": ["sim-001"], "duration_ms": 200})
    _, cut = fault(
        sim, fleet, {"action": "link", "nodes": ["sim-002"], "drop": 1.0, "duration_ms": 200}
    )
    assert nodes(sim)["sim-001"]["fault"] == "crashed"
    # Back without a resume or heal: a new boot for the crash, the same for the link.
    wait_for(lambda: any(r.boot_id != old_boot for r in watch.of("sim-001", cut)), 5)
    wait_for(lambda: len(watch.of("sim-002", cut + 200)) >= 3, 5)
    state = nodes(sim)
    assert state["sim-001"]["fault"] is None and state["sim-002"]["link"] is None


def test_link_delay_and_jitter_hold_messages_back(env: Env) -> None:
    fleet, _relay, sim, watch = env
    _, slowed = fault(
        sim, fleet, {"action": "link", "nodes": ["sim-000"], "delay_ms": 300, "jitter_ms": 100}
    )
    wait_for(lambda: len(watch.of("sim-000", slowed)) >= 5, 5)
    watch.progress("sim-001", slowed)
    lags = [at - r.ts_ms for at, r in watch.seen if r.ts_ms > slowed]
    slow = [at - r.ts_ms for at, r in watch.seen if r.ts_ms > slowed and r.node_id == "sim-000"]
    fast = [lag for lag in lags if lag not in slow]
    assert min(slow) >= 300  # held for delay_ms + U[0, jitter_ms], released on a tick
    assert max(fast) < 300
    assert sim.call("status")["counters"]["link_delayed"] >= 5
    assert nodes(sim)["sim-000"]["link"] == {"drop": 0.0, "delay_ms": 300, "jitter_ms": 100}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"action": "crash", "nodes": ["sim-000", "nope"]}, "unknown nodes: nope"),
        (
            {"action": "crash", "nodes": [f"x{i}" for i in range(12)]},
            "unknown nodes: x0, x1, x2, x3, x4, x5, x6, x7, x8, x9",
        ),
        ({"action": "explode"}, "bad arguments"),
        ({}, "bad arguments"),
        ({"action": "link", "drop": 1.5}, "bad arguments"),
        ({"action": "link", "delay_ms": -1}, "bad arguments"),
        ({"action": "crash", "duration_ms": -5}, "bad arguments"),
        ({"action": "crash", "colour": "red"}, "bad arguments"),
        ({"action": "crash", "drop": 0.5}, "apply to action 'link' only"),
        ({"action": "reboot", "duration_ms": 100}, "duration_ms applies to"),
    ],
)
def test_bad_fault_requests_are_refused(env: Env, args: dict[str, Any], error: str) -> None:
    _fleet, _relay, sim, _watch = env
    with pytest.raises(CtlFailed) as err:
        sim.call("fault", args)
    assert error in str(err.value)
    if error.startswith("unknown nodes"):
        assert "x10" not in str(err.value)
    assert all(n["fault"] is None and n["link"] is None for n in nodes(sim).values())
