"""The MQTT shim (services/mqtt_shim) between a real broker (`shoal run broker`, amqtt),
a relay and a delegator: boards are paho clients publishing the JSON of docs/protocol.md.

One broker, relay, delegator and shim serve the module (each test uses its own board ids);
the shim's restart and kill are a process of their own."""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    mqtt_config,
    service_login,
    shoal,
    stop,
    telemetry,
)

from shoal.protocol import codec
from shoal.protocol.messages import RelaySnapshot
from shoal.services.broker.credentials import Credentials
from shoal.services.delegator.placement import Peer
from shoal.services.delegator.service import Delegator
from shoal.services.mqtt_shim.service import Shim
from shoal.services.relay.service import Relay
from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import running, wait_for

WINDOW = 16  # the relay's de-dup window here: a will's reserved seq gets too old quickly


class Env:
    def __init__(self, config: ShoalConfig, relay: Relay, shim: Shim, tmp: Path) -> None:
        self.config = config
        self.relay = relay
        self.shim = shim
        self.tmp = tmp
        self.port = config.mqtt.listen_address()[1]
        self.boards: list[Board] = []

    def board(self, node_id: str, **kwargs: Any) -> Board:
        kwargs.setdefault("login", board_login(self.config, node_id))
        board = Board(self.port, node_id, **kwargs)
        self.boards.append(board)
        return board

    def counters(self) -> dict[str, int]:
        return self.shim.status_counters()

    def node(self, node_id: str) -> Any:
        with CtlClient(self.config.relay.ctl) as ctl:
            snap: RelaySnapshot = ctl.call("snapshot", result_type=RelaySnapshot)
        return next((n for n in snap.nodes if n.node_id == node_id), None)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("shim")
    config = mqtt_config(
        relay={"dedup_window": WINDOW},
        delegator={"ledger": str(tmp / "ledger.db")},
        mqtt={"max_payload": 4096, "batch_interval_ms": 5},
    )
    delegator = Delegator(config)
    delegator._peers = lambda: [Peer("peer-x", 5.0)]  # type: ignore[method-assign]
    with (
        embedded_broker(tmp, config),
        running(Relay(config)) as relay,
        running(delegator),
        running(Shim(config)) as shim,
    ):
        wait_for(lambda: shim.counters["broker_connected"], 15)
        e = Env(config, relay, shim, tmp)
        try:
            yield e
        finally:
            for board in e.boards:
                board.close()


@pytest.fixture
def before(env: Env) -> dict[str, int]:
    return env.counters()


def delta(env: Env, before: dict[str, int], key: str) -> int:
    return env.counters().get(key, 0) - before.get(key, 0)


def test_a_board_is_acked_over_mqtt_and_the_relay_has_it(env: Env) -> None:
    board = env.board("esp-01")
    board.publish(hello("esp-01", 439041101))
    board.publish(telemetry("esp-01", 439041101, 1, free_heap=81234, rssi=-61))
    board.wait_acked(439041101, 0, 1)
    first = board.received("shoal/v1/esp-01/ack")[0]
    assert first.startswith(b'{"v":1,"kind":"ack","acks":[["esp-01",439041101,0,')
    node = wait_for(lambda: env.node("esp-01"), 5)
    assert node.boot_id == 439041101 and node.telemetry.rssi == -61
    assert node.hello is not None and node.hello.fw == "1.2.0"
    assert node.hello.via == "mqtt"  # the shim says how it came; the board did not
    with CtlClient(env.config.mqtt.shim_ctl) as ctl:
        rows = ctl.call("boards")
    row = next(r for r in rows if r["node_id"] == "esp-01")
    assert row["boot_id"] == 439041101 and row["via"] == "mqtt" and row["last_seq"] == 1


def test_a_payload_for_another_board_is_impersonation_and_others_still_pass(
    env: Env, before: dict[str, int]
) -> None:
    a, b = env.board("imp-a"), env.board("imp-b")
    a.publish(hello("imp-a", 5))
    b.publish(hello("imp-b", 6))
    a.wait_acked(5, 0)
    b.wait_acked(6, 0)
    a.publish(heartbeat("imp-b", 6, 1))  # a speaks for b: refused, never acked to anyone
    a.publish(heartbeat("imp-a", 5, 1))
    b.publish(heartbeat("imp-b", 6, 2))
    a.wait_acked(5, 1)
    b.wait_acked(6, 2)
    assert delta(env, before, "reject_impersonation") == 1
    assert (6, 1) not in b.acked()
    assert env.node("imp-b").last_seq == 2 and env.node("imp-b").msgs == 2


# 1,000 levels of nesting within max_payload (4096 bytes): an object, 999 arrays in it
DEEP = b'{"":' + b"[" * 999 + b"]" * 999 + b"}"


BAD_IDS = [
    "truncated",
    "binary",
    "nested-1000",
    "oversize",
    "wrong-type",
    "unknown-kind",
    "unknown-field",
]
BAD_IDS += ["version", "out-of-range"]


@pytest.mark.parametrize(
    ("payload", "reason", "acked"),
    [
        (b'{"v":1,"kind":"heartbeat","node_id":"bad-1","boot_id":7,"seq":1', "malformed", False),
        (b"\xff\xfe not json", "malformed", False),
        (DEEP, "malformed", False),
        (b'{"pad":"' + b"x" * 5000 + b'"}', "oversize", False),
        (b'{"v":1,"kind":"heartbeat","node_id":"bad-1","boot_id":"7","seq":1}', "schema", False),
        (b'{"v":1,"kind":"reboot","node_id":"bad-1","boot_id":7,"seq":1}', "schema", True),
        (b'{"v":1,"kind":"heartbeat","node_id":"bad-1","boot_id":7,"seq":1,"x":1}', "schema", True),
        (b'{"v":2,"kind":"heartbeat","node_id":"bad-1","boot_id":7,"seq":1}', "version", True),
        (msgspec.json.encode(telemetry("bad-1", 7, 1, cpu_pct=500.0)), "range", True),
    ],
    ids=BAD_IDS,
)
def test_a_bad_payload_is_counted_by_reason_and_costs_nothing_else(
    env: Env, before: dict[str, int], payload: bytes, reason: str, acked: bool
) -> None:
    board = env.board("bad-1")
    board.publish(hello("bad-1", 7))
    board.wait_acked(7, 0)
    board.publish(payload)
    board.publish(heartbeat("bad-1", 7, 2))
    board.wait_acked(7, 2)
    wait_for(lambda: delta(env, before, f"reject_{reason}") == 1, 5)
    # Refused but identifiable: acked by the shim, as the relay acks it, so no resend for ever.
    assert ((7, 1) in board.acked()) is acked
    assert delta(env, before, "rejected") == 1
    assert delta(env, before, "handler_errors") == 0
    board.close()
    env.boards.remove(board)


def test_a_topic_naming_no_board_is_refused(env: Env, before: dict[str, int]) -> None:
    # A board's login could not publish there (the broker's ACL); a service's can, and
    # the shim refuses such topics on a broker without that ACL too.
    board = env.board("topic-1", login=service_login(env.config))
    for topic in ("shoal/v1/Bad_ID/up", "shoal/v1/shim/up", "shoal/v1/-x/will"):
        board.publish(hello("topic-1", 3), topic=topic)
    board.publish(hello("topic-1", 3))
    board.wait_acked(3, 0)
    wait_for(lambda: delta(env, before, "reject_bad_topic") == 3, 5)


def test_a_will_is_a_goodbye_for_the_current_boot_only(env: Env, before: dict[str, int]) -> None:
    # The board reserved seq 1 for its goodbye when it connected (hello is 0).
    will = {"v": 1, "node_id": "will-1", "boot_id": 41, "seq": 1}
    board = env.board("will-1", will=will)
    board.publish(hello("will-1", 41))
    board.publish(telemetry("will-1", 41, 2))
    board.wait_acked(41, 0, 2)
    board.lose_power()
    env.boards.remove(board)
    wait_for(lambda: getattr(env.node("will-1"), "left", False), 10)
    node = env.node("will-1")
    assert node.boot_id == 41 and node.msgs == 3 and node.gaps == 0  # seq 1 filled the hole
    assert delta(env, before, "will_goodbyes") == 1

    # A board that rebooted (boot 43) before its old connection's will (boot 42) came.
    old = env.board("will-2", will={"v": 1, "node_id": "will-2", "boot_id": 42, "seq": 1})
    old.publish(hello("will-2", 42))
    old.wait_acked(42, 0)
    new = env.board("will-2", will={"v": 1, "node_id": "will-2", "boot_id": 43, "seq": 1})
    new.publish(hello("will-2", 43))
    new.wait_acked(43, 0)
    old.lose_power()
    env.boards.remove(old)
    wait_for(lambda: delta(env, before, "will_stale") == 1, 10)
    new.publish(heartbeat("will-2", 43, 2))
    new.wait_acked(43, 2)
    assert env.node("will-2").left is False and env.node("will-2").boot_id == 43

    # A will for a board never seen, and one speaking for another board.
    service = env.board("svc-will", login=service_login(env.config))  # a board could not
    service.publish(
        {"v": 1, "node_id": "never-seen", "boot_id": 9, "seq": 1}, "shoal/v1/never-seen/will"
    )
    new.publish({"v": 1, "node_id": "will-1", "boot_id": 41, "seq": 1}, "will")
    new.publish(b'{"v":1,"node_id":"will-2"}', "will")  # no boot_id, no seq
    wait_for(lambda: delta(env, before, "will_unknown") == 1, 5)
    wait_for(lambda: delta(env, before, "reject_impersonation") == 1, 5)
    wait_for(lambda: delta(env, before, "will_bad") == 1, 5)
    assert delta(env, before, "will_goodbyes") == 1


def test_a_will_whose_seq_left_the_relays_window_is_not_sent(
    env: Env, before: dict[str, int]
) -> None:
    board = env.board("will-3", will={"v": 1, "node_id": "will-3", "boot_id": 44, "seq": 1})
    board.publish(hello("will-3", 44))
    for seq in range(2, WINDOW + 3):
        board.publish(heartbeat("will-3", 44, seq))
    board.wait_acked(44, WINDOW + 2)
    board.lose_power()
    env.boards.remove(board)
    wait_for(lambda: delta(env, before, "will_too_old") == 1, 10)
    assert delta(env, before, "will_goodbyes") == 0


def test_a_board_offers_a_task_and_gets_taken_on_task_down(env: Env) -> None:
    board = env.board("task-1")
    board.publish(hello("task-1", 51))
    board.wait_acked(51, 0)
    task = {"task_id": "task-1.51.1", "kind": "sha256", "cost_ms": 120, "arg": 3,
            "payload": "task-1.51.1", "origin": "task-1", "created_ms": 5}  # fmt: skip
    offer = {"v": 1, "kind": "offer", "node_id": "task-1", "boot_id": 51, "msg_id": 1,
             "tasks": [task]}  # fmt: skip
    board.publish(offer, "task/up")
    down = wait_for(lambda: board.received("shoal/v1/task-1/task/down"), 10)
    taken = msgspec.json.decode(down[0])
    assert taken["kind"] == "taken" and taken["node_id"] == "task-1"
    assert taken["msg_id"] == 1 and taken["taken"] == ["task-1.51.1"]
    # A task message for another board, and a bad one: refused, counted.
    before = env.counters()
    board.publish({**offer, "node_id": "task-2"}, "task/up")
    board.publish({**offer, "tasks": []}, "task/up")
    wait_for(lambda: delta(env, before, "task_rejected") == 2, 5)
    assert delta(env, before, "reject_impersonation") == 1
    assert delta(env, before, "reject_range") == 1


def test_the_shim_says_online_when_it_starts_and_its_will_says_offline(env: Env) -> None:
    """A shim of its own (a process, to SIGKILL): its retained state topic tells boards
    when to send a new hello (a new boot) and when it is gone."""
    config = mqtt_config()
    own = msgspec.structs.replace(
        config,
        mqtt=msgspec.structs.replace(
            config.mqtt, broker=env.config.mqtt.broker, listen=env.config.mqtt.listen,
            shim_id="shim-kill", credentials=env.config.mqtt.credentials,
        ),
    )  # fmt: skip
    topic = "shoal/v1/shim/shim-kill/state"
    watcher = env.board("watcher", subscribe=(topic,))

    def states() -> list[dict[str, Any]]:
        return [msgspec.json.decode(p) for p in watcher.received(topic)]

    proc = shoal(env.tmp, own, "run", "shim", log_name="shim-kill.log")
    try:
        wait_for(lambda: [s for s in states() if s["state"] == "online"], 20)
        boot = states()[-1]["boot"]
        assert states()[-1] == {"v": 1, "state": "online", "shim": "shim-kill", "boot": boot}
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: states()[-1]["state"] == "offline", 10)  # its will
        assert states()[-1]["boot"] == boot
        proc = shoal(env.tmp, own, "run", "shim", log_name="shim-kill.log")
        wait_for(lambda: states()[-1]["state"] == "online", 20)
        assert states()[-1]["boot"] != boot  # a new boot: boards send a new hello
        late = env.board("late", subscribe=(topic,))
        wait_for(lambda: late.received(topic), 10)  # retained
        assert msgspec.json.decode(late.received(topic)[-1])["state"] == "online"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        wait_for(lambda: states()[-1]["state"] == "offline", 10)  # said by itself
    finally:
        stop(proc)


def test_the_shim_reconnects_after_the_broker_restarts(env: Env, tmp_path: Path) -> None:
    """Its own broker and shim (the module's broker stays up for the other tests)."""
    config = mqtt_config(mqtt={"reconnect_min_ms": 50, "reconnect_max_ms": 300})
    port = config.mqtt.listen_address()[1]
    with running(Shim(config)) as shim:
        wait_for(lambda: shim.counters["connect_failures"] >= 1, 10)  # no broker yet
        with embedded_broker(tmp_path, config):
            wait_for(lambda: shim.counters["broker_connected"], 15)
        wait_for(lambda: not shim.counters["broker_connected"], 10)
        with embedded_broker(tmp_path, config):
            wait_for(lambda: shim.counters["broker_connected"], 15)
            assert shim.status_counters()["reconnects"] >= 1
            board = Board(port, "re-1", login=board_login(config, "re-1"))
            try:
                board.publish(hello("re-1", 61))
                # No relay here: the batch cannot be sent; counted, and the board resends.
                wait_for(lambda: shim.counters["forward_failed"] == 1, 10)
                assert shim.counters["received"] == 1
            finally:
                board.close()


def test_deep_nesting_is_malformed_in_msgpack_too() -> None:
    """The relay's decoder, which the shim's shares: nesting ~1,000 deep raised
    RecursionError past every handler instead of a reject."""
    with pytest.raises(codec.Rejected) as err:
        codec.decode_ingest(b"\x81\xa1a" * 1000 + b"\x01")
    assert err.value.reason == "malformed"


def _read_packet(sock: socket.socket) -> bytes:
    """One whole MQTT packet off a blocking socket."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    head = exactly(1)
    length, shift, raw = 0, 0, b""
    while True:
        byte = exactly(1)
        raw += byte
        length += (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    return head + raw + exactly(length)


def _puback(sock: socket.socket, packet: bytes) -> None:
    """Answer a QoS 1 PUBLISH (a shim's retained state): amqtt sends nothing more to this
    client until it has (5 s: its retry), as section 11.9 warns."""
    if packet[0] >> 4 != 3 or (packet[0] >> 1) & 3 != 1:
        return
    _, start = _varint_end(packet)
    topic_len = int.from_bytes(packet[start : start + 2], "big")
    packet_id = packet[start + 2 + topic_len : start + 4 + topic_len]
    sock.sendall(b"\x40\x02" + packet_id)


def _varint_end(packet: bytes) -> tuple[int, int]:
    value, shift, i = 0, 0, 1
    while True:
        value += (packet[i] & 0x7F) << shift
        i += 1
        if not packet[i - 1] & 0x80:
            return value, i
        shift += 7


def test_the_documented_bytes_work_against_a_live_broker_and_shim(env: Env) -> None:
    """docs/protocol.md section 11.9, sent as raw bytes: a board written from the text."""
    packets = doc_examples("mqtt-packet")
    Credentials(env.config.mqtt.credentials).make("esp-01", password="kQ3vX9-esp01")
    with socket.create_connection((HOST, env.port), timeout=10) as sock:
        sock.sendall(packets["connect"])
        assert _read_packet(sock) == bytes.fromhex("20020000")
        sock.sendall(packets["subscribe"])
        packet = _read_packet(sock)
        while packet[0] >> 4 == 3:  # retained states may come before the SUBACK (MQTT 3.8.4)
            _puback(sock, packet)
            packet = _read_packet(sock)
        assert packet == bytes.fromhex("90050001000001")
        sock.sendall(packets["publish-hello"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            packet = _read_packet(sock)  # retained shim states come first
            _puback(sock, packet)
            if packet[0] >> 4 == 3 and b"shoal/v1/esp-01/ack" in packet[:32]:
                assert packet == packets["ack"]
                break
        else:
            raise AssertionError("no ack")
        sock.sendall(bytes.fromhex("e000"))  # DISCONNECT: the will is discarded
