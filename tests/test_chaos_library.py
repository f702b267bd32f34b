"""Every scenario in the library passes, with its timeline compressed to the file's
``test_scale``: at the file's ``test_seeds`` in `just test` (seed 1 for most; the suite
stays under 10 minutes on 2 cores), at seeds 1, 2 and 3 in `just bench`
(``SHOAL_CHAOS_SEEDS=1,2,3`` overrides every file), where the full-length runs at more
seeds are too (bench/chaos_library.py).

A run mostly waits (faults last seconds; the cluster uses a few percent of a core), so the
runs go through a pool of ``SHOAL_CHAOS_JOBS`` (default 6) at a time, each its own cluster
on free ports in its own directory; each test waits for its scenario's runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shoal.services.chaos.load import load

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.toml"))
FORCED_SEEDS = os.environ.get("SHOAL_CHAOS_SEEDS", "")
JOBS = int(os.environ.get("SHOAL_CHAOS_JOBS", "6"))
TIMEOUT_S = 300


def seeds_of(path: Path) -> tuple[int, ...]:
    if FORCED_SEEDS:
        return tuple(int(s) for s in FORCED_SEEDS.split(","))
    return tuple(load(path).scenario.test_seeds)


def run_one(path: Path, seed: int, out: Path) -> tuple[int, dict[str, Any], str]:
    scale = load(path).scenario.test_scale
    report = out / f"{path.stem}-seed{seed}.json"
    argv = [sys.executable, "-m", "shoal.services.cli", "chaos", "run", str(path), "--quiet"]
    argv += ["--seed", str(seed), "--time-scale", str(scale), "--report", str(report)]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        return -1, {}, f"timed out after {TIMEOUT_S} s: {err.stdout!r} {err.stderr!r}"
    summary = report.with_suffix(".md")
    detail = summary.read_text() if summary.exists() else ""
    data = json.loads(report.read_text()) if report.exists() else {}
    return run.returncode, data, run.stdout + run.stderr + detail


@pytest.fixture(scope="module")
def library_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Every selected (scenario, seed) run, started at once through the pool."""
    out = tmp_path_factory.mktemp("chaos-library")
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_library_scenario_passes_at_every_seed"
    ]
    # The longest runs first: the pool's last run should not be one that starts late.
    selected.sort(key=lambda path: -load(path).scenario.deadline)
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        futures: dict[tuple[str, int], Future[tuple[int, dict[str, Any], str]]] = {
            (path.stem, seed): pool.submit(run_one, path, seed, out)
            for path in selected
            for seed in seeds_of(path)
        }
        yield futures
        for future in futures.values():
            future.cancel()  # a failed test must not leave the rest queued behind it


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_library_scenario_passes_at_every_seed(path: Path, library_runs) -> None:
    for seed in seeds_of(path):
        code, report, output = library_runs[(path.stem, seed)].result(timeout=TIMEOUT_S * 12)
        assert code == 0, f"{path.name} seed {seed}: exit {code}\n{output}"
        assert report["verdict"] == "passed"
        assert report["seed"] == seed
