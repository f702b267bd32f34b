"""Over-the-air rollout: time and bytes on the air for one version to 8 emulated boards.

A cluster of ``shoal up`` with N emulated boards (the real firmware in the MicroPython unix
port, 110 KB heap, over the embedded broker), the OTA service, and ``shoal firmware ota``
rolling out a newly built bundle (the whole firmware but boot.py, otaboot and config.py).

Bytes on the air are the MQTT packets of the transfer between the boards and the broker,
counted by the OTA service (every payload it sent and received, with its topic and fixed
header): offers, chunk requests, chunks, statuses. The baseline is the bundle's own bytes
times the number of boards (what a perfect transfer would carry); the overhead ratio is
the one over the other. ``with_tcp_ip`` adds 40 B of TCP/IP headers per packet (one packet
per MQTT message at these sizes), which the radio carries too.

    python bench/ota.py [--json] [--boards 8] [--max-unavailable 8] [--chunk 1024]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shoal.services.firmware.build import build
from shoal.services.firmware.targets import TARGETS
from shoal.services.ota.bundles import load
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import Cluster, wait_for

TCP_IP_BYTES = 40


def alive(cluster: Cluster) -> set[str]:
    with CtlClient(cluster.config.liveness.ctl) as c:
        snap: dict[str, Any] = c.call("members", timeout_s=2.0)
    return {m["node_id"] for m in snap["members"] if m["state"] == "alive"}


def run(boards: int, max_unavailable: int, chunk: int) -> dict[str, Any]:
    ids = [f"board-{i + 1:02d}" for i in range(boards)]
    with tempfile.TemporaryDirectory(prefix="shoal-bench-ota-") as tmp:
        work = Path(tmp)
        bundle_dir = work / "bundle"
        build(bundle_dir, TARGETS["esp32"], version="shoal-esp32/0.3-bench")
        bundle = load(bundle_dir)
        board_config = {"count": boards, "firmware": {"ota_probation_ms": 2000}}
        (work / "cluster").mkdir()
        with Cluster(
            work / "cluster",
            nodes=1,
            boards=boards,
            board_config=board_config,
            ota={"chunk_bytes": chunk},
        ) as cluster:
            wait_for(lambda: set(ids) <= alive(cluster), 120, 0.2, ignore=(Exception,))
            with CtlClient(cluster.config.ota.ctl) as ota:
                t0 = time.monotonic()
                ota.call(
                    "rollout",
                    {"bundle": str(bundle_dir), "nodes": ids, "max_unavailable": max_unavailable},
                    timeout_s=10.0,
                )

                def finished() -> dict[str, Any] | None:
                    p: dict[str, Any] = ota.call("progress", timeout_s=2.0)
                    return p if p["state"] != "running" else None

                final = wait_for(finished, 600, 0.1)
                seconds = time.monotonic() - t0
    c = final["counters"]
    air = c["down_bytes"] + c["up_bytes"]
    packets = c["down_msgs"] + c["up_msgs"]
    baseline = bundle.size * boards
    rows = final["nodes"]
    return {
        "bench": "ota",
        "state": final["state"],
        "boards": boards,
        "max_unavailable": max_unavailable,
        "chunk_bytes": chunk,
        "bundle_bytes": bundle.size,
        "bundle_files": len(bundle.files),
        "rollout_s": round(seconds, 2),
        "per_board_s": sorted(r["seconds"] for r in rows),
        "baseline_bytes": baseline,
        "air_bytes": air,
        "air_packets": packets,
        "chunks": c["chunks_sent"],
        "chunk_data_bytes": c["chunk_data_bytes"],
        "overhead_ratio": round(air / baseline, 3),
        "overhead_ratio_with_tcp_ip": round((air + packets * TCP_IP_BYTES) / baseline, 3),
        "bad_chunks": sum(r["bad_chunks"] for r in rows),
        "retries": sum(r["retries"] for r in rows),
    }


def main() -> None:
    from shoal.bench._util import apply_save, cli_parser, save, versions

    parser = cli_parser(__doc__, "accepted for uniformity: one rollout either way")
    parser.add_argument("--boards", type=int, default=8)
    parser.add_argument("--max-unavailable", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()
    apply_save(args.save)
    result = run(args.boards, args.max_unavailable, args.chunk)
    result.update(versions())
    save("ota", result)
    print(json.dumps(result, indent=None if args.json else 2))
    sys.exit(0 if result["state"] == "succeeded" else 1)


if __name__ == "__main__":
    main()
