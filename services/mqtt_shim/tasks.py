"""Task messages between boards and the delegator (docs/protocol.md section 8).

Boards publish node task messages as JSON on ``<node_id>/task/up``; the shim checks each
with the protocol's Structs (and that its ``node_id`` is the topic's) and forwards it as
msgpack over one DEALER to the delegator's tasks socket, where the delegator takes this
connection as the route of every board that spoke on it. What the delegator sends back goes
to the board named by its ``node_id``, as JSON on ``<node_id>/task/down``. The task protocol
acks and resends by itself, so a message that cannot be sent is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from shoal.protocol import codec
from shoal.protocol.tasks import DelegatorMessage, NodeTaskMessage
from shoal.services.runtime.service import received

from . import topics

_from_board = msgspec.json.Decoder(NodeTaskMessage)
_from_delegator = msgspec.msgpack.Decoder(DelegatorMessage)
_json = msgspec.json.Encoder()


def decode_task_up(payload: bytes, max_bytes: int) -> Any:
    """A board's task message, or codec.Rejected with the reason."""
    if len(payload) > max_bytes:
        raise codec.Rejected("oversize", f"{len(payload)} bytes > {max_bytes}")
    try:
        return _from_board.decode(payload)
    except msgspec.ValidationError as err:
        raise codec.Rejected(codec.classify_validation_error(err), str(err)) from None
    except codec.MALFORMED as err:
        raise codec.Rejected("malformed", str(err)) from None


class TaskBridge:
    def __init__(
        self,
        dealer: zmq.Socket[Any],
        counters: Any,
        rejects: Any,
        publish: Callable[[str, bytes], bool],
        known: Callable[[str], bool],
    ) -> None:
        self.dealer = dealer
        self.counters = counters
        self.rejects = rejects
        self.publish = publish  # (topic, payload) -> sent
        self.known = known

    def forward(self, msg: Any) -> None:
        try:
            self.dealer.send(codec.encode(msg), zmq.NOBLOCK)
        except zmq.Again:  # no delegator connected: the board resends (section 8.6)
            self.counters["task_send_failed"] += 1
            return
        self.counters["task_forwarded"] += 1

    def drain(self) -> None:
        """The delegator's messages, each to the board it names."""
        for body in received(self.dealer):
            try:
                msg = _from_delegator.decode(body)
            except (msgspec.ValidationError, *codec.MALFORMED) as err:
                self.counters["task_bad_frames"] += 1
                self.rejects.add("task_frame", str(err))
                continue
            if not self.known(msg.node_id):
                self.counters["task_unknown_node"] += 1
                continue
            if self.publish(topics.task_down_topic(msg.node_id), _json.encode(msg)):
                self.counters["task_down"] += 1
            else:
                self.counters["task_down_dropped"] += 1
