"""A cluster of hosts: network namespaces joined by veths, link faults made by the kernel.

The cluster test runs partition-minority, lossy-wifi and relay-restart (at their test
scale, all three at once: about 30 s) with ``shoal chaos run --hosts``; it needs root and
iproute2 and skips, saying why, where namespaces cannot be made. The rest needs neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.services.chaos.actuators import link_params
from shoal.services.chaos.library import LIBRARY_DIR
from shoal.services.chaos.load import load
from shoal.services.chaos.topology import Topology
from shoal.services.hosts import netns
from shoal.services.hosts.layout import fleet_split, host_config, plan_layout
from shoal.services.hosts.linkfaults import KernelLinks, cbpf, netem_args
from shoal.services.runtime.config import load_config, with_overrides
from shoal.services.sim.fleet import Fleet

NODES = [f"sim-{i:03d}" for i in range(8)]


# --- the layout -----------------------------------------------------------------------------


def test_link_fault_targets_get_hosts_of_their_own() -> None:
    parts = fleet_split(NODES, [["sim-001", "sim-003"], ["sim-000"]])
    assert parts == [
        ["sim-002", "sim-004", "sim-005", "sim-006", "sim-007"],
        ["sim-001", "sim-003"],  # in the order of the faults
        ["sim-000"],
    ]
    assert fleet_split(NODES, []) == [NODES[:4], NODES[4:]]  # at least two fleets


def test_every_host_reaches_the_services_where_the_bus_host_binds_them(tmp_path: Path) -> None:
    layout = plan_layout(tmp_path, NODES, [["sim-001", "sim-003"]], run_id="1-0")
    fleet_b = host_config(layout, "fleet-b", {"seed": 7})
    bus = host_config(layout, "bus", {"seed": 7})
    assert fleet_b.relay.ingest == bus.relay.ingest == "tcp://169.254.77.10:7700"
    assert fleet_b.delegator.tasks == "tcp://169.254.77.10:7706"
    assert fleet_b.sim.ctl == "tcp://169.254.77.22:7703"
    assert fleet_b.sim.only == ["sim-001", "sim-003"] and fleet_b.sim.nodes == 8
    assert fleet_b.supervisor.ctl == "tcp://169.254.77.22:7790"
    assert bus.supervisor.ctl == "tcp://169.254.77.10:7790"
    # the injector's host speaks to the bus host's supervisor and the first fleet
    ops = host_config(layout, "ops", {})
    assert ops.supervisor.ctl == bus.supervisor.ctl and ops.sim.ctl.startswith(
        "tcp://169.254.77.21"
    )


def test_a_fleet_part_runs_its_nodes_with_their_place_in_the_whole_fleet() -> None:
    config = load_config(env={})
    whole = Fleet(with_overrides(config, "sim", nodes=8, hot_spots=2))
    part = Fleet(with_overrides(config, "sim", nodes=8, hot_spots=2, only=["sim-004", "sim-006"]))
    try:
        assert sorted(part.nodes) == ["sim-004", "sim-006"]
        for node_id in part.nodes:  # same streams, same rate (sim-004 is a hot spot)
            assert part.nodes[node_id].rng.state == whole.nodes[node_id].rng.state
            assert part.nodes[node_id].rate_hz == whole.nodes[node_id].rate_hz
    finally:
        whole.ctx.term()
        part.ctx.term()


def test_kernel_faults_only_on_whole_hosts() -> None:
    topo = Topology(
        sims={"a": NODES[:4], "b": NODES[4:]},
        supervisors={"s": []},
        kernel=object(),
        host_nodes={"fleet-a": NODES[:4], "fleet-b": NODES[4:]},
    )
    assert topo.hosts_of(NODES[4:]) == ["fleet-b"]
    assert topo.hosts_of(NODES) == ["fleet-a", "fleet-b"]
    assert topo.hosts_of(NODES[3:]) is None  # sim-003 would drag fleet-a's others along
    assert topo.sims_for(["sim-001", "sim-005"]) == {"a": ["sim-001"], "b": ["sim-005"]}


# --- the kernel's rules ---------------------------------------------------------------------


def test_the_classifier_matches_ipv4_to_the_peer_and_draws_below_p() -> None:
    prog = cbpf("169.254.77.10", 0.25).split(",")
    assert prog[0] == "8"  # instructions
    assert prog[4] == f"21 0 3 {(169 << 24) + (254 << 16) + (77 << 8) + 10}"
    assert prog[6] == f"53 1 0 {1 << 30}"  # jge 2^32 / 4: no match
    assert cbpf("169.254.77.10", 1.0).split(",")[0] == "6"  # a partition draws nothing


def test_netem_takes_the_simulators_loss_chain_exactly() -> None:
    drop = link_params("drop", {"probability": 0.3, "correlation": 0.6})
    # P(good->bad) = (1-c)p = 0.12, P(bad->good) = (1-c)(1-p) = 0.28, loss 100% in bad
    assert netem_args(drop, node_side=False) == ["loss", "gemodel", "12%", "28%", "100%", "0%"]
    delay = link_params("delay", {"delay": 0.04, "delay_jitter": 0.06})
    assert netem_args(delay, node_side=True) == ["delay", "70ms", "30ms"]  # uniform 40..100
    assert netem_args(delay, node_side=False) == []  # as the simulator: node -> service
    partition = link_params("partition", {"services": ["relay"]})
    assert netem_args(partition, node_side=False) == ["loss", "100%"]


def test_without_netem_delay_is_left_to_the_simulator_and_said() -> None:
    links = KernelLinks({}, "drop")
    kernel, left, notes = links.split({"drop": 0.3, "correlation": 0.6, "delay_ms": 40})
    assert kernel == {"drop": 0.3} and left == {"delay_ms": 40}
    assert any("uncorrelated" in n for n in notes) and any("simulator" in n for n in notes)
    assert KernelLinks({}, "netem").split({"delay_ms": 40}) == ({"delay_ms": 40}, {}, [])


# --- the cluster of hosts -------------------------------------------------------------------

SCENARIOS = ("partition-minority", "lossy-wifi", "relay-restart")


def _way() -> str | None:
    """How this kernel makes link faults (or None), tried in a namespace of its own."""
    from shoal.services.hosts.linkfaults import probe

    with netns.Net({"probe": 2}) as net:
        return probe(net.netns("probe"))


@pytest.fixture(scope="module")
def kernel_way() -> str:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(f"no cluster of hosts here: {why}")
    way = _way()
    if way is None:
        pytest.skip("this kernel makes no link faults (neither sch_netem nor cls_bpf + mirred)")
    return way


@pytest.mark.timeout(300)
def test_the_library_passes_on_hosts_with_kernel_made_faults(
    kernel_way: str, tmp_path: Path
) -> None:
    procs = {}
    for name in SCENARIOS:
        scale = load(LIBRARY_DIR / f"{name}.toml").scenario.test_scale
        argv = [sys.executable, "-m", "shoal.services.cli", "chaos", "run", name, "--hosts"]
        argv += ["--seed", "1", "--time-scale", str(scale), "--quiet"]
        argv += ["--report", str(tmp_path / f"{name}.json")]
        procs[name] = subprocess.Popen(
            argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    outputs = {name: proc.communicate(timeout=240)[0] for name, proc in procs.items()}
    failed = {name: outputs[name][-3000:] for name, proc in procs.items() if proc.returncode != 0}
    for name in failed:
        summary = tmp_path / f"{name}.md"
        failed[name] += "\n" + (summary.read_text() if summary.exists() else "(no report)")
    assert failed == {}
    reports = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in SCENARIOS}
    for name, report in reports.items():
        assert report["hosts"].startswith("hosts bus (relay, liveness, delegator)"), name
        assert f"link faults: {kernel_way}" in report["hosts"]
    # The partition and the loss were the kernel's: rules on the hosts' interfaces that
    # dropped packets.
    for name, kind in (("partition-minority", "partition"), ("lossy-wifi", "drop")):
        fault = next(f for f in reports[name]["faults"] if f["kind"] == kind)
        assert fault["via"].startswith(f"kernel ({kernel_way}) between fleet-"), fault
        assert fault["kernel_dropped"] > 0, fault
    # Every namespace went with its run.
    owners = {str(proc.pid) for proc in procs.values()}
    assert [n for n in netns.namespaces() if n.split("-")[1:2] and n.split("-")[1] in owners] == []
