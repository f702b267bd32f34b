"""The embedded MQTT broker (services/broker): a real `shoal run broker` process on a free
port, real paho clients."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import click
import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt_support import HOST, embedded_broker, mqtt_config, shoal, stop

from shoal.services.cli.up import check_ports_free
from shoal.services.testing import wait_for

# The broker's mechanics (retained, keepalive, fan-out) with any client and topic; who may
# connect and publish where is tests/test_mqtt_access.py's.
ANONYMOUS = {"allow_anonymous": True}


def _client(port: int, name: str, keepalive: int = 30) -> tuple[mqtt.Client, list]:
    got: list = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload, m.retain))
    c.connect(HOST, port, keepalive=keepalive)
    c.loop_start()
    return c, got


def test_the_broker_serves_clients_keeps_retained_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = mqtt_config(mqtt=ANONYMOUS)
    port = config.mqtt.listen_address()[1]
    with embedded_broker(tmp_path, config) as proc:
        sub, got = _client(port, "sub")
        pub, _ = _client(port, "pub")
        try:
            sub.subscribe("t/#", qos=1)
            wait_for(lambda: pub.publish("t/ping", b"x").rc == 0 and got, 10)
            pub.publish("t/kept", b"retained", qos=1, retain=True).wait_for_publish(5)
            late, late_got = _client(port, "late")
            late.subscribe("t/kept", qos=1)
            wait_for(lambda: ("t/kept", b"retained", True) in late_got, 10)
            late.disconnect()
            late.loop_stop()
        finally:
            for c in (sub, pub):
                c.disconnect()
                c.loop_stop()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    log = (tmp_path / "broker.log").read_text()
    assert '"event":"started"' in log and '"event":"stopped"' in log


def test_a_silent_client_is_dropped_after_one_and_a_half_keepalives(tmp_path: Path) -> None:
    """amqtt never drops it by itself (its #308): the watchdog does, and the will fires."""
    config = mqtt_config(mqtt=ANONYMOUS)
    port = config.mqtt.listen_address()[1]
    with embedded_broker(tmp_path, config):
        watcher, got = _client(port, "watcher")
        watcher.subscribe("board/will", qos=1)
        board = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="board")
        board.will_set("board/will", b"gone", qos=1)
        board.connect(HOST, port, keepalive=1)  # CONNACK read below, then never a ping
        board.loop(1.0)
        assert board.is_connected()
        silent_from = time.monotonic()
        try:
            wait_for(lambda: any(t == "board/will" for t, _, _ in got), 10)
            after = time.monotonic() - silent_from
            assert 1.4 < after < 5.0, after  # 1.5 s, checked every 0.25 s, on a busy machine
        finally:
            board.socket().close()
            watcher.disconnect()
            watcher.loop_stop()
    assert '"event":"keepalive_expired"' in (tmp_path / "broker.log").read_text()


def test_a_taken_port_is_exit_2_with_bind_failed(tmp_path: Path) -> None:
    config = mqtt_config()
    host, port = config.mqtt.listen_address()
    with socket.socket() as squatter:
        squatter.bind((host, port))
        squatter.listen()
        proc = shoal(tmp_path, config, "run", "broker", log_name="broker.log")
        try:
            assert proc.wait(30) == 2
        finally:
            stop(proc)
    log = (tmp_path / "broker.log").read_text()
    assert '"event":"bind_failed"' in log and str(port) in log
    assert "Traceback" not in log


def test_shoal_up_refuses_a_taken_mqtt_port() -> None:
    config = mqtt_config()
    host, port = config.mqtt.listen_address()
    with socket.socket() as squatter:
        squatter.bind((host, port))
        squatter.listen()
        with pytest.raises(click.ClickException, match=r"mqtt\.listen"):
            check_ports_free(config)
        check_ports_free(config, without=("broker",))  # someone else's broker: fine


def test_the_indexed_fan_out_delivers_as_amqtt_does_exact_plus_and_hash(tmp_path: Path) -> None:
    """services/broker/fanout.py replaces amqtt's walk over every filter; the same messages
    must reach the same subscribers, and an unsubscribed wildcard must stop matching."""
    config = mqtt_config(mqtt=ANONYMOUS)
    port = config.mqtt.listen_address()[1]
    filters = {"exact": "b/n1/ack", "plus": "b/+/ack", "hash": "b/#", "other": "x/#"}
    with embedded_broker(tmp_path, config):
        clients = {name: _client(port, name) for name in filters}
        pub, _ = _client(port, "pub")
        try:
            for name, topic_filter in filters.items():
                clients[name][0].subscribe(topic_filter, qos=1)
            wait_for(
                lambda: pub.publish("b/n1/ack", b"1", qos=1).rc == 0 and clients["hash"][1], 10
            )
            pub.publish("b/n2/ack", b"2", qos=1).wait_for_publish(5)
            pub.publish("b/n2/deep/er", b"3", qos=1).wait_for_publish(5)
            unsubacks: list = []
            clients["plus"][0].on_unsubscribe = lambda *args: unsubacks.append(args)
            clients["plus"][0].unsubscribe("b/+/ack")
            wait_for(lambda: unsubacks, 10)  # the broker has dropped the filter
            wait_for(
                lambda: (
                    pub.publish("b/n3/ack", b"4", qos=1).rc == 0
                    and any(p == b"4" for _t, p, _r in clients["hash"][1])
                ),
                10,
            )
            pub.publish("x/end", b"end", qos=1).wait_for_publish(5)
            wait_for(lambda: any(p == b"end" for _t, p, _r in clients["other"][1]), 10)

            def payloads(name: str) -> set[bytes]:
                return {p for _t, p, _r in clients[name][1]}

            assert payloads("exact") == {b"1"}
            assert payloads("plus") == {b"1", b"2"}
            assert {b"1", b"2", b"3", b"4"} <= payloads("hash")
            assert payloads("other") == {b"end"}
        finally:
            for c, _got in [*clients.values(), (pub, None)]:
                c.disconnect()
                c.loop_stop()
    log = (tmp_path / "broker.log").read_text()
    assert '"fanout":"IndexedBroker"' in log
