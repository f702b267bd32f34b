"""State kept current from another service: a snapshot, then its numbered updates (Clone).

The zguide's Clone pattern, once for every state-bearing stream (the relay's node table,
the liveness monitor's membership): subscribe first, then ask for a snapshot over the
publisher's ctl socket; updates that arrive meanwhile wait, and those numbered after the
snapshot are applied on top of it. A hole in the numbers, a heartbeat announcing frames
never seen, or a new publisher instance triggers a fresh snapshot, so the state is never
silently wrong.

Subclasses say which topic carries the state, which op answers the snapshot and how to
apply each (see relay_view.RelayView and membership_view.MembershipView).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import Reply, Request, ServiceBeat

from .chunks import Reassembly
from .service import Service, received
from .subscriber import BusSubscriber

# A snapshot request that gets no answer is sent again after this long.
SNAPSHOT_RETRY_S = 1.0
# Updates kept while waiting for a snapshot; beyond that the oldest are dropped (the
# snapshot will cover them anyway, being newer).
PENDING_MAX = 10_000


class ClonedState:
    topic: ClassVar[bytes]  # the topic whose frames change the state
    snapshot_op: ClassVar[str]
    snapshot_type: ClassVar[type[Any]]  # a Struct with pub and pseq

    def __init__(self, service: Service, bus: str, ctl: str, name: str) -> None:
        self.service = service
        self.name = name
        self.synced = False
        self.pub = 0  # the publisher instance the state follows
        self.pseq = 0  # the last state frame applied
        self.resyncs = 0
        self.on_update: Callable[[Any], None] | None = None  # called after each frame
        self.on_beat: Callable[[ServiceBeat], None] | None = None  # the publisher's beats
        self._pending: list[Any] = []
        self._req_ids = itertools.count(random.randrange(1, 2**31))
        self._waiting_for = 0
        self._parts: Reassembly | None = None  # a chunked snapshot being read
        self._progress_at = 0.0  # when the last chunk came: a retry must not cut it short
        self._decoder = msgspec.msgpack.Decoder(self.snapshot_type)
        self.sub = BusSubscriber(
            service,
            bus,
            # The publisher's heartbeats too: they reveal a restart even when no state
            # frame has come from the new instance yet, and frames lost before the beat.
            topics=(self.topic, codec.TOPIC_SERVICE_BEAT),
            on_frame=self._on_frame,
            name=name,
        )
        self.sub.on_gap = lambda _missed: self.resync()
        self.ctl = service.sockets.connect(zmq.DEALER, ctl)
        service.on_readable(self.ctl, self._on_reply)
        self._retry = service.every(SNAPSHOT_RETRY_S, self._retry_snapshot)
        self.resync()

    # --- to override ---------------------------------------------------------------------

    def apply_snapshot(self, snap: Any) -> None:
        raise NotImplementedError

    def apply(self, frame: Any) -> None:
        raise NotImplementedError

    # --- the pattern ---------------------------------------------------------------------

    def resync(self) -> None:
        """Ask for a snapshot; hold updates until it is applied."""
        self.synced = False
        self.resyncs += 1
        self._ask_snapshot()

    def _ask_snapshot(self) -> None:
        self._parts = None
        self._send(self.snapshot_op, {})

    def _send(self, op: str, args: dict[str, Any]) -> None:
        self._waiting_for = next(self._req_ids)
        request = Request(id=self._waiting_for, op=op, args=args)
        with contextlib.suppress(zmq.Again):  # the retry timer asks again
            self.ctl.send(codec.encode(request), zmq.NOBLOCK)

    def _retry_snapshot(self) -> None:
        if self.synced:
            return
        if self._parts is None or time.monotonic() - self._progress_at > SNAPSHOT_RETRY_S:
            self._ask_snapshot()

    def _on_reply(self) -> None:
        for data in received(self.ctl):
            try:
                reply = codec.decode_reply(data)
                if reply.id != self._waiting_for or not reply.ok:
                    continue  # an answer to an earlier request, or a refusal: retry covers it
                snap = self._read_snapshot(reply)
            except (codec.Rejected, ValueError, *codec.MALFORMED) as err:
                self._parts = None
                self.service.counters[f"{self.name}_bad_replies"] += 1
                self.service.rejects.add(f"{self.name}_reply", str(err))
                continue
            if snap is not None:
                self._apply_snapshot(snap)

    def _read_snapshot(self, reply: Reply) -> Any:
        """The snapshot, or None while a chunked one is still coming (the next chunk asked)."""
        if self._parts is None and not reply.size:
            return self._decoder.decode(reply.result)
        chunk = msgspec.msgpack.decode(reply.result, type=bytes)
        if self._parts is None:
            self._parts = Reassembly(reply.blob, reply.size, chunk)
        else:
            self._parts.add(chunk)
        self._progress_at = time.monotonic()
        if not self._parts.complete:
            self._send("chunk", self._parts.next_args())
            return None
        data, self._parts = bytes(self._parts.data), None
        return self._decoder.decode(data)

    def _apply_snapshot(self, snap: Any) -> None:
        self.apply_snapshot(snap)
        self.pub = snap.pub
        self.pseq = snap.pseq
        self.synced = True
        pending, self._pending = self._pending, []
        for frame in pending:
            if frame.pub == snap.pub and frame.pseq > snap.pseq:
                self._apply_frame(frame)

    def _on_frame(self, _topic: bytes, frame: Any) -> None:
        if isinstance(frame, ServiceBeat):
            if self.on_beat is not None:
                self.on_beat(frame)
            if self.synced and (
                frame.pub != self.pub  # a heartbeat of a new instance
                or frame.pseqs.get(self.topic.decode(), 0) > self.pseq  # frames we never saw
            ):
                self.resync()
            return
        if not self.synced:
            self._pending.append(frame)
            if len(self._pending) > PENDING_MAX:
                del self._pending[0]
            return
        if frame.pub != self.pub:
            self._pending.append(frame)
            self.resync()  # a restarted publisher: its state starts anew
            return
        if frame.pseq <= self.pseq:
            return
        if frame.pseq > self.pseq + 1:
            self._pending.append(frame)
            self.resync()  # frames between the snapshot (or the last one) and this are lost
            return
        self._apply_frame(frame)

    def _apply_frame(self, frame: Any) -> None:
        self.pseq = frame.pseq
        self.apply(frame)
        if self.on_update is not None:
            self.on_update(frame)
