"""The operator console's CPU with 1,000 live nodes (goal: at most 25% of one core).

A real cluster (`shoal up --headless --nodes 1000`, 20 hot spots so the delegator moves
work: overload and delegation events, a ledger the tasks view lists) on free ports; the
console runs headless (Textual renders every frame, nothing is drawn on a terminal) in its
own process, attached through its live feed, once on each view that refreshes on its own:
nodes (the default), events (the log follows the newest) and tasks (it asks the
delegator's ledger every 2 s while shown). Its CPU is sampled over a window after warm-up.
The baseline, measured in the same run, is the live feed alone (the same subscriptions,
snapshots and events, no UI): what the UI adds is the difference.

    python bench/tui.py [--quick] [--json]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from shoal.bench._util import emit, progress, run_cli, versions
from shoal.services.runtime.config import load_config
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.testing import Cluster, wait_for

TARGET_CPU_PCT = 25.0
VIEWS = ("nodes", "events", "tasks")
HOT_SPOTS = 20


def child(config_path: str, mode: str, seconds: float) -> None:
    """Run the console on a view (mode "nodes", "events", "tasks") or only its feed (mode
    "feed") for `seconds`."""
    from shoal.tui.feed import LiveFeed

    feed = LiveFeed(load_config(config_path)).start()
    try:
        if mode == "feed":
            time.sleep(seconds)  # the feed works on its own thread; this is the window
            return
        from shoal.tui.app import ShoalConsole

        app = ShoalConsole(feed)

        def start() -> None:
            app.go(mode)
            app.set_timer(seconds, app.exit)

        app.call_later(start)
        app.run(headless=True, size=(200, 60))
    finally:
        feed.close()


def measure(config_path: Path, mode: str, warmup_s: float, window_s: float) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(config_path), mode, str(warmup_s + window_s + 5)],
        stderr=subprocess.DEVNULL,
    )
    try:
        ps = psutil.Process(proc.pid)
        time.sleep(warmup_s)  # connect, first snapshot, all rows built
        t0 = time.monotonic()
        c0 = sum(ps.cpu_times()[:2])
        time.sleep(window_s)  # the measurement window
        c1 = sum(ps.cpu_times()[:2])
        elapsed = time.monotonic() - t0
        rss = ps.memory_info().rss / 2**20
        return {"cpu_pct": round((c1 - c0) / elapsed * 100, 1), "rss_mb": round(rss, 1)}
    finally:
        proc.terminate()
        proc.wait(15)


def main(quick: bool = False, as_json: bool = False) -> dict[str, Any]:
    nodes = 1000
    warmup_s, window_s = (6.0, 5.0) if quick else (10.0, 20.0)
    t0 = time.monotonic()
    hot = {"--hot-spots": str(HOT_SPOTS)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster(tmp, nodes=nodes, up_options=hot) as cluster,
    ):
        progress(f"cluster of {nodes} nodes starting")
        with CtlClient(cluster.config.relay.ctl) as relay:
            wait_for(
                lambda: len(relay.call("snapshot", timeout_s=2, retries=0)["nodes"]) == nodes,
                60,
                0.5,
                (CtlUnavailable,),
            )
        progress("baseline: the live feed alone")
        feed = measure(cluster.config_path, "feed", warmup_s, window_s)
        views = {}
        for view in VIEWS:
            progress(f"the console, headless, {view} view")
            views[view] = measure(cluster.config_path, view, warmup_s, window_s)
    app = max(views.values(), key=lambda v: v["cpu_pct"])
    result = {
        "bench": "tui",
        "quick": quick,
        "nodes": nodes,
        "hot_spots": HOT_SPOTS,
        "console_cpu_pct_1000_nodes": app["cpu_pct"],
        "console_rss_mb_1000_nodes": app["rss_mb"],
        **{f"console_cpu_pct_{v}_view": views[v]["cpu_pct"] for v in VIEWS},
        "baseline_feed_cpu_pct_1000_nodes": feed["cpu_pct"],
        "baseline_feed_rss_mb_1000_nodes": feed["rss_mb"],
        "target_cpu_pct": TARGET_CPU_PCT,
        "meets_target": app["cpu_pct"] <= TARGET_CPU_PCT,
        "window_s": window_s,
        "elapsed_s": round(time.monotonic() - t0, 1),
        **versions(),
    }
    emit(
        result,
        as_json,
        [
            f"console at {nodes} nodes: {app['cpu_pct']}% of a core at most, {app['rss_mb']} MB"
            f" (feed alone {feed['cpu_pct']}%; goal <= {TARGET_CPU_PCT}%)",
            "by view: " + ", ".join(f"{v} {views[v]['cpu_pct']}%" for v in VIEWS),
        ],
    )
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        sys.exit(0)
    run_cli(main, __doc__, "shorter windows, within 60 s")
