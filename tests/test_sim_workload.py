"""The simulated fleet's workload: per-node rates, hot spots and bursts from the config and
the command line; the work counters benchmarks read; link faults on task messages."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
import zmq

from shoal.protocol import codec
from shoal.protocol.tasks import Completed, NodeTaskMessage, Renew
from shoal.services.cli.workload import apply_workload, workload_argv
from shoal.services.runtime.config import Burst, ConfigError, SimConfig, load_config, with_overrides
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.sim.fleet import Fleet
from shoal.services.sim.workload import (
    WorkloadError,
    base_rates,
    burst_active,
    capacity_hz,
    hot_spot_ids,
)
from shoal.services.testing import config_on_free_ports, raw_socket, running, wait_for

# --- config ------------------------------------------------------------------------------


def test_the_workload_keys_load_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text(
        "[sim]\nnodes = 20\nhot_spots = 3\nhot_spot_factor = 2.5\n"
        '[sim.rates]\n"sim-004" = 12.0\n'
        "[[sim.bursts]]\nevery_s = 30\nduration_s = 5\nfactor = 2\n"
        '[[sim.bursts]]\nevery_s = 60\nduration_s = 1\nstart_s = 10\nnodes = ["sim-001"]\n'
    )
    sim = load_config(path, env={}).sim
    assert sim.hot_spots == 3 and sim.hot_spot_factor == 2.5
    assert sim.rates == {"sim-004": 12.0}
    assert sim.bursts == [
        Burst(every_s=30, duration_s=5, factor=2),
        Burst(every_s=60, duration_s=1, start_s=10, nodes=["sim-001"]),
    ]
    path.write_text('[sim]\nhot_spots = ["sim-001", "sim-002"]\n')
    assert load_config(path, env={}).sim.hot_spots == ["sim-001", "sim-002"]


def test_the_defaults_are_a_uniform_workload() -> None:
    sim = SimConfig()
    assert sim.hot_spots == [] and sim.rates == {} and sim.bursts == []
    assert base_rates(sim) == dict.fromkeys([f"sim-{i:03d}" for i in range(8)], 4.0)


@pytest.mark.parametrize(
    "text,names",
    [
        ("[sim]\nhot_spots = 'three'\n", "sim.hot_spots"),
        ("[sim]\nhot_spots = -1\n", "sim.hot_spots"),
        ("[sim]\nhot_spot_factor = -2\n", "sim.hot_spot_factor"),
        ('[sim.rates]\n"sim-001" = -1.0\n', "sim.rates"),
        ("[[sim.bursts]]\nevery_s = 0\nduration_s = 1\n", "sim.bursts[0].every_s"),
        ("[[sim.bursts]]\nevery_s = 10\n", "duration_s"),
        ("[[sim.bursts]]\nevery_s = 10\nduration_s = 1\nfactr = 2\n", "factr"),
    ],
)
def test_a_wrong_workload_key_is_an_error_naming_it(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert names in str(info.value)


# --- base rates and bursts ---------------------------------------------------------------


def test_hot_spots_by_count_are_spread_over_the_fleet() -> None:
    sim = SimConfig(nodes=20, hot_spots=3)
    assert hot_spot_ids(sim) == ["sim-000", "sim-006", "sim-013"]
    assert hot_spot_ids(SimConfig(nodes=4, hot_spots=4)) == [f"sim-{i:03d}" for i in range(4)]
    assert hot_spot_ids(SimConfig(nodes=4, hot_spots=0)) == []


def test_a_hot_spot_gets_k_times_its_capacity_and_rates_take_precedence() -> None:
    sim = SimConfig(
        nodes=6,
        arrival_rate_hz=2.0,
        task_cost_ms=50.0,
        hot_spots=["sim-001", "sim-002"],
        hot_spot_factor=3.0,
        rates={"sim-002": 7.0, "sim-005": 0.5},
    )
    assert capacity_hz(sim) == 20.0
    rates = base_rates(sim)
    assert rates == {
        "sim-000": 2.0,
        "sim-001": 60.0,  # 3 x 20 tasks/s
        "sim-002": 7.0,  # its own rate wins over the hot spot's
        "sim-003": 2.0,
        "sim-004": 2.0,
        "sim-005": 0.5,
    }
    # With an explicit service rate, capacity is that.
    sim = SimConfig(nodes=2, service_rate_hz=8.0, hot_spots=1, hot_spot_factor=2.0)
    assert base_rates(sim)["sim-000"] == 16.0


@pytest.mark.parametrize(
    "sim,error",
    [
        (SimConfig(nodes=3, hot_spots=4), "4 hot spots in 3 nodes"),
        (SimConfig(nodes=3, hot_spots=["sim-003"]), "sim.hot_spots: unknown nodes sim-003"),
        (SimConfig(nodes=3, rates={"node-1": 1.0}), "sim.rates: unknown nodes node-1"),
        (
            SimConfig(nodes=3, bursts=[Burst(every_s=1, duration_s=1, nodes=["x"])]),
            "sim.bursts[0].nodes: unknown nodes x",
        ),
    ],
)
def test_a_workload_that_does_not_fit_the_fleet_is_refused(sim: SimConfig, error: str) -> None:
    with pytest.raises(WorkloadError, match=error.replace("[", r"\[").replace("]", r"\]")):
        base_rates(sim)


def test_a_burst_is_on_for_its_duration_once_a_period_from_its_start() -> None:
    burst = Burst(every_s=10, duration_s=2, start_s=5)
    on = [t for t in range(0, 40) if burst_active(burst, t + 0.5)]
    assert on == [5, 6, 15, 16, 25, 26, 35, 36]
    assert burst_active(Burst(every_s=10, duration_s=2), 0.0)  # start_s 0: at once


# --- the command line --------------------------------------------------------------------


def test_workload_flags_override_the_config() -> None:
    config = with_overrides(load_config(env={}), "sim", nodes=10, rates={"sim-009": 1.0})
    flags: dict[str, Any] = {
        "rate": 3.0,
        "hot_spots": "2",
        "hot_factor": 4.0,
        "node_rates": ("sim-003=9.5",),
        "bursts": ("30:5:2", "60:1:3:15"),
    }
    sim = apply_workload(config, flags).sim
    assert sim.arrival_rate_hz == 3.0 and sim.hot_spots == 2 and sim.hot_spot_factor == 4.0
    assert sim.rates == {"sim-009": 1.0, "sim-003": 9.5}  # added to the table
    assert sim.bursts == [
        Burst(every_s=30, duration_s=5, factor=2),
        Burst(every_s=60, duration_s=1, factor=3, start_s=15),
    ]
    assert apply_workload(config, {"hot_spots": "sim-001, sim-004"}).sim.hot_spots == [
        "sim-001",
        "sim-004",
    ]
    # What `shoal up` passes on to the sim it starts says the same.
    argv = workload_argv(flags)
    assert argv == [
        "--rate", "3.0", "--hot-spots", "2", "--hot-factor", "4.0",
        "--node-rate", "sim-003=9.5", "--burst", "30:5:2", "--burst", "60:1:3:15",
    ]  # fmt: skip
    assert workload_argv({}) == []


@pytest.mark.parametrize(
    "flags,error",
    [
        ({"node_rates": ("sim-001",)}, "expected ID=HZ"),
        ({"node_rates": ("sim-001=fast",)}, "expected ID=HZ"),
        ({"bursts": ("30:5",)}, "expected EVERY:DURATION:FACTOR"),
        ({"bursts": ("0:5:2",)}, "expected EVERY:DURATION:FACTOR"),
        ({"hot_spots": "9"}, "9 hot spots in 8 nodes"),
        ({"node_rates": ("sim-042=1",)}, "unknown nodes sim-042"),
    ],
)
def test_bad_workload_flags_are_usage_errors(flags: dict[str, Any], error: str) -> None:
    with pytest.raises(click.ClickException, match=error):
        apply_workload(load_config(env={}), flags)


def test_shoal_up_refuses_a_workload_that_does_not_fit_before_starting_anything() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "up", "--headless", "--nodes", "4",
         "--hot-spots", "sim-000,sim-007"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "unknown nodes sim-007" in proc.stderr and "Traceback" not in proc.stderr


# --- the fleet ---------------------------------------------------------------------------


def test_the_fleet_runs_each_node_at_its_rate_and_bursts_come_and_go() -> None:
    config = config_on_free_ports(
        sim={
            "nodes": 4,
            "tick_ms": 10,
            "hot_spots": ["sim-002"],
            "hot_spot_factor": 2.0,
            "rates": {"sim-003": 1.0},
            "bursts": [Burst(every_s=0.6, duration_s=0.3, factor=5.0, nodes=["sim-000"])],
        }
    )
    with running(Fleet(config)) as fleet, CtlClient(config.sim.ctl) as sim:
        nodes = fleet.nodes
        assert nodes["sim-001"].engine.rate_hz == 4.0
        assert nodes["sim-002"].engine.rate_hz == 20.0  # 2 x 10 tasks/s
        assert nodes["sim-003"].engine.rate_hz == 1.0
        wait_for(lambda: nodes["sim-000"].engine.rate_hz == 20.0, 2, 0.005)  # 5 x 4
        wait_for(lambda: nodes["sim-000"].engine.rate_hz == 4.0, 2, 0.005)
        wait_for(lambda: nodes["sim-000"].engine.rate_hz == 20.0, 2, 0.005)
        assert fleet.counters["bursts_started"] >= 2
        # set_rate changes the base rate; a burst still multiplies it.
        sim.call("set_rate", {"rate_hz": 2.0, "nodes": ["sim-000", "sim-001"]})
        assert nodes["sim-001"].engine.rate_hz == 2.0
        wait_for(lambda: nodes["sim-000"].engine.rate_hz == 10.0, 2, 0.005)
        # A reboot keeps the node's rate.
        sim.call("fault", {"action": "reboot", "nodes": ["sim-002"]})
        assert nodes["sim-002"].engine.rate_hz == 20.0
        status = sim.call("nodes")
        assert status["sim-002"]["rate_hz"] == 20.0
        assert status["sim-002"]["overload_transitions"] >= 0


def test_work_is_counted_in_task_ms_across_reboots() -> None:
    config = config_on_free_ports(sim={"nodes": 2, "tick_ms": 10, "arrival_rate_hz": 20.0})
    with running(Fleet(config)) as fleet, CtlClient(config.sim.ctl) as sim:
        wait_for(lambda: fleet.status_counters()["work_done_local_ms"] > 1000, 10)
        before = sim.call("status")["counters"]
        sim.call("fault", {"action": "reboot"})
        wait_for(lambda: fleet.status_counters()["tasks_done_local"] > 3, 10)
        after = sim.call("status")["counters"]
        assert after["work_done_local_ms"] > before["work_done_local_ms"]  # not reset
        assert after["work_offered_ms"] >= after["work_done_local_ms"]
        assert after["work_done_delegated_ms"] == 0
        assert after["clock_ms"] > before["clock_ms"]
        assert after["tasks_unaccounted"] == 0


class Router:
    """A ROUTER standing in for the delegator's tasks socket."""

    def __init__(self, endpoint: str) -> None:
        self.sock = raw_socket(zmq.ROUTER, endpoint, bind=True)
        self.decoder = msgspec.msgpack.Decoder(NodeTaskMessage)
        self.identity = b""

    def received(self, seconds: float) -> list[Any]:
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                self.identity, body = self.sock.recv_multipart()
                out.append(self.decoder.decode(body))
        return out

    def send(self, msg: Any) -> None:
        self.sock.send_multipart([self.identity, codec.encode(msg)])

    def close(self) -> None:
        self.sock.close()


def test_a_faulty_link_drops_task_messages_both_ways() -> None:
    config = config_on_free_ports(sim={"nodes": 2, "tick_ms": 10, "arrival_rate_hz": 0.0})
    router = Router(config.delegator.tasks)
    try:
        with running(Fleet(config)) as fleet, CtlClient(config.sim.ctl) as sim:
            wait_for(lambda: router.received(0.1), 5)  # connected: renews come
            sim.call("fault", {"action": "link", "drop": 1.0, "nodes": ["sim-001"]})
            renews = {m.node_id for m in router.received(2.5) if isinstance(m, Renew)}
            assert renews == {"sim-000"}  # a renew a second; sim-001's are all lost
            assert fleet.counters["link_tasks_dropped"] >= 2
            router.send(Completed(node_id="sim-001", task_id="t1", ok=True))
            wait_for(lambda: fleet.counters["link_tasks_in_dropped"] == 1, 5)
            assert fleet.nodes["sim-001"].engine.stats["completed_other"] == 0
            # A node crashed and booted again keeps its faulty link.
            sim.call("fault", {"action": "reboot", "nodes": ["sim-001"]})
            assert fleet.nodes["sim-001"].delegation.link is fleet.nodes["sim-001"].link.tasks
            sim.call("fault", {"action": "heal"})
            renews = {m.node_id for m in router.received(2.5) if isinstance(m, Renew)}
            assert renews == {"sim-000", "sim-001"}
    finally:
        router.close()


def test_an_origin_never_takes_a_result_as_new_twice() -> None:
    """Only a task the origin handed over (and has not seen completed) counts; repeats,
    however late, and results of tasks it never handed over do not."""
    config = config_on_free_ports(sim={"nodes": 1, "arrival_rate_hz": 0.0})
    router = Router(config.delegator.tasks)
    try:
        with running(Fleet(config)) as fleet:
            wait_for(lambda: router.received(0.1), 5)
            origin = fleet.nodes["sim-000"]
            for k in range(100):
                router.send(Completed(node_id="sim-000", task_id=f"t{k % 3}", ok=True))
            wait_for(lambda: fleet.counters["task_frames_in"] == 100, 5)
            assert origin.engine.stats["completed_remote"] == 0
            assert origin.engine.stats["completed_other"] == 100
            assert fleet.counters["completions_twice"] == 0
    finally:
        router.close()
