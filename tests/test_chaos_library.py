"""Every scenario in the library passes at 3 seeds, with its timeline compressed to the
file's ``test_scale`` (full-length runs are in `just bench`). The seeds of one scenario run
at the same time, each its own cluster on free ports, to keep the suite short."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.services.chaos.scenario import load

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.toml"))
SEEDS = (1, 2, 3)
TIMEOUT_S = 240


def run_seeds(path: Path, tmp_path: Path, *extra: str) -> dict[int, tuple[int, dict, str]]:
    scale = load(path).scenario.test_scale
    procs = {}
    for seed in SEEDS:
        report = tmp_path / f"seed{seed}.json"
        argv = [sys.executable, "-m", "shoal.services.cli", "chaos", "run", str(path)]
        argv += ["--seed", str(seed), "--time-scale", str(scale), "--report", str(report)]
        argv += ["--quiet", *extra]
        procs[seed] = (
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
            report,
        )
    out = {}
    try:
        for seed, (proc, report) in procs.items():
            text = proc.communicate(timeout=TIMEOUT_S)[0].decode(errors="replace")
            data = json.loads(report.read_text()) if report.exists() else {}
            out[seed] = (proc.returncode, data, text)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    return out


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_library_scenario_passes_at_three_seeds(path: Path, tmp_path: Path) -> None:
    results = run_seeds(path, tmp_path)
    for seed, (code, report, output) in results.items():
        summary = tmp_path / f"seed{seed}.md"
        detail = summary.read_text() if summary.exists() else output
        assert code == 0, f"{path.name} seed {seed}: exit {code}\n{output}\n{detail}"
        assert report["verdict"] == "passed"
