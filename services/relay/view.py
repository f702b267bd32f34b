"""The cluster as the relay sees it, kept current inside any service (the zguide's Clone).

Subscribe to the relay's bus first, then ask for a snapshot; updates that arrive meanwhile
wait, and those numbered after the snapshot are applied on top of it. A gap in the bus, or
a new relay instance, triggers a fresh snapshot, so the view is never silently wrong.

With ``relay.shards`` > 1, one such state per shard (each its own bus, snapshots and
numbering) feeds one table: a node lives in exactly one shard, so a shard's snapshot
replaces only that shard's nodes.

Usage (inside a service's setup)::

    self.view = RelayView(self, relay_links(self.config))
    ...
    self.view.nodes["sim-001"].telemetry   # latest telemetry, or None
    self.view.age_ms("sim-001")             # since the node was last heard, on our clock
    self.view.synced                        # False until the first snapshot is applied
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from shoal.protocol import codec
from shoal.protocol.messages import (
    Goodbye,
    Hello,
    NodeMessage,
    NodeRecords,
    NodeView,
    RelaySnapshot,
    ServiceBeat,
    Telemetry,
)
from shoal.services.runtime.clone import ClonedState
from shoal.services.runtime.service import Service


class _ShardView(ClonedState):
    """One relay shard's part of the table (the Clone pattern per shard)."""

    topic = codec.TOPIC_NODE_RECORDS
    snapshot_op = "snapshot"
    snapshot_type = RelaySnapshot

    def __init__(self, table: RelayView, service: Service, bus: str, ctl: str, name: str) -> None:
        self.table = table
        self.ids: set[str] = set()  # the nodes this shard has told of
        super().__init__(service, bus, ctl, name=name)

    def apply_snapshot(self, snap: RelaySnapshot) -> None:
        now = time.monotonic()
        nodes, last_seen = self.table.nodes, self.table.last_seen
        fresh = {n.node_id for n in snap.nodes}
        for node_id in self.ids - fresh:
            nodes.pop(node_id, None)
            last_seen.pop(node_id, None)
        self.ids = fresh
        for n in snap.nodes:
            nodes[n.node_id] = n
            last_seen[n.node_id] = now - n.age_ms / 1000

    def apply(self, frame: Any) -> None:
        if not isinstance(frame, NodeRecords):
            return
        now = time.monotonic()
        nodes, last_seen, ids = self.table.nodes, self.table.last_seen, self.ids
        replace = msgspec.structs.replace
        for rec in frame.records:
            view = nodes.get(rec.node_id)
            if view is None or view.boot_id != rec.boot_id:
                view = NodeView(
                    node_id=rec.node_id,
                    boot_id=rec.boot_id,
                    first_seq=rec.seq,
                    last_seq=rec.seq,
                    age_ms=0,
                    msgs=0,
                    gaps=0,
                    duplicates=0,
                    rejects=0,
                    boots=(view.boots + 1) if view else 1,
                    telemetry=None,
                    hello=None,
                )
            changes: dict[str, Any] = {
                "last_seq": max(view.last_seq, rec.seq),
                "msgs": view.msgs + 1,
                "age_ms": 0,
                "left": isinstance(rec, Goodbye),
            }
            if isinstance(rec, Telemetry):
                changes["telemetry"] = rec
            elif isinstance(rec, Hello):
                changes["hello"] = rec
            nodes[rec.node_id] = replace(view, **changes)
            last_seen[rec.node_id] = now
            ids.add(rec.node_id)
        on_change = self.table.on_change
        if on_change is not None:
            on_change(frame.records)


class RelayView:
    """The node table of every relay shard, as one. ``links``: (bus, ctl) per shard, shard
    0 first (``relay_links(config)``)."""

    def __init__(self, service: Service, links: list[tuple[str, str]]) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.last_seen: dict[str, float] = {}  # monotonic time a node was last heard
        self.on_change: Callable[[list[NodeMessage]], None] | None = None
        self.shards = [
            _ShardView(self, service, bus, ctl, "relay" if k == 0 else f"relay{k}")
            for k, (bus, ctl) in enumerate(links)
        ]

    @property
    def synced(self) -> bool:
        """Every shard's snapshot applied (False until then, and during a re-sync)."""
        return all(shard.synced for shard in self.shards)

    @property
    def relay_pub(self) -> int:
        """The instance of shard 0 the view follows (a restart changes it)."""
        return self.shards[0].pub

    @property
    def resyncs(self) -> int:
        return sum(shard.resyncs for shard in self.shards)

    @property
    def on_beat(self) -> Callable[[ServiceBeat], None] | None:
        return self.shards[0].on_beat

    @on_beat.setter
    def on_beat(self, fn: Callable[[ServiceBeat], None] | None) -> None:
        for shard in self.shards:  # the beat names its shard in its counters
            shard.on_beat = fn

    def age_ms(self, node_id: str) -> int:
        seen = self.last_seen.get(node_id)
        return -1 if seen is None else int((time.monotonic() - seen) * 1000)
