"""The fleet's two connections as each node sees them: the gateway to the relay, the task
link to the delegator."""

from __future__ import annotations

from typing import Any

import msgspec
import zmq

_encoder = msgspec.msgpack.Encoder()


class GatewayLink:
    """The shared connection, as each node's transport sees it."""

    def __init__(self) -> None:
        self.outbox: list[dict[str, Any]] = []
        self.up = True  # optimistic until a send to the relay fails

    def send(self, msg: dict[str, Any]) -> bool:
        if not self.up:
            return False
        self.outbox.append(msg)
        return True


class TaskLink:
    """The fleet's connection to the delegator, as each node's delegation sees it: one
    msgpack frame per message, False at once when no delegator is connected."""

    def __init__(self, counters: Any) -> None:
        self.dealer: zmq.Socket[Any] | None = None  # set by Fleet.setup
        self.counters = counters

    def send(self, msg: dict[str, Any]) -> bool:
        if self.dealer is None:
            return False
        try:
            self.dealer.send(_encoder.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["task_send_failed"] += 1
            return False
        self.counters["task_frames_sent"] += 1
        return True
