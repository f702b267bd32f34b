"""The benchmark report (bench/make_report.py) built from small saved JSON files: every plot
and the chaos table are there, a missing benchmark is named as not run, and nothing runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from shoal.bench import make_report as report

MACHINE = {
    "python": "3.11.7",
    "pyzmq": "26.2.0",
    "libzmq": "4.3.5",
    "msgspec": "0.18.6",
    "sqlite": "3.45.1",
    "shoal": "0.1.0",
    "platform": "Linux-x86_64",
    "cpu_count": 2,
    "cpu_model": "Test CPU @ 2.0GHz",
    "date": "2026-12-03T12:00:00+00:00",
}


def tail(hog: int, p99s: list[float]) -> dict:
    return {
        "bench": "delegation_tail_hog" if hog else "delegation_tail",
        "runs": len(p99s),
        "cpu_hogs": hog,
        "handoff_p99_ms_per_run": p99s,
        "handoff_p99_ms_worst_run": max(p99s),
        "target_p99_ms": 50.0 if hog else 20.0,
        "meets_target": max(p99s) <= (50.0 if hog else 20.0),
        "per_run": [{"samples_ms": [4.0 + k, 5.5, 6.0, p99]} for k, p99 in enumerate(p99s)],
        **MACHINE,
    }


FIXTURES = {
    "relay_throughput": {
        "bench": "relay_throughput",
        "raw_msgs_per_s": 300000.0,
        "relay_msgs_per_s": 150000.0,
        "batched_records_per_s": 600000.0,
        "batch_records": 64,
        "ratio": 0.5,
        **MACHINE,
    },
    "framing": {"bench": "framing", "single_records_per_s": 1e5, "batch64_records_per_s": 9e5},
    "mqtt_path": {
        "bench": "mqtt_path",
        "brokers": {"amqtt": {"raw_broker_msgs_per_s": 9900, "shim_msgs_per_s": 5800}},
        "samples": {"power_cut_to_dead_ms": [1500.0, 1700.0, 2100.0]},
    },
    "liveness": {
        "bench": "liveness",
        "samples": {"crash_to_dead_ms": [900.0, 1000.0], "hang_to_dead_ms": [950.0, 1100.0]},
        "baseline_anchor_dead_ms": {"memberlist": 5000, "akka": 5500},
    },
    "delegation": {
        "bench": "delegation",
        "efficiency": 1.0,
        "details": {
            "hot_spot": {
                "handoff_samples_ms": [5.0, 6.0],
                "efficiency_over_time": {
                    "t_s": [1, 2, 3],
                    "on": [0.7, 0.95, 1.0],
                    "off": [0.7, 0.6, 0.6],
                    "warmup_s": 2,
                },
            }
        },
    },
    "delegation_tail": tail(0, [8.0, 12.0, 15.0]),
    "delegation_tail_hog": tail(1, [20.0, 31.0]),
    "chaos_library": {
        "bench": "chaos_library",
        "results": [
            {
                "scenario": "node-crash",
                "verdict": "passed",
                "detect_dead_ms_p50": 1200,
                "redelegate_ms_max": 1300,
                "recovery_s": 2.5,
            }
        ],
        "baseline": {"scenario": "control", "verdict": "passed"},
        "versions": MACHINE,
    },
    "ledger": {
        "bench": "ledger",
        "commit_latency": {
            "samples_ms": {
                "sqlite_autocheckpoint": [0.3, 0.4, 40.0],
                "checkpointer_thread": [0.3, 0.4, 4.0],
            }
        },
    },
    "cost": {
        "bench": "cost",
        "sizes": [
            {
                "nodes": n,
                "services": {
                    "relay": {"cpu_pct": n / 50, "rss_mb": 40 + n / 100},
                    "sim": {"cpu_pct": n / 10, "rss_mb": 50.0},
                },
            }
            for n in (10, 100, 1000)
        ],
    },
}
PLOTS = (
    "relay.png",
    "mqtt.png",
    "detection.png",
    "handoff.png",
    "ledger.png",
    "efficiency.png",
    "cost.png",
)


def test_the_report_is_built_from_saved_json_alone(tmp_path: Path) -> None:
    for name, data in FIXTURES.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    path = report.build(tmp_path)
    md = path.read_text()
    for png in PLOTS:
        assert (tmp_path / png).stat().st_size > 1000, png
        assert f"]({png})" in md
    assert "Test CPU @ 2.0GHz" in md and "cpu count: 2" in md
    assert "pyzmq 26.2.0" in md and "2026-12-03T12:00:00+00:00" in md
    assert "| node-crash | passed |" in md and "control (no fault, baseline)" in md
    assert "[15.0, 8.0, 12.0]" not in md and "[8.0, 12.0, 15.0]" in md  # per run, in order
    assert "| tui | - | not run |" in md  # not saved: named, the rest built
    assert "[cost.json](cost.json)" in md


def test_an_empty_directory_gives_a_report_of_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    md = report.build(tmp_path).read_text()
    assert md.count("Not run: its benchmark's JSON is missing.") == len(report.PLOTS)
    assert not list(tmp_path.glob("*.png"))
