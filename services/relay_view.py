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

import contextlib
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import (
    Goodbye,
    Hello,
    NodeMessage,
    NodeRecords,
    NodeView,
    RelaySnapshot,
    Request,
    Telemetry,
)

from .config import RelayConfig
from .runtime import Service, received
from .subscriber import BusSubscriber

# A snapshot request that gets no answer is sent again after this long.
SNAPSHOT_RETRY_S = 1.0
# Updates kept while waiting for a snapshot; beyond that the oldest are dropped (the
# snapshot will cover them anyway, being newer).
PENDING_MAX = 10_000

_snapshot_decoder = msgspec.msgpack.Decoder(RelaySnapshot)


class RelayView:
    def __init__(self, service: Service, relay: RelayConfig) -> None:
        self.service = service
        self.nodes: dict[str, NodeView] = {}
        self.last_seen: dict[str, float] = {}  # monotonic time a node was last heard
        self.synced = False
        self.relay_pub = 0  # the relay instance the view follows
        self.pseq = 0  # the last records frame applied
        self.resyncs = 0
        self.on_change: Callable[[list[NodeMessage]], None] | None = None
        self._pending: list[NodeRecords] = []
        self._req_ids = itertools.count(random.randrange(1, 2**31))
        self._waiting_for = 0
        self.sub = BusSubscriber(
            service,
            relay.bus,
            # The relay's heartbeats too: they reveal a restarted relay even when no
            # record has come from it yet.
            topics=(codec.TOPIC_NODE_RECORDS, codec.TOPIC_SERVICE_BEAT),
            on_frame=self._on_frame,
            name="relay",
        )
        self.sub.on_gap = lambda _missed: self.resync()
        self.ctl = service.sockets.connect(zmq.DEALER, relay.ctl)
        service.on_readable(self.ctl, self._on_reply)
        self._retry = service.every(SNAPSHOT_RETRY_S, self._retry_snapshot)
        self.resync()

    def age_ms(self, node_id: str) -> int:
        seen = self.last_seen.get(node_id)
        return -1 if seen is None else int((time.monotonic() - seen) * 1000)

    def resync(self) -> None:
        """Ask for a snapshot; hold updates until it is applied."""
        self.synced = False
        self.resyncs += 1
        self._ask_snapshot()

    def _ask_snapshot(self) -> None:
        self._waiting_for = next(self._req_ids)
        request = Request(id=self._waiting_for, op="snapshot")
        with contextlib.suppress(zmq.Again):  # the retry timer asks again
            self.ctl.send(codec.encode(request), zmq.NOBLOCK)

    def _retry_snapshot(self) -> None:
        if not self.synced:
            self._ask_snapshot()

    def _on_reply(self) -> None:
        for data in received(self.ctl):
            try:
                reply = codec.decode_reply(data)
                if reply.id != self._waiting_for or not reply.ok:
                    continue  # an answer to an earlier request, or a refusal: retry covers it
                snap = _snapshot_decoder.decode(reply.result)
            except (codec.Rejected, msgspec.DecodeError, UnicodeDecodeError) as err:
                self.service.counters["relay_view_bad_replies"] += 1
                self.service.rejects.add("relay_view_reply", str(err))
                continue
            self._apply_snapshot(snap)

    def _apply_snapshot(self, snap: RelaySnapshot) -> None:
        now = time.monotonic()
        self.nodes = {n.node_id: n for n in snap.nodes}
        self.last_seen = {n.node_id: now - n.age_ms / 1000 for n in snap.nodes}
        self.relay_pub = snap.pub
        self.pseq = snap.pseq
        self.synced = True
        pending, self._pending = self._pending, []
        for frame in pending:
            if frame.pub == snap.pub and frame.pseq > snap.pseq:
                self._apply(frame)

    def _on_frame(self, _topic: bytes, frame: Any) -> None:
        if not isinstance(frame, NodeRecords):
            if self.synced and (
                frame.pub != self.relay_pub  # a heartbeat of a new relay instance
                or frame.pseqs.get("rec", 0) > self.pseq  # records we never saw
            ):
                self.resync()
            return
        if not self.synced:
            self._pending.append(frame)
            if len(self._pending) > PENDING_MAX:
                del self._pending[0]
            return
        if frame.pub != self.relay_pub:
            self._pending.append(frame)
            self.resync()  # a restarted relay: its node table starts anew
            return
        if frame.pseq <= self.pseq:
            return
        if frame.pseq > self.pseq + 1:
            self._pending.append(frame)
            self.resync()  # frames between the snapshot (or the last one) and this are lost
            return
        self._apply(frame)

    def _apply(self, frame: NodeRecords) -> None:
        self.pseq = frame.pseq
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
