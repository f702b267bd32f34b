"""The device path, measured: MQTT broker -> shim -> relay -> bus, for the embedded broker
(amqtt) and for mosquitto when /usr/sbin/mosquitto is there.

1. Throughput. A publisher (paho, one connection) sends N telemetry payloads over BOARDS
   boards' ``up`` topics as fast as it can (QoS 0); the relay's per-node rate limit is
   lifted. ``shim_msgs_per_s``: first publish -> the relay has accepted all N (or what it
   had when no more came: ``lost``). ``raw_broker_msgs_per_s``, in the same run: the same
   publisher through the same broker to one paho subscriber that only counts. ``ratio`` is
   the one over the other. Every record through the shim also costs the broker an ack
   publish (§11.4), which the raw run does not carry.
2. A fleet. FLEET clients (bench/_mqtt_fleet.py: each connects, subscribes and publishes as
   a board does, without a ring) at 1 msg/s for FLEET_S: latency from a client's publish to
   the record's frame on the relay's bus (both read CLOCK_MONOTONIC), p50/p99; records that
   never reached the bus (``lost``); the broker's and the shim's CPU % and RSS, sampled every
   SAMPLE_S. ``broker_rss_growth_pct`` compares the end with the RSS after a fifth of the
   window (the node tables fill first): flat means within 10 %.
3. Detection, on a cluster (`shoal up --headless`: relay, liveness, delegator, shim, embedded
   broker) with BOARDS_REAL emulated boards (real MicroPython) and WILL_CLIENTS fleet
   clients. Power cut: SIGKILL a board (the broker hears nothing, as from a board without
   power) -> the liveness monitor's ``dead``. Will: a client's connection ends without
   DISCONNECT -> the broker publishes its will -> the shim's goodbye -> ``left``.
   Latencies from just before the fault to the event reaching this process.

    python bench/mqtt_path.py [--quick] [--json]
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from shoal.bench import _mqtt_fleet
from shoal.bench._pubsub import BusListener
from shoal.bench._util import emit, progress, rate, run_cli, versions
from shoal.protocol import codec
from shoal.protocol.messages import NodeRecords
from shoal.services.runtime.config import ShoalConfig, dump_toml
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.testing import config_on_free_ports, tcp_listening, wait_for

BOARDS = 100
IDLE_S = 3.0
FLEET = 1000
SAMPLE_S = 5.0
BOARDS_REAL = 4
WILL_CLIENTS = 20
TARGETS = {
    "ratio": 0.8,
    "lost": 0,
    "e2e_p99_ms": 20.0,
    "power_cut_to_dead_p99_ms": 3000.0,
    "broker_rss_growth_pct": 10.0,
}
# The fleet's paho clients log in as nobody: the broker admits them (with every topic); the
# emulated boards and the shim still log in with their own credentials. Logins cost at
# connect; what is measured here is the message path.
ANONYMOUS = {"allow_anonymous": True}
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
            mqtt=ANONYMOUS,
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


# --- 2. a fleet -------------------------------------------------------------------------


class BusArrivals(BusListener):
    """When each (node, seq) record reached this process on the relay's bus (a thread)."""

    def __init__(self, endpoint: str) -> None:
        self.at: dict[tuple[str, int], float] = {}
        super().__init__(endpoint, codec.TOPIC_NODE_RECORDS)

    def on_frame(self, now: float, frame: Any) -> None:
        if isinstance(frame, NodeRecords):
            for r in frame.records:
                self.at.setdefault((r.node_id, r.seq), now)


class Usage:
    """CPU % and RSS of some processes, sampled every SAMPLE_S."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.t0 = time.monotonic()
        self.cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
        self.rss: dict[str, list[float]] = {k: [] for k in procs}

    def sample(self) -> None:
        for k, p in self.procs.items():
            self.rss[k].append(p.memory_info().rss / 2**20)

    def result(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        out: dict[str, Any] = {}
        for k, p in self.procs.items():
            rss = self.rss[k]
            settled = rss[len(rss) // 5] if rss else 0.0
            end = sum(rss[-3:]) / max(1, len(rss[-3:]))
            out[f"{k}_cpu_pct"] = round((sum(p.cpu_times()[:2]) - self.cpu0[k]) / wall * 100, 1)
            out[f"{k}_rss_mb"] = round(end, 1)
            out[f"{k}_rss_settled_mb"] = round(settled, 1)
            out[f"{k}_rss_growth_pct"] = (
                round((end - settled) / settled * 100, 1) if settled else None
            )
        return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _fleet_child(port: int, nodes: list[str], rate_hz: float) -> tuple[Any, Any]:
    parent, child = _ctx.Pipe()
    proc = _ctx.Process(target=_mqtt_fleet.run, args=(port, nodes, rate_hz, child), daemon=True)
    proc.start()
    if not parent.poll(120):
        proc.kill()
        raise RuntimeError("the fleet's clients did not all connect within 120 s")
    assert parent.recv() == "ready"
    return proc, parent


def fleet(kind: str, clients: int, duration_s: float) -> dict[str, Any]:
    """`clients` fake boards at 1 msg/s for duration_s through broker -> shim -> relay."""
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-fleet-") as tmp:
        workdir = Path(tmp)
        config = config_on_free_ports(mqtt=ANONYMOUS)
        port = config.mqtt.listen_address()[1]
        broker = _broker(workdir, config, kind)
        relay = shim = None
        try:
            wait_for(lambda: tcp_listening("127.0.0.1", port), 30, 0.05)
            relay = _service(workdir, config, "relay")
            shim = _service(workdir, config, "shim")
            wait_for(lambda: _counters(config.mqtt.shim_ctl).get("broker_connected"), 30, 0.05,
                     (CtlUnavailable,))  # fmt: skip
            arrivals = BusArrivals(config.relay.bus)
            progress(f"{kind}: {clients} clients connecting")
            nodes = [f"fleet-{i:04d}" for i in range(clients)]
            gen, gen_conn = _fleet_child(port, nodes, 1.0)
            usage = Usage({"broker": psutil.Process(broker.pid), "shim": psutil.Process(shim.pid)})
            progress(f"{kind}: {clients} clients at 1 msg/s for {duration_s:.0f} s")
            gen_conn.send("go")
            end = time.monotonic() + duration_s
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(SAMPLE_S, left))  # the sampling period: what is measured
                usage.sample()
            used = usage.result()
            gen_conn.send("stop")
            report = gen_conn.recv()
            gen.join(10)
            sent = [(n, seq, t) for n, pairs in report["sent"].items() for seq, t in pairs]
            last = time.monotonic()
            while time.monotonic() - last < IDLE_S:  # until nothing more arrives
                before = len(arrivals.at)
                time.sleep(0.1)
                if len(arrivals.at) != before:
                    last = time.monotonic()
            arrivals.close()
            latencies = [
                (arrivals.at[(n, seq)] - t) * 1000 for n, seq, t in sent if (n, seq) in arrivals.at
            ]
            relay_counters = _counters(config.relay.ctl)
            shim_counters = _counters(config.mqtt.shim_ctl)
        finally:
            for proc in (shim, relay, broker):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    return {
        "clients": clients,
        "window_s": duration_s,
        "published": len(sent),
        "lost": len(sent) - len(latencies),
        "e2e_p50_ms": _pct(latencies, 0.5),
        "e2e_p99_ms": _pct(latencies, 0.99),
        "e2e_max_ms": _pct(latencies, 1.0),
        "acks_received": report["acks"],
        "relay_rejected": relay_counters.get("rejected", 0),
        "shim_rejected": shim_counters.get("rejected", 0),
        **used,
        "broker_rss_samples_mb": usage.rss["broker"],
    }


# --- 3. detection -----------------------------------------------------------------------


def _boards_call(cluster: Any, op: str, args: dict[str, Any] | None = None) -> Any:
    with CtlClient(cluster.config.boards.ctl) as ctl:
        return ctl.call(op, args or {}, timeout_s=5.0, retries=1)


def _alive(cluster: Any, nodes: set[str]) -> bool:
    with CtlClient(cluster.config.liveness.ctl) as lv:
        snap: dict[str, Any] = lv.call("members", timeout_s=1.0, retries=0)
    alive = {m["node_id"] for m in snap["members"] if m["state"] == "alive"}
    return nodes <= alive


def _await_events(events: Any, applied: list[tuple[str, float]], kind: str) -> list[float]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(events.first(n, kind, t) is None for n, t in applied):
        time.sleep(0.05)
    seen = [(events.first(n, kind, t), t) for n, t in applied]
    return [(s - t) * 1000 for s, t in seen if s is not None]


def detection(rounds: int) -> dict[str, Any]:
    import random

    from shoal.bench.liveness import MemberEvents
    from shoal.services.testing import Cluster

    rng = random.Random(7)
    dead: list[float] = []
    left: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-mqtt-detect-") as tmp,
        Cluster(
            tmp, nodes=0, boards=BOARDS_REAL, board_config={"reboot_delay_ms": 200}, mqtt=ANONYMOUS
        ) as cluster,
    ):
        events = MemberEvents(cluster.config.liveness.bus)
        boards = {row["node_id"] for row in _boards_call(cluster, "boards")}
        port = cluster.config.mqtt.listen_address()[1]
        progress(f"detection: {BOARDS_REAL} boards booting")
        wait_for(lambda: _alive(cluster, boards), 90, 0.2, (CtlUnavailable,))
        for r in range(rounds):
            progress(f"detection: round {r + 1}/{rounds}: power cuts, wills")
            applied = []
            for node in sorted(boards):
                time.sleep(rng.uniform(0.0, 0.5))  # off the heartbeat's phase: the design
                applied.append((node, time.monotonic()))
                _boards_call(cluster, "power_off", {"node_id": node})
            nodes = [f"will-{r:02d}-{i:02d}" for i in range(WILL_CLIENTS)]
            gen, gen_conn = _fleet_child(port, nodes, 4.0)
            gen_conn.send("go")
            clients = set(nodes)
            wait_for(lambda: _alive(cluster, clients), 30, 0.1, (CtlUnavailable,))  # noqa: B023
            dead += _await_events(events, applied, "dead")
            aborted = []
            for node in nodes:
                time.sleep(rng.uniform(0.0, 0.1))
                aborted.append((node, time.monotonic()))
                gen_conn.send(("abort", [node]))
                gen_conn.recv()
            left += _await_events(events, aborted, "left")
            gen_conn.send("stop")
            gen_conn.recv()
            gen.join(10)
            for node in boards:
                _boards_call(cluster, "power_on", {"node_id": node})
            wait_for(lambda: _alive(cluster, boards), 90, 0.2, (CtlUnavailable,))
        events.close()
    return {
        "power_cuts": rounds * BOARDS_REAL,
        "power_cut_to_dead_p50_ms": _pct(dead, 0.5),
        "power_cut_to_dead_p99_ms": _pct(dead, 0.99),
        "power_cut_missed": rounds * BOARDS_REAL - len(dead),
        "wills": rounds * WILL_CLIENTS,
        "will_to_left_p50_ms": _pct(left, 0.5),
        "will_to_left_p99_ms": _pct(left, 0.99),
        "will_missed": rounds * WILL_CLIENTS - len(left),
        # Every latency measured, for the report's CDFs (bench/make_report.py).
        "samples": {
            "power_cut_to_dead_ms": [round(v, 1) for v in dead],
            "will_to_left_ms": [round(v, 1) for v in left],
        },
    }


def main(quick: bool = False, as_json: bool = False) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    window_s = 45.0 if quick else 600.0
    brokers = ["amqtt"] + (["mosquitto"] if Path(MOSQUITTO).exists() else [])
    runs: dict[str, dict[str, Any]] = {}
    for kind in brokers:
        t = one_broker(kind, n)
        f = fleet(kind, FLEET, window_s)
        runs[kind] = {
            "raw_broker_msgs_per_s": t["baseline_msgs_per_s"],
            "shim_msgs_per_s": t["path_records_per_s"],
            "ratio": t["ratio_to_baseline"],
            "throughput": t,
            "fleet": f,
            "lost": t["lost"] + f["lost"],
            **{k: f[k] for k in ("e2e_p50_ms", "e2e_p99_ms", "broker_rss_mb", "shim_cpu_pct")},
            **{k: f[k] for k in ("broker_cpu_pct", "broker_rss_growth_pct", "shim_rss_mb")},
        }
    detect = detection(2 if quick else 8)
    result = {
        "bench": "mqtt_path",
        "quick": quick,
        "messages": n,
        "boards": BOARDS,
        "fleet_clients": FLEET,
        **runs["amqtt"],
        **detect,
        "brokers": runs,
        "targets": TARGETS,
        **versions(),
    }
    emit(
        result,
        as_json,
        [
            f"{kind}: shim {r['shim_msgs_per_s']} msgs/s vs broker alone "
            f"{r['raw_broker_msgs_per_s']} (ratio {r['ratio']}); {FLEET} clients at 1 msg/s: "
            f"e2e p50 {r['e2e_p50_ms']} ms p99 {r['e2e_p99_ms']} ms, {r['lost']} lost, broker "
            f"{r['broker_cpu_pct']}% CPU {r['broker_rss_mb']} MB "
            f"({r['broker_rss_growth_pct']}% growth), shim {r['shim_cpu_pct']}% CPU"
            for kind, r in runs.items()
        ]
        + [
            f"power cut -> dead p50 {detect['power_cut_to_dead_p50_ms']} ms "
            f"p99 {detect['power_cut_to_dead_p99_ms']} ms; will -> left "
            f"p50 {detect['will_to_left_p50_ms']} ms p99 {detect['will_to_left_p99_ms']} ms"
        ],
    )
    return result


if __name__ == "__main__":
    run_cli(main, __doc__, "20,000 messages, a 45 s fleet window, 2 detection rounds")
