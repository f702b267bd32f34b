"""The report's scale section (bench/report_scale.py) from a small saved scale.json: the
plot, the table and the bottleneck line are there; without the JSON it says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from shoal.bench import make_report as report


def scenario(nodes: int, hz: float, relay_cpu: float) -> dict:
    return {
        "nodes": nodes,
        "telemetry_hz": hz,
        "messages_per_s": int(nodes * (hz + 4)),
        "sim_processes": 1,
        "services": {"relay": {"cpu_pct": relay_cpu, "rss_mb": 40.0}},
        "load_generator_cpu_pct": 20.0,
        "status_json_s": 0.3,
        "relay_snapshot_s": 0.05,
        "delegator_resync_s": 1.5,
        "false_suspect": 0,
        "false_dead": 0,
        "console_nodes_view": {"cpu_pct": 17.0, "rss_mb": 70.0},
    }


def test_the_scale_section_is_built_from_its_json(tmp_path: Path) -> None:
    scale = {
        "bench": "scale",
        "scenarios": [scenario(1000, 4.0, 30.0), scenario(10_000, 1.0, 95.0)],
        "first_bottleneck": {"service": "relay", "cpu_pct": 95.0, "saturated": True},
    }
    (tmp_path / "scale.json").write_text(json.dumps(scale))
    md = report.build(tmp_path).read_text()
    assert (tmp_path / "scale.png").stat().st_size > 1000
    assert "](scale.png)" in md and "| 10,000 @ 1 Hz | 50000 |" in md
    assert "Busiest service: relay at 95.0% of one core (saturated" in md
    # A sharded run (bench/scale.py --shards 2) gets its own section beside it.
    (tmp_path / "scale_shards2.json").write_text(json.dumps({**scale, "shards": 2}))
    md = report.build(tmp_path).read_text()
    assert "## Scale on one machine, 2 relay shards and shims" in md
    assert (tmp_path / "scale_shards2.png").stat().st_size > 1000


def test_without_its_json_the_section_says_not_run(tmp_path: Path) -> None:
    md = report.build(tmp_path).read_text()
    assert "## Scale on one machine\n\nNot run: scale.json is missing." in md


def test_the_shards_section_plots_the_curve_with_its_baseline(tmp_path: Path) -> None:
    def point(shards: int, rate: float) -> dict:
        return {
            "shards": shards,
            "records_per_s": rate,
            "speedup": round(rate / 10_000.0, 3),
            "relay_cpu_pct": [90.0] * shards,
            "machine_cpu_pct": 190.0,
        }

    shards = {
        "bench": "shards",
        "baseline": "1 shard (same run, interleaved)",
        "curve": {"batch_1": [point(1, 10_000.0), point(2, 15_000.0)]},
        "lost": 0,
    }
    (tmp_path / "shards.json").write_text(json.dumps(shards))
    md = report.build(tmp_path).read_text()
    assert (tmp_path / "shards.png").stat().st_size > 1000
    assert "](shards.png)" in md and "| batch_1 | 2 | 15,000 | x1.5 |" in md
    assert "Baseline: 1 shard (same run, interleaved); lost 0." in md
    assert "## Relay shards" in report.build(tmp_path / "empty").read_text()
