"""End to end, in-process: simulated nodes -> relay -> bus, across a relay outage."""

from __future__ import annotations

from typing import Any

from shoal.protocol.messages import RelaySnapshot
from shoal.services.relay.service import Relay
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.sim.fleet import Fleet
from shoal.services.testing import config_on_free_ports, running, wait_for


def test_fleet_telemetry_reaches_the_snapshot() -> None:
    config = config_on_free_ports(sim={"nodes": 8})
    with running(Relay(config)), running(Fleet(config)), CtlClient(config.relay.ctl) as ctl:

        def all_reporting() -> bool:
            snap = ctl.call("snapshot", result_type=RelaySnapshot)
            return len(snap.nodes) == 8 and all(n.telemetry is not None for n in snap.nodes)

        wait_for(all_reporting, timeout_s=5)
        snap = ctl.call("snapshot", result_type=RelaySnapshot)
        assert {n.node_id for n in snap.nodes} == {f"sim-{i:03d}" for i in range(8)}
        assert all(n.hello is not None and n.hello.hb_interval_ms == 250 for n in snap.nodes)


def test_relay_outage_loses_nothing_nodes_buffer_and_resend() -> None:
    config = config_on_free_ports(
        sim={
            "nodes": 5,
            "telemetry_interval_ms": 100,
            "ack_timeout_ms": 300,
            "backoff_max_ms": 300,
        },
    )
    fleet = Fleet(config)
    # Heartbeats are best effort (never buffered or resent): remember their seqs, the only
    # holes the second relay may see.
    beats: set[tuple[str, int]] = set()
    gateway_send = fleet.link.send

    def send(msg: dict[str, Any]) -> bool:
        if msg["kind"] == "heartbeat":
            beats.add((msg["node_id"], msg["seq"]))
        return gateway_send(msg)

    fleet.link.send = send  # type: ignore[method-assign]
    with running(fleet):
        with running(Relay(config)) as first:
            wait_for(
                lambda: len(first.nodes) == 5 and all(s.msgs > 3 for s in first.nodes.values()), 5
            )
        accepted_before = {node_id: st.window.high for node_id, st in first.nodes.items()}
        # Relay gone: nodes notice the missing acks and buffer their telemetry.
        wait_for(lambda: fleet.status_counters()["node_disconnects"] >= 5, timeout_s=5)
        wait_for(lambda: fleet.status_counters()["node_buffered"] >= 20, timeout_s=5)
        with running(Relay(config)) as second:

            def caught_up() -> bool:
                return len(second.nodes) == 5 and all(
                    second.nodes[n].window.high > high + 20 for n, high in accepted_before.items()
                )

            wait_for(caught_up, timeout_s=10)
            for node_id, high in accepted_before.items():
                window = second.nodes[node_id].window
                # Everything after what the first relay accepted reached the second one:
                # it starts at or before the next seq, and its only holes are heartbeats.
                assert window.low <= high + 1, node_id
                assert window.high - high < window.width
                holes = [
                    seq
                    for seq in range(high + 1, window.high)
                    if not (window.mask >> (window.high - seq)) & 1
                ]
                assert all((node_id, seq) in beats for seq in holes), (node_id, holes)
        counters = fleet.status_counters()
        assert counters["node_dropped"] == 0
        assert counters["node_resent"] >= 5


def test_a_fleet_stopping_says_goodbye_for_every_node() -> None:
    config = config_on_free_ports(sim={"nodes": 6})
    with running(Relay(config)) as relay:
        with running(Fleet(config)):
            wait_for(
                lambda: len(relay.nodes) == 6 and all(s.msgs > 1 for s in relay.nodes.values()), 5
            )
        wait_for(lambda: all(s.left for s in relay.nodes.values()), 5)


def test_sim_set_rate_changes_load_and_refuses_bad_arguments() -> None:
    from shoal.services.runtime.ctl_client import CtlFailed

    config = config_on_free_ports(sim={"nodes": 3})
    with running(Fleet(config)) as fleet, CtlClient(config.sim.ctl) as sim:
        assert sim.call("set_rate", {"rate_hz": 20.0, "nodes": ["sim-001"]}) == {
            "changed": ["sim-001"]
        }
        assert fleet.nodes["sim-001"].engine.rate_hz == 20.0
        assert fleet.nodes["sim-000"].engine.rate_hz == config.sim.arrival_rate_hz
        for bad in (
            {"rate_hz": "fast"},
            {"rate_hz": -1},
            {},
            {"rate_hz": 1, "nodes": ["nope"]},
            {"rate_hz": 1, "x": 2},
        ):
            try:
                sim.call("set_rate", bad)
            except CtlFailed as err:
                assert "bad arguments" in str(err) or "unknown nodes" in str(err)
            else:
                raise AssertionError(f"accepted {bad}")
        assert fleet.counters["handler_errors"] == 0


def test_nodes_whose_batch_could_not_leave_go_down_at_once_not_after_an_ack_timeout() -> None:
    """A fleet started before its relay: the gateway's send fails, so no probe is in flight,
    and no node may sit in PROBING waiting ack_timeout_ms for an answer that cannot come."""
    from shoal.services.runtime.ctl_client import CtlClient
    from shoal.services.sim.fleet import Fleet

    config = config_on_free_ports(sim={"nodes": 4, "tick_ms": 10, "ack_timeout_ms": 60_000})
    with running(Fleet(config)) as fleet, CtlClient(config.sim.ctl) as sim:
        wait_for(lambda: fleet.counters["send_failed"] >= 3, 10)
        states = {n["state"] for n in sim.call("nodes", timeout_s=2).values()}
        assert states == {"down"}
        with running(Relay(config)) as relay:
            wait_for(lambda: relay.counters["accepted"] >= 4, 10)
            wait_for(
                lambda: {n["state"] for n in sim.call("nodes", timeout_s=2).values()} == {"up"}, 10
            )
