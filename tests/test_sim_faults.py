"""Fault injection inside the simulated fleet: a real relay and fleet in-process, watched on
the relay's bus. Absence is checked against progress, never a fixed sleep: a faulted node
must stay silent while a healthy one sends several more records."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import zmq

from shoal.firmware.nodecore.engine import Engine
from shoal.firmware.nodecore.prng import XorShift32
from shoal.protocol.messages import Goodbye, Hello, Telemetry
from shoal.protocol.tasks import NodeTaskMessage, Renew
from shoal.services.liveness.service import Liveness
from shoal.services.relay.service import Relay
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable
from shoal.services.sim.faults import LinkFault
from shoal.services.sim.fleet import Fleet
from shoal.services.sim.links import GatewayLink
from shoal.services.testing import (
    BusListener,
    Cluster,
    config_on_free_ports,
    raw_socket,
    running,
    wait_for,
)


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


def link(**args: Any) -> dict[str, Any]:
    """A link fault as the nodes op describes it: these args, the others at their default."""
    return {
        "drop": 0.0,
        "delay_ms": 0,
        "jitter_ms": 0,
        "correlation": 0.0,
        "duplicate": 0.0,
        "reorder": 0.0,
        "services": ["relay", "delegator"],
        **args,
    }


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
    assert nodes(sim)["sim-000"]["link"] == link(drop=1.0)
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
    assert nodes(sim)["sim-000"]["link"] == link(delay_ms=300, jitter_ms=100)


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
        ({"action": "crash", "duration_ms": 2**63}, "Expected `int` <= 604800000"),
        ({"action": "link", "delay_ms": 2**63}, "Expected `int` <= 3600000 - at `$.delay_ms`"),
        ({"action": "link", "jitter_ms": 2**64 - 1}, "<= 3600000 - at `$.jitter_ms`"),
        ({"action": "crash", "colour": "red"}, "bad arguments"),
        ({"action": "crash", "drop": 0.5}, "apply to action 'link' only"),
        ({"action": "reboot", "duration_ms": 100}, "duration_ms applies to"),
        ({"action": "heal", "duplicate": 0.5}, "apply to action 'link' only"),
        ({"action": "crash", "services": ["relay"]}, "apply to action 'link' only"),
        ({"action": "link", "drop": 0.5, "services": []}, "services names no link"),
        ({"action": "link", "drop": 1, "services": ["ledger"]}, "bad arguments"),
        ({"action": "link", "correlation": 0.5}, "correlation needs drop > 0"),
        ({"action": "link", "reorder": 1.5}, "bad arguments"),
        ({"action": "cpu_hog"}, "cpu_hog needs percent"),
        ({"action": "cpu_hog", "percent": 0}, "bad arguments"),
        ({"action": "cpu_hog", "percent": 101}, "bad arguments"),
        ({"action": "crash", "percent": 50}, "percent applies to action 'cpu_hog' only"),
        ({"action": "flood"}, "flood needs tasks"),
        ({"action": "flood", "tasks": 100_001}, "bad arguments"),
        ({"action": "flood", "tasks": 10, "duration_ms": 100}, "duration_ms applies to"),
        ({"action": "cpu_hog", "percent": 50, "tasks": 10}, "tasks applies to action 'flood'"),
        ({"action": "clock_skew"}, "clock_skew needs skew_ms"),
        ({"action": "clock_skew", "skew_ms": 86_400_001}, "bad arguments"),
        ({"action": "link", "drop": 1, "skew_ms": 5}, "skew_ms applies to action 'clock_skew'"),
        ({"action": "reboot", "skew_ms": 5}, "skew_ms applies to action 'clock_skew'"),
        ({"action": "crash", "kinds": ["link"]}, "kinds applies to action 'heal' only"),
        ({"action": "heal", "kinds": []}, "kinds names nothing to heal"),
        ({"action": "heal", "kinds": ["crash"]}, "bad arguments"),
    ],
)
def test_bad_fault_requests_are_refused(env: Env, args: dict[str, Any], error: str) -> None:
    _fleet, _relay, sim, _watch = env
    with pytest.raises(CtlFailed) as err:
        sim.call("fault", args)
    assert error in str(err.value)
    if error.startswith("unknown nodes"):
        assert "x10" not in str(err.value)
    for n in nodes(sim).values():
        assert n["fault"] is None and n["link"] is None
        assert n["cpu_hog"] is None and n["skew_ms"] == 0
    assert sim.call("status")["counters"]["flood_tasks"] == 0


# --- cpu_hog ---------------------------------------------------------------------------------


def telemetry(watch: Watch, node_id: str, since: int) -> list[Telemetry]:
    return [r for r in watch.of(node_id, since) if isinstance(r, Telemetry)]


def test_a_cpu_hog_of_100_stops_every_task_and_heal_gives_the_cpu_back(env: Env) -> None:
    fleet, _relay, sim, watch = env
    reply, hogged = fault(sim, fleet, {"action": "cpu_hog", "nodes": ["sim-000"], "percent": 100})
    assert reply["nodes"] == ["sim-000"]
    state = nodes(sim)["sim-000"]
    assert state["cpu_hog"] == 100 and state["fault"] is None
    done, created = state["tasks"]["done_local"], state["tasks"]["created"]

    # Its telemetry shows the CPU taken and the work offered beyond what is left of it.
    def saturated() -> bool:
        return any(
            r.cpu_pct >= 99.9 and r.load_factor > 1 for r in telemetry(watch, "sim-000", hogged)
        )

    wait_for(saturated, 5)
    wait_for(lambda: nodes(sim)["sim-000"]["tasks"]["created"] >= created + 3, 5)  # arrivals go on
    assert nodes(sim)["sim-000"]["tasks"]["done_local"] == done  # nothing progresses
    assert nodes(sim)["sim-001"]["cpu_hog"] is None

    fault(sim, fleet, {"action": "heal", "nodes": ["sim-000"], "kinds": ["cpu_hog"]})
    wait_for(lambda: nodes(sim)["sim-000"]["tasks"]["done_local"] > done, 5)
    assert nodes(sim)["sim-000"]["cpu_hog"] is None
    assert sim.call("status")["counters"]["tasks_unaccounted"] == 0


def test_a_hog_or_skew_set_on_a_stopped_node_takes_effect_when_it_runs_and_outlives_reboots(
    env: Env,
) -> None:
    fleet, _relay, sim, _watch = env
    node = fleet.nodes["sim-002"]
    fault(sim, fleet, {"action": "hang", "nodes": ["sim-002"]})
    fault(sim, fleet, {"action": "cpu_hog", "nodes": ["sim-002"], "percent": 40})
    fault(sim, fleet, {"action": "clock_skew", "nodes": ["sim-002"], "skew_ms": 5000})
    assert node.engine.hog == 0.0  # a hung node's engine does not run: not touched
    assert nodes(sim)["sim-002"]["cpu_hog"] == 40
    fault(sim, fleet, {"action": "resume", "nodes": ["sim-002"]})
    assert node.engine.hog == pytest.approx(0.4)
    boot = node.core.boot_id
    fault(sim, fleet, {"action": "reboot", "nodes": ["sim-002"]})
    assert node.core.boot_id != boot and node.engine.hog == pytest.approx(0.4)
    state = nodes(sim)["sim-002"]
    assert state["cpu_hog"] == 40 and state["skew_ms"] == 5000
    fault(sim, fleet, {"action": "heal", "nodes": ["sim-002"]})
    assert node.engine.hog == 0.0 and node.transport is node.gateway
    assert nodes(sim)["sim-002"]["cpu_hog"] is None


def make_engine(**settings: Any) -> Engine:
    return Engine("n", 1, XorShift32(7).random, {"rate_hz": 0.0, **settings}, 0)


def test_a_hog_slows_each_task_by_its_share_and_its_time_counts_as_busy() -> None:
    eng = make_engine()
    done: list[tuple[str, int, int]] = []
    eng.on_done = lambda e, ok, out, err, duration, now: done.append(
        (e[0]["task_id"], duration, now)
    )
    eng.throttle(0.5, 0)
    eng.submit("compute", 100, 100)
    eng.advance(199)
    assert done == []
    eng.advance(200)  # cost / (1 - 0.5)
    assert [d[1:] for d in done] == [(200, 200)]
    cpu = eng.metrics(400)[0]
    assert cpu == pytest.approx(75.0)  # 200 ms on the task, then the hog's half of 200 idle

    eng.throttle(1.0, 400)  # the hog takes everything: nothing progresses
    eng.submit("compute", 100, 100)
    eng.advance(10_400)
    assert len(done) == 1
    cpu, depth, _, load, _ = eng.metrics(10_400)
    assert cpu == 100.0 and depth == 1 and load > 1

    eng.throttle(0.0, 10_400)  # healed: the task runs at full speed from there
    eng.advance(10_500)
    assert [d[1:] for d in done[1:]] == [(100, 10_500)]  # it could not even start before
    assert eng.metrics(20_500)[0] == pytest.approx(100 * 100 / 10_100)


def test_timed_cpu_hog_and_clock_skew_end_by_themselves(env: Env) -> None:
    fleet, _relay, sim, watch = env
    _, hogged = fault(
        sim,
        fleet,
        {"action": "cpu_hog", "nodes": ["sim-000"], "percent": 100, "duration_ms": 1000},
    )
    _, skewed = fault(
        sim,
        fleet,
        {"action": "clock_skew", "nodes": ["sim-001"], "skew_ms": 30_000, "duration_ms": 1000},
    )
    # On for a while (its telemetry saw the CPU taken, the relay saw the clock ahead) ...
    wait_for(lambda: any(r.cpu_pct >= 99.9 for r in telemetry(watch, "sim-000", hogged)), 5)
    wait_for(lambda: watch.of("sim-001", skewed + 25_000), 5)

    # ... then off without a heal: the CPU runs tasks again, the clock is back.
    def back() -> bool:
        state = nodes(sim)
        return state["sim-000"]["cpu_hog"] is None and state["sim-001"]["skew_ms"] == 0

    wait_for(back, 5)
    done = nodes(sim)["sim-000"]["tasks"]["done_local"]
    wait_for(lambda: nodes(sim)["sim-000"]["tasks"]["done_local"] > done, 5)
    assert fleet.nodes["sim-000"].engine.hog == 0.0
    healed = fleet.now_ms()
    wait_for(lambda: len(watch.of("sim-001", healed)) >= 3, 5)
    assert all(
        r.ts_ms <= at
        for at, r in watch.seen
        if r.node_id == "sim-001" and r.ts_ms > healed and r.ts_ms < healed + 25_000
    )


# --- flood -----------------------------------------------------------------------------------


def test_a_flood_arrives_at_once_and_what_does_not_fit_is_shed_and_counted(env: Env) -> None:
    fleet, _relay, sim, watch = env
    capacity = fleet.cfg.queue_capacity
    before = nodes(sim)["sim-001"]["tasks"]
    _, flooded = fault(sim, fleet, {"action": "flood", "nodes": ["sim-001"], "tasks": 1000})
    after = nodes(sim)["sim-001"]["tasks"]
    counters = sim.call("status")["counters"]
    assert counters["flood_tasks"] == 1000
    shed = counters["flood_shed"]
    assert 1000 - capacity <= shed < 1000  # the queue took what it had room for
    assert after["created"] - before["created"] >= 1000
    assert after["shed"] - before["shed"] >= shed
    assert counters["tasks_unaccounted"] == 0  # every task created is queued, done or shed

    # The overload detector reacts as to any backlog; the relay sees the queue full.
    wait_for(lambda: nodes(sim)["sim-001"]["tasks"]["overloaded"], 5)
    wait_for(
        lambda: any(r.queue_depth >= capacity // 2 for r in telemetry(watch, "sim-001", flooded)),
        5,
    )
    # A stopped node takes no work.
    fault(sim, fleet, {"action": "crash", "nodes": ["sim-002"]})
    created = nodes(sim)["sim-002"]["tasks"]["created"]
    fault(sim, fleet, {"action": "flood", "nodes": ["sim-002"], "tasks": 50})
    assert nodes(sim)["sim-002"]["tasks"]["created"] == created
    assert sim.call("status")["counters"]["flood_tasks"] == 1000


# --- clock_skew ------------------------------------------------------------------------------


def test_clock_skew_steps_what_the_node_stamps_and_heal_sets_it_back(env: Env) -> None:
    fleet, _relay, sim, watch = env
    fault(sim, fleet, {"action": "clock_skew", "nodes": ["sim-000"], "skew_ms": 60_000})
    _, skewed = fault(
        sim, fleet, {"action": "clock_skew", "nodes": ["sim-001"], "skew_ms": -60_000}
    )
    state = nodes(sim)
    assert state["sim-000"]["skew_ms"] == 60_000 and state["sim-001"]["skew_ms"] == -60_000
    assert state["sim-002"]["skew_ms"] == 0

    def arrived(node_id: str, after: int) -> list[tuple[int, Any]]:
        return [(at, r) for at, r in watch.pump() if r.node_id == node_id and at > after]

    # A minute ahead of the fleet's clock (ts_ms <= arrival time when true) ...
    ahead = lambda: [r for at, r in arrived("sim-000", skewed) if r.ts_ms > at + 50_000]  # noqa: E731
    wait_for(lambda: len(ahead()) >= 5, 5)
    assert all(r.ts_ms <= at + 60_000 for at, r in arrived("sim-000", skewed))
    # ... and a minute behind: the fleet is younger than that, so the clock reads 0 (ts_ms
    # is never below 0 on the wire).
    wait_for(lambda: sum(r.ts_ms == 0 for _, r in arrived("sim-001", skewed)) >= 5, 5)
    # Only the stamps move: the node's timers run on, its link stays up, no resends.
    state = nodes(sim)
    for node_id in ("sim-000", "sim-001"):
        assert state[node_id]["state"] == "up" and state[node_id]["disconnects"] == 0

    _, healed = fault(sim, fleet, {"action": "heal", "kinds": ["clock_skew"]})
    wait_for(lambda: len(watch.of("sim-001", healed)) >= 3, 5)
    wait_for(lambda: any(r.ts_ms <= at for at, r in arrived("sim-000", healed)), 5)
    assert all(n["skew_ms"] == 0 for n in nodes(sim).values())


def test_a_node_with_a_skewed_clock_is_never_suspect_nor_dead_to_a_real_monitor() -> None:
    """Liveness times arrivals on its own clock: a node a minute ahead or behind is as
    alive as any, while a crashed one is declared dead meanwhile by the same monitor."""
    config = config_on_free_ports(sim={"nodes": 4, "tick_ms": 20})
    with (
        running(Relay(config)),
        running(Liveness(config)),
        running(Fleet(config)) as fleet,
        CtlClient(config.sim.ctl) as sim,
        CtlClient(config.liveness.ctl) as monitor,
    ):
        watch = Watch(config.relay.bus, fleet)
        try:

            def members() -> dict[str, Any]:
                snap = monitor.call("members", timeout_s=2.0)
                return {m["node_id"]: m for m in snap["members"]}

            wait_for(lambda: [m["state"] for m in members().values()] == ["alive"] * 4, 10)
            _, skewed = fault(
                sim, fleet, {"action": "clock_skew", "nodes": ["sim-000"], "skew_ms": 60_000}
            )
            fault(sim, fleet, {"action": "clock_skew", "nodes": ["sim-001"], "skew_ms": -60_000})
            fault(sim, fleet, {"action": "crash", "nodes": ["sim-003"]})  # the control
            wait_for(lambda: members()["sim-003"]["state"] == "dead", 10)

            def spoke_skewed(count: int) -> bool:
                seen = [(at, r) for at, r in watch.pump() if at > skewed]
                ahead = [r for at, r in seen if r.node_id == "sim-000" and r.ts_ms > at + 50_000]
                behind = [r for at, r in seen if r.node_id == "sim-001" and r.ts_ms == 0]
                return len(ahead) >= count and len(behind) >= count

            wait_for(lambda: spoke_skewed(20), 10)  # 5 s of heartbeats at 250 ms each
            state = members()
            for node_id in ("sim-000", "sim-001", "sim-002"):
                # alive since it joined: never suspect, dead, or alive again in between
                assert state[node_id]["state"] == "alive"
                assert state[node_id]["reason"].startswith("first message"), state[node_id]
        finally:
            watch.close()


# --- link: correlation, duplicate, reorder, services -----------------------------------------


class FakeFleet:
    """What a LinkFault needs of its fleet, with a seeded generator and a fixed clock."""

    def __init__(self, seed: int = 11) -> None:
        self.fault_rng = XorShift32(seed)
        self.counters: dict[str, int] = defaultdict(int)
        self.link = GatewayLink()
        self.task_link = GatewayLink()
        self.held: list[tuple[int, dict[str, Any], bool]] = []

    def now_ms(self) -> int:
        return 1000

    def hold(self, msg: dict[str, Any], due_ms: int, to_tasks: bool = False) -> None:
        self.held.append((due_ms, msg, to_tasks))
        self.counters["link_delayed"] += 1


def fake_link(**args: Any) -> tuple[FakeFleet, LinkFault]:
    fleet = FakeFleet()
    return fleet, LinkFault(cast(Fleet, fleet), **args)


def loss_runs(lost: list[bool]) -> list[int]:
    runs, n = [], 0
    for x in [*lost, False]:
        if x:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_correlated_drops_come_in_longer_runs_at_the_same_loss_rate() -> None:
    n, drop = 20_000, 0.3
    runs = {}
    for correlation in (0.0, 0.8):
        fleet, link_fault = fake_link(drop=drop, correlation=correlation)
        for seq in range(n):
            assert link_fault.send({"seq": seq})  # a lost message counts as sent
        through = {m["seq"] for m in fleet.link.outbox}
        lost = [seq not in through for seq in range(n)]
        assert fleet.counters["link_dropped"] == sum(lost)
        assert sum(lost) / n == pytest.approx(drop, abs=0.03)  # the rate stays `drop`
        runs[correlation] = loss_runs(lost)
    mean = {c: sum(r) / len(r) for c, r in runs.items()}
    # Mean run of losses: 1 / ((1 - correlation) x (1 - drop)): 1.43 and 7.1.
    for c, m in mean.items():
        assert m == pytest.approx(1 / ((1 - c) * (1 - drop)), rel=0.15)
    assert mean[0.8] > 3 * mean[0.0]
    assert max(runs[0.8]) > max(runs[0.0])


def test_correlation_chains_acks_and_task_messages_on_their_own_links() -> None:
    fleet, link_fault = fake_link(drop=0.5, correlation=1.0)
    first = link_fault.ack_lost()
    assert all(link_fault.ack_lost() == first for _ in range(100))  # correlation 1: stuck
    assert link_fault.send({"seq": 1}) and (fleet.link.outbox == []) == first
    task_first = link_fault.tasks.arrives_lost()
    assert all(link_fault.tasks.arrives_lost() == task_first for _ in range(100))


def test_duplicate_sends_a_surviving_message_twice_on_either_link() -> None:
    fleet, link_fault = fake_link(duplicate=0.5)
    for seq in range(10_000):
        assert link_fault.send({"seq": seq})
    seqs = [m["seq"] for m in fleet.link.outbox]
    dups = fleet.counters["link_duplicated"]
    assert len(seqs) == 10_000 + dups and set(seqs) == set(range(10_000))
    assert 4_500 < dups < 5_500
    for seq in range(1000):
        link_fault.tasks.send({"seq": seq})
    assert len(fleet.task_link.outbox) == 1000 + fleet.counters["link_duplicated"] - dups
    assert fleet.held == []  # no delay: straight on


def test_reorder_holds_some_messages_back_while_the_others_go_straight_on() -> None:
    fleet, link_fault = fake_link(reorder=0.25)
    for seq in range(10_000):
        assert link_fault.send({"seq": seq})
    held = fleet.held
    assert len(held) == fleet.counters["link_reordered"] == fleet.counters["link_delayed"]
    assert 2_200 < len(held) < 2_800
    assert {due for due, _, _ in held} == {1000 + 50}  # delay_ms 0: held 50 ms
    assert len(fleet.link.outbox) + len(held) == 10_000

    fleet, link_fault = fake_link(reorder=0.5, delay_ms=200, jitter_ms=100)
    for seq in range(1000):
        link_fault.tasks.send({"seq": seq})
    dues = [due for due, _, to_tasks in fleet.held if to_tasks]
    assert len(dues) == fleet.counters["link_reordered"] == len(fleet.held)
    assert min(dues) >= 1200 and max(dues) <= 1300
    assert len(fleet.task_link.outbox) == 1000 - len(dues)


def test_duplicated_and_reordered_messages_reach_a_relay_that_dedupes_them(env: Env) -> None:
    fleet, relay, sim, watch = env
    args = {"duplicate": 0.5, "reorder": 0.3, "delay_ms": 120}
    _, start = fault(sim, fleet, {"action": "link", "nodes": ["sim-000"], **args})
    assert nodes(sim)["sim-000"]["link"] == link(**args)

    def enough() -> bool:
        return fleet.counters["link_duplicated"] >= 20 and fleet.counters["link_reordered"] >= 20

    wait_for(enough, 10)
    wait_for(lambda: relay.counters["duplicates"] >= 10, 5)
    records = [(r.boot_id, r.seq) for _, r in watch.pump() if r.node_id == "sim-000"]
    assert len(records) == len(set(records))  # each message published once
    seqs = [r.seq for _, r in watch.seen if r.node_id == "sim-000" and r.ts_ms > start]
    assert any(b < a for a, b in itertools.pairwise(seqs))  # out of order


class Router:
    """A ROUTER standing in for the delegator's tasks socket."""

    def __init__(self, endpoint: str) -> None:
        self.sock = raw_socket(zmq.ROUTER, endpoint, bind=True)
        self.decoder = msgspec.msgpack.Decoder(NodeTaskMessage)
        self.renews: list[tuple[int, str]] = []  # (sim ms at arrival, node_id)

    def pump(self, fleet: Fleet) -> list[tuple[int, str]]:
        while self.sock.poll(20):
            _, body = self.sock.recv_multipart()
            msg = self.decoder.decode(body)
            if isinstance(msg, Renew):
                self.renews.append((fleet.now_ms(), msg.node_id))
        return self.renews

    def renewed(self, fleet: Fleet, node_id: str, after: int) -> int:
        return sum(1 for at, n in self.pump(fleet) if n == node_id and at > after)

    def close(self) -> None:
        self.sock.close()


def test_a_partition_cuts_only_the_links_it_names() -> None:
    config = config_on_free_ports(
        sim={"nodes": 2, "tick_ms": 10, "heartbeat_interval_ms": 50, "arrival_rate_hz": 0.0}
    )
    router = Router(config.delegator.tasks)
    try:
        with (
            running(Relay(config)),
            running(Fleet(config)) as fleet,
            CtlClient(config.sim.ctl) as sim,
        ):
            watch = Watch(config.relay.bus, fleet)
            try:
                wait_for(lambda: {r.node_id for _, r in watch.pump()} == set(fleet.nodes), 5)
                router.pump(fleet)
                # From the delegator only: its renews are lost, its records still arrive.
                _, cut = fault(
                    sim,
                    fleet,
                    {"action": "link", "nodes": ["sim-001"], "drop": 1, "services": ["delegator"]},
                )
                assert nodes(sim)["sim-001"]["link"]["services"] == ["delegator"]
                # (A renew a second each; one of sim-001 may have been on the wire.)
                wait_for(lambda: router.renewed(fleet, "sim-000", cut) >= 3, 5)
                watch.progress("sim-001", cut)
                assert router.renewed(fleet, "sim-001", cut) <= 1
                counters = sim.call("status")["counters"]
                assert counters["link_tasks_dropped"] >= 2
                assert counters["link_dropped"] == counters["link_acks_dropped"] == 0

                # From the relay only: the other way round.
                _, cut = fault(
                    sim,
                    fleet,
                    {"action": "link", "nodes": ["sim-001"], "drop": 1, "services": ["relay"]},
                )
                wait_for(lambda: router.renewed(fleet, "sim-001", cut) >= 2, 5)
                watch.progress("sim-000", cut)
                assert watch.of("sim-001", cut) == []
                assert sim.call("status")["counters"]["link_dropped"] > 0

                _, healed = fault(sim, fleet, {"action": "heal", "kinds": ["link"]})
                watch.progress("sim-001", healed, 3)
            finally:
                watch.close()
    finally:
        router.close()


def test_every_message_twice_and_some_late_in_a_real_cluster_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    """The relay de-duplicates what nodes send twice; the delegator and the nodes take
    every task message twice (and out of order) without losing or committing one twice."""
    with Cluster(tmp_path, nodes=4) as cluster:

        def call(endpoint: str, op: str, args: dict[str, Any] | None = None) -> Any:
            with CtlClient(endpoint) as client:
                return client.call(op, args or {}, timeout_s=2.0, retries=1)

        def audit() -> dict[str, int]:
            return call(cluster.config.delegator.ctl, "audit")  # type: ignore[no-any-return]

        try:
            wait_for(lambda: len(cluster.snapshot().nodes) == 4, 30, ignore=(CtlUnavailable,))
            wait_for(lambda: audit(), 30, ignore=(CtlUnavailable,))
        except AssertionError:
            raise AssertionError("cluster did not come up:\n" + cluster.log()[-3000:]) from None
        sim = cluster.config.sim.ctl
        call(sim, "fault", {"action": "link", "duplicate": 1.0, "reorder": 0.2, "delay_ms": 30})
        call(sim, "set_rate", {"rate_hz": 30.0, "nodes": ["sim-001"]})  # 3 x its capacity
        wait_for(lambda: audit()["delivered"] >= 30, 30, 0.2)
        call(sim, "set_rate", {"rate_hz": 1.0, "nodes": ["sim-001"]})

        def settled() -> bool:
            a = audit()
            return a["pending"] + a["assigned"] + a["running"] + a["done"] == 0

        wait_for(settled, 60, 0.2)
        result = audit()
        assert result["committed_twice"] == 0 and result["dead_letter"] == 0
        assert result["delivered"] == result["total"] > 0
        counters = call(sim, "status")["counters"]
        assert counters["tasks_completed_remote"] == result["delivered"]  # each taken once
        assert counters["completions_twice"] == 0 and counters["tasks_unaccounted"] == 0
        assert counters["link_duplicated"] > 0 and counters["link_reordered"] > 0
        assert call(cluster.config.relay.ctl, "status")["counters"]["duplicates"] > 0
