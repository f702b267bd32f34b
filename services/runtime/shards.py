"""Which relay shard a node belongs to, and a gateway's connections to every shard.

A node's records all go to one relay process, shard ``crc32(node_id) % relay.shards``
(docs/architecture.md, "Scaling out"): its de-duplication window, token bucket and owning
connection live in that shard alone. Gateways (the simulated fleet, the MQTT shim) route
by the hash; consumers follow every shard's bus (relay/view.py, the liveness monitor).
CRC-32 because firmware and other gateways can compute it anywhere (``binascii.crc32`` in
MicroPython, zlib's everywhere else), not for its spread: ids are short and many.
"""

from __future__ import annotations

import zlib
from typing import Any

import zmq

from .config import ShoalConfig, relay_shards


def shard_of(node_id: str, shards: int) -> int:
    """The relay shard of node_id among ``shards``."""
    return zlib.crc32(node_id.encode()) % shards if shards > 1 else 0


class IngestShards:
    """One DEALER per relay shard's ingest, made by the service's socket factory; records
    sorted to their node's shard. Socket options (immediate, hwm, linger) apply to each."""

    def __init__(self, service: Any, config: ShoalConfig, **options: Any) -> None:
        self.endpoints = [e.ingest for e in relay_shards(config)]
        self.n = len(self.endpoints)
        self.dealers: list[zmq.Socket[Any]] = [
            service.sockets.connect(zmq.DEALER, endpoint, **options) for endpoint in self.endpoints
        ]
        self._shard: dict[str, int] = {}  # node id -> shard: the hash once per node

    def shard(self, node_id: str) -> int:
        k = self._shard.get(node_id)
        if k is None:
            if len(self._shard) >= 100_000:
                self._shard.clear()  # bounded: a gateway with more ids hashes again
            k = self._shard[node_id] = shard_of(node_id, self.n)
        return k

    def split(self, records: list[Any], node_id: Any) -> list[tuple[zmq.Socket[Any], list[Any]]]:
        """records grouped by shard, as (dealer, records) in shard order, empty ones left
        out; ``node_id(record)`` names a record's node."""
        if self.n == 1:
            return [(self.dealers[0], records)] if records else []
        groups: list[list[Any]] = [[] for _ in range(self.n)]
        shard = self.shard
        for rec in records:
            groups[shard(node_id(rec))].append(rec)
        return [(self.dealers[k], g) for k, g in enumerate(groups) if g]
