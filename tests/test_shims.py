"""Several MQTT shim instances sharing the boards (docs/architecture.md, "Scaling out"):
the endpoints and ids, an instance dropping another's boards, the liveness monitor judging
each instance's boards by that instance's health, and a real cluster of two shims with
emulated boards in MicroPython, one shim SIGKILLed: its boards are held, not dead, and come
back; the other's boards are judged as ever.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_liveness_cluster import Events, members

from shoal.protocol.messages import Heartbeat, Hello, NodeRecords, ServiceBeat
from shoal.services.boards.layout import have_micropython
from shoal.services.cli.main import main
from shoal.services.liveness.service import Liveness
from shoal.services.mqtt_shim.service import Shim
from shoal.services.runtime.config import (
    ConfigError,
    ShimEndpoints,
    ShoalConfig,
    shim_instance,
    shim_instances,
    validated,
    with_overrides,
)
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.runtime.shards import shard_of
from shoal.services.testing import Cluster, config_on_free_ports, wait_for


def test_instances_bind_their_own_endpoints_or_instance_0_s_ports_plus_100() -> None:
    config = with_overrides(ShoalConfig(), "mqtt", shims=3)
    shims = shim_instances(config)
    assert [s.ctl for s in shims] == [
        "tcp://127.0.0.1:7709",
        "tcp://127.0.0.1:7809",
        "tcp://127.0.0.1:7909",
    ]
    assert shims[2].bus == "tcp://127.0.0.1:7910" and shims[1].metrics == "127.0.0.1:9804"
    second = shim_instance(config, 1).mqtt
    assert (second.shim_id, second.shim_ctl, second.shim_bus) == (
        "shim-1-1",
        "tcp://127.0.0.1:7809",
        "tcp://127.0.0.1:7810",
    )
    own = ShimEndpoints(ctl="tcp://127.0.0.1:8001", bus="tcp://127.0.0.1:8002")
    config = with_overrides(config, "mqtt", shims=2, shim_endpoints=[own])
    assert shim_instances(config)[1] == own
    validated(config)  # no clash


def test_an_instance_endpoint_that_clashes_is_refused() -> None:
    clash = ShimEndpoints(ctl="tcp://127.0.0.1:7702", bus="tcp://127.0.0.1:8002")
    config = with_overrides(ShoalConfig(), "mqtt", shims=2, shim_endpoints=[clash])
    with pytest.raises(ConfigError, match=r"mqtt.shim_endpoints\[0\].ctl"):
        validated(config)


def test_a_shim_id_too_long_for_its_instances_ids_is_refused() -> None:
    config = with_overrides(ShoalConfig(), "mqtt", shims=12, shim_id="g" * 30)
    with pytest.raises(ConfigError, match=r"mqtt.shim_id.*'g{30}-11'"):
        validated(config)
    validated(with_overrides(config, "mqtt", shims=9))  # 'g...g-8' is 32 characters


def test_run_shim_refuses_an_instance_beyond_the_count(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text("[mqtt]\nshims = 2\n")
    result = CliRunner().invoke(main, ["run", "shim", "--instance", "2", "--config", str(path)])
    assert result.exit_code == 2 and "[mqtt] shims is 2" in result.output


def test_an_instance_drops_another_instance_s_boards_unread() -> None:
    config = config_on_free_ports(mqtt={"shims": 2})
    shim = Shim(shim_instance(config, 1), instance=1)
    try:
        theirs = "board-04"  # instance 0's board
        assert shard_of(theirs, 2) == 0
        shim._on_message(f"shoal/v1/{theirs}/up", b"not even json")
        shim._on_message(f"shoal/v1/{theirs}/will", b"{}")
        counters = shim.status_counters()
        assert counters["not_mine"] == 2 and counters.get("rejected", 0) == 0
        assert counters["received"] == 0 and (counters["instance"], counters["instances"]) == (1, 2)
        assert theirs not in shim.boards
    finally:
        shim.sockets.close_all()
        shim.ctx.term()


def test_the_monitor_holds_one_instance_s_boards_and_judges_the_other_s() -> None:
    """Shim 1 falls silent with its board; shim 0's board dies meanwhile: it alone is dead."""
    config = config_on_free_ports(mqtt={"shims": 2})
    lv = Liveness(config)
    lv.setup()
    now = [1000.0]
    lv.clock = lambda: now[0]
    lv.publish = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        ours, theirs = "board-04", "board-01"  # instance 0's, instance 1's
        boots = {ours: 5, theirs: 6}
        seq = dict.fromkeys(boots, 0)
        pseq = [0]

        def records(nodes: list[str], kind: Any = Heartbeat, **fields: Any) -> None:
            recs = []
            for n in nodes:
                seq[n] += 1
                recs.append(kind(node_id=n, boot_id=boots[n], seq=seq[n], **fields))
            pseq[0] += 1
            lv._on_frame(b"rec", NodeRecords(pub=7, pseq=pseq[0], records=recs))

        def beat(service: str, instance: int = 0) -> None:
            pseq[0] += 1
            frame = ServiceBeat(
                pub=7 if service == "relay" else 100 + instance,
                pseq=pseq[0],
                service=service,
                pid=1,
                uptime_s=1,
                interval_ms=500 if service == "relay" else 100,
                counters={"broker_connected": 1},
            )
            if service == "relay":
                lv._on_frame(b"svc", frame)
            else:
                lv._on_shim_frame(b"svc", frame, instance=instance)

        def run(seconds: float, talking: set[str], shims: set[int]) -> None:
            for step in range(int(seconds / 0.025)):
                now[0] += 0.025
                if step % 4 == 0:
                    for k in shims:
                        beat("shim", k)
                if step % 10 == 0:
                    records(sorted(talking))
                if step % 20 == 0:
                    beat("relay")
                lv._check()

        records([ours, theirs], Hello, hb_interval_ms=250, via="mqtt")
        assert [lv.nodes[n].gateway for n in (ours, theirs)] == [0, 1]
        run(3.0, {ours, theirs}, {0, 1})
        assert {n.state for n in lv.nodes.values()} == {"alive"}
        run(6.0, set(), {0})  # shim 1 gone (its board with it); board-04 has died
        assert lv.nodes[ours].state == "dead"
        assert lv.nodes[theirs].state == "alive"  # held: its path is down
        assert lv.status_counters()["boards_suspended"] == 1
        assert lv.healthy  # the monitor itself is fine
    finally:
        lv.sockets.close_all()
        lv.ctx.term()


# --- a real cluster of two shims ----------------------------------------------------------

NODES = 4


BOARDS = 4 if have_micropython() else 0


def everyone() -> set[str]:
    return {f"sim-{i:03d}" for i in range(NODES)} | {f"board-0{i}" for i in range(1, BOARDS + 1)}


def all_alive(cluster: Cluster) -> bool:
    m = members(cluster)
    return set(m) == everyone() and all(v["state"] == "alive" for v in m.values())


def shim_boards(ctl: str) -> set[str]:
    with CtlClient(ctl) as c:
        return {row["node_id"] for row in c.call("boards", timeout_s=2.0, retries=1)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not BOARDS:
        pytest.skip("no MicroPython for the boards")
    tmp = tmp_path_factory.mktemp("shims")
    with Cluster(tmp, nodes=NODES, boards=BOARDS, mqtt={"shims": 2}) as c:
        try:
            wait_for(lambda: all_alive(c), timeout_s=90, interval_s=0.2, ignore=(CtlUnavailable,))
        except AssertionError:
            raise AssertionError("cluster did not come up:\n" + c.log()[-4000:]) from None
        yield c


def test_each_board_is_carried_by_its_own_instance_and_status_reads_both(
    cluster: Cluster,
) -> None:
    shims = shim_instances(cluster.config)
    held = [shim_boards(s.ctl) for s in shims]
    boards = {n for n in everyone() if n.startswith("board-")}
    assert held[0] | held[1] == boards and not held[0] & held[1]
    for k, ids in enumerate(held):
        assert ids and all(shard_of(node, 2) == k for node in ids), (k, ids)
    with CtlClient(shims[1].ctl) as c:
        counters = c.call("status", timeout_s=2.0)["counters"]
    assert counters["not_mine"] > 0  # it hears instance 0's board and drops it

    result = CliRunner().invoke(main, ["status", "--json", "--config", str(cluster.config_path)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert {row["node_id"] for row in status["nodes"]} == everyone()
    assert {"shim", "shim-1"} <= set(status["security"]["services"])


def test_a_killed_instance_marks_none_of_its_boards_dead_and_they_come_back(
    cluster: Cluster,
) -> None:
    events = Events(cluster)
    second = shim_instances(cluster.config)[1]
    try:
        before = cluster.ps()["shim-1"]
        os.kill(before["pid"], signal.SIGKILL)
        wait_for(lambda: cluster.ps()["shim-1"]["restarts"] == before["restarts"] + 1, 10)
        mine = {n for n in everyone() if n.startswith("board-") and shard_of(n, 2) == 1}
        # The new instance knows nothing of its boards until they hello again (a rebirth).
        wait_for(lambda: shim_boards(second.ctl) == mine, timeout_s=30, ignore=(CtlUnavailable,))
        wait_for(lambda: all_alive(cluster), timeout_s=20, ignore=(CtlUnavailable,))
        assert [e for e in events.all() if e.event in ("dead", "suspect")] == []
        assert all_alive(cluster)
    finally:
        events.bus.close()
