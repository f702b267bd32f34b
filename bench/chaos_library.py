"""Chaos library benchmark: every scenario in scenarios/ at full length, and a table of
their figures.

Each scenario runs as a user runs it (``shoal chaos run FILE --seed S``, its own cluster on
free ports), ``JOBS`` at a time. The baseline, measured in the same run, is a control:
node-crash's workload for the same length with no fault at all; its false suspects, its
telemetry rate and task throughput are what "no fault" looks like on this machine.

Figures per scenario: verdict, detection latency (suspect and dead, p50 and max, over the
nodes its faults took away), time to re-delegate a failed node's tasks, recovery after the
last heal, tasks in the ledger, lost, committed twice, dead-lettered, re-delegated, and
the lowest telemetry rate during the faults. The Markdown table is written to
chaos-reports/library.md as well.

--quick: four scenarios at their test time scale (within 60 s).

Usage: python bench/chaos_library.py [--quick] [--json]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shoal.bench import _markdown as markdown
from shoal.bench._util import emit, progress, run_cli, versions

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))
QUICK = ("node-crash", "partition-minority", "relay-restart", "delegator-restart")
JOBS = 4
FIGURES = (
    "detect_suspect_ms_p50",
    "detect_dead_ms_p50",
    "detect_dead_ms_max",
    "redelegate_ms_max",
    "recovery_s",
    "tasks_total",
    "lost_tasks",
    "duplicate_commits",
    "dead_lettered",
    "redelegated",
    "telemetry_rate_min",
)


def control_scenario() -> str:
    """node-crash without its fault and its fault-specific expectations."""
    text = (ROOT / "scenarios" / "node-crash.toml").read_text()
    head = text.split("[[fault]]", 1)[0].replace('name = "node-crash"', 'name = "control"')
    return head + '\n[[expect]]\nkind = "no_false_dead"\nevent = "suspect"\n'


def run_one(path: Path, scale: float, out: Path) -> dict[str, Any]:
    report = out / f"{path.stem}.json"
    argv = [sys.executable, "-m", "shoal.services.cli", "chaos", "run", str(path), "--quiet"]
    argv += ["--time-scale", str(scale), "--report", str(report)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if not report.exists():
        return {
            "scenario": path.stem,
            "verdict": "error",
            "exit_code": run.returncode,
            "reason": (run.stdout + run.stderr)[-500:],
        }
    r = json.loads(report.read_text())
    failed = [e["name"] for e in r["expectations"] if not e["passed"]]
    failed += [f"{p['name']} ({p['phase']})" for p in r["steady_state"] if not p["passed"]]
    suspects = sum(1 for e in r["history"] if e["type"] == "member" and e["event"] == "suspect")
    return {
        "scenario": r["scenario"]["name"],
        "verdict": r["verdict"],
        "exit_code": r["exit_code"],
        "seed": r["seed"],
        "time_scale": r["time_scale"],
        "duration_s": r["duration_s"],
        "faults_applied": sum(f["applied_at"] is not None for f in r["faults"]),
        "suspect_events": suspects,
        **{k: r["metrics"].get(k) for k in FIGURES},
        "failed_checks": failed,
    }


# The Markdown table's columns: (heading, field of a result row).
COLUMNS = (
    ("scenario", "scenario"),
    ("verdict", "verdict"),
    ("faults", "faults_applied"),
    *markdown.CHAOS_OUTCOME,
    ("min msg/s", "telemetry_rate_min"),
)


def table(rows: list[dict[str, Any]]) -> list[str]:
    return markdown.table(COLUMNS, rows)


def main(quick: bool = False, as_json: bool = False) -> dict[str, Any]:
    from shoal.services.chaos.load import load

    chosen = [p for p in SCENARIOS if not quick or p.stem in QUICK]
    with tempfile.TemporaryDirectory(prefix="shoal-bench-chaos-") as tmp:
        out = Path(tmp)
        control = out / "control.toml"
        control.write_text(control_scenario())
        jobs = [(control, load(control).scenario.test_scale if quick else 1.0)]
        jobs += [(p, load(p).scenario.test_scale if quick else 1.0) for p in chosen]
        progress(
            f"chaos library: {len(jobs)} runs ({len(chosen)} scenarios + control), "
            f"{JOBS} at a time{' at test scale' if quick else ', full length'}"
        )
        with ThreadPoolExecutor(max_workers=JOBS) as pool:
            rows = list(pool.map(lambda job: run_one(job[0], job[1], out), jobs))
    baseline, results = rows[0], rows[1:]
    control_figures = ", ".join(
        f"{k} {baseline.get(k)}" for k in ("verdict", "suspect_events", "telemetry_rate_min")
    )
    md = [*table(results), "", f"Control (no fault): {control_figures}"]
    reports = ROOT / "chaos-reports"
    reports.mkdir(exist_ok=True)
    (reports / "library.md").write_text("\n".join(md) + "\n")
    result = {
        "bench": "chaos_library",
        "quick": quick,
        "scenarios": len(results),
        "passed": sum(r["verdict"] == "passed" for r in results),
        "baseline": baseline,
        "results": results,
        "versions": versions(),
    }
    emit(result, as_json, md)
    return result


if __name__ == "__main__":
    run_cli(main, __doc__, "four scenarios at their test time scale, within 60 s")
