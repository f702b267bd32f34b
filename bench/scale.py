"""Scale on one machine (issue 17 part 2): 1,000 nodes at 4 Hz, then 10,000 nodes at 1 Hz.

For each scenario, a real cluster (`shoal up --headless`, services/testing.Cluster) on free
ports. The fleet is played by several sim processes (the cluster's own plus `shoal run sim`
ones, each with its slice of the ids in ``sim.only``) so that one saturated load generator
is not what is measured; 2% of the fleet are MQTT clients through the broker and the shim
(bench/_mqtt_fleet.py, as many as a board does on the wire, telemetry at the same rate).
Once every node is alive and the joins have settled:

- every process's CPU time over a window (user + system, psutil) as % of one core, and its
  RSS at the end of it (as bench/cost.py); the supervisor is ``supervisor``, the sims
  ``sim``, ``sim-1``, ..., the MQTT clients ``mqtt-fleet``;
- `shoal status --json` wall time (a fresh CLI process, as an operator runs it);
- the relay's snapshot (ctl op) wall time;
- the console's CPU on its nodes view and its live feed alone (bench/tui.py's way);
- a delegator's re-sync: SIGKILL it, time until the restarted one places work again;
- false verdicts: the liveness monitor's suspect/dead events while nothing failed.

The baseline, measured in the same run: the load generator's own CPU (the sims), and the
first scenario as the reference of the second. ``first_bottleneck`` names the service
(load generators and the console excluded) with the most CPU at the largest fleet: a
single Python process saturates at about 100% of one core (the GIL).

With ``--shards N`` the cluster runs N relay shards and N shim instances (``[relay]
shards``, ``[mqtt] shims``), saved as ``scale_shards{N}``: the same fleet, to set beside
the unsharded run (what sharding buys where the machine, not a process, is the limit).

    python bench/scale.py [--quick] [--json] [--save DIR] [--shards N]
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from shoal.bench._util import emit, progress, run_cli, versions
from shoal.bench.cost import all_alive, cpu_window, processes
from shoal.services.runtime.config import ShoalConfig, dump_toml, load_config, with_overrides
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable
from shoal.services.runtime.ports import next_port, tcp
from shoal.services.testing import Cluster, tcp_listening, wait_for

# (nodes, telemetry Hz): the two fleets.
SCENARIOS = ((1000, 4.0), (10_000, 1.0))
QUICK_SCENARIOS = ((200, 4.0), (1000, 1.0))
# Messages a second one sim process is given at most (telemetry + heartbeats): past this
# one sim falls behind its own schedule on this machine.
SIM_MSGS_PER_S = 12_000
SATURATED_PCT = 90.0  # of one core: a Python process's ceiling is ~100%
LOAD_GENERATORS = ("sim", "mqtt")  # the sims, and mqtt-fleet: the MQTT clients' process
# The share of the fleet that are MQTT clients (bench/_mqtt_fleet.py: board-like clients
# through the broker and the shim, telemetry at the scenario's rate and no heartbeats).
MQTT_SHARE = 0.02
HOT_SPOTS = 2


def call(endpoint: str, op: str, args: dict[str, Any] | None = None, timeout_s: float = 10) -> Any:
    with CtlClient(endpoint) as client:
        return client.call(op, args or {}, timeout_s=timeout_s, retries=0)


def slices(ids: list[str], parts: int) -> list[list[str]]:
    size = math.ceil(len(ids) / parts)
    return [ids[k * size : (k + 1) * size] for k in range(parts)]


def extra_sim(cluster: Cluster, k: int, only: list[str]) -> subprocess.Popen[bytes]:
    """One more sim process: the cluster's config, its own ctl and metrics ports, its ids."""
    config: ShoalConfig = with_overrides(
        cluster.config, "sim", ctl=tcp(), nodes=cluster.nodes, only=only
    )
    config = with_overrides(config, "metrics", sim=f"127.0.0.1:{next_port()}")
    path = cluster.workdir / f"sim-{k}.toml"
    path.write_text(dump_toml(config))
    argv = [sys.executable, "-m", "shoal.services.cli", "run", "sim", "--config", str(path)]
    log = open(cluster.workdir / f"sim-{k}.log", "ab")  # noqa: SIM115 (the child holds it)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def sims_running(workdir: Path, extras: list[subprocess.Popen[bytes]]) -> bool:
    """True; RuntimeError (with its log's end) if an extra sim exited: a fleet short of nodes."""
    for k, proc in enumerate(extras, 1):
        if proc.poll() is not None:
            log = (workdir / f"sim-{k}.log").read_text(errors="replace")
            raise RuntimeError(f"sim-{k} exited {proc.returncode}: {log[-500:]}")
    return True


def mqtt_fleet(cluster: Cluster, ids: list[str], rate_hz: float) -> tuple[Any, Any]:
    """The MQTT clients' process (bench/_mqtt_fleet.py), connected and publishing."""
    from shoal.bench.mqtt_path import _fleet_child

    wait_for(lambda: tcp_listening(*cluster.config.mqtt.listen_address()), 30, 0.1)
    proc, conn = _fleet_child(cluster.config.mqtt.listen_address()[1], ids, rate_hz)
    conn.send("go")
    return proc, conn


def mqtt_stop(mqtt: tuple[Any, Any] | None) -> dict[str, Any]:
    """Stop the MQTT clients; their counts (acks received, errors)."""
    if mqtt is None:
        return {}
    proc, conn = mqtt
    conn.send("stop")
    report: dict[str, Any] = conn.recv() if conn.poll(30) else {}
    proc.join(10)
    return {"acks": report.get("acks"), "errors": report.get("errors")}


def liveness_counters(cluster: Cluster) -> dict[str, int]:
    status: dict[str, Any] = call(cluster.config.liveness.ctl, "status")
    return dict(status["counters"])


def timed(fn: Any) -> float:
    t0 = time.monotonic()
    fn()
    return round(time.monotonic() - t0, 3)


def status_json(cluster: Cluster) -> int:
    argv = [sys.executable, "-m", "shoal.services.cli", "status", "--json"]
    proc = subprocess.run(
        [*argv, "--config", str(cluster.config_path)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"shoal status failed: {proc.stderr[-500:]}")
    return len(json.loads(proc.stdout)["nodes"])


def delegator_resync_s(cluster: Cluster, timeout_s: float) -> float | None:
    """SIGKILL the delegator; seconds until the restarted one has placed work."""
    cfg = cluster.config
    before = cluster.ps()["delegator"]
    t0 = time.monotonic()
    os.kill(before["pid"], signal.SIGKILL)
    try:
        wait_for(lambda: cluster.ps()["delegator"]["restarts"] > before["restarts"], 30)
        wait_for(
            lambda: call(cfg.delegator.ctl, "audit", timeout_s=2)["delivered"] > 0,
            timeout_s,
            0.2,
            (CtlUnavailable, CtlFailed),
        )
    except AssertionError:
        return None
    return round(time.monotonic() - t0, 2)


def one_scenario(
    workdir: Path, nodes: int, rate_hz: float, window_s: float, console_s: float, shards: int = 1
) -> dict[str, Any]:
    from shoal.bench.tui import measure as console_measure

    telemetry_ms = int(1000 / rate_hz)
    beats_hz = 1000 / load_config(env={}).sim.heartbeat_interval_ms
    clients = round(nodes * MQTT_SHARE)
    msgs_per_s = (nodes - clients) * (rate_hz + beats_hz) + clients * rate_hz
    sims = max(1, math.ceil(msgs_per_s / SIM_MSGS_PER_S))
    progress(f"scale: {nodes} nodes at {rate_hz} Hz ({msgs_per_s:.0f} msg/s, {sims} sims + MQTT)")
    ids = [f"sim-{i:03d}" for i in range(nodes - clients)]
    parts = slices(ids, sims)
    sim_section = {"telemetry_interval_ms": telemetry_ms, "hot_spots": HOT_SPOTS, "only": parts[0]}
    extras: list[subprocess.Popen[bytes]] = []
    mqtt: tuple[Any, Any] | None = None
    with Cluster(
        workdir,
        nodes=nodes - clients,
        mqtt={"allow_anonymous": True, "shims": shards},  # the clients log in without credentials
        relay={"max_nodes": max(20_000, nodes * 2), "shards": shards},
        sim=sim_section,
        supervisor={"stable_after_s": 1.0},
    ) as cluster:
        try:
            extras = [extra_sim(cluster, k, part) for k, part in enumerate(parts[1:], 1)]
            if clients:
                mqtt = mqtt_fleet(cluster, [f"mqtt-{i:05d}" for i in range(clients)], rate_hz)
            t_join = time.monotonic()
            wait_for(
                lambda: sims_running(workdir, extras) and all_alive(cluster, nodes, timeout_s=10),
                60 + nodes / 50,
                1.0,
                (CtlUnavailable,),
            )
            join_s = round(time.monotonic() - t_join, 1)
            time.sleep(5.0)  # past the burst of joins: the steady state is what is measured
            verdicts0 = liveness_counters(cluster)
            procs = processes(cluster)
            for k, proc in enumerate(extras, 1):
                procs[f"sim-{k}"] = psutil.Process(proc.pid)
            if mqtt:
                procs["mqtt-fleet"] = psutil.Process(mqtt[0].pid)
            progress(f"scale: {nodes} nodes: CPU window {window_s:.0f} s")
            services, machine_pct, _elapsed = cpu_window(procs, window_s)
            phases = {"window": liveness_counters(cluster)}
            progress(f"scale: {nodes} nodes: status, snapshot, console")
            seen: list[int] = []
            status_s = timed(lambda: seen.append(status_json(cluster)))
            snapshot_s = timed(lambda: call(cluster.config.relay.ctl, "snapshot", timeout_s=30))
            phases["status_and_snapshot"] = liveness_counters(cluster)
            feed = console_measure(cluster.config_path, "feed", console_s, console_s)
            console = console_measure(cluster.config_path, "nodes", console_s, console_s)
            phases["console"] = liveness_counters(cluster)
            progress(f"scale: {nodes} nodes: delegator re-sync")
            resync_s = delegator_resync_s(cluster, 120)
            verdicts1 = phases["delegator_restart"] = liveness_counters(cluster)
            final_alive = all_alive(cluster, nodes, timeout_s=10)
            mqtt_report = mqtt_stop(mqtt)
        finally:
            if mqtt and mqtt[0].is_alive():
                mqtt[0].kill()
            for proc in extras:
                proc.terminate()
            for proc in extras:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    generators = {k: v for k, v in services.items() if k.split("-")[0] in LOAD_GENERATORS}
    return {
        "nodes": nodes,
        "telemetry_hz": rate_hz,
        "heartbeat_hz": beats_hz,
        "messages_per_s": round(msgs_per_s),
        "sim_processes": sims,
        "mqtt_clients": clients,
        "mqtt_acks": mqtt_report.get("acks"),
        "mqtt_errors": mqtt_report.get("errors"),
        "join_s": join_s,
        "window_s": window_s,
        "services": services,
        "load_generator_cpu_pct": round(sum(v["cpu_pct"] for v in generators.values()), 1),
        "cluster_cpu_pct": round(sum(v["cpu_pct"] for v in services.values()), 1),  # sims too
        "machine_cpu_pct": machine_pct,  # everyone's: other work on this machine too
        "false_suspect_by_phase": suspects_by_phase(verdicts0, phases),
        "status_json_s": status_s,
        "status_nodes": seen[0] if seen else None,
        "relay_snapshot_s": snapshot_s,
        "console_nodes_view": console,
        "console_feed_alone": feed,
        "delegator_resync_s": resync_s,
        "false_suspect": verdicts1.get("events_suspect", 0) - verdicts0.get("events_suspect", 0),
        "false_dead": verdicts1.get("events_dead", 0) - verdicts0.get("events_dead", 0),
        "all_alive_at_end": final_alive,
    }


def suspects_by_phase(start: dict[str, int], phases: dict[str, dict[str, int]]) -> dict[str, int]:
    """Suspect verdicts in each phase (none failed: every one is false)."""
    out, before = {}, start.get("events_suspect", 0)
    for name, counters in phases.items():
        out[name] = counters.get("events_suspect", 0) - before
        before = counters.get("events_suspect", 0)
    return out


def bottleneck(row: dict[str, Any]) -> dict[str, Any]:
    """The service (not a load generator) with the most CPU: the first to saturate."""
    measured = {k: v for k, v in row["services"].items() if k.split("-")[0] not in LOAD_GENERATORS}
    name = max(measured, key=lambda k: measured[k]["cpu_pct"])
    pct = measured[name]["cpu_pct"]
    cores = psutil.cpu_count() or 1
    machine = row.get("machine_cpu_pct", 0.0)
    return {
        "service": name,
        "cpu_pct": pct,
        "saturated": pct >= SATURATED_PCT,
        # Before any one process reaches a core, the machine's cores may all be busy.
        "machine_cpu_pct": machine,
        "machine_saturated": machine >= SATURATED_PCT * cores,
    }


def main(quick: bool = False, as_json: bool = False, shards: int = 1) -> dict[str, Any]:
    scenarios, window_s, console_s = (QUICK_SCENARIOS, 5.0, 4.0) if quick else (SCENARIOS, 15, 8)
    t0 = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nodes, rate_hz in scenarios:
            workdir = Path(tmp) / str(nodes)
            workdir.mkdir()
            rows.append(one_scenario(workdir, nodes, rate_hz, window_s, console_s, shards))
    first = bottleneck(rows[-1])
    reference = rows[0]["services"].get(first["service"], {}).get("cpu_pct")
    result: dict[str, Any] = {
        "bench": "scale" if shards == 1 else f"scale_shards{shards}",
        "quick": quick,
        "shards": shards,
        "cores": psutil.cpu_count(),
        "baseline": "the sims' own CPU (load_generator_cpu_pct); the first scenario",
        "scenarios": rows,
        "first_bottleneck": {**first, "cpu_pct_in_first_scenario": reference},
        "elapsed_s": round(time.monotonic() - t0, 1),
        **versions(),
    }
    lines = []
    for r in rows:
        lines.append(
            f"{r['nodes']:>6} nodes @ {r['telemetry_hz']} Hz: "
            + ", ".join(
                f"{k} {v['cpu_pct']}% {v['rss_mb']} MB" for k, v in sorted(r["services"].items())
            )
        )
        lines.append(
            f"        status {r['status_json_s']} s, snapshot {r['relay_snapshot_s']} s,"
            f" console {r['console_nodes_view']['cpu_pct']}%, re-sync {r['delegator_resync_s']} s,"
            f" false suspect/dead {r['false_suspect']}/{r['false_dead']}"
            f" {r['false_suspect_by_phase']}; machine {r['machine_cpu_pct']}%"
        )
    lines.append(
        f"busiest service: {first['service']} at {first['cpu_pct']}% of a core"
        f" (saturated: {first['saturated']}); the machine {first['machine_cpu_pct']}%"
        f" of {psutil.cpu_count()} cores (saturated: {first['machine_saturated']})"
    )
    emit(result, as_json, lines)
    return result


if __name__ == "__main__":
    run_cli(
        main,
        __doc__,
        "200 nodes at 4 Hz and 1,000 at 1 Hz, 5 s windows",
        shards={"type": int, "default": 1, "help": "relay shards and shim instances (1..16)"},
    )
