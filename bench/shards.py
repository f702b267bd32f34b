"""What relay sharding buys: records/s through 1 relay shard against 2 (or more), same run.

For each shard count N: N ``shoal run relay --shard K`` processes on one config
(``[relay] shards = N``), and per shard one publisher (a DEALER sending only that shard's
nodes, of the same 1,000 benchmark ids: crc32(node_id) % N) and one subscriber on that
shard's bus, each in its own process. Every publisher is told to go at once; the rate is
all records / (first send -> last receive over every shard), the way a cluster's gateways
see it. Streams: one record per frame (the relay's per-record cost dominates: the case
sharding is for) and batches of 64. N = 1 is the baseline, measured in the same run,
interleaved with the others, each REPEATS times (median).

On a 2-core machine the N relays share the cores with N publishers and N subscribers, so
the curve is bounded by the machine, not by the relay: ``machine_cpu_pct`` and each
relay's CPU say where the time went. Curve is off (as relay_throughput's plain stream).

Usage::

    python bench/shards.py [--quick] [--json] [--shard-counts 1,2,3]
    shoal bench shards [--quick] [--json]
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import psutil

from shoal.bench._frames import NODES, shard_ids
from shoal.bench._pubsub import Child, PubSpec, SubSpec, pub_worker, sub_worker
from shoal.bench._relay import RelayProcess
from shoal.bench._util import emit, progress, rate, run_cli, sigterm_as_exit, versions

N_FULL = 1_000_000
N_QUICK = 300_000
REPEATS = 5
BATCH = 64
SHARD_COUNTS = (1, 2)


def _config(shards: int) -> Any:
    from shoal.services.testing import config_on_free_ports

    relay = {"shards": shards, "rate_per_node_hz": 1e9, "rate_burst": 10**9, "bus_hwm": 1_000_000}
    return config_on_free_ports(
        relay=relay,
        runtime={"log_level": "warning", "heartbeat_interval_ms": 100},
        security={"curve": False},
    )


def measure(relays: list[RelayProcess], n: int, batch: int, seq_start: int) -> dict[str, Any]:
    """One stream of n records over every shard at once."""
    shards = len(relays)
    share = [len(shard_ids(k, shards)) for k in range(shards)]
    # Each shard gets records in proportion to its nodes, so every node sends as often.
    counts = [n * s // NODES for s in share]
    subs = [
        Child(sub_worker, SubSpec(r.bus, expect_records=c, join="beat"), f"sub-{k}")
        for k, (r, c) in enumerate(zip(relays, counts, strict=True))
    ]
    pubs = [
        Child(
            pub_worker,
            PubSpec(
                r.ingest,
                kind="dealer",
                frames="ingest",
                n_records=c,
                batch=batch,
                seq_start=seq_start,
                shard=k,
                shards=shards,
            ),
            f"pub-{k}",
        )
        for k, (r, c) in enumerate(zip(relays, counts, strict=True))
    ]
    try:
        for child in subs + pubs:
            child.expect("ready", 120)
        for sub in subs:
            sub.expect("joined", 60)
        cpu0 = [r.cpu_s() for r in relays]
        psutil.cpu_percent()  # starts the machine's window
        for pub in pubs:
            pub.go()
        sent = [pub.expect("sent", 180) for pub in pubs]
        done = [sub.expect("done", 200) for sub in subs]
        machine = psutil.cpu_percent() * psutil.cpu_count()
        for pub in pubs:
            pub.conn.send("close")
        for pub in pubs:
            pub.expect("done", 10)
        cpu = [round(r.cpu_s() - c, 3) for r, c in zip(relays, cpu0, strict=True)]
    finally:
        for child in pubs + subs:
            child.stop()
    start = min(s["start"] for s in sent)
    last = max(d["last"] for d in done)
    records = sum(d["records"] for d in done)
    elapsed = last - start
    return {
        "records_per_s": rate(records, elapsed),
        "records": records,
        "lost": sum(counts) - records,
        "elapsed_s": round(elapsed, 4),
        "per_shard_records": [d["records"] for d in done],
        "relay_cpu_s": cpu,
        # Each relay's share of one core over the stream: 100 = saturated.
        "relay_cpu_pct": [round(c / elapsed * 100, 1) for c in cpu] if elapsed > 0 else [],
        "machine_cpu_pct": round(machine, 1),
        "pseq_gaps": sum(d["pseq_gaps"] for d in done),
    }


def main(quick: bool = False, as_json: bool = False, shard_counts: str = "1,2") -> dict[str, Any]:
    """Every shard count's streams, REPEATS rounds interleaved; print and return the result."""
    counts = tuple(int(s) for s in shard_counts.split(","))
    n = N_QUICK if quick else N_FULL
    t0 = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {f"{s}_{b}": [] for s in counts for b in (1, BATCH)}
    seq_start = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_exit())
        clusters: dict[int, list[RelayProcess]] = {}
        for count in counts:
            config = _config(count)
            clusters[count] = [
                stack.enter_context(RelayProcess(config=config, shard=k)) for k in range(count)
            ]
        progress(f"relays up: {', '.join(f'{s} shard(s)' for s in counts)}; {n} records a stream")
        for k in range(REPEATS):  # interleaved: a slow spell of the machine hits each alike
            progress(f"round {k + 1}/{REPEATS}")
            for batch in (1, BATCH):
                for shards in counts:
                    run = measure(clusters[shards], n, batch, seq_start)
                    runs[f"{shards}_{batch}"].append(run)
                    progress(
                        f"  {shards} shard(s), batch {batch:>2}: {run['records_per_s']:>10,.0f}"
                        f" records/s, relays {run['relay_cpu_pct']}% of a core, lost {run['lost']}"
                    )
                    # Seqs go on from stream to stream: every record is new to its relay.
                    seq_start += -(-n // len(shard_ids(0, shards))) + 1

    def median(key: str) -> float:
        return float(statistics.median(r["records_per_s"] for r in runs[key]))

    curve = {
        f"batch_{batch}": [
            {
                "shards": shards,
                "records_per_s": median(f"{shards}_{batch}"),
                "speedup": round(median(f"{shards}_{batch}") / median(f"{counts[0]}_{batch}"), 3)
                if median(f"{counts[0]}_{batch}")
                else 0.0,
                # Each round's N-shard stream against the baseline's in the same round (they
                # ran seconds apart): steadier than a ratio of medians on a shared machine.
                "speedup_per_round": [
                    round(r["records_per_s"] / b["records_per_s"], 3) if b["records_per_s"] else 0.0
                    for r, b in zip(
                        runs[f"{shards}_{batch}"], runs[f"{counts[0]}_{batch}"], strict=True
                    )
                ],
                "relay_cpu_pct": [
                    statistics.median(r["relay_cpu_pct"][k] for r in runs[f"{shards}_{batch}"])
                    for k in range(shards)
                ],
                "machine_cpu_pct": statistics.median(
                    r["machine_cpu_pct"] for r in runs[f"{shards}_{batch}"]
                ),
            }
            for shards in counts
        ]
        for batch in (1, BATCH)
    }
    lost = sum(r["lost"] for rs in runs.values() for r in rs)
    result: dict[str, Any] = {
        "bench": "shards",
        "quick": quick,
        "n_records": n,
        "repeats": REPEATS,
        "statistic": "median of repeats",
        "nodes": NODES,
        "baseline": f"{counts[0]} shard (same run, interleaved)",
        "curve": curve,
        "lost": lost,
        "ok": lost == 0,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t0, 1),
        **versions(),
    }
    summary = [
        f"batch {batch:>2}: "
        + ", ".join(
            f"{p['shards']} shard(s) {p['records_per_s']:,.0f}/s x{p['speedup']}" for p in pts
        )
        for batch, pts in ((1, curve["batch_1"]), (BATCH, curve[f"batch_{BATCH}"]))
    ]
    emit(result, as_json, summary)
    return result


if __name__ == "__main__":
    run_cli(
        main,
        __doc__,
        f"{N_QUICK:,} records a stream instead of {N_FULL:,}",
        shard_counts={
            "default": ",".join(map(str, SHARD_COUNTS)),
            "help": "shard counts, e.g. 1,2,3",
        },
    )
