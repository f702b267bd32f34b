"""The MQTT topics and the payloads that are the shim's own (docs/protocol.md, "MQTT
(boards)"). Node messages and task messages are the protocol's, in JSON.

    shoal/v1/<node_id>/up          board -> shim   a node message (JSON), QoS 0
    shoal/v1/<node_id>/ack         shim -> board   {"v":1,"kind":"ack","acks":[[...]]}, QoS 0
    shoal/v1/<node_id>/will        board's will    {"v":1,"node_id":..,"boot_id":..,"seq":..}, QoS 1
    shoal/v1/<node_id>/task/up     board -> shim   a node task message (JSON), QoS 0
    shoal/v1/<node_id>/task/down   shim -> board   a delegator message (JSON), QoS 0
    shoal/v1/shim/<shim_id>/state  retained, QoS 1 {"v":1,"state":"online"|"offline","shim":..,"boot":N}
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shoal.protocol import codec
from shoal.protocol.messages import BootId, NodeId, Seq, Version

ROOT = "shoal/v1/"
# "shim" is no board's name: shoal/v1/shim/... is where shims say they are up.
RESERVED_IDS = frozenset({"shim"})

UP, WILL, TASK = "up", "will", "task"
# What the shim subscribes to, with the QoS it asks for.
SUBSCRIPTIONS = [(ROOT + "+/up", 0), (ROOT + "+/will", 1), (ROOT + "+/task/up", 0)]


def parse(topic: str) -> tuple[str, str] | None:
    """(node_id, UP | WILL | TASK) for one of the subscribed topics; None when the topic
    names no valid board (a bad node id, a reserved one, or not a board topic at all)."""
    if not topic.startswith(ROOT):
        return None
    parts = topic[len(ROOT) :].split("/")
    if len(parts) == 2 and parts[1] in (UP, WILL):
        channel = parts[1]
    elif len(parts) == 3 and parts[1] == TASK and parts[2] == "up":
        channel = TASK
    else:
        return None
    node_id = parts[0]
    if node_id in RESERVED_IDS or not codec.valid_node_id(node_id):
        return None
    return node_id, channel


def ack_topic(node_id: str) -> str:
    return f"{ROOT}{node_id}/ack"


def task_down_topic(node_id: str) -> str:
    return f"{ROOT}{node_id}/task/down"


def state_topic(shim_id: str) -> str:
    return f"{ROOT}shim/{shim_id}/state"


_json = msgspec.json.Encoder()


def ack_payload(entries: list[list[object]]) -> bytes:
    """One board's ack entries [node_id, boot_id, first, last] as its ack payload."""
    return _json.encode({"v": 1, "kind": "ack", "acks": entries})


def state_payload(state: Literal["online", "offline"], shim_id: str, boot: int) -> bytes:
    return _json.encode({"v": 1, "state": state, "shim": shim_id, "boot": boot})


class Will(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A board's last will: the boot it was registered by, and the seq the board reserved
    for the goodbye the shim will send in its name (never used for anything else)."""

    node_id: NodeId
    boot_id: BootId
    seq: Seq
    v: Version = 1


_will_decoder = msgspec.json.Decoder(Will)


def decode_will(payload: bytes, max_bytes: int) -> Will:
    """A will payload, or codec.Rejected with the reason (as for node messages)."""
    if len(payload) > max_bytes:
        raise codec.Rejected("oversize", f"{len(payload)} bytes > {max_bytes}")
    try:
        will = _will_decoder.decode(payload)
    except msgspec.ValidationError as err:
        raise codec.Rejected(codec.classify_validation_error(err), str(err)) from None
    except codec.MALFORMED as err:
        raise codec.Rejected("malformed", str(err)) from None
    if not codec.valid_node_id(will.node_id):
        raise codec.Rejected("range", f"node_id {will.node_id!r}")
    return will
