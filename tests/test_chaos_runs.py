"""The injector as a user runs it: a broken cluster fails with numbers, Ctrl-C heals and
still reports, the same seed gives the same plan, a report can be replayed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import Cluster, wait_for

ROOT = Path(__file__).resolve().parent.parent
NODE_CRASH = ROOT / "scenarios" / "node-crash.toml"
CHAOS = [sys.executable, "-m", "shoal.services.cli", "chaos"]

LONG_CRASH = """
name = "long-crash"
seed = 5
deadline = "10m"

[workload]
duration = "5m"
nodes = 4
rate = 2.0

[[fault]]
kind = "crash"
at = "1s"
duration = "4m"
target = "minority"

[[fault]]
kind = "drop"
at = "1s"
duration = "4m"
probability = 0.5
target = "sim-003"

[[expect]]
kind = "detected"
within = "2s"
"""


def chaos(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHAOS, *args], capture_output=True, text=True, timeout=timeout)


def test_a_cluster_without_liveness_fails_node_crash_and_says_which_check_and_by_how_much(
    tmp_path: Path,
) -> None:
    report = tmp_path / "broken.json"
    run = chaos(
        "run",
        str(NODE_CRASH),
        "--time-scale",
        "0.3",
        "--without",
        "liveness",
        "--report",
        str(report),
        "--quiet",
    )
    assert run.returncode == 1, run.stdout + run.stderr
    r = json.loads(report.read_text())
    assert r["verdict"] == "failed" and r["without"] == ["liveness"]
    failed = {e["name"]: e for e in r["expectations"] if not e["passed"]}
    detected = failed["declared dead"]
    assert detected["missed"] == 1 and detected["by_at_least"] and detected["by"] > 0
    assert "rejoins" in failed
    assert "declared dead" in r["reason"]
    md = (tmp_path / "broken.md").read_text()
    assert "| declared dead | detected | dead within 2 s | - | FAILED by more than" in md
    rendered = chaos("report", str(report), "--format", "md")
    assert rendered.returncode == 0 and rendered.stdout == md
    not_a_report = chaos("report", str(NODE_CRASH))
    assert not_a_report.returncode != 0 and "cannot read a report" in not_a_report.stderr


def test_ctrl_c_heals_every_fault_and_still_writes_an_aborted_report(tmp_path: Path) -> None:
    scenario = tmp_path / "long.toml"
    scenario.write_text(LONG_CRASH)
    report = tmp_path / "aborted.json"
    with Cluster(tmp_path, nodes=4) as cluster:
        sim = CtlClient(cluster.config.sim.ctl)

        def faulted() -> list[str]:
            nodes = sim.call("nodes", timeout_s=1.0)
            return [n for n, v in nodes.items() if v["fault"] or v["link"]]

        wait_for(lambda: len(sim.call("nodes", timeout_s=1.0)) == 4, 20, ignore=(Exception,))
        proc = subprocess.Popen(
            [
                *CHAOS,
                "run",
                str(scenario),
                "--attach",
                "--config",
                str(cluster.config_path),
                "--report",
                str(report),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: len(faulted()) == 2, 40, interval_s=0.1, ignore=(Exception,))
            proc.send_signal(signal.SIGINT)
            out = proc.communicate(timeout=60)[0].decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 2, out
        assert faulted() == []  # healed before the injector exited
        sim.close()
    r = json.loads(report.read_text())
    assert r["verdict"] == "aborted" and "Ctrl-C" in r["reason"]
    assert r["attached"] is True
    applied = [f for f in r["faults"] if f["applied_at"] is not None]
    assert len(applied) == 2 and all(f["healed_at"] is not None for f in applied)
    rollback = [e for e in r["history"] if e["type"] == "rollback"]
    assert rollback and rollback[0]["errors"] == []


def test_the_same_seed_gives_the_same_plan_and_a_report_replays_it(tmp_path: Path) -> None:
    first = chaos("run", str(NODE_CRASH), "--dry-run", "--seed", "11")
    again = chaos("run", str(NODE_CRASH), "--dry-run", "--seed", "11")
    other = chaos("run", str(ROOT / "scenarios" / "reboot-storm.toml"), "--dry-run", "--seed", "12")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    plan = json.loads(first.stdout)
    assert plan["seed"] == 11 and plan["faults"][0]["targets"]
    seeds = {chaos("run", str(NODE_CRASH), "--dry-run", "--seed", str(s)).stdout for s in (1, 2, 3)}
    assert len(seeds) > 1  # the seed picks the node and the jitter
    assert json.loads(other.stdout)["faults"]

    # A recorded report replays with its own scenario text, seed and time scale.
    recorded = {
        "shoal_chaos_report": 1,
        "scenario": {"path": str(NODE_CRASH), "text": NODE_CRASH.read_text()},
        "seed": 11,
        "time_scale": 1.0,
        "plan": plan,
    }
    path = tmp_path / "recorded.json"
    path.write_text(json.dumps(recorded))
    replay = chaos("run", "--replay", str(path), "--dry-run")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout) == plan
