"""Bus framing in pyzmq: one frame ``topic|body`` vs two-frame multipart vs batched frames.

Backs the design choice in docs/architecture.md ("The relay batches what it republishes")
and the single-frame rule of protocol/codec.py: a PUB process sends N records over TCP
loopback, a SUB process receives them and counts; records per second for

- ``single``:    ``rec|`` + NodeRecords of one record, one frame per record (what the
  relay sends at low rates);
- ``multipart``: the same body as [b"rec", body] (send_multipart / recv_multipart);
- ``batch16``, ``batch64``: one frame carrying 16 or 64 records (what it sends under load).

The subscriber only receives (no decoding): this measures framing and transport, the part
the choice of framing changes. HWMs are unlimited and the subscription is live before the
first record is sent, so every record arrives. Each case runs REPEATS times, interleaved;
the median is reported.

Usage::

    python bench/framing.py [--quick] [--json]

Progress goes to stderr, the JSON object to stdout.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from shoal.bench._pubsub import PubSpec, SubSpec, pub_sub_run
from shoal.bench._util import emit, progress, rate, run_cli, versions

# Multiples of 64, so that every batch is full.
N_FULL = 512_000
N_QUICK = 128_000
REPEATS = 3
# name -> (frames built by the publisher, records per frame)
CASES: dict[str, tuple[str, int]] = {
    "single": ("bus", 1),
    "multipart": ("multipart", 1),
    "batch16": ("bus", 16),
    "batch64": ("bus", 64),
}


def measure(case: str, n: int) -> dict[str, Any]:
    from shoal.services.testing import tcp

    frames, batch = CASES[case]
    endpoint = tcp()
    multipart = frames == "multipart"
    run = pub_sub_run(
        PubSpec(endpoint, kind="pub", frames=frames, n_records=n, batch=batch, probe=True),
        SubSpec(
            endpoint,
            expect_records=n,
            join="probe",
            count="frames",
            records_per_msg=batch,
            multipart=multipart,
            # A multipart message's first frame is the bare topic: subscribe to that.
            topic=b"rec" if multipart else b"rec|",
        ),
        label=case,
    )
    elapsed = run["elapsed_s"]
    return {
        "records_per_s": rate(run["records"], elapsed),
        "msgs_per_s": rate(run["frames"], elapsed),
        "mb_per_s": round(run["sent_bytes"] / elapsed / 1e6, 1) if elapsed > 0 else 0.0,
        "records": run["records"],
        "lost": n - run["records"],
        "msgs": run["frames"],
        "bytes_per_msg": round(run["sent_bytes"] / max(run["sent_frames"], 1), 1),
        "elapsed_s": round(elapsed, 4),
        "sub_window_s": round(run["sub_window_s"], 4),
        "sub_cpu_s": round(run["cpu_s"], 3),
        "pub_send_s": run["pub_send_s"],
        "valid": run["valid"],
    }


def main(quick: bool = False, as_json: bool = False) -> dict[str, Any]:
    n = N_QUICK if quick else N_FULL
    t0 = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    progress(f"{n} records per case, {REPEATS} rounds, PUB -> SUB over tcp loopback")
    # Interleaved rounds: a slow spell of the machine hits every case alike.
    for k in range(REPEATS):
        progress(f"round {k + 1}/{REPEATS}")
        for case in CASES:
            runs[case].append(measure(case, n))
            progress(f"  {case:10s}{runs[case][-1]['records_per_s']:>12,.0f} records/s")
    medians = {
        case: float(statistics.median(r["records_per_s"] for r in rs)) for case, rs in runs.items()
    }
    single = medians["single"]
    result: dict[str, Any] = {
        "bench": "framing",
        "quick": quick,
        "n_records": n,
        "repeats": REPEATS,
        "statistic": "median of repeats",
        **{f"{case}_records_per_s": v for case, v in medians.items()},
        # > 1: faster than one record per single frame.
        "relative_to_single": {
            case: round(v / single, 3) if single else 0.0 for case, v in medians.items()
        },
        "lost": sum(r["lost"] for rs in runs.values() for r in rs),
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - t0, 1),
        **versions(),
    }
    emit(
        result,
        as_json,
        [
            f"{case:10s}{v:>12,.0f} records/s  x{result['relative_to_single'][case]:.2f}"
            for case, v in medians.items()
        ],
    )
    return result


if __name__ == "__main__":
    run_cli(main, __doc__, f"{N_QUICK:,} records per case")
