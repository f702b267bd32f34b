"""The messages the benchmarks send: Telemetry as a busy ESP32 reports it, framed as the
relay publishes it (bus frames, one or many records each, or multipart) or as nodes send it
(ingest frames, single or batched)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

# Node ids cycle over this many nodes.
NODES = 1000


def node_id(index: int) -> str:
    return f"bench-{index:04d}"


def shard_ids(shard: int = 0, shards: int = 1) -> list[str]:
    """The NODES benchmark ids that belong to relay shard ``shard`` of ``shards``."""
    from shoal.services.runtime.shards import shard_of

    return [node_id(i) for i in range(NODES) if shard_of(node_id(i), shards) == shard]


def telemetry_stream(
    n: int,
    *,
    nodes: int = NODES,
    seq_start: int = 0,
    seed: int = 7,
    ids: list[str] | None = None,
) -> Iterator[Any]:
    """n Telemetry messages, node ids cycling over ``nodes`` (or ``ids``), seq rising per
    node.

    Values are what a busy ESP32 reports (load near capacity, ~150 KB free heap, weak Wi-Fi).
    """
    from shoal.protocol.messages import Telemetry

    ids = ids or [node_id(i) for i in range(nodes)]
    nodes = len(ids)
    rng = random.Random(seed)
    boots = [rng.randrange(1, 2**32) for _ in range(nodes)]
    ts0 = 1_700_000_000_000
    for i in range(n):
        node = i % nodes
        seq = seq_start + i // nodes
        depth = rng.randrange(0, 65)
        yield Telemetry(
            node_id=ids[node],
            boot_id=boots[node],
            seq=seq,
            ts_ms=ts0 + seq * 1000 + node,
            cpu_pct=round(rng.uniform(5.0, 99.0), 1),
            queue_depth=depth,
            queue_capacity=64,
            load_factor=round(depth / 64 + rng.uniform(0.0, 0.5), 3),
            free_heap=rng.randrange(90_000, 200_000),
            rssi=rng.randrange(-90, -40),
            fw="1.4.2",
        )


def bus_frames(n: int, batch: int = 1, *, pub: int = 4242) -> list[bytes]:
    """What the relay publishes: ``rec|`` + NodeRecords, ``batch`` records per frame."""
    from shoal.protocol import codec
    from shoal.protocol.messages import NodeRecords

    records = list(telemetry_stream(n))
    return [
        codec.encode_bus(
            codec.TOPIC_NODE_RECORDS,
            NodeRecords(pub=pub, pseq=k + 1, records=records[start : start + batch]),
        )
        for k, start in enumerate(range(0, n, batch))
    ]


def ingest_frames(
    n: int, batch: int = 1, *, seq_start: int = 0, ids: list[str] | None = None
) -> list[bytes]:
    """What nodes send: single node messages (batch=1) or Batch frames of ``batch`` records."""
    from shoal.protocol import codec
    from shoal.protocol.messages import Batch

    stream = telemetry_stream(n, seq_start=seq_start, ids=ids)
    if batch == 1:
        return [codec.encode(msg) for msg in stream]
    records = list(stream)
    return [
        codec.encode(Batch(records=records[start : start + batch])) for start in range(0, n, batch)
    ]


def multipart_frames(n: int) -> list[list[bytes]]:
    """[topic, body] pairs carrying the same body as a one-record single frame."""
    from shoal.protocol import codec

    out = []
    for frame in bus_frames(n):
        topic, body = codec.split_bus(frame)
        out.append([topic, bytes(body)])
    return out
