"""The device path with clients and brokers that are not ours: the Debian mosquitto_pub and
mosquitto_sub speak to the shim through the embedded broker, with payloads taken from
docs/protocol.md; the shim and `shoal up --broker` work through a real mosquitto.

Without mosquitto (or its clients) these are skipped, unless CI=true: then they fail."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt_support import (
    HOST,
    Board,
    board_login,
    doc_examples,
    embedded_broker,
    heartbeat,
    hello,
    mosquitto_broker,
    mqtt_config,
    service_login,
    tool,
    wait_shim_online,
)

from shoal.protocol.messages import RelaySnapshot
from shoal.services.mqtt_shim.service import Shim
from shoal.services.relay.service import Relay
from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import Cluster, running, wait_for


def _node(config: ShoalConfig, node_id: str) -> object:
    with CtlClient(config.relay.ctl) as ctl:
        snap: RelaySnapshot = ctl.call("snapshot", result_type=RelaySnapshot)
    return next((n for n in snap.nodes if n.node_id == node_id), None)


@pytest.fixture
def relay_and_shim_on_embedded(tmp_path: Path) -> Iterator[ShoalConfig]:
    config = mqtt_config()
    with (
        embedded_broker(tmp_path, config),
        running(Relay(config)),
        running(Shim(config)) as shim,
    ):
        wait_for(lambda: shim.counters["broker_connected"], 15)
        yield config


def test_mosquitto_pub_and_sub_speak_to_the_shim(relay_and_shim_on_embedded: ShoalConfig) -> None:
    config = relay_and_shim_on_embedded
    port = str(config.mqtt.listen_address()[1])
    sub_bin, pub_bin = tool("mosquitto_sub"), tool("mosquitto_pub")
    (hello_json,) = doc_examples("mqtt-up").values()
    (ack_json,) = doc_examples("mqtt-ack").values()
    # The board publishes as itself; the watcher of its acks is a service (a second
    # connection as esp-01 would take the board's client id).
    board = ["-u", "esp-01", "-P", board_login(config, "esp-01")[1], "-i", "esp-01"]
    service = ["-u", "svc.shim", "-P", service_login(config)[1]]
    sub = subprocess.Popen(
        [sub_bin, "-h", HOST, "-p", port, *service, "-t", "shoal/v1/esp-01/ack", "-C", "1",
         "-W", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # mosquitto_sub cannot say when its subscription is live (its output is buffered in
        # a pipe): publish until it has its ack. A repeated hello is a duplicate, acked too.
        deadline = time.monotonic() + 30
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(
                [pub_bin, "-h", HOST, "-p", port, *board, "-t", "shoal/v1/esp-01/up",
                 "-m", hello_json],
                check=True, timeout=20,
            )  # fmt: skip
            with contextlib.suppress(subprocess.TimeoutExpired):
                sub.wait(0.5)
        out, err = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
    assert sub.returncode == 0, err
    assert out == ack_json + b"\n"
    node = wait_for(lambda: _node(config, "esp-01"), 5)
    assert node.hello.hb_interval_ms == 1000  # type: ignore[attr-defined]


def test_the_shim_works_through_mosquitto(tmp_path: Path) -> None:
    with mosquitto_broker(tmp_path) as port:
        config = mqtt_config(mqtt={"broker": f"mqtt://{HOST}:{port}", "embedded": False})
        with running(Relay(config)), running(Shim(config)) as shim:
            wait_for(lambda: shim.counters["broker_connected"], 15)
            watcher = Board(port, "watcher", subscribe=("shoal/v1/shim/+/state",))
            will = {"v": 1, "node_id": "mq-01", "boot_id": 71, "seq": 1}
            board = Board(port, "mq-01", will=will)
            try:
                board.publish(hello("mq-01", 71))
                board.publish(heartbeat("mq-01", 71, 2))
                board.wait_acked(71, 0, 2)
                board.lose_power()  # mosquitto sees the socket close: the will, at once
                wait_for(lambda: getattr(_node(config, "mq-01"), "left", False), 10)
                assert shim.counters["will_goodbyes"] == 1
                state = wait_for(lambda: watcher.received("shoal/v1/shim/shim-1/state"), 10)
                assert msgspec.json.decode(state[-1])["state"] == "online"
            finally:
                watcher.close()


def test_shoal_up_with_an_external_broker(tmp_path: Path) -> None:
    with mosquitto_broker(tmp_path) as port:
        url = f"mqtt://{HOST}:{port}"
        with Cluster(tmp_path, nodes=1, up_options={"--broker": url}) as cluster:
            ps = cluster.ps()
            assert "broker" not in ps and ps["shim"]["state"] == "running"
            wait_shim_online(port)
            board = Board(port, "ext-01")
            try:
                board.publish(hello("ext-01", 81))
                board.wait_acked(81, 0, timeout_s=20)
                nodes = wait_for(lambda: {n.node_id for n in cluster.snapshot().nodes}, 10)
                assert "ext-01" in nodes
            finally:
                board.close()
