"""What a cluster costs against its fleet size: CPU % and RSS of every service.

For each fleet size, a real cluster (`shoal up --headless`, services/testing.Cluster) on
free ports with that many simulated nodes (the sim's defaults: telemetry every second,
tasks at its default rate, two hot spots so the delegator places work), once every node
is alive: every process's CPU time over a window (user + system, psutil) as % of one
core, and its RSS at the end of it. The supervisor (`shoal up` itself) is counted as
``supervisor``. The baseline, measured in the same run, is the load generator: the sim
process that plays the fleet; a service's cost is read beside it.

    python bench/cost.py [--quick] [--json] [--save DIR]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from shoal.bench._util import emit, progress, run_cli, versions
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.testing import Cluster, wait_for

SIZES = (10, 100, 1000, 2000)
QUICK_SIZES = (10, 100, 500, 1000)


def all_alive(cluster: Cluster, n: int, timeout_s: float = 2.0) -> bool:
    with CtlClient(cluster.config.liveness.ctl) as lv:
        snap: dict[str, Any] = lv.call("members", timeout_s=timeout_s, retries=0)
    states = [m["state"] for m in snap["members"]]
    return len(states) == n and all(s == "alive" for s in states)


def processes(cluster: Cluster) -> dict[str, psutil.Process]:
    procs = {
        name: psutil.Process(row["pid"]) for name, row in cluster.ps().items() if row.get("pid")
    }
    procs["supervisor"] = psutil.Process(cluster.proc.pid)
    return procs


def busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core, every process, ours or not)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def cpu_window(
    procs: dict[str, psutil.Process], window_s: float
) -> tuple[dict[str, Any], float, float]:
    """(each process's CPU % of one core and RSS MB, the whole machine's busy CPU %, the
    window's length) over a window of ``window_s``."""
    cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
    busy0 = busy_s()
    t0 = time.monotonic()
    time.sleep(window_s)  # the measurement window
    cpu1 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
    elapsed = time.monotonic() - t0
    machine_pct = round((busy_s() - busy0) / elapsed * 100, 1)
    services = {
        k: {
            "cpu_pct": round((cpu1[k] - cpu0[k]) / elapsed * 100, 1),
            "rss_mb": round(p.memory_info().rss / 2**20, 1),
        }
        for k, p in procs.items()
    }
    return services, machine_pct, elapsed


def one_size(workdir: Path, nodes: int, window_s: float) -> dict[str, Any]:
    progress(f"cost: {nodes} nodes")
    with Cluster(
        workdir, nodes=nodes, relay={"max_nodes": 20_000}, sim={"hot_spots": 2}
    ) as cluster:
        wait_for(lambda: all_alive(cluster, nodes), 120, 0.5, (CtlUnavailable,))
        time.sleep(2.0)  # past the burst of joins: the steady state is what is measured
        services, _machine, elapsed = cpu_window(processes(cluster), window_s)
    return {"nodes": nodes, "window_s": round(elapsed, 1), "services": services}


def main(quick: bool = False, as_json: bool = False) -> dict[str, Any]:
    sizes, window_s = (QUICK_SIZES, 5.0) if quick else (SIZES, 20.0)
    t0 = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            (Path(tmp) / str(n)).mkdir()
            rows.append(one_size(Path(tmp) / str(n), n, window_s))
    result: dict[str, Any] = {
        "bench": "cost",
        "quick": quick,
        "baseline": "sim (the load generator playing the fleet)",
        "sizes": rows,
        "elapsed_s": round(time.monotonic() - t0, 1),
        **versions(),
    }
    emit(
        result,
        as_json,
        [
            f"{r['nodes']:>5} nodes: "
            + ", ".join(
                f"{k} {v['cpu_pct']}% {v['rss_mb']} MB" for k, v in sorted(r["services"].items())
            )
            for r in rows
        ],
    )
    return result


if __name__ == "__main__":
    run_cli(main, __doc__, "fleets of 10 to 1,000 nodes, 5 s windows")
