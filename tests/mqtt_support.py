"""Helpers for the device path's tests: a broker process (shoal's embedded amqtt, or the
Debian mosquitto) on free ports in a temp dir, a board made of a paho client, waits.

Ports come from services/runtime/ports.py (never handed out twice, never in the range the
kernel picks outgoing ports from). Every process is stopped however the test ends;
readiness is a TCP connect, polled with a deadline, never a fixed sleep. mosquitto missing:
the test is skipped, unless CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest

from shoal.services.runtime.config import ShoalConfig, dump_toml
from shoal.services.runtime.ports import next_port
from shoal.services.testing import config_on_free_ports, tcp_listening, wait_for

HOST = "127.0.0.1"
MOSQUITTO = "/usr/sbin/mosquitto"
READY_S = 20.0  # amqtt imports a lot; on a loaded 2-core machine it takes seconds


def missing(what: str) -> None:
    """Skip for a missing tool, or fail under CI (CI=true), where it must be there."""
    reason = f"{what} not installed (apt-get install mosquitto mosquitto-clients)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def tool(name: str) -> str:
    path = shutil.which(name) or (MOSQUITTO if name == "mosquitto" else None)
    if path is None or not Path(path).exists():
        missing(name)
    assert path is not None
    return path


def mqtt_config(**sections: dict[str, Any]) -> ShoalConfig:
    """A config on free ports (the broker's listen and URL on the same one)."""
    return config_on_free_ports(**sections)


def shoal(workdir: Path, config: ShoalConfig, *args: str, log_name: str) -> subprocess.Popen[bytes]:
    """``shoal ARGS --config FILE`` as a process, its output in workdir/log_name."""
    path = workdir / f"{log_name}.toml"
    path.write_text(dump_toml(config))
    log = (workdir / log_name).open("ab")
    argv = [sys.executable, "-m", "shoal.services.cli", *args, "--config", str(path)]
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout_s)


def wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, log: Path) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        return tcp_listening(host, port)

    wait_for(up, READY_S, interval_s=0.05)


@contextlib.contextmanager
def embedded_broker(workdir: Path, config: ShoalConfig) -> Iterator[subprocess.Popen[bytes]]:
    """``shoal run broker`` on config's [mqtt] listen, until the block ends."""
    proc = shoal(workdir, config, "run", "broker", log_name="broker.log")
    try:
        wait_listening(proc, *config.mqtt.listen_address(), workdir / "broker.log")
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def mosquitto_broker(workdir: Path) -> Iterator[int]:
    """The Debian mosquitto on a free loopback port, anonymous, no persistence."""
    binary = tool("mosquitto")
    port = next_port()
    lines = [f"listener {port} {HOST}", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # as root it would switch to 'mosquitto' and lose workdir
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = workdir / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(proc, HOST, port, log)
        yield port
    finally:
        stop(proc)


class Board:
    """A board's MQTT side, made of paho (its own network thread): publishes what it is
    told, keeps what arrives, by topic."""

    def __init__(
        self,
        port: int,
        node_id: str,
        *,
        will: dict[str, Any] | None = None,
        subscribe: tuple[str, ...] = (),
        keepalive: int = 30,
        login: tuple[str, str] | None = None,
        tls_ca: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.root = f"shoal/v1/{node_id}"
        self.got: list[tuple[str, bytes, bool]] = []
        self.granted: list[int] = []  # the SUBACK's codes (0x80: refused)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # A board logs in as its node id, with its node id as client id (the broker's rule).
        client_id = login[0] if login and "." not in login[0] else f"test-{node_id}-{next_port()}"
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if login is not None:
            c.username_pw_set(*login)
        if tls_ca is not None:
            c.tls_set(ca_certs=tls_ca)
        if will is not None:
            c.will_set(f"{self.root}/will", msgspec.json.encode(will), qos=1)
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.connect(HOST, port, keepalive=keepalive)
        c.loop_start()
        topics = subscribe or (f"{self.root}/ack", f"{self.root}/task/down")
        c.subscribe([(t, 1) for t in topics])
        if not self._subscribed.wait(10):
            raise AssertionError("no SUBACK")

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        self.granted = [c.value for c in codes]
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.got.append((msg.topic, msg.payload, msg.retain))

    def publish(self, payload: bytes | dict[str, Any], topic: str = "up", qos: int = 0) -> None:
        data = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
        full = topic if topic.startswith("shoal/") else f"{self.root}/{topic}"
        self.client.publish(full, data, qos=qos)

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.got if t == topic]

    def acked(self) -> set[tuple[int, int]]:
        """Every (boot_id, seq) acked to this board so far."""
        out = set()
        for payload in self.received(f"{self.root}/ack"):
            for node, boot, first, last in msgspec.json.decode(payload)["acks"]:
                assert node == self.node_id
                out.update((boot, s) for s in range(first, last + 1))
        return out

    def wait_acked(self, boot_id: int, *seqs: int, timeout_s: float = 10.0) -> None:
        wait_for(lambda: {(boot_id, s) for s in seqs} <= self.acked(), timeout_s)

    def close(self) -> None:
        """An orderly DISCONNECT: the broker discards the will."""
        self.client.disconnect()
        self.client.loop_stop()

    def lose_power(self) -> None:
        """The TCP connection ends with no DISCONNECT: the broker publishes the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def service_login(config: ShoalConfig) -> tuple[str, str]:
    """A service's login (the shim's), from config's credentials directory."""
    from shoal.services.broker.credentials import shim_login

    return shim_login(config.mqtt)


def board_login(config: ShoalConfig, node_id: str) -> tuple[str, str]:
    """A board's own login, made in config's credentials directory if it has none."""
    from shoal.services.broker.credentials import Credentials

    return node_id, Credentials(config.mqtt.credentials).ensure(node_id)


def wait_shim_online(
    port: int, timeout_s: float = 20.0, login: tuple[str, str] | None = None
) -> None:
    """Until a shim says online on its retained state topic: it publishes that after its
    SUBSCRIBE on the same connection, so from then on a board's publish reaches it (a
    supervisor's "running" says only that the process is up)."""
    topic = "shoal/v1/shim/+/state"
    watcher = Board(port, "shim-watcher", subscribe=(topic,), login=login)
    try:

        def online() -> bool:
            with watcher._lock:
                states = [p for t, p, _ in watcher.got if t.startswith("shoal/v1/shim/")]
            return bool(states) and msgspec.json.decode(states[-1])["state"] == "online"

        wait_for(online, timeout_s)
    finally:
        watcher.close()


def hello(node_id: str, boot_id: int, seq: int = 0) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "hello",
        "node_id": node_id,
        "boot_id": boot_id,
        "seq": seq,
        "fw": "1.2.0",
        "hb_interval_ms": 1000,
        "queue_capacity": 16,
    }


def telemetry(node_id: str, boot_id: int, seq: int, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "telemetry",
        "node_id": node_id,
        "boot_id": boot_id,
        "seq": seq,
        "cpu_pct": 37.5,
        "queue_depth": 3,
        "queue_capacity": 16,
        "load_factor": 0.62,
        **extra,
    }


def heartbeat(node_id: str, boot_id: int, seq: int) -> dict[str, Any]:
    return {"v": 1, "kind": "heartbeat", "node_id": node_id, "boot_id": boot_id, "seq": seq}


DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def doc_examples(kind: str) -> dict[str, bytes]:
    """The examples of docs/protocol.md marked ``<!-- verify: KIND [NAME] -->``, as bytes
    (a hex dump is read back to bytes), by NAME (or their order)."""
    import re

    out: dict[str, bytes] = {}
    text = DOC.read_text()
    pattern = r"<!-- verify: (\S+)(?: (\S+))? -->\n```(\w+)\n(.*?)```"
    for i, (found, name, lang, body) in enumerate(re.findall(pattern, text, re.S)):
        if found != kind:
            continue
        if lang == "hex":
            data = bytes.fromhex(" ".join(line[6:53] for line in body.splitlines()))
        else:
            data = body.strip("\n").encode()
        out[name or str(i)] = data
    return out
