"""The relay sharded by node id (docs/protocol.md §5.8): the hash, the endpoints, a shard
refusing another shard's nodes, and a real cluster of two shards with simulated nodes and
emulated boards (the fleet and the MQTT shim route by the hash; the liveness monitor, the
delegator, the registry and ``shoal status`` follow both), one shard SIGKILLed: nobody dead.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from test_liveness_cluster import Events, members

from shoal.protocol.messages import Hello, RelaySnapshot, ServiceBeat
from shoal.services.boards.layout import have_micropython
from shoal.services.cli.main import main
from shoal.services.liveness.service import Liveness
from shoal.services.relay.service import Relay
from shoal.services.runtime.config import (
    ConfigError,
    ShardEndpoints,
    ShoalConfig,
    relay_shard,
    relay_shards,
    validated,
    with_overrides,
)
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.runtime.shards import shard_of
from shoal.services.testing import (
    BusListener,
    Cluster,
    IngestClient,
    config_on_free_ports,
    running,
    wait_for,
)


def test_a_node_s_shard_is_its_crc32_mod_the_shard_count() -> None:
    # The figures docs/protocol.md §5.8 gives a firmware writer (binascii.crc32 agrees).
    assert shard_of("sim-0001", 2) == 0x8E309CE5 % 2 == 1
    assert shard_of("sim-0001", 1) == 0
    spread = [shard_of(f"sim-{i:04d}", 4) for i in range(1000)]
    assert all(200 <= spread.count(k) <= 300 for k in range(4))  # an even split


def test_shards_bind_their_own_endpoints_or_shard_0_s_ports_plus_100() -> None:
    config = with_overrides(ShoalConfig(), "relay", shards=3)
    shards = relay_shards(config)
    assert [s.ingest for s in shards] == [
        "tcp://127.0.0.1:7700",
        "tcp://127.0.0.1:7800",
        "tcp://127.0.0.1:7900",
    ]
    assert shards[2].ctl == "tcp://127.0.0.1:7902" and shards[1].metrics == "127.0.0.1:9800"
    given = ShardEndpoints(
        ingest="tcp://127.0.0.1:8100", bus="tcp://127.0.0.1:8101", ctl="tcp://127.0.0.1:8102"
    )
    config = with_overrides(config, "relay", shard_endpoints=[given])
    assert relay_shards(config)[1] == given and relay_shards(config)[2].ingest.endswith(":7900")
    second = relay_shard(config, 1)
    assert second.relay.ingest == given.ingest and second.metrics.relay == ""
    validated(config)


def test_a_shard_endpoint_that_clashes_or_is_no_endpoint_is_refused() -> None:
    clash = ShardEndpoints(
        ingest="tcp://127.0.0.1:7705", bus="tcp://127.0.0.1:8101", ctl="tcp://127.0.0.1:8102"
    )
    config = with_overrides(ShoalConfig(), "relay", shards=2, shard_endpoints=[clash])
    with pytest.raises(
        ConfigError, match=r"relay.shard_endpoints\[0\].ingest'.*already liveness.ctl.s"
    ):
        validated(config)
    bad = ShardEndpoints(ingest="nonsense", bus="tcp://127.0.0.1:8101", ctl="tcp://127.0.0.1:8102")
    config = with_overrides(ShoalConfig(), "relay", shards=2, shard_endpoints=[bad])
    with pytest.raises(ConfigError, match=r"key 'relay.shard_endpoints\[0\].ingest': 'nonsense'"):
        validated(config)


def test_run_relay_refuses_a_shard_beyond_the_count(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text("[relay]\nshards = 2\n")
    result = CliRunner().invoke(main, ["run", "relay", "--shard", "2", "--config", str(path)])
    assert result.exit_code == 2 and "[relay] shards is 2" in result.output


def test_a_shard_refuses_another_shard_s_node_unacked_and_takes_its_own() -> None:
    config = config_on_free_ports(relay={"shards": 2})
    mine, other = "sim-0004", "sim-0001"  # shard 0 and shard 1 of 2
    assert (shard_of(mine, 2), shard_of(other, 2)) == (0, 1)
    with running(Relay(relay_shard(config, 0), shard=0)) as relay:
        client = IngestClient(config.relay.ingest)
        try:
            client.send(Hello(node_id=other, boot_id=1, seq=0, fw="t"))
            client.send(Hello(node_id=mine, boot_id=1, seq=0, fw="t"))
            wait_for(lambda: (mine, 1) in client.pump_acks(), timeout_s=5)
            wait_for(lambda: relay.reject_counts["wrong_shard"] == 1, timeout_s=5)
            assert (other, 1) not in client.pump_acks(0.2)
            assert set(relay.nodes) == {mine}
            assert relay.status_counters()["shard"] == 0
        finally:
            client.close()


def test_the_liveness_monitor_holds_verdicts_while_any_shard_is_silent() -> None:
    config = config_on_free_ports(relay={"shards": 2})
    monitor = Liveness(config)
    monitor.setup()
    try:
        assert len(monitor.relays) == 2
        now = monitor.clock()
        beat = ServiceBeat(pub=7, pseq=1, service="relay", pid=1, uptime_s=1.0, interval_ms=500)
        monitor._on_frame(b"svc", beat, 0)  # shard 0 talks, shard 1 never did: blind
        monitor._check()
        assert not monitor.healthy and "relay_silent" in monitor.reasons
        monitor._on_frame(b"svc", msgspec.structs.replace(beat, pub=8), 1)
        monitor._check()
        assert monitor.healthy, monitor.reasons
        monitor.relay_heard_at[1] = now - 5  # shard 1 silent for ten of its beats
        monitor._check()
        assert not monitor.healthy and "relay_silent" in monitor.reasons
    finally:
        monitor.sockets.close_all()
        monitor.ctx.term()


# --- a real cluster of two shards ------------------------------------------------------------

NODES = 12


BOARDS = 2 if have_micropython() else 0


def shard_snapshot(ctl: str) -> RelaySnapshot:
    with CtlClient(ctl) as c:
        return c.call("snapshot", result_type=RelaySnapshot, timeout_s=2.0, retries=1)


def everyone(cluster: Cluster) -> set[str]:
    sims = {f"sim-{i:03d}" for i in range(NODES)}
    return sims | {f"board-0{i}" for i in range(1, BOARDS + 1)}


def all_alive(cluster: Cluster) -> bool:
    m = members(cluster)
    return set(m) == everyone(cluster) and all(v["state"] == "alive" for v in m.values())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("shards")
    with Cluster(tmp, nodes=NODES, boards=BOARDS, relay={"shards": 2}) as c:
        try:
            wait_for(lambda: all_alive(c), timeout_s=60, interval_s=0.2, ignore=(CtlUnavailable,))
        except AssertionError:
            raise AssertionError("cluster did not come up:\n" + c.log()[-4000:]) from None
        yield c


def test_each_node_lands_in_its_own_shard_and_every_consumer_sees_them_all(
    cluster: Cluster,
) -> None:
    shards = relay_shards(cluster.config)
    held = [{n.node_id for n in shard_snapshot(s.ctl).nodes} for s in shards]
    assert held[0] and held[1] and not held[0] & held[1]
    for k, ids in enumerate(held):
        assert all(shard_of(node, 2) == k for node in ids), (k, ids)
    assert held[0] | held[1] == everyone(cluster)  # sims through the fleet, boards the shim
    assert {n.node_id for n in cluster.snapshot().nodes} == everyone(cluster)

    result = CliRunner().invoke(main, ["status", "--json", "--config", str(cluster.config_path)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert {row["node_id"] for row in status["nodes"]} == everyone(cluster)
    # The delegator's view of the relay holds every node too (it places on all of them).
    with CtlClient(cluster.config.delegator.ctl) as c:
        view = c.call("status", timeout_s=2.0)["counters"]
    assert view["relay_synced"] == 1 and view["relay_nodes"] == len(everyone(cluster))
    if BOARDS:  # the registry follows both shards: every board is in it

        def listed() -> bool:  # the registry writes once a second (devices.flush_interval_ms)
            out = CliRunner().invoke(
                main, ["devices", "list", "--config", str(cluster.config_path)]
            )
            assert out.exit_code == 0, out.output
            return all(f"board-0{i}" in out.output for i in range(1, BOARDS + 1))

        wait_for(listed, timeout_s=15)


def test_a_killed_shard_marks_no_node_dead_and_its_nodes_come_back(cluster: Cluster) -> None:
    events = Events(cluster)
    second = relay_shards(cluster.config)[1]
    beats = BusListener(second.bus)
    try:
        before = cluster.ps()["relay-1"]
        os.kill(before["pid"], signal.SIGKILL)
        wait_for(lambda: cluster.ps()["relay-1"]["restarts"] == before["restarts"] + 1, 10)
        mine = {n for n in everyone(cluster) if shard_of(n, 2) == 1}
        wait_for(
            lambda: {n.node_id for n in shard_snapshot(second.ctl).nodes} == mine,
            timeout_s=20,
            ignore=(CtlUnavailable,),
        )
        wait_for(lambda: all_alive(cluster), timeout_s=15, ignore=(CtlUnavailable,))
        wait_for(lambda: cluster.ps()["relay-1"]["uptime_s"] > 3.0, 10)
        assert [e for e in events.all() if e.event == "dead"] == []
        assert all_alive(cluster)
    finally:
        events.bus.close()
        beats.close()
