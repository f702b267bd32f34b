"""The liveness monitor: how fast it detects, how often it cries wolf, what it costs.

A real cluster (`shoal up --headless`) on free ports; faults go through the simulated
fleet's "fault" op, which returns when it applied each one on CLOCK_MONOTONIC, the clock
this process reads when a membership event arrives. Phases:

1. detection: TRIALS crashes (the node stops silently), hangs (connection open, nothing
   sent) and goodbyes, staggered over 100 nodes with 250 ms heartbeats -> latency from the
   fault to suspect, dead and left;
2. false verdicts: 100 nodes for DURATION with 5% random loss each way, 0-50 ms jitter, and
   a 1 s fleet-wide loss burst every ~30 s -> every suspect and dead is false;
3. observer restart: SIGKILL the relay under 100 nodes KILLS times -> false dead;
4. cost: CPU and RSS of the monitor at 1,000 nodes sending 4 messages a second. The
   baseline, measured in the same window, is the relay handling the same stream.

The anchors (not measured here): memberlist's defaults call a node dead after ~5 s, Akka's
phi-accrual after ~5.5 s, Zyre after 5 s (evasive) and 30 s (expired).

    python bench/liveness.py [--quick] [--json]
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from shoal.bench._pubsub import BusListener
from shoal.bench._util import emit, progress, run_cli, versions
from shoal.protocol import codec
from shoal.protocol.messages import Membership, ObserverHealth
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.testing import Cluster, wait_for

HEARTBEAT_MS = 250
TARGETS = {
    "crash_to_dead_p99_ms": 1500,
    "goodbye_to_left_p99_ms": 100,
    "false_dead": 0,
    "relay_restart_false_dead": 0,
    "monitor_cpu_pct_1000_nodes": 25.0,
    "monitor_rss_mb_1000_nodes": 80.0,
}


class MemberEvents(BusListener):
    """Membership events with the monotonic time they reached this process (a thread)."""

    def __init__(self, endpoint: str) -> None:
        self.events: list[tuple[float, Any]] = []
        self.health: list[tuple[float, ObserverHealth]] = []
        super().__init__(endpoint, codec.TOPIC_MEMBERSHIP)

    def on_frame(self, now: float, frame: Any) -> None:
        if isinstance(frame, Membership):
            self.events.extend((now, e) for e in frame.events)
        elif isinstance(frame, ObserverHealth):
            self.health.append((now, frame))

    def first(self, node: str, kind: str, after: float) -> float | None:
        for t, e in list(self.events):
            if t >= after and e.node_id == node and e.event == kind:
                return t
        return None

    def count(self, kind: str, since: float, nodes: set[str] | None = None) -> int:
        return sum(
            1
            for t, e in list(self.events)
            if t >= since and e.event == kind and (nodes is None or e.node_id in nodes)
        )

    def degraded(self, since: float) -> int:
        return sum(1 for t, h in list(self.health) if t >= since and not h.healthy)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def all_alive(cluster: Cluster, n: int) -> bool:
    with CtlClient(cluster.config.liveness.ctl) as lv:
        snap: dict[str, Any] = lv.call("members", timeout_s=1.0, retries=0)
    states = [m["state"] for m in snap["members"]]
    return len(states) == n and all(s == "alive" for s in states)


# --- phase 1 ---------------------------------------------------------------------------


def detection(
    cluster: Cluster, sim: CtlClient, events: MemberEvents, action: str, trials: int
) -> dict[str, list[float]]:
    """Apply `action` to one node after another, staggered; latency to each verdict."""
    waits = {"crash": ("suspect", "dead"), "hang": ("suspect", "dead"), "leave": ("left",)}[action]
    nodes = [f"sim-{i:03d}" for i in range(cluster.nodes)]
    applied: list[tuple[str, float]] = []
    faulted: list[tuple[str, float]] = []  # not resumed yet
    stagger_s = 0.3
    for k in range(trials):
        node = nodes[k % len(nodes)]
        at: float = sim.call("fault", {"action": action, "nodes": [node]})["applied_at"]
        applied.append((node, at))
        faulted.append((node, at))
        time.sleep(stagger_s)  # the stagger between trials is the experiment's design
        # Resume the nodes faulted 2.5 s ago or more: their verdicts are in by then.
        due = [n for n, t in faulted if time.monotonic() - t > 2.5]
        if due:
            sim.call("fault", {"action": "resume", "nodes": due})
            faulted = [(n, t) for n, t in faulted if n not in due]
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(
        events.first(n, waits[-1], t) is None for n, t in applied
    ):
        time.sleep(0.05)
    if faulted:
        sim.call("fault", {"action": "resume", "nodes": [n for n, _ in faulted]})
    out: dict[str, list[float]] = {w: [] for w in waits}
    missed = 0
    for node, t in applied:
        for w in waits:
            seen = events.first(node, w, t)
            if seen is None:
                missed += 1
            else:
                out[w].append((seen - t) * 1000)
    out["missed"] = [float(missed)]
    wait_for(lambda: all_alive(cluster, cluster.nodes), 30, 0.2, (CtlUnavailable,))
    return out


# --- phase 2 ---------------------------------------------------------------------------


def false_verdicts(
    cluster: Cluster, sim: CtlClient, events: MemberEvents, duration_s: float, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    lossy = {"action": "link", "drop": 0.05, "jitter_ms": 50}
    sim.call("fault", lossy)
    start = time.monotonic()
    end = start + duration_s
    bursts = 0
    # ~every 30 s; a short (quick) run still gets one, a third of the way in.
    next_burst = start + rng.uniform(min(20, duration_s / 3), min(40, duration_s / 2))
    while time.monotonic() < end:
        if time.monotonic() >= next_burst and time.monotonic() + 1.5 < end:
            sim.call("fault", {"action": "link", "drop": 1.0, "jitter_ms": 50})
            time.sleep(1.0)  # the burst's length
            sim.call("fault", lossy)
            bursts += 1
            next_burst = time.monotonic() + rng.uniform(20, 40)
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    sim.call("fault", {"action": "heal"})
    time.sleep(2.0)  # verdicts already under way at the end still count
    suspects = events.count("suspect", start)
    node_hours = cluster.nodes * elapsed / 3600
    return {
        "false_dead": events.count("dead", start),
        "false_suspect": suspects,
        "false_suspect_per_node_hour": round(suspects / node_hours, 2),
        "observer_degraded": events.degraded(start),
        "bursts": bursts,
        "seconds": round(elapsed, 1),
    }


# --- phase 3 ---------------------------------------------------------------------------


def relay_restarts(cluster: Cluster, events: MemberEvents, kills: int) -> dict[str, Any]:
    start = time.monotonic()
    for _ in range(kills):
        wait_for(lambda: cluster.ps()["relay"]["uptime_s"] > 2.0, 30)
        wait_for(lambda: all_alive(cluster, cluster.nodes), 30, 0.2, (CtlUnavailable,))
        os.kill(cluster.ps()["relay"]["pid"], signal.SIGKILL)
        time.sleep(0.5)  # let the relay die and come back before the first poll
        wait_for(lambda: cluster.ps()["relay"]["uptime_s"] > 0.5, 30)
    wait_for(lambda: all_alive(cluster, cluster.nodes), 30, 0.2, (CtlUnavailable,))
    return {
        "relay_restart_false_dead": events.count("dead", start),
        "relay_restart_suspect": events.count("suspect", start),
        "relay_restart_degraded": events.degraded(start),
        "kills": kills,
    }


# --- phase 4 ---------------------------------------------------------------------------


def cost(workdir: Path, nodes: int, window_s: float) -> dict[str, Any]:
    with Cluster(workdir / "cost", nodes=nodes, relay={"max_nodes": 20_000}) as cluster:
        wait_for(lambda: all_alive(cluster, nodes), 60, 0.5, (CtlUnavailable,))
        ps = cluster.ps()
        procs = {name: psutil.Process(ps[name]["pid"]) for name in ("liveness", "relay", "sim")}
        with CtlClient(cluster.config.relay.ctl) as relay:
            accepted0: int = relay.call("status", timeout_s=2)["counters"]["accepted"]
            cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
            t0 = time.monotonic()
            time.sleep(window_s)  # the measurement window
            cpu1 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
            elapsed = time.monotonic() - t0
            accepted1: int = relay.call("status", timeout_s=2)["counters"]["accepted"]
        cpu = {k: round((cpu1[k] - cpu0[k]) / elapsed * 100, 1) for k in procs}
        return {
            "monitor_cpu_pct_1000_nodes": cpu["liveness"],
            "monitor_rss_mb_1000_nodes": round(procs["liveness"].memory_info().rss / 2**20, 1),
            "baseline_relay_cpu_pct_1000_nodes": cpu["relay"],
            "sim_cpu_pct_1000_nodes": cpu["sim"],
            "msgs_per_s_1000_nodes": round((accepted1 - accepted0) / elapsed, 1),
            "cost_nodes": nodes,
        }


def rounded(values: list[float]) -> list[float]:
    return [round(v, 1) for v in values]


def main(quick: bool = False, as_json: bool = False) -> dict[str, Any]:
    trials = 20 if quick else 60
    duration_s = 12.0 if quick else 600.0
    kills = 1 if quick else 5
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "cost").mkdir()
        with Cluster(
            workdir,
            nodes=100,
            sim={"tick_ms": 10, "heartbeat_interval_ms": HEARTBEAT_MS},
            supervisor={"stable_after_s": 1.0},
        ) as cluster:
            events = MemberEvents(cluster.config.liveness.bus)
            try:
                wait_for(lambda: all_alive(cluster, 100), 60, 0.2, (CtlUnavailable,))
                time.sleep(3.0 if quick else 10.0)  # let every detector learn its node
                with CtlClient(cluster.config.sim.ctl) as sim:
                    progress(f"detection: {trials} trials each of crash, hang, goodbye")
                    crash = detection(cluster, sim, events, "crash", trials)
                    hang = detection(cluster, sim, events, "hang", trials)
                    leave = detection(cluster, sim, events, "leave", trials)
                    progress(f"false verdicts: 100 nodes, {duration_s:.0f} s, lossy and bursty")
                    false = false_verdicts(cluster, sim, events, duration_s, seed=7)
                progress(f"observer restart: {kills} relay SIGKILLs")
                restart = relay_restarts(cluster, events, kills)
            finally:
                events.close()
        progress("cost: 1,000 nodes")
        spend = cost(workdir, 1000, 5.0 if quick else 20.0)
    result: dict[str, Any] = {
        "bench": "liveness",
        "quick": quick,
        "heartbeat_ms": HEARTBEAT_MS,
        "trials": trials,
        "crash_to_suspect_p50_ms": pct(crash["suspect"], 0.5),
        "crash_to_suspect_p99_ms": pct(crash["suspect"], 0.99),
        "crash_to_dead_p50_ms": pct(crash["dead"], 0.5),
        "crash_to_dead_p99_ms": pct(crash["dead"], 0.99),
        "hang_to_dead_p50_ms": pct(hang["dead"], 0.5),
        "hang_to_dead_p99_ms": pct(hang["dead"], 0.99),
        "goodbye_to_left_p50_ms": pct(leave["left"], 0.5),
        "goodbye_to_left_p99_ms": pct(leave["left"], 0.99),
        "verdicts_missed": int(crash["missed"][0] + hang["missed"][0] + leave["missed"][0]),
        **false,
        **restart,
        **spend,
        "baseline_anchor_dead_ms": {"memberlist": 5000, "akka": 5500, "zyre_evasive": 5000},
        "targets": TARGETS,
        # Every latency measured, for the report's CDFs (bench/make_report.py).
        "samples": {
            "crash_to_suspect_ms": rounded(crash["suspect"]),
            "crash_to_dead_ms": rounded(crash["dead"]),
            "hang_to_suspect_ms": rounded(hang["suspect"]),
            "hang_to_dead_ms": rounded(hang["dead"]),
            "goodbye_to_left_ms": rounded(leave["left"]),
        },
    }
    result["meets_targets"] = (
        result["crash_to_dead_p99_ms"] <= TARGETS["crash_to_dead_p99_ms"]
        and result["goodbye_to_left_p99_ms"] <= TARGETS["goodbye_to_left_p99_ms"]
        and result["false_dead"] == 0
        and result["relay_restart_false_dead"] == 0
        and result["monitor_cpu_pct_1000_nodes"] <= TARGETS["monitor_cpu_pct_1000_nodes"]
        and result["monitor_rss_mb_1000_nodes"] <= TARGETS["monitor_rss_mb_1000_nodes"]
        and result["verdicts_missed"] == 0
    )
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result.update(versions())
    r = result
    emit(
        result,
        as_json,
        [
            f"crash -> suspect p99 {r['crash_to_suspect_p99_ms']} ms; crash -> dead p50"
            f" {r['crash_to_dead_p50_ms']} / p99 {r['crash_to_dead_p99_ms']} ms (target <= 1500;"
            " memberlist ~5000, akka ~5500)",
            f"hang -> dead p99 {r['hang_to_dead_p99_ms']} ms; goodbye -> left p99"
            f" {r['goodbye_to_left_p99_ms']} ms",
            f"false dead {r['false_dead']}, false suspect {r['false_suspect_per_node_hour']} per"
            f" node-hour over {r['seconds']} s; relay restarts: false dead"
            f" {r['relay_restart_false_dead']}",
            f"monitor at 1,000 nodes: {r['monitor_cpu_pct_1000_nodes']}% CPU,"
            f" {r['monitor_rss_mb_1000_nodes']} MB (relay {r['baseline_relay_cpu_pct_1000_nodes']}%)",
        ],
    )
    return result


if __name__ == "__main__":
    run_cli(main, __doc__, "smaller counts, within 60 s")
