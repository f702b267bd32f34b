"""Board messages through the device path: MQTT broker -> shim -> relay, against the broker
alone.

Processes: the embedded broker (`shoal run broker`, amqtt), a relay, the shim, and a
publisher (paho, one connection) sending N telemetry payloads, spread over BOARDS boards'
``up`` topics, as fast as it can (QoS 0). The relay's per-node rate limit is lifted, so
every record counts. Measured on this side's monotonic clock:

- ``path_records_per_s``: the publisher's first publish -> the relay has accepted all N
  (its ``accepted`` counter, polled on ctl), or what it accepted by the time no more came
  (``lost``: what a QoS 0 broker dropped on the way; boards would resend it);
- ``baseline_msgs_per_s``, in the same run: the same publisher through the same broker
  to one paho subscriber that only counts: what the broker itself passes;
- ``shim_cpu_us_per_record``: the shim process's CPU time over the records it forwarded.

The same again through mosquitto when /usr/sbin/mosquitto is there (``brokers``).

    python bench/mqtt_shim.py [--quick] [--json]
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from shoal.bench._util import emit, progress, rate, run_cli, versions
from shoal.services.runtime.config import ShoalConfig, dump_toml
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.testing import config_on_free_ports, tcp_listening, wait_for

BOARDS = 100
IDLE_S = 3.0
MOSQUITTO = "/usr/sbin/mosquitto"  # measured too when installed: a broker that is not the limit
_ctx = mp.get_context("spawn")


def _payloads(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        board, seq = i % BOARDS, i // BOARDS
        node = f"bench-{board:03d}"
        body = (
            f'{{"v":1,"kind":"telemetry","node_id":"{node}","boot_id":{board + 1},"seq":{seq},'
            f'"cpu_pct":37.5,"queue_depth":3,"queue_capacity":16,"load_factor":0.62,'
            f'"free_heap":81234,"rssi":-61,"fw":"1.2.0"}}'
        )
        out.append((f"shoal/v1/{node}/up", body.encode()))
    return out


def publisher(port: int, n: int, conn: Any) -> None:
    """A child: connect, wait for "go", publish everything, report when it was handed over."""
    import paho.mqtt.client as mqtt

    payloads = _payloads(n)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    conn.send("ready")
    conn.recv()
    t0 = time.monotonic()
    for topic, body in payloads:
        c.publish(topic, body)
    while c.want_write():
        time.sleep(0.001)
    conn.send((t0, time.monotonic()))
    conn.recv()
    c.disconnect()
    c.loop_stop()


def subscriber(port: int, n: int, conn: Any) -> None:
    """A child: count what the broker delivers on every board's up topic."""
    import threading

    import paho.mqtt.client as mqtt

    done = threading.Event()
    state = {"count": 0, "last": 0.0}

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        state["count"] += 1
        state["last"] = time.monotonic()
        if state["count"] >= n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
    c.on_message = on_message
    c.on_subscribe = lambda *_a: conn.send("ready")
    c.connect("127.0.0.1", port, keepalive=60)
    c.subscribe("shoal/v1/+/up")
    c.loop_start()
    while not done.wait(0.1):  # all of them, or none for IDLE_S after the first
        if state["last"] and time.monotonic() - state["last"] > IDLE_S:
            break
    conn.send((state["count"], state["last"]))
    c.disconnect()
    c.loop_stop()


def _spawn(target: Any, *args: Any) -> tuple[Any, Any]:
    parent, child = _ctx.Pipe()
    proc = _ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    if not parent.poll(60):
        raise RuntimeError(f"{target.__name__} did not start")
    assert parent.recv() == "ready"
    return proc, parent


def _service(workdir: Path, config: ShoalConfig, name: str) -> Any:
    import subprocess

    path = workdir / f"{name}.toml"
    path.write_text(dump_toml(config))
    argv = [sys.executable, "-m", "shoal.services.cli", "run", name, "--config", str(path)]
    return subprocess.Popen(argv, stderr=(workdir / f"{name}.log").open("wb"))


def _counters(endpoint: str) -> dict[str, int]:
    with CtlClient(endpoint) as ctl:
        status: dict[str, Any] = ctl.call("status", timeout_s=2.0, retries=1)
    return status["counters"]  # type: ignore[no-any-return]


def baseline(port: int, n: int) -> tuple[float, int]:
    sub, sub_conn = _spawn(subscriber, port, n)
    pub, pub_conn = _spawn(publisher, port, n)
    try:
        pub_conn.send("go")
        t0, _ = pub_conn.recv()
        count, last = sub_conn.recv()
        pub_conn.send("close")
        return rate(count, last - t0), n - count
    finally:
        for proc in (pub, sub):
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def through_shim(workdir: Path, config: ShoalConfig, port: int, n: int) -> dict[str, Any]:
    relay = _service(workdir, config, "relay")
    shim = _service(workdir, config, "shim")
    try:
        wait_for(lambda: _counters(config.mqtt.shim_ctl).get("broker_connected"), 30, 0.05,
                 (CtlUnavailable,))  # fmt: skip
        wait_for(lambda: _counters(config.relay.ctl) is not None, 30, 0.05, (CtlUnavailable,))
        shim_proc = psutil.Process(shim.pid)
        cpu0 = sum(shim_proc.cpu_times()[:2])
        pub, pub_conn = _spawn(publisher, port, n)
        try:
            pub_conn.send("go")
            t0, handed = pub_conn.recv()
            # Until all arrived, or nothing more for IDLE_S: QoS 0 may be dropped by a broker
            # whose subscriber (the shim) falls behind (mosquitto does); boards would resend.
            accepted, t1 = 0, time.monotonic()
            while accepted < n and time.monotonic() - t1 < IDLE_S:
                now_accepted = _counters(config.relay.ctl).get("accepted", 0)
                if now_accepted != accepted:
                    accepted, t1 = now_accepted, time.monotonic()
                time.sleep(0.01)
            pub_conn.send("close")
        finally:
            pub.join(10)
        cpu = sum(shim_proc.cpu_times()[:2]) - cpu0
        shim_counters = _counters(config.mqtt.shim_ctl)
        relay_counters = _counters(config.relay.ctl)
        return {
            "path_records_per_s": rate(accepted, t1 - t0),
            "lost": n - accepted,
            "publisher_handed_over_s": round(handed - t0, 3),
            "shim_cpu_us_per_record": round(cpu / max(1, accepted) * 1e6, 1),
            "shim_frames_sent": shim_counters.get("frames_sent", 0),
            "records_per_frame": round(n / max(1, shim_counters.get("frames_sent", 1)), 1),
            "acks_sent": shim_counters.get("acks_sent", 0),
            "relay_accepted": relay_counters.get("accepted", 0),
            "relay_rejected": relay_counters.get("rejected", 0),
            "shim_rejected": shim_counters.get("rejected", 0),
        }
    finally:
        for proc in (shim, relay):
            proc.terminate()
            proc.wait(10)


def _broker(workdir: Path, config: ShoalConfig, kind: str) -> Any:
    import subprocess

    if kind == "amqtt":
        return _service(workdir, config, "broker")
    port = config.mqtt.listen_address()[1]
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    return subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)


def one_broker(kind: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        workdir = Path(tmp)
        config = config_on_free_ports(
            relay={"rate_per_node_hz": 1e9, "rate_burst": 1_000_000_000},
        )
        port = config.mqtt.listen_address()[1]
        broker = _broker(workdir, config, kind)
        try:
            wait_for(lambda: tcp_listening("127.0.0.1", port), 30, 0.05)
            progress(f"{kind}: {n} messages, publisher -> broker -> subscriber")
            base, base_lost = baseline(port, n)
            progress(f"{kind}: {n} messages, publisher -> broker -> shim -> relay")
            path = through_shim(workdir, config, port, n)
        finally:
            broker.terminate()
            broker.wait(10)
    ratio = round(path["path_records_per_s"] / base, 2) if base else None
    return {
        **path,
        "baseline_msgs_per_s": base,
        "baseline_lost": base_lost,
        "ratio_to_baseline": ratio,
    }


def main(quick: bool = False, as_json: bool = False) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    brokers = ["amqtt"] + (["mosquitto"] if Path(MOSQUITTO).exists() else [])
    runs = {kind: one_broker(kind, n) for kind in brokers}
    result = {
        "bench": "mqtt_shim",
        "quick": quick,
        "messages": n,
        "boards": BOARDS,
        **runs["amqtt"],
        "brokers": runs,
        **versions(),
    }
    emit(
        result,
        as_json,
        [
            f"{kind}: broker -> shim -> relay {r['path_records_per_s']} records/s "
            f"({r['records_per_frame']} records per frame to the relay, "
            f"shim {r['shim_cpu_us_per_record']} us CPU per record, {r['lost']} lost); "
            f"broker alone to one subscriber {r['baseline_msgs_per_s']} msgs/s, "
            f"{r['baseline_lost']} lost "
            f"(ratio {r['ratio_to_baseline']})"
            for kind, r in runs.items()
        ],
    )
    return result


if __name__ == "__main__":
    run_cli(main, __doc__, "20,000 messages instead of 100,000")
