"""Safety: an abort condition and the kill switch stop a run (exit 2), heal what it applied,
and still write the report; a paused service is continued by the rollback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shoal.services.chaos.actuators import link_params, merge_links

CHAOS = [sys.executable, "-m", "shoal.services.cli", "chaos"]

PAUSE_THEN_CRASH = """
name = "pause-then-crash"
seed = 3
deadline = "3m"

[workload]
duration = "40s"
nodes = 4
rate = 2.0
settle = "0.5s"

[steady_state]
interval = "0.5s"

[[fault]]
name = "freeze-delegator"
kind = "pause"
at = "1s"
target = "delegator"

[[fault]]
name = "crash-two"
kind = "crash"
at = "2s"
duration = "30s"
target = { select = 2 }

[safety]
max_concurrent_faults = 2

[[safety.abort]]
metric = "alive"
at_least = 3
for = "1s"
"""

KILL_SWITCH = """
name = "kill-switch"
seed = 1
deadline = "3m"

[workload]
duration = "60s"
nodes = 4
rate = 2.0
settle = "0.5s"

[steady_state]
interval = "0.5s"

[[fault]]
kind = "drop"
at = "1s"
probability = 0.5
target = "all"

[safety]
kill_switch = "{switch}"
"""


def run(scenario: Path, report: Path) -> subprocess.Popen[str]:
    argv = [*CHAOS, "run", str(scenario), "--report", str(report)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_an_abort_condition_stops_the_run_heals_everything_and_reports_why(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "abort.toml"
    scenario.write_text(PAUSE_THEN_CRASH)
    report = tmp_path / "abort.json"
    proc = run(scenario, report)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out
    r = json.loads(report.read_text())
    assert r["verdict"] == "aborted"
    assert r["reason"].startswith("safety: alive = ") and "is not >= 3" in r["reason"]
    applied = [f for f in r["faults"] if f["applied_at"] is not None]
    assert {f["kind"] for f in applied} == {"pause", "crash"}
    assert all(f["healed_at"] is not None for f in applied)  # the pause too: SIGCONT
    rollback = next(e for e in r["history"] if e["type"] == "rollback")
    assert rollback["errors"] == []
    # The abort came within its window after two of four nodes died, not at the end.
    crash = next(f for f in applied if f["kind"] == "crash")
    verdict = next(e for e in r["history"] if e["type"] == "verdict")
    assert verdict["t"] - crash["applied_at"] < 10


def test_the_kill_switch_file_aborts_a_run(tmp_path: Path) -> None:
    switch = tmp_path / "STOP"
    scenario = tmp_path / "switch.toml"
    scenario.write_text(KILL_SWITCH.replace("{switch}", str(switch)))
    report = tmp_path / "switch.json"
    proc = run(scenario, report)
    try:
        # The run is under way once its progress says a fault is applied.
        assert proc.stdout is not None
        for line in proc.stdout:
            if "faults 1/1 applied" in line:
                break
        switch.touch()
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, out
    r = json.loads(report.read_text())
    assert r["verdict"] == "aborted" and "kill switch" in r["reason"]
    assert r["faults"][0]["healed_at"] is not None


def test_concurrent_link_faults_merge_into_the_one_link_a_node_has() -> None:
    drop = link_params("drop", {"probability": 0.2, "correlation": 0.5})
    delay = link_params("delay", {"delay": 0.05, "delay_jitter": 0.02})
    cut = link_params("partition", {"services": ["delegator"]})
    assert merge_links([drop, delay]) == {
        "drop": 0.2,
        "correlation": 0.5,
        "delay_ms": 50,
        "jitter_ms": 20,
    }
    assert merge_links([cut]) == {"drop": 1.0, "services": ["delegator"]}
    # With another fault on, a partition applies to all the node's links (the largest of
    # each parameter wins): cutting more than asked, never less.
    assert merge_links([cut, drop])["drop"] == 1.0
    assert "services" not in merge_links([cut, drop])
