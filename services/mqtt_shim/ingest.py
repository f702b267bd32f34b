"""Node messages to the relay's ingest, and the relay's acks back to the boards they name.

One DEALER per relay shard for every board (a gateway, like the simulated fleet; each
board's records to its shard, runtime/shards.py): records go out as msgpack batches, the relay's Ack frames come back on the same connection, and each entry is
routed to the board it names, as that board's ack payload.

Nothing is buffered beyond a batch: a frame that cannot be sent (no relay connected: the
DEALER has ``immediate`` set) is dropped and counted, and its boards resend it from their
own rings when no ack comes, as they would after any loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from shoal.protocol import codec, limits
from shoal.protocol.messages import Batch, NodeMessage
from shoal.services.runtime.service import received
from shoal.services.runtime.shards import IngestShards

from . import topics


def _node_of(rec: NodeMessage) -> str:
    return rec.node_id


class IngestBridge:
    def __init__(
        self,
        shards: IngestShards,
        counters: Any,
        rejects: Any,
        publish_ack: Callable[[str, bytes], None],
        known: Callable[[str], bool],
    ) -> None:
        self.shards = shards
        self.counters = counters
        self.rejects = rejects
        self.publish_ack = publish_ack  # (node_id, payload) -> the board's ack topic
        self.known = known  # is this a board of ours?
        self.pending: list[NodeMessage] = []

    def add(self, rec: NodeMessage) -> int:
        """Queue one record for the next batch; how many are waiting now."""
        self.pending.append(rec)
        return len(self.pending)

    def flush(self) -> None:
        """Send what is waiting, as batches within the protocol's frame and record limits."""
        if not self.pending:
            return
        records, self.pending = self.pending, []
        for dealer, part in self.shards.split(records, _node_of):
            self._send(dealer, part)

    def _send(self, dealer: zmq.Socket[Any], records: list[NodeMessage]) -> None:
        step = limits.MAX_BATCH_RECORDS
        chunks = [records[i : i + step] for i in range(0, len(records), step)]
        while chunks:
            chunk = chunks.pop(0)
            frame = codec.encode(Batch(records=chunk))
            if len(frame) > limits.MAX_FRAME_BYTES and len(chunk) > 1:
                half = len(chunk) // 2  # records are small: halving converges at once
                chunks[:0] = [chunk[:half], chunk[half:]]
                continue
            try:
                dealer.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self.counters["forward_failed"] += len(chunk)
                continue
            self.counters["frames_sent"] += 1
            self.counters["forwarded"] += len(chunk)

    def drain_acks(self, dealer: zmq.Socket[Any]) -> None:
        """Route one shard's acks: one ack payload per board per Ack frame."""
        for body in received(dealer):
            try:
                ack = codec.decode_ack(body)
            except codec.Rejected as rej:
                self.counters["bad_acks"] += 1
                self.rejects.add(f"ack_{rej.reason}", rej.detail)
                continue
            per_node: dict[str, list[list[object]]] = {}
            for e in ack.acks:
                per_node.setdefault(e.node_id, []).append([e.node_id, e.boot_id, e.first, e.last])
            for node_id, entries in per_node.items():
                if self.known(node_id):
                    self.publish_ack(node_id, topics.ack_payload(entries))
                else:
                    self.counters["acks_unknown_node"] += 1
