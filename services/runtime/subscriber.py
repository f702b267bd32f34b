"""Subscriber side of a bus: decode frames, and tell gaps from publisher restarts.

Every bus frame carries ``pub`` (the publisher's instance id, new at each start) and
``pseq`` (+1 per frame of that topic). Under one ``pub``, a jump in a topic's ``pseq`` is a
gap: frames lost (a full queue, a slow subscriber). A new ``pub`` is a restart, not a gap.
Undecodable frames are counted and dropped.

Usage (inside a service)::

    self.relay_bus = BusSubscriber(self, config.relay.bus, topics=(codec.TOPIC_NODE_RECORDS,))
    self.relay_bus.on_frame = self.handle_frame   # called with (topic, frame)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from shoal.protocol import codec
from shoal.protocol.messages import ServiceBeat

from .service import Service, received


class SequenceTracker:
    """Per-publisher continuity: gaps (frames lost) and restarts (new instance ids)."""

    __slots__ = ("frames", "gaps", "last_pseq", "pub", "restarts")

    def __init__(self) -> None:
        self.pub = 0
        self.last_pseq = 0
        self.gaps = 0
        self.restarts = 0
        self.frames = 0

    def observe(self, pub: int, pseq: int) -> int:
        """Record one frame; return how many frames were missed just before it."""
        self.frames += 1
        if pub != self.pub:
            if self.pub:
                self.restarts += 1
            self.pub = pub
            self.last_pseq = pseq
            return 0
        missed = pseq - self.last_pseq - 1
        if pseq > self.last_pseq:
            self.last_pseq = pseq
        if missed > 0:
            self.gaps += missed
            return missed
        return 0


class BusSubscriber:
    """A SUB socket on another service's bus, registered in this service's loop."""

    def __init__(
        self,
        service: Service,
        endpoint: str,
        topics: tuple[bytes, ...] = (b"",),
        on_frame: Callable[[bytes, Any], None] | None = None,
        name: str = "bus",
    ) -> None:
        self.service = service
        self.name = name
        self.on_frame = on_frame
        self.on_gap: Callable[[int], None] | None = None
        self.sequences: dict[bytes, SequenceTracker] = {}
        self.sock = service.sockets.connect(zmq.SUB, endpoint, hwm=100_000)
        for topic in topics:
            # "rec|" rather than "rec": a prefix match must not catch "records".
            self.sock.setsockopt(zmq.SUBSCRIBE, topic + codec.TOPIC_SEP if topic else b"")
        service.endpoints[f"{name}_sub"] = endpoint
        service.on_readable(self.sock, self._drain)

    def gaps(self) -> int:
        return sum(t.gaps for t in self.sequences.values())

    def restarts(self) -> int:
        """Publisher restarts seen (the most seen on any one topic)."""
        return max((t.restarts for t in self.sequences.values()), default=0)

    def frames(self) -> int:
        return sum(t.frames for t in self.sequences.values())

    def _behind(self, beat: ServiceBeat) -> int:
        """Frames of other topics the beat says were published and we never saw.

        A PUB socket keeps its order, so every frame sent before the beat has arrived
        before it, unless it was lost.
        """
        missed = 0
        for name, high in beat.pseqs.items():
            tracker = self.sequences.get(name.encode())
            if tracker is not None and tracker.pub == beat.pub and high > tracker.last_pseq:
                lost = high - tracker.last_pseq
                tracker.gaps += lost
                tracker.last_pseq = high
                missed += lost
        return missed

    def _drain(self) -> None:
        counters = self.service.counters
        for data in received(self.sock):
            try:
                topic, frame = codec.decode_bus(data)
            except codec.Rejected as rej:
                counters[f"{self.name}_rejected"] += 1
                self.service.rejects.add(f"{self.name}_{rej.reason}", rej.detail)
                continue
            tracker = self.sequences.get(topic)
            if tracker is None:
                tracker = self.sequences[topic] = SequenceTracker()
            missed = tracker.observe(frame.pub, frame.pseq)
            if isinstance(frame, ServiceBeat):
                missed += self._behind(frame)
            if missed:
                counters[f"{self.name}_gaps"] += missed
                if self.on_gap is not None:
                    self.on_gap(missed)
            if self.on_frame is not None:
                try:
                    self.on_frame(topic, frame)
                except Exception as err:  # one frame's failure never costs the next ones
                    self.service.handler_error(f"{self.name} frame", err)
