"""The cluster as the relay sees it, kept current inside any service (the zguide's Clone).

Subscribe to the relay's bus first, then ask for a snapshot; updates that arrive meanwhile
wait, and those numbered after the snapshot are applied on top of it. A gap in the bus, or
a new relay instance, triggers a fresh snapshot, so the view is never silently wrong.

Usage (inside a service's setup)::

    self.view = RelayView(self, self.config.relay)
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
    Telemetry,
)
from shoal.services.runtime.clone import ClonedState
from shoal.services.runtime.config import RelayConfig
from shoal.services.runtime.service import Service


class RelayView(ClonedState):
    topic = codec.TOPIC_NODE_RECORDS
    snapshot_op = "snapshot"
    snapshot_type = RelaySnapshot

    def __init__(self, service: Service, relay: RelayConfig) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.last_seen: dict[str, float] = {}  # monotonic time a node was last heard
        self.on_change: Callable[[list[NodeMessage]], None] | None = None
        super().__init__(service, relay.bus, relay.ctl, name="relay")

    @property
    def relay_pub(self) -> int:
        """The relay instance the view follows."""
        return self.pub

    def age_ms(self, node_id: str) -> int:
        seen = self.last_seen.get(node_id)
        return -1 if seen is None else int((time.monotonic() - seen) * 1000)

    def apply_snapshot(self, snap: RelaySnapshot) -> None:
        now = time.monotonic()
        self.nodes = {n.node_id: n for n in snap.nodes}
        self.last_seen = {n.node_id: now - n.age_ms / 1000 for n in snap.nodes}

    def apply(self, frame: Any) -> None:
        if not isinstance(frame, NodeRecords):
            return
        now = time.monotonic()
        replace = msgspec.structs.replace
        for rec in frame.records:
            view = self.nodes.get(rec.node_id)
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
            self.nodes[rec.node_id] = replace(view, **changes)
            self.last_seen[rec.node_id] = now
        if self.on_change is not None:
            self.on_change(frame.records)
