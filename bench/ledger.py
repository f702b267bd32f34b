"""The task ledger's durable throughput: committed transactions per second (SQLite, WAL,
synchronous=FULL, an fsync per commit) with 1 and with 64 changes per transaction, and the
time to open a ledger of many tasks (its quick_check). The baseline is raw sqlite3 doing
one INSERT per transaction with the same settings: the floor the disk's fsync sets.

Pass latency (a pass's changes and its commit) at the delegator's pace (a pass of three tasks' changes every 10 ms), with
SQLite checkpointing the WAL inside the commit that fills it (the baseline, SQLite's
default) and with the delegator's checkpointer thread, interleaved rounds: the percentiles
and every sample (the report's CDF).

A change is one ledger mutation; each task goes through five (offer, assign, accepted,
result, delivered), as in the delegator.

    python bench/ledger.py [--json] [--quick]
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shoal.bench._util import run_cli, save, versions
from shoal.protocol.tasks import Task
from shoal.services.delegator.ledger import Ledger


def raw_commits(path: Path, seconds: float) -> dict[str, Any]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)")
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (x) VALUES ('x')")
        db.execute("COMMIT")
        n += 1
    db.close()
    return {"commits_per_s": round(n / elapsed), "commit_ms": round(elapsed / n * 1000, 3)}


def ledger_commits(path: Path, batch: int, seconds: float) -> dict[str, Any]:
    """Tasks go through their five changes; a commit every ``batch`` changes."""
    changes = commits = 0
    led = Ledger(path)

    def changed() -> None:
        nonlocal changes, commits
        changes += 1
        if changes % batch == 0:
            led.commit()
            commits += 1

    i = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        now = time.time()
        task_id = f"o.1.{i}"
        led.offer("o", [Task(task_id=task_id, kind="compute", cost_ms=5, origin="o")], now)
        changed()
        epoch = led.assign(task_id, "p", now)
        changed()
        led.accepted(task_id, epoch, "p", 3000, now)
        changed()
        led.result(task_id, epoch, "p", True, "out", "", now)
        changed()
        led.delivered(task_id, "o", now)
        changed()
        i += 1
    led.commit()
    led.close()
    return {
        "changes_per_commit": batch,
        "commits_per_s": round(commits / elapsed),
        "changes_per_s": round(changes / elapsed),
        "tasks_per_s": round(i / elapsed),
    }


def commit_latency(path: Path, checkpoint_every_s: float | None, seconds: float) -> list[float]:
    """Every pass's time (ms: its changes and its commit) at the delegator's pace: passes of
    3 tasks' changes (offer and assign, accept, result and delivery), a commit each, every
    10 ms. With ``checkpoint_every_s`` None SQLite checkpoints inside the commit that fills
    the WAL (the baseline); else the checkpointer thread does, as in the delegator."""
    led = Ledger(path, checkpoint_every_s=checkpoint_every_s)
    times: list[float] = []
    n = 0
    previous: list[str] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        now = time.time()
        batch = [
            Task(task_id=f"o.3.{n + k}", kind="compute", cost_ms=5, origin="o") for k in range(3)
        ]
        n += 3
        t0 = time.perf_counter()
        led.offer("o", batch, now)
        epochs = [led.assign(t.task_id, "p", now) for t in batch]
        led.commit()
        t1 = time.perf_counter()
        for t, epoch in zip(batch, epochs, strict=True):
            led.accepted(t.task_id, epoch, "p", 3000, now)
        led.commit()
        t2 = time.perf_counter()
        for task_id in previous:
            led.result(task_id, 1, "p", True, "out", "", now)
            led.delivered(task_id, "o", now)
        led.commit()
        t3 = time.perf_counter()
        times += [round((b - a) * 1000, 3) for a, b in ((t0, t1), (t1, t2), (t2, t3))]
        previous = [t.task_id for t in batch]
        time.sleep(0.01)  # the pace of the delegator's passes under load
    led.close()
    return times


def latency_figures(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    n = len(ordered)
    return {
        "commits": n,
        **{f"p{q}_ms": ordered[min(n - 1, int(q / 100 * n))] for q in (50, 99)},
        "p99_9_ms": ordered[min(n - 1, int(0.999 * n))],
        "max_ms": ordered[-1],
    }


def checkpoints(d: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """Commit latency with SQLite's own checkpoints (baseline) and with the thread,
    interleaved rounds on fresh files."""
    samples: dict[str, list[float]] = {"sqlite_autocheckpoint": [], "checkpointer_thread": []}
    for r in range(rounds):
        for name, every in (("sqlite_autocheckpoint", None), ("checkpointer_thread", 0.5)):
            samples[name] += commit_latency(d / f"ck-{name}-{r}.db", every, seconds)
    return {
        **{name: latency_figures(v) for name, v in samples.items()},
        "samples_ms": samples,
    }


def open_time(path: Path, tasks: int) -> dict[str, Any]:
    with Ledger(path) as led:
        for n in range(0, tasks, 32):
            batch = [
                Task(task_id=f"o.2.{k}", kind="compute", cost_ms=5, origin="o")
                for k in range(n, min(n + 32, tasks))
            ]
            led.offer("o", batch, time.time())
        led.commit()
    start = time.perf_counter()
    Ledger(path).close()
    return {
        "tasks": tasks,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "open_ms": round((time.perf_counter() - start) * 1000, 1),
    }


def main(quick: bool = False, as_json: bool = False) -> None:
    seconds = 0.5 if quick else 2.0
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        d = Path(tmp)  # next to the working directory: the disk a ledger would use
        result: dict[str, Any] = {
            "bench": "ledger",
            "quick": quick,
            "baseline_raw_sqlite_insert": raw_commits(d / "raw.db", seconds),
            "batch_1": ledger_commits(d / "b1.db", 1, seconds),
            "batch_64": ledger_commits(d / "b64.db", 64, seconds),
            "open": open_time(d / "open.db", 20_000 if quick else 100_000),
            "commit_latency": checkpoints(d, 10.0 if quick else 30.0, 2 if quick else 3),
            **versions(),
        }
    save("ledger", result)
    print(json.dumps(result, indent=None if as_json else 2))
    if not as_json:
        b1, b64 = result["batch_1"], result["batch_64"]
        print(
            f"ledger: {b1['changes_per_s']} changes/s committed one by one, "
            f"{b64['changes_per_s']} in batches of 64",
            file=sys.stderr,
        )
        for name, f in result["commit_latency"].items():
            if name != "samples_ms":
                print(f"commit latency, {name}: {f}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, __doc__, "shorter runs")
