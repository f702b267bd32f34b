"""Relay throughput against raw pyzmq, records lost, and relay RSS at 1,000 nodes.

Streams measured in the same run (publisher and subscriber each in their own process):

1. raw: a PUB sends N one-record bus frames (exactly what the relay publishes for one
   record) straight to a SUB that only receives and counts: the ceiling pyzmq sets for
   this framing on this machine. ``raw_decoded``: the same, the subscriber decoding each
   frame as the relay's subscriber does (context for the ratio, not the baseline).
2. relay: a DEALER sends N single Telemetry messages (1,000 nodes, seq rising per node) to
   a relay started as ``shoal run relay``; the SUB counts the records on the relay's bus.
3. batched: the same, with Batch frames of 64 records.
4. curve, curve_batched: streams 2 and 3 again, to a second relay with Curve on (the
   default; the others run with ``[security] curve = false``), publisher and subscriber
   Curve clients with their keys. ``curve.ratio`` = Curve over plain, in the same run
   (target >= 0.7). And the cost of 1,000 Curve handshakes: 1,000 DEALERs (100 at a time)
   connect to each relay's ctl and ping it; the time until every one is answered and the
   relay's CPU for it, Curve against plain (the difference is the handshakes: the key
   exchange, and our ZAP handler's look at the allowlist).

Rates are records / (publisher's first send -> subscriber's last receive); the
subscriber's own first-to-last window is reported too (``sub_window_records_per_s``), but
it overstates the relay, which publishes only at the end of each drain pass. ``ratio`` =
relay / raw. Each stream runs REPEATS times, interleaved, and the median is reported.
The relay's rate limit is set out of the way and its bus HWM high, so nothing may be
dropped (``lost`` must be 0); the publisher reads acks like a node, and ``unacked_nodes``
counts nodes whose last record was never acked. The ingest HWM keeps its default: the
backlog it allows is most of the relay's RSS. Publisher, relay and subscriber share the
machine's cores (2 here: they compete, and the per-process CPU seconds in ``runs`` say
so; ``relay_cpu_us_per_record`` is the relay's own cost).

Usage::

    python bench/relay_throughput.py [--quick] [--json] [--profile-relay FILE]
    shoal bench relay [--quick] [--json]

Progress goes to stderr, the JSON object to stdout.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from shoal.bench._frames import NODES
from shoal.bench._pubsub import PubSpec, SubSpec, pub_sub_run
from shoal.bench._relay import RelayProcess
from shoal.bench._util import (
    apply_save,
    cli_parser,
    emit,
    progress,
    rate,
    sigterm_as_exit,
    versions,
)

BATCH = 64
N_FULL = 300_000
N_QUICK = 50_000
REPEATS = 3
TARGETS = {"ratio_min": 0.5, "lost_max": 0, "relay_rss_mb_max": 80.0, "curve_ratio_min": 0.7}
HANDSHAKES = 1000
HANDSHAKE_BATCH = 100  # clients at a time (each is two file descriptors here)


def _relay_keys() -> dict[str, Any]:
    return {
        # The benchmark measures throughput, not the flood guard.
        "rate_per_node_hz": 1e9,
        "rate_burst": 10**9,
        # A bus frame queued is a frame not lost (the HWM counts frames, of up to 256
        # records). ingest_hwm stays at its default: it bounds the backlog the relay holds
        # while it is busy, which is most of its RSS here, and that is worth measuring.
        "bus_hwm": 1_000_000,
    }


def measure_raw(n: int, count: str) -> dict[str, Any]:
    from shoal.services.testing import tcp

    endpoint = tcp()
    run = pub_sub_run(
        PubSpec(endpoint, kind="pub", frames="bus", n_records=n, probe=True),
        SubSpec(endpoint, expect_records=n, join="probe", count=count),
        label="raw",
    )
    return _summarize(run, n)


def measure_relay(relay: RelayProcess, n: int, batch: int, seq_start: int) -> dict[str, Any]:
    before = relay.status()["counters"]
    cpu0 = relay.cpu_s()
    run = pub_sub_run(
        PubSpec(
            relay.ingest,
            kind="dealer",
            frames="ingest",
            n_records=n,
            batch=batch,
            seq_start=seq_start,
            keys=relay.keys,
        ),
        SubSpec(relay.bus, expect_records=n, join="beat", keys=relay.keys),
        label=f"relay-b{batch}{'-curve' if relay.keys else ''}",
    )
    relay_cpu = relay.cpu_s() - cpu0
    after = relay.status()["counters"]
    out = _summarize(run, n)
    out["accepted"] = after.get("accepted", 0) - before.get("accepted", 0)
    out["rejected"] = after.get("rejected", 0) - before.get("rejected", 0)
    out["relay_cpu_s"] = round(relay_cpu, 3)
    # What one record costs the relay in CPU, whatever the others were doing meanwhile.
    out["relay_cpu_us_per_record"] = round(relay_cpu / n * 1e6, 2)
    # Where the relay's memory goes: RSS after this stream, and its high-water mark so far.
    out["relay_rss_mb"] = relay.rss_mb()
    out["relay_peak_rss_mb"] = relay.peak_rss_mb()
    return out


def measure_handshakes(relay: RelayProcess, n: int = HANDSHAKES) -> dict[str, Any]:
    """n clients connect to the relay's ctl (HANDSHAKE_BATCH at a time) and each pings it
    once: until every one is answered, and the relay's CPU meanwhile."""
    from shoal.protocol import codec
    from shoal.protocol.messages import Request
    from shoal.services.runtime.security import Security
    from shoal.services.runtime.sockets import Sockets

    security = Security(keys_dir=Path(relay.keys), name="reader") if relay.keys else Security.off()
    ctx: zmq.Context[Any] = zmq.Context()
    ping = codec.encode(Request(id=1, op="ping"))
    cpu0, t0 = relay.cpu_s(), time.monotonic()
    answered = 0
    try:
        for start in range(0, n, HANDSHAKE_BATCH):
            sockets = Sockets(ctx, security)
            poller = zmq.Poller()
            try:
                for _ in range(min(HANDSHAKE_BATCH, n - start)):
                    sock = sockets.connect(zmq.DEALER, relay.config.relay.ctl)
                    sock.send(ping)
                    poller.register(sock, zmq.POLLIN)
                waiting = min(HANDSHAKE_BATCH, n - start)
                deadline = time.monotonic() + 30
                while waiting and time.monotonic() < deadline:
                    for sock, _ in poller.poll(1000):
                        sock.recv()
                        poller.unregister(sock)
                        waiting -= 1
                        answered += 1
            finally:
                sockets.close_all()
    finally:
        ctx.term()
    elapsed, cpu = time.monotonic() - t0, relay.cpu_s() - cpu0
    return {
        "handshakes": n,
        "answered": answered,
        "elapsed_s": round(elapsed, 3),
        "ms_each": round(elapsed / n * 1000, 3),
        "relay_cpu_s": round(cpu, 3),
        "relay_cpu_us_each": round(cpu / n * 1e6, 1),
    }


def _summarize(run: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "records_per_s": rate(run["records"], run["elapsed_s"]),
        # The subscriber's first-to-last window only (see _pubsub.pub_sub_run).
        "sub_window_records_per_s": rate(run["records"], run["sub_window_s"]),
        "records": run["records"],
        "lost": n - run["records"],
        "bus_frames": run["frames"],
        "pseq_gaps": run["pseq_gaps"],
        "valid": run["valid"],
        "elapsed_s": round(run["elapsed_s"], 4),
        "sub_window_s": round(run["sub_window_s"], 4),
        "sub_cpu_s": round(run["cpu_s"], 3),
        "pub_frames": run["sent_frames"],
        "pub_bytes": run["sent_bytes"],
        "pub_send_s": run["pub_send_s"],
        "pub_cpu_s": run["pub_cpu_s"],
        "pub_acks": run["pub_acks"],
        # Nodes whose last record the relay never acked (None: no acks, the raw stream).
        "unacked_nodes": run["unacked_nodes"],
    }


def _median(runs: list[dict[str, Any]]) -> float:
    return float(statistics.median(r["records_per_s"] for r in runs))


def main(
    quick: bool = False, as_json: bool = False, profile_relay: str | None = None
) -> dict[str, Any]:
    """Run every stream REPEATS times, interleaved; print and return the result."""
    n = N_QUICK if quick else N_FULL
    t0 = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("raw", "raw_decoded", "relay", "batched", "curve", "curve_batched")
    }
    seq_start = 0
    # SIGTERM unwinds the block, so the relays and the workers are stopped.
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_exit())
        relay = stack.enter_context(
            RelayProcess(profile_to=profile_relay, curve=False, **_relay_keys())
        )
        secure = stack.enter_context(RelayProcess(curve=True, **_relay_keys()))
        rss_idle = relay.rss_mb()
        progress(f"relay up (RSS {rss_idle} MB); {n} records per stream, {REPEATS} rounds")
        # Interleaved rounds: a slow spell of the machine hits every stream alike.
        for k in range(REPEATS):
            progress(f"round {k + 1}/{REPEATS}")
            runs["raw"].append(measure_raw(n, count="frames"))
            runs["raw_decoded"].append(measure_raw(n, count="records"))
            # Seqs continue from stream to stream, so every record is new to the relay.
            runs["relay"].append(measure_relay(relay, n, batch=1, seq_start=seq_start))
            seq_start += -(-n // NODES)
            runs["batched"].append(measure_relay(relay, n, batch=BATCH, seq_start=seq_start))
            seq_start += -(-n // NODES)
            runs["curve"].append(measure_relay(secure, n, batch=1, seq_start=seq_start))
            seq_start += -(-n // NODES)
            runs["curve_batched"].append(measure_relay(secure, n, batch=BATCH, seq_start=seq_start))
            seq_start += -(-n // NODES)
            for name, rs in runs.items():
                progress(
                    f"  {name:12s}{rs[-1]['records_per_s']:>12,.0f} records/s, lost {rs[-1]['lost']}"
                )
        progress(f"{HANDSHAKES} handshakes, plain then Curve")
        handshakes = {
            "plain": measure_handshakes(relay, HANDSHAKES),
            "curve": measure_handshakes(secure, HANDSHAKES),
        }
        secure_counters = secure.status()["counters"]
        status = relay.status()
        rss = relay.rss_mb()
        rss_peak = relay.peak_rss_mb()
        relay_config = {
            k: getattr(relay.config.relay, k)
            for k in ("rate_per_node_hz", "rate_burst", "ingest_hwm", "bus_hwm", "dedup_window")
        }
        log_tail = relay.log_tail(5)

    counters = status["counters"]
    relay_counters = {
        k: v
        for k, v in sorted(counters.items())
        if k in ("accepted", "rejected", "duplicates", "acks_dropped", "nodes", "gaps")
        or (k.startswith("reject_") and v)
        or k == "handler_errors"
    }
    relay_counters["reject_total"] = sum(v for k, v in counters.items() if k.startswith("reject_"))
    raw, raw_decoded = _median(runs["raw"]), _median(runs["raw_decoded"])
    single, batched = _median(runs["relay"]), _median(runs["batched"])
    curve_single, curve_batched = _median(runs["curve"]), _median(runs["curve_batched"])
    curve_ratio = curve_single / single if single else 0.0
    curve_batched_ratio = curve_batched / batched if batched else 0.0
    hs_plain, hs_curve = handshakes["plain"], handshakes["curve"]
    curve = {
        "relay_msgs_per_s": curve_single,
        "batched_records_per_s": curve_batched,
        "ratio": round(curve_ratio, 3),  # Curve over plain, one record per frame
        "batched_ratio": round(curve_batched_ratio, 3),
        "relay_cpu_us_per_record": statistics.median(
            r["relay_cpu_us_per_record"] for r in runs["curve"]
        ),
        "relay_cpu_us_per_record_batched": statistics.median(
            r["relay_cpu_us_per_record"] for r in runs["curve_batched"]
        ),
        "lost": sum(r["lost"] for r in runs["curve"] + runs["curve_batched"]),
        "handshakes": handshakes,
        # What 1,000 handshakes cost beyond 1,000 plain connections doing the same.
        "handshakes_1000_extra_s": round(
            (hs_curve["elapsed_s"] - hs_plain["elapsed_s"]) * 1000 / HANDSHAKES, 3
        ),
        "handshake_extra_ms_each": round(hs_curve["ms_each"] - hs_plain["ms_each"], 3),
        "handshake_relay_cpu_extra_us_each": round(
            hs_curve["relay_cpu_us_each"] - hs_plain["relay_cpu_us_each"], 1
        ),
        "auth_counters": {k: v for k, v in secure_counters.items() if k.startswith("auth_")},
    }
    lost = sum(r["lost"] for r in runs["relay"] + runs["batched"])
    ratio = single / raw if raw else 0.0
    cpu_single = statistics.median(r["relay_cpu_us_per_record"] for r in runs["relay"])
    cpu_batched = statistics.median(r["relay_cpu_us_per_record"] for r in runs["batched"])
    result: dict[str, Any] = {
        "bench": "relay_throughput",
        "quick": quick,
        "n_records": n,
        "repeats": REPEATS,
        "statistic": "median of repeats",
        "nodes": NODES,
        "batch_records": BATCH,
        "raw_msgs_per_s": raw,
        "relay_msgs_per_s": single,
        "ratio": round(ratio, 3),
        "batched_records_per_s": batched,
        "batched_ratio": round(batched / raw, 3) if raw else 0.0,
        # The same raw stream with the subscriber decoding each frame as the relay's does.
        "raw_decoded_msgs_per_s": raw_decoded,
        "ratio_vs_raw_decoded": round(single / raw_decoded, 3) if raw_decoded else 0.0,
        "lost": lost,
        "bus_pseq_gaps": sum(r["pseq_gaps"] for r in runs["relay"] + runs["batched"]),
        "unacked_nodes": sum(r["unacked_nodes"] or 0 for r in runs["relay"] + runs["batched"]),
        "relay_rss_mb_1000_nodes": rss,
        "relay_rss_mb_idle": rss_idle,
        "relay_rss_mb_peak": rss_peak,
        "relay_cpu_us_per_record": cpu_single,
        "relay_cpu_us_per_record_batched": cpu_batched,
        "relay_counters": relay_counters,
        "curve": curve,
        "relay_config": relay_config,
        "targets": TARGETS,
        "meets_targets": ratio >= TARGETS["ratio_min"]
        and lost <= TARGETS["lost_max"]
        and rss <= TARGETS["relay_rss_mb_max"]
        and curve_ratio >= TARGETS["curve_ratio_min"]
        and curve["lost"] <= TARGETS["lost_max"],
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - t0, 1),
        **versions(),
    }
    if counters.get("handler_errors"):
        progress(f"relay handler errors; log tail:\n{log_tail}")
    if profile_relay:
        _print_profile(profile_relay)
    emit(
        result,
        as_json,
        [
            f"raw pyzmq      {raw:>12,.0f} msgs/s   (subscriber decoding: {raw_decoded:,.0f})",
            f"relay single   {single:>12,.0f} records/s"
            f"   ratio {result['ratio']:.2f} (target >= {TARGETS['ratio_min']})",
            f"relay batch{BATCH}  {batched:>12,.0f} records/s   ratio {result['batched_ratio']:.2f}",
            f"lost {lost} (target 0)   relay RSS {rss} MB at {NODES} nodes"
            f" (idle {rss_idle}, peak {rss_peak}; target <= {TARGETS['relay_rss_mb_max']:.0f})",
            f"relay CPU per record: single {cpu_single} us, batched {cpu_batched} us;"
            f" {os.cpu_count()} cores shared by publisher, relay and subscriber",
            f"Curve: single {curve_single:,.0f} records/s, ratio to plain {curve_ratio:.2f}"
            f" (target >= {TARGETS['curve_ratio_min']}); batch{BATCH} {curve_batched:,.0f},"
            f" ratio {curve_batched_ratio:.2f}; lost {curve['lost']}",
            f"{HANDSHAKES} handshakes: Curve {hs_curve['elapsed_s']} s"
            f" (relay CPU {hs_curve['relay_cpu_us_each']} us each) against plain"
            f" {hs_plain['elapsed_s']} s ({hs_plain['relay_cpu_us_each']} us each)",
        ],
    )
    return result


def _print_profile(path: str) -> None:
    import pstats

    try:
        stats = pstats.Stats(path, stream=sys.stderr)
    except OSError as err:
        progress(f"no profile at {path}: {err}")
        return
    progress(f"relay profile ({path}), by own time:")
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    parser = cli_parser(__doc__, "50,000 records; under 60 s")
    parser.add_argument(
        "--profile-relay",
        metavar="FILE",
        help="run the relay under cProfile, save its stats to FILE and print the top",
    )
    args = parser.parse_args()
    apply_save(args.save)
    main(quick=args.quick, as_json=args.json, profile_relay=args.profile_relay)
